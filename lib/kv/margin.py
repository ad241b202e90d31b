"""Discrimination beside likelihood: the contrastive margin of the gold answer over distractors.

Answer NLL is confounded with entropy: a prefix that makes the model more confident about every
continuation lowers the gold answer's NLL without helping it pick the right answer. The margin
removes that: each item scores the gold answer AND ``K`` distractor answers (other samples'
answers of the same kind, never from the same article) against the SAME shaped cache and prompt
(Phase B only), and

    margin = mean NLL of the distractors - NLL of the gold answer      (nats, higher = better)

is invariant to a shift that adds the same amount to every candidate's NLL. Per condition this
module reports the margin, the gold answer's rank among the ``K + 1`` candidates (1 = lowest NLL;
ties within the noise tolerance count against the gold answer) and top-1; per comparison d(nll),
d(margin) with their absolute sizes and CIs, and the entropy gap d(nll) - d(margin).

This module holds what the engine needs (``candidate_stats``) and the distractor draw; the
per-condition and per-comparison summary is ``lib.report.discrimination``.

Distractors are drawn by ``assign_distractors``: seeded, from other articles (``meta['article']``
when every sample has one, else any other sample), answers that differ from the gold answers, the
same answer kind first (``answer_kind``: number, name, other), any kind to fill up; the choice is
recorded per row (``distractor_ids``) and the kind-matched count too.
"""
from __future__ import annotations

import random
import re
import warnings

import numpy as np

KINDS = ("number", "name", "other")
_NUM_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
              "twelve", "hundred", "thousand", "million", "billion", "first", "second", "third", "half"}
_MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"}
_SMALL = {"of", "the", "and", "de", "von", "van", "la", "le", "du", "a", "an", "for", "in", "on", "&"}


def answer_kind(answer: str) -> str:
    """``number`` (a digit, a number word or a month: quantities, dates, years), ``name`` (every
    content word capitalised: people, places, titles) or ``other``."""
    words = re.findall(r"[\w'&.-]+", answer)
    low = [w.lower().strip(".") for w in words]
    if re.search(r"\d", answer) or any(w in _NUM_WORDS or w in _MONTHS for w in low):
        return "number"
    content = [w for w, lw in zip(words, low) if lw not in _SMALL]
    if content and all(w[:1].isupper() for w in content):
        return "name"
    return "other"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def assign_distractors(samples, k: int, seed: int) -> dict[str, list[str]]:
    """{sample id: ``k`` other sample ids whose answers serve as distractors}, seeded.

    A distractor comes from another article (``meta['article']`` when every sample has one, else
    any other sample), its answer differs from every gold answer of the sample (case and
    punctuation ignored) and from the other distractors, and it has the sample's ``answer_kind``
    when enough such samples exist (any kind fills up). A pool too small for ``k`` gives fewer (a
    warning says how many samples; each row records its count); none at all raises. The assignment of a sample depends only on
    ``seed``, the sample and the pool, never on the order in which samples are scored.
    """
    if k < 0:
        raise ValueError(f"number of distractors must be >= 0, got {k}")
    if k == 0:
        return {s.id: [] for s in samples}
    by_article = all("article" in s.meta for s in samples)
    kind = {s.id: answer_kind(s.answer) for s in samples}
    out = {}
    for s in samples:
        gold = {_norm(a) for a in (s.answers or (s.answer,))}
        rng = random.Random(f"{seed}:{s.id}")
        pool = sorted((o for o in samples if o.id != s.id and (not by_article or o.meta["article"] != s.meta["article"])),
                      key=lambda o: o.id)
        rng.shuffle(pool)
        chosen, seen = [], set(gold)
        for same_kind in (True, False):
            for o in pool:
                if len(chosen) == k:
                    break
                a = _norm(o.answer)
                if a in seen or (kind[o.id] == kind[s.id]) != same_kind:
                    continue
                chosen.append(o.id)
                seen.add(a)
        if not chosen:
            raise ValueError(f"sample {s.id!r}: no distractor answer from another article differs from its own "
                             f"({k} asked, N_DISTRACTORS); use more samples or N_DISTRACTORS=0")
        out[s.id] = chosen
    short = {sid: len(v) for sid, v in out.items() if len(v) < k}
    if short:
        warnings.warn(f"{len(short)} of {len(out)} samples have fewer than {k} distinct distractor answers from other "
                      f"articles (e.g. {dict(list(short.items())[:3])}); they use what there is, and every row "
                      f"records its own count (summary['discrimination']['n_distractors'] lists the counts)")
    return out


def candidate_stats(gold_nll: float, distractor_nlls, atol: float) -> dict:
    """margin (mean distractor NLL - gold NLL), the gold answer's rank among all candidates (1 =
    best; a distractor within ``atol`` of the gold NLL counts as beating it) and top-1."""
    d = np.asarray(distractor_nlls, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no distractor NLLs: a margin needs at least one distractor")
    rank = 1 + int(np.sum(d <= gold_nll + atol))
    return {"margin": float(d.mean() - gold_nll), "gold_rank": rank, "top1": rank == 1}


def row_fields(gold_nll: float, distractor_nlls, atol: float) -> dict:
    """The fields a scored row carries for its distractors: their NLLs (rounded as token NLLs are) and
    ``candidate_stats``; ``{}`` when the item has none."""
    if not len(distractor_nlls):
        return {}
    return {"distractor_nlls": [round(float(x), 6) for x in distractor_nlls],
            **candidate_stats(gold_nll, distractor_nlls, atol)}

