"""exp10: document-length scaling. The real passage, then unrelated passages, cut to a target length.

``pad_document`` keeps the sample's own passage first and appends other samples' passages (each
tokenized on its own, joined by the ids of ``SEP``) until exactly ``target`` tokens; target 0 (or a
target below the passage length) keeps the natural passage. The same padded document is used by
every condition of a (sample, length), so conditions differ only in their prefix. Fillers
(``FILLERS``): ``unrelated`` (the seed's: other samples' passages) or ``article`` (the sample's own
article read on from its paragraph, ``article_fillers``; unrelated passages only when it runs out): a
natural long document on SQuAD. Each item's row counts its ``fillers`` and ``article_fillers``.

Paths: ``decoder`` (the two-phase engine: prefix dropped, document re-positioned; sliding-window
layers keep every entry and the mask applies the window, so long documents are exact) and
``encdec`` (the prefix hidden from the decoder's cross-attention).
Conditions: ``bare``, ``oracle`` (the query), ``random`` (Q random tokens); names ``<cond>_len<L>``.

Naturally long documents (seed Exp 03, neural-bridge ~600 words; offline stand-in ``squad_v1.1_long``):
``long_items`` scores the encoder conditions ``LONG_CONDS`` (``kw10`` is the document-keyword
surrogate) with the query in the decoder on unpadded long passages; ``long_summary`` compares each
with ``bare__q`` and gives the structural fraction (the seed: random d +0.62 > surrogate +0.50 >
oracle +0.31, a fraction of 204%).
"""
from __future__ import annotations

import random

from lib.report import stats

SEP = "\n\n"
CONDS = ("bare", "oracle", "random")


def parse_lengths(spec: str) -> list[int]:
    out = []
    for x in str(spec).split(","):
        x = x.strip()
        if not x:
            continue
        if not x.isdigit():
            raise ValueError(f"LENGTHS entry {x!r} is not a non-negative integer (LENGTHS={spec!r}; 0: the natural passage)")
        out.append(int(x))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"LENGTHS={spec!r} must list distinct lengths")
    return sorted(out)


def pad_document(doc_ids: list[int], fillers: list[list[int]], sep_ids: list[int], target: int) -> tuple[list[int], int]:
    """(padded ids, number of filler passages used, partly or whole)."""
    doc = list(doc_ids)
    if target <= len(doc):
        return doc, 0
    out, used = list(doc), 0
    for f in fillers:
        if len(out) >= target:
            break
        out += list(sep_ids) + list(f)
        used += 1
    if len(out) < target:
        raise ValueError(f"not enough filler text to reach {target} tokens ({len(out)} available); load more samples")
    return out[:target], used


FILLERS = ("unrelated", "article")


def article_fillers(samples, paragraphs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per sample id, the other paragraphs of its own article in reading order: the ones after its
    paragraph, then the article's start up to it (``paragraphs``: ``realdata.article_paragraphs``).
    Padded with these first, a document is the article read on from the question's paragraph. Where
    the paragraph is the article unit (a one-article file, ``meta['article_unit']``) there is none."""
    out = {}
    for s in samples:
        art, k = s.meta.get("article"), s.meta.get("paragraph")
        if art not in paragraphs or not isinstance(k, int):
            raise ValueError(f"sample {s.id!r}: article {art!r} / paragraph {k!r} not in the article paragraphs "
                             f"(FILLER='article' needs a SQuAD-layout registry set loaded with its articles)")
        pars = paragraphs[art]
        if s.meta.get("article_unit") == "paragraph":  # a one-article file (SQuAD-Shifts Reddit): nothing to read on
            k = 0
        if not 0 <= k < len(pars) or pars[k] != s.passage:
            raise ValueError(f"sample {s.id!r}: paragraph {k} of article {art!r} is not the sample's passage "
                             f"(the paragraphs come from another copy of the data set?)")
        out[s.id] = pars[k + 1:] + pars[:k]
    return out


def filler_order(ids: list[str], sample_id: str, seed: int) -> list[str]:
    """Other samples' ids in a seeded order (never the sample itself)."""
    others = [i for i in ids if i != sample_id]
    random.Random(f"{seed}|{sample_id}").shuffle(others)
    return others


def name(cond: str, length: int) -> str:
    return f"{cond}_len{length}"


def curves(nll: dict, lengths: list[int], *, n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Per length: oracle and random vs bare, and oracle vs random (the semantic part), Holm within each length."""
    out = {}
    for L in lengths:
        pairs = curve_pairs([L])
        out[L] = stats.compare_conditions(nll, None, pairs=pairs, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    return out


def curve_pairs(lengths: list[int]) -> list[tuple[str, str]]:
    """Every (ref, cond) pair ``curves`` compares, in its order."""
    return [(name(a, L), name(b, L)) for L in lengths for a, b in (("bare", "oracle"), ("bare", "random"), ("random", "oracle"))]


def curve_points(cv: dict, lengths: list[int], actual: dict[int, float]) -> dict[str, list[dict]]:
    """{"oracle vs bare": [...], "random vs bare": [...], "oracle vs random": [...]} with x = mean actual length."""
    labels = {0: "oracle vs bare", 1: "random vs bare", 2: "oracle vs random"}
    return {lab: [{"length": actual[L], **{k: cv[L][i][k] for k in ("d", "ci_low", "ci_high", "p_holm")}} for L in lengths]
            for i, lab in labels.items()}


def _padded(samples, lengths, tokenize, seed: int, max_len: int | None, what: str, own: dict[str, list[str]] | None = None):
    """{(sample id, L): (doc ids, fillers used, of which from the sample's own article)}; ``own``
    (``article_fillers``) pads with the article's paragraphs before unrelated passages. Raises when a
    length exceeds the model's limit."""
    toks = {s.id: tokenize(s.passage) for s in samples}
    sep = tokenize(SEP)
    ids = [s.id for s in samples]
    cache: dict[str, list[int]] = {}
    out = {}
    for s in samples:
        mine = [cache[t] if t in cache else cache.setdefault(t, tokenize(t)) for t in (own or {}).get(s.id, [])]
        order = filler_order(ids, s.id, seed)
        for L in lengths:
            doc, used = pad_document(toks[s.id], mine + [toks[i] for i in order], sep, L)
            if max_len is not None and len(doc) > max_len:
                raise ValueError(f"{what}: a {len(doc)}-token document exceeds the model's limit of {max_len} tokens "
                                 f"(LENGTHS entry {L}); drop that length for this model")
            out[(s.id, L)] = (doc, used, min(used, len(mine)))
    return out


def mean_fill(rows: list[dict], lengths: list[int], key: str = "fillers") -> dict[int, float]:
    """Per length, the mean of a row count (``fillers``, ``article_fillers``) over the ``bare`` items."""
    out = {}
    for L in lengths:
        vals = [float(r[key]) for r in rows if r["condition"] == name("bare", L)]
        out[L] = sum(vals) / len(vals) if vals else float("nan")
    return out


def _fill_row(row: dict, L: int, padded: tuple) -> dict:
    return {**row, "target_len": L, "fillers": padded[1], "article_fillers": padded[2]}


def decoder_items(lm, samples, lengths: list[int], *, seed: int = 42, n_distractors: int = 0,
                  article_fillers: dict[str, list[str]] | None = None):
    """Engine WorkItems ``<cond>_len<L>`` for the decoder-only path; ``n_distractors`` other samples'
    answers ride along on each item (``lib.kv.margin``: d(margin) beside d(nll) at every length);
    ``article_fillers`` (see ``article_fillers``) pads with the sample's own article first."""
    from dataclasses import replace

    from lib.studies import conditions
    from lib.kv import encode as enc_mod

    base = conditions.build_items(lm, samples, conditions.get(["bare", "oracle", "random_tokens"]), seed=seed,
                                  n_distractors=n_distractors)
    back = {"bare": "bare", "oracle": "oracle", "random_tokens": "random"}
    room = lm.arch.max_positions - 1 - max(len(it.prefix_ids) + len(it.prompt_ids) + max(map(len, [it.answer_ids, *it.distractor_ids]))
                                           for it in base)
    docs = _padded(samples, lengths, lambda t: enc_mod.tokenize(lm.tokenizer, t), seed, room, "decoder path", article_fillers)
    return [replace(it, condition=name(back[it.condition], L), doc_ids=tuple(docs[(it.sample_id, L)][0]),
                    row=_fill_row(it.row, L, docs[(it.sample_id, L)]))
            for L in lengths for it in base]


def encdec_items(em, samples, lengths: list[int], *, seed: int = 42, article_fillers: dict[str, list[str]] | None = None):
    """Encoder-decoder Items ``<cond>_len<L>`` (query in the decoder, prefix hidden); ``article_fillers``
    as in ``decoder_items``."""
    from dataclasses import replace

    from lib.studies import encdec

    base = [it for it in encdec.build_items(em, samples, enc_conditions=CONDS, seed=seed, length_control=False)
            if it.condition.endswith("__q")]
    cfg = em.model.config
    limit = getattr(cfg, "max_position_embeddings", None) if em.family == "bart" else None
    room = None if limit is None else limit - 2 - max(len(it.prefix_ids) for it in base)
    docs = _padded(samples, lengths, lambda t: encdec.tokenize(em, t), seed, room, "encoder-decoder path", article_fillers)
    return [replace(it, condition=name(it.condition.split("__")[0], L), doc_ids=tuple(docs[(it.sample_id, L)][0]),
                    row=_fill_row(it.row, L, docs[(it.sample_id, L)]))
            for L in lengths for it in base]


LONG_CONDS = ("bare", "oracle", "random", "kw10")


def long_items(em, samples, *, seed: int = 42):
    """Encoder-decoder Items ``<cond>__q`` on the samples' own (long) passages; raises past BART's position limit."""
    from lib.studies import encdec

    items = [it for it in encdec.build_items(em, samples, enc_conditions=LONG_CONDS, seed=seed, length_control=False)
             if it.condition.endswith("__q")]
    limit = getattr(em.model.config, "max_position_embeddings", None) if em.family == "bart" else None
    worst = max(len(it.prefix_ids) + len(it.doc_ids) + 2 for it in items)
    if limit is not None and worst > limit:
        raise ValueError(f"a {worst}-token encoder input exceeds {em.name}'s limit of {limit} positions; "
                         f"use a model with relative positions (T5, T5Gemma) or a word limit on the passages")
    return items


def long_summary(nll: dict, *, n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    from lib.report import analysis

    conds = [f"{c}__q" for c in LONG_CONDS if c != "bare"]
    return {"vs_bare": stats.compare_conditions(nll, "bare__q", conds, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
            "structural_fraction": analysis.structural_fraction(nll, ref="bare__q", structural="random__q", full="oracle__q")}
