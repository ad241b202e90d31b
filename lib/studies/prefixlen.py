"""exp05: prefix length and content, and the structure / vocabulary / meaning decomposition.

Every content is tiled or cut to exactly L text tokens (``conditions.at_length``), so at one L all
prefixed conditions have the same length, position offset and cache length. Condition names are
``<content>_L<L>``.

Contents (``CONTENTS``: content -> (registry condition, scrambled?)):
  random, repeat               content-free: uniform random tokens; " the" repeated
  oracle, scrambled            the query tiled to L; the same L tokens shuffled
  extractor, scrambled_extractor   the generic extraction framing; shuffled
  first_sentence, scrambled_first_sentence
  kw5, kw10, kw20              top-k TF-IDF keywords tiled to L (at a fixed L, fewer keywords =
                               each repeated more: keyword density)

Decomposition of an ordered content X at length L (NLL differences, positive = helps; they add
up to the total effect NLL(bare) - NLL(X_L)):
  structure   = NLL(bare)          - NLL(random_L)       any L tokens in front of the document
  vocabulary  = NLL(random_L)      - NLL(scrambled_X_L)  X's tokens, in no order
  meaning     = NLL(scrambled_X_L) - NLL(X_L)            the order, i.e. the text itself
For a content without a scrambled twin (kw*, repeat) the last two merge into ``content``.
"""
from __future__ import annotations

import numpy as np

from lib.studies import conditions
from lib.report import stats

CONTENTS = {
    "random": ("random_tokens", False), "repeat": ("repeat_token", False),
    "oracle": ("oracle", False), "scrambled": ("oracle", True),
    "extractor": ("extractor", False), "scrambled_extractor": ("extractor", True),
    "first_sentence": ("first_sentence", False), "scrambled_first_sentence": ("first_sentence", True),
    "kw5": ("kw5", False), "kw10": ("kw10", False), "kw20": ("kw20", False),
    # wrong-document keywords (the seed's kw*_other): same kind of text, another sample's document
    "kw5_other": ("kw5_other", False), "kw10_other": ("kw10_other", False), "kw20_other": ("kw20_other", False),
}
SCRAMBLED_OF = {"oracle": "scrambled", "extractor": "scrambled_extractor", "first_sentence": "scrambled_first_sentence"}
STRUCTURE = "random"


def _split(spec: str, what: str) -> list[str]:
    out = [x.strip() for x in str(spec).split(",") if x.strip()]
    if not out:
        raise ValueError(f"{what}={spec!r} is empty")
    return out


def parse_lengths(spec: str) -> list[int]:
    out = []
    for x in _split(spec, "LENGTHS"):
        if not x.isdigit() or int(x) < 1:
            raise ValueError(f"LENGTHS entry {x!r} is not a positive integer (LENGTHS={spec!r})")
        out.append(int(x))
    if len(set(out)) != len(out):
        raise ValueError(f"LENGTHS lists a length twice: {spec!r}")
    return sorted(out)


def parse_contents(spec: str) -> list[str]:
    out = _split(spec, "CONTENTS")
    for c in out:
        if c not in CONTENTS:
            raise conditions.unknown_condition(c, CONTENTS)
    if STRUCTURE not in out:
        raise ValueError(f"CONTENTS must include {STRUCTURE!r} (the structure reference); got {out}")
    return out


def name(content: str, length: int) -> str:
    return f"{content}_L{length}"


def grid(contents: list[str], lengths: list[int]) -> list[conditions.Condition]:
    """``bare`` then every (content, L) condition, L-major."""
    conds = [conditions.get(["bare"])[0]]
    for L in lengths:
        for c in contents:
            base, scramble = CONTENTS[c]
            conds.append(conditions.at_length(base, L, scramble=scramble, name=name(c, L)))
    return conds


def _comp(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, atol: float | None = None) -> dict:
    """Paired component a - b (positive: b lower NLL): mean (nats) and % of a with CIs, d and its CI, both tests."""
    r = stats.paired_test(a, b, n_boot=n_boot, seed=seed, atol=atol).to_dict()
    return {"mean": r["mean_delta"], "mean_ci": [r["mean_delta_ci_low"], r["mean_delta_ci_high"]],
            "pct_of_ref": r["pct_of_ref"], "pct_ci": [r["pct_ci_low"], r["pct_ci_high"]],
            "d": r["d"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p": r["p_t"], "p_wilcoxon": r["p_wilcoxon"]}


def decompose(nll: dict[str, np.ndarray], contents: list[str], lengths: list[int], *, ref: str = "bare",
              n_boot: int = 2000, seed: int = 0, atol: float | None = None) -> list[dict]:
    """One row per (content, L): total effect and its components (see the module docstring)."""
    rows = []
    for L in lengths:
        rand = nll[name(STRUCTURE, L)]
        for c in contents:
            if c == STRUCTURE or c in SCRAMBLED_OF.values():
                continue
            x = nll[name(c, L)]
            row = {"content": c, "length": L, "total": _comp(nll[ref], x, n_boot, seed, atol),
                   "structure": _comp(nll[ref], rand, n_boot, seed, atol)}
            tw = SCRAMBLED_OF.get(c)
            if tw in contents:
                sx = nll[name(tw, L)]
                row["vocabulary"] = _comp(rand, sx, n_boot, seed, atol)
                row["meaning"] = _comp(sx, x, n_boot, seed, atol)
            else:
                row["content_effect"] = _comp(rand, x, n_boot, seed, atol)
            rows.append(row)
    return rows


_CURVE_KEYS = ("d", "ci_low", "ci_high", "p_holm", "p_holm_wilcoxon", "mean_delta", "mean_delta_ci_low",
               "mean_delta_ci_high", "pct_of_ref", "pct_ci_low", "pct_ci_high")


def curves(comparisons: list[dict], contents: list[str], lengths: list[int]) -> dict[str, list[dict]]:
    """{content: [comparison vs bare at each L]} from ``analysis.summarize``'s comparisons."""
    by = {r["cond"]: r for r in comparisons}
    return {c: [{"length": L, **{k: by[name(c, L)][k] for k in _CURVE_KEYS if k in by[name(c, L)]}}
                for L in lengths] for c in contents}


def density(nll: dict[str, np.ndarray], contents: list[str], lengths: list[int], n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> list[dict]:
    """Keyword density at each L: kw5 vs kw10 vs kw20 (paired, Holm within the call)."""
    kws = [c for c in ("kw5", "kw10", "kw20") if c in contents]
    pairs = [(name(a, L), name(b, L)) for L in lengths for i, a in enumerate(kws) for b in kws[i + 1:]]
    return stats.compare_conditions(nll, None, pairs=pairs, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test) if pairs else []


def keyword_answer_leaks(samples, contents: list[str], docs: dict | None = None) -> dict[str, list[str]]:
    """{kw content: ids of the samples whose top-k TF-IDF keywords contain a word of the scored answer}.

    The keywords are the ones ``conditions.build_items`` tiles (TF-IDF over ``docs``, by default the
    samples' passages); answer words go through the same ``surrogates.words`` (lower case, 3+ letters,
    stop words out). A keyword prefix that holds the answer primes the answer itself: its gain says
    nothing about surrogate queries (the trap of the synthetic runs, whose keywords always held it).
    """
    from lib.data import surrogates

    ks = sorted({int(c[2:]) for c in contents if c in ("kw5", "kw10", "kw20")})
    docs = docs or {s.id: s.passage for s in samples}
    out = {}
    for k in ks:
        kw = surrogates.tfidf_keywords(docs, k)
        out[f"kw{k}"] = [s.id for s in samples if set(surrogates.words(s.answer)) & set(kw[s.id])]
    return out


def _unpaired(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict:
    """mean(x) - mean(y) with a percentile bootstrap CI (each group resampled) and Welch's t-test p."""
    from scipy import stats as st

    rng = np.random.default_rng(seed)
    boots = np.array([rng.choice(x, len(x)).mean() - rng.choice(y, len(y)).mean() for _ in range(n_boot)])
    p = float(st.ttest_ind(x, y, equal_var=False).pvalue) if len(x) > 1 and len(y) > 1 else float("nan")
    return {"diff": float(x.mean() - y.mean()), "diff_ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "p_welch": p}


def leak_split(nll: dict[str, np.ndarray], ids: list[str], leaks: dict[str, list[str]], lengths: list[int], *,
               ref: str = "bare", n_boot: int = 2000, seed: int = 0, atol: float | None = None) -> list[dict]:
    """Each keyword content's effect vs ``ref`` at every L, on the samples whose keywords hold an answer
    word (``leaked``) and on the rest (``clean``), and leaked minus clean (unpaired). ``nll`` columns
    follow ``ids``; a subset with fewer than 2 samples gets ``None``."""
    unknown = set().union(*leaks.values()) - set(ids) if leaks else set()
    if unknown:
        raise ValueError(f"leak lists name samples not in ids: {sorted(unknown)[:5]}")
    rows = []
    for c, leaked_ids in leaks.items():
        leaked = np.array([i in set(leaked_ids) for i in ids])
        for L in lengths:
            cond = name(c, L)
            if cond not in nll:
                continue
            a, b = np.asarray(nll[ref]), np.asarray(nll[cond])
            row = {"content": c, "length": L, "cond": cond, "n_leaked": int(leaked.sum()), "n_clean": int((~leaked).sum())}
            for part, m in (("leaked", leaked), ("clean", ~leaked)):
                row[part] = _comp(a[m], b[m], n_boot, seed, atol) if m.sum() >= 2 else None
            row["leaked_minus_clean"] = (_unpaired((a - b)[leaked], (a - b)[~leaked], n_boot, seed)
                                         if leaked.sum() >= 2 and (~leaked).sum() >= 2 else None)
            rows.append(row)
    return rows
