"""exp09's factorial designs and subsets on top of the encoder conditions (seed Exps 05-08).

Truncation wound (seed Exp 05: the first sentence as a hidden prefix is catastrophic; is it its
coherence, its overlap with the document, or both?). Four encoder prefixes, 2 x 2:

                      overlaps the document         does not overlap
  coherent            first_sentence                wrongdoc_sentence   (another sample's, another article)
  incoherent          shuffled_sentence             shuffled_wrongdoc   (the same tokens in a seeded order)

Shuffling permutes the token ids (same multiset and length, no order), as ``conditions``'
scrambled twins do. The interaction (per sample, each decoder mode ``m``)
``(wrongdoc - first) - (shuffled_wrongdoc - shuffled)`` is the effect of overlap when the prefix
is coherent minus its effect when it is not; negative: overlap hurts more when coherent (the
seed: d = -0.361).

Length x encoder (seed Exps 07-08): the decoder-query effect (``__nq`` -> ``__q``) under a bare
vs an oracle encoder, and its length (``__nq`` -> ``__rq``) and semantic (``__rq`` -> ``__q``) parts:
``(bare__nq - bare__q) - (oracle__nq - oracle__q)`` etc. Positive: the decoder query helps more
when the encoder saw no query (redundancy; the seed: total d = +0.316, length part +0.324).

Factoid split (seed Exp 06): encoder effects vs ``bare__<m>`` within short (<= ``threshold`` words,
the seed's 5) and long answers, each with CIs and Holm within the subset; then the structural
fraction (random vs oracle) per answer-length bin (1-2, 3-5, 6-10, 11-20, 21+ words).
"""
from __future__ import annotations

import random

from lib.report import analysis, stats
from lib.report.stats_interaction import interactions

WOUND = ("first_sentence", "wrongdoc_sentence", "shuffled_sentence", "shuffled_wrongdoc")
BINS = ((1, 2), (3, 5), (6, 10), (11, 20), (21, None))


def shuffled(ids, key: str) -> tuple[int, ...]:
    """``ids`` in a seeded order (same multiset); a different order whenever two tokens differ."""
    out = list(ids)
    if len(set(out)) < 2:
        return tuple(out)
    rng = random.Random(key)
    while True:
        rng.shuffle(out)
        if out != list(ids):
            return tuple(out)


def wound_prefixes(samples, first_ids: dict[str, tuple[int, ...]], seed: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """{sample id: {cell: prefix ids}} for the three cells besides ``first_sentence``; the other
    sample comes from another article (``priming.other_assignment``)."""
    from lib.studies.priming import other_assignment

    other = other_assignment(samples, seed)
    return {s.id: {"wrongdoc_sentence": first_ids[other[s.id]],
                   "shuffled_sentence": shuffled(first_ids[s.id], f"{seed}|{s.id}|own"),
                   "shuffled_wrongdoc": shuffled(first_ids[other[s.id]], f"{seed}|{s.id}|other")} for s in samples}


def truncation_wound(nll: dict, mode: str, *, n_boot: int = 2000, seed: int = 0, atol: float | None = None,
                     primary_test: str = "t") -> dict:
    """The four cells vs ``bare__<mode>`` and the coherence x overlap interaction."""
    n = {c: f"{c}__{mode}" for c in WOUND}
    cells = stats.compare_conditions(nll, f"bare__{mode}", [n[c] for c in WOUND], n_boot=n_boot, seed=seed, atol=atol,
                                     primary_test=primary_test)
    inter = interactions(nll, {"coherence x overlap": (n["wrongdoc_sentence"], n["first_sentence"],
                                                       n["shuffled_wrongdoc"], n["shuffled_sentence"])},
                         n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    return {"cells": cells, "interaction": inter[0]}


def length_interaction(nll: dict, *, n_boot: int = 2000, seed: int = 0, atol: float | None = None,
                       primary_test: str = "t") -> list[dict]:
    """The decoder-query effect and its length / semantic parts, bare vs oracle encoder (Holm over three)."""
    specs = {"total (nq -> q)": ("nq", "q"), "length (nq -> rq)": ("nq", "rq"), "semantic (rq -> q)": ("rq", "q")}
    return interactions(nll, {k: (f"bare__{x}", f"bare__{y}", f"oracle__{x}", f"oracle__{y}") for k, (x, y) in specs.items()},
                        n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)


def answer_words(samples) -> dict[str, int]:
    return {s.id: len(s.answer.split()) for s in samples}


def _subset(nll: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in nll.items()}


def factoid_split(nll: dict, ids: list[str], words: dict[str, int], enc_conditions, *, mode: str = "q",
                  threshold: int = 5, n_boot: int = 2000, seed: int = 0, atol: float | None = None,
                  primary_test: str = "t") -> dict:
    """Encoder effects within short / long answers, and the structural fraction per answer-length bin."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be a positive number of words (the seed's 5), got {threshold!r}")
    missing = [i for i in ids if i not in words]
    if missing:
        raise ValueError(f"no answer word count for samples {missing[:5]}")
    conds = [f"{c}__{mode}" for c in enc_conditions if c != "bare"]
    ref = f"bare__{mode}"
    out = {"threshold_words": threshold, "mode": mode, "subsets": {}, "bins": []}
    for name, keep in (("short", lambda w: w <= threshold), ("long", lambda w: w > threshold)):
        idx = [k for k, i in enumerate(ids) if keep(words[i])]
        entry = {"n": len(idx), "words": f"<= {threshold}" if name == "short" else f"> {threshold}"}
        if len(idx) >= 2:
            entry["effects"] = stats.compare_conditions(_subset(nll, idx), ref, conds, n_boot=n_boot, seed=seed, atol=atol,
                                                        primary_test=primary_test)
        else:
            entry["skipped"] = f"{len(idx)} sample(s): a paired comparison needs at least 2"
        out["subsets"][name] = entry
    for lo, hi in BINS:
        idx = [k for k, i in enumerate(ids) if words[i] >= lo and (hi is None or words[i] <= hi)]
        entry = {"bin": f"{lo}-{hi}" if hi else f"{lo}+", "n": len(idx)}
        if len(idx) >= 2 and f"random__{mode}" in nll and f"oracle__{mode}" in nll:
            entry.update(analysis.structural_fraction(_subset(nll, idx), ref=ref, structural=f"random__{mode}",
                                                      full=f"oracle__{mode}"))
        out["bins"].append(entry)
    return out
