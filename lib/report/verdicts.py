"""What a comparison row may be called: one rule for every text that classifies a comparison.

Each builder declares its primary test up front (``PRIMARY_TEST``: ``"t"`` or ``"wilcoxon"``),
recorded in results.json; tables show both tests. A comparison is called "null" only when
NEITHER test rejects at ``alpha`` (their Holm-adjusted p-values, ``p_holm`` and
``p_holm_wilcoxon``, as ``lib.report.stats.compare_conditions`` writes them). When the primary test
rejects, its direction decides "better"/"worse" (t: the sign of the mean delta; Wilcoxon: the
sign of the rank-biserial correlation). When only the other test rejects, or both reject in
opposite directions, the verdict is "test-dependent": not a finding, and not a null either.
(The case that motivated this: exp01 on Gemma called C vs A "not distinguishable" at Holm-t
0.14 while Holm-Wilcoxon gave 0.0011.)
"""
from __future__ import annotations

import math

PRIMARY_TESTS = ("t", "wilcoxon")
VERDICTS = ("better", "worse", "null", "test-dependent")
WORDS = {"better": "better than", "worse": "worse than", "null": "not distinguishable from",
         "test-dependent": "test-dependent (t vs Wilcoxon disagree) against"}


def check_primary_test(name: str) -> str:
    if name not in PRIMARY_TESTS:
        raise ValueError(f"primary test {name!r} is unknown; expected one of {PRIMARY_TESTS}")
    return name


def _rejects(p, alpha: float) -> bool:
    return p is not None and not (isinstance(p, float) and math.isnan(p)) and p < alpha


def _sign(x) -> int:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return 0
    return (x > 0) - (x < 0)


def verdict(row: dict, alpha: float = 0.05, primary: str | None = None) -> str:
    """``"better"`` / ``"worse"`` (the condition vs its reference) / ``"null"`` / ``"test-dependent"``.

    ``row`` is a ``compare_conditions`` row; ``primary`` defaults to the row's ``primary_test``
    (``"t"`` for rows written before it was recorded).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    primary = check_primary_test(primary or row.get("primary_test") or "t")
    missing = [k for k in ("p_holm", "p_holm_wilcoxon", "mean_delta") if k not in row]
    if missing:
        raise ValueError(f"row lacks {missing}; rows come from lib.report.stats.compare_conditions")
    rej = {"t": _rejects(row["p_holm"], alpha), "wilcoxon": _rejects(row["p_holm_wilcoxon"], alpha)}
    rb = row.get("rank_biserial")
    sign = {"t": _sign(row["mean_delta"]), "wilcoxon": _sign(rb if rb is not None else row.get("median_delta", row["mean_delta"]))}
    other = "wilcoxon" if primary == "t" else "t"
    if not rej[primary] and not rej[other]:
        return "null"
    if not rej[primary] or (rej[other] and sign[other] != sign[primary]) or sign[primary] == 0:
        return "test-dependent"
    return "better" if sign[primary] > 0 else "worse"


def words(row: dict, alpha: float = 0.05, primary: str | None = None) -> str:
    """The verdict as a phrase: "<cond> is <words> <ref>"."""
    return WORDS[verdict(row, alpha, primary)]


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def describe(row: dict, label: str | None = None, width: int = 24, alpha: float = 0.05) -> str:
    """One table line of a comparison: absolute size first (mean delta in nats and % of the reference,
    with CIs), then d [CI], win rate, both Holm p-values, the primary test and the verdict."""
    lab = label if label is not None else row.get("cond") or row.get("label", "")
    size = f"delta {_f(row.get('mean_delta'), '+.4f')} nats"
    if "mean_delta_ci_low" in row:
        size += f" [{_f(row['mean_delta_ci_low'], '+.4f')}, {_f(row['mean_delta_ci_high'], '+.4f')}]"
    if "pct_of_ref" in row:
        size += f" ({_f(row['pct_of_ref'], '+.2f')}% [{_f(row['pct_ci_low'], '+.2f')}, {_f(row['pct_ci_high'], '+.2f')}])"
    d = f"d={_f(row.get('d'), '+.3f')} [{_f(row.get('ci_low'), '+.3f')}, {_f(row.get('ci_high'), '+.3f')}]"
    tail = f"Holm p t={_f(row.get('p_holm'), '.3g')} W={_f(row.get('p_holm_wilcoxon'), '.3g')}"
    if "win_rate" in row:
        tail = f"win={_f(row['win_rate'], '.2f')}  " + tail
    v = verdict(row, alpha) if "p_holm_wilcoxon" in row and "p_holm" in row else "?"
    return f"{lab:{width}s} {size}  {d}  {tail}  primary={row.get('primary_test', 't')}: {v}"
