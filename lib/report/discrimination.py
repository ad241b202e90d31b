"""Discrimination beside likelihood (the summary half of ``lib/kv/margin.py``): per-condition margin,
gold rank and top-1, and d(margin) beside d(nll) with the entropy gap d(nll) - d(margin), and per
comparison the paired gold-rank change (scale-free, where the margin in nats is not).
"""
from __future__ import annotations

import numpy as np

from lib.report import stats
from lib.report.tables import field_table


def has_margins(rows: list[dict]) -> bool:
    return bool(rows) and all("margin" in r for r in rows)


def table(rows: list[dict], names: list[str], sample_ids: list[str], field: str = "margin") -> dict[str, np.ndarray]:
    """{condition: ``field`` array in ``sample_ids`` order} (``tables.field_table``; default the margin)."""
    return field_table(rows, names, sample_ids, field)


def discrimination_summary(rows, sample_ids, names, **kw) -> dict:
    """``{"discrimination": discrimination(...)}`` when the rows carry margins, else ``{}``."""
    if not has_margins([r for r in rows if r["condition"] in names]):
        return {}
    return {"discrimination": discrimination(rows, sample_ids, names, **kw)}


def rank_change(rank_ref: np.ndarray, rank_cond: np.ndarray, top1_ref: np.ndarray, top1_cond: np.ndarray) -> dict:
    """The scale-free half of discrimination, per comparison: the margin is in nats, so a condition that
    stretches every candidate's NLL moves it without changing which answer wins. Paired over samples:
    the share whose gold rank improved / worsened, a two-sided Wilcoxon signed-rank p on the rank
    differences (ties dropped; 1.0 when no rank moved), the mean gold rank and the top-1 rate of both."""
    from scipy.stats import wilcoxon

    diff = np.asarray(rank_cond, float) - np.asarray(rank_ref, float)
    p = float(wilcoxon(diff[diff != 0]).pvalue) if np.count_nonzero(diff) else 1.0
    return {"rank_better": float(np.mean(diff < 0)), "rank_worse": float(np.mean(diff > 0)), "p_rank_wilcoxon": p,
            "gold_rank_ref": float(np.mean(rank_ref)), "gold_rank_cond": float(np.mean(rank_cond)),
            "top1_ref": float(np.mean(top1_ref)), "top1_cond": float(np.mean(top1_cond))}


def discrimination(rows: list[dict], sample_ids: list[str], names: list[str], *, ref: str | None = None,
                   pairs: list[tuple[str, str]] | None = None, nll_comparisons: list[dict] | None = None,
                   n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Per-condition margin / rank / top-1 and per-comparison d(margin) beside d(nll).

    Comparisons go through ``stats.compare_conditions`` on the NEGATED margin, so a positive d (and
    a positive mean delta, in nats) means the condition separates the gold answer from the
    distractors better than the reference, the same direction as d(nll). ``nll_comparisons`` (the
    run's NLL comparisons) adds ``d_nll`` and ``entropy_gap`` = d(nll) - d(margin) to each row. Each
    row also carries ``rank_change`` (gold rank better / worse shares, their Wilcoxon p, top-1 rates):
    the margin is in nats and can grow with the spread of the NLLs while no answer changes rank.
    """
    margin = table(rows, names, sample_ids)
    rank = table(rows, names, sample_ids, "gold_rank")
    top1 = table(rows, names, sample_ids, "top1")
    k = {len(r["distractor_nlls"]) for r in rows if r["condition"] in names}
    neg = {n: -v for n, v in margin.items()}
    if pairs is not None:
        comps = stats.compare_conditions(neg, None, pairs=list(pairs), n_boot=n_boot, seed=seed, atol=atol,
                                         primary_test=primary_test)
    else:
        comps = stats.compare_conditions(neg, ref, [n for n in names if n != ref], n_boot=n_boot, seed=seed, atol=atol,
                                         primary_test=primary_test)
    by = {(c["ref"], c["cond"]): c for c in (nll_comparisons or [])}
    for c in comps:
        c.update(rank_change(rank[c["ref"]], rank[c["cond"]], top1[c["ref"]], top1[c["cond"]]))
        c["metric"] = "margin"
        c["label"] = c["label"] + " (margin)"
        c["mean_ref"], c["mean_cond"] = -c["mean_ref"], -c["mean_cond"]  # the margins themselves
        c.pop("pct_of_ref", None), c.pop("pct_ci_low", None), c.pop("pct_ci_high", None)  # a margin can be ~0
        nc = by.get((c["ref"], c["cond"]))
        if nc is not None:
            c["d_nll"] = nc["d"]
            c["entropy_gap"] = float(nc["d"] - c["d"])
    return {
        "n_distractors": sorted(k),
        "mean_margin": {n: float(v.mean()) for n, v in margin.items()},
        "mean_gold_rank": {n: float(v.mean()) for n, v in rank.items()},
        "top1": {n: float(v.mean()) for n, v in top1.items()},
        "comparisons": comps,
    }
