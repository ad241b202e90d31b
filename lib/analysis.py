"""Standard analysis of a conditions-vs-reference run: summary statistics and figures.

Every condition is compared with the reference (default ``bare``) on the same samples: d with a
bootstrap CI, win rate, paired t and Wilcoxon p with Holm across the conditions of the run;
per-sample ranks; hardness bins of the reference NLL with the regression-to-the-mean null.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lib import plots, stats
from lib.priming import nll_table


def summarize(rows: list[dict], sample_ids: list[str], names: list[str], *, ref: str = "bare",
              n_boot: int = 2000, seed: int = 0) -> dict:
    if ref not in names:
        raise ValueError(f"reference condition {ref!r} is not among the run's conditions {names}")
    nll = nll_table(rows, names, sample_ids)
    others = [n for n in names if n != ref]
    return {
        "n_samples": len(sample_ids),
        "reference": ref,
        "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
        "comparisons": stats.compare_conditions(nll, ref, others, n_boot=n_boot, seed=seed),
        "ranks": stats.ranks_per_sample(nll),
        "hardness": stats.hardness_table(nll, ref, others, seed=seed) if len(sample_ids) >= 10 else [],
    }


def figures(summary: dict, nll: dict[str, np.ndarray], out_dir, title: str = "") -> list[Path]:
    out = Path(out_dir)
    paths = [plots.plot_effects(summary["comparisons"], out / "effects.png", title=title),
             plots.plot_mean_nll(nll, out / "mean_nll.png", title=title)]
    if summary["hardness"]:
        paths.append(plots.plot_hardness_heatmap(summary["hardness"], out / "hardness_heatmap.png", title=title))
    return paths
