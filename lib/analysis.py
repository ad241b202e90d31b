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


RELEVANCE_ORDER = ("random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query", "same_topic", "paraphrase",
                   "oracle_matched")


def semantic_gradient(nll: dict[str, np.ndarray], ref: str = "bare", order=RELEVANCE_ORDER) -> dict:
    """Does the benefit grow with the prefix's relevance to the query?

    Benefit = ref NLL - condition NLL per sample. Per sample: Spearman rho between the relevance
    rank (position in ``order``) and the benefit; reported as mean, share of samples with rho > 0
    and a Wilcoxon signed-rank p against 0. Pooled: Spearman rho over every (sample, condition)
    pair. A monotone semantic gradient gives rho > 0.
    """
    from scipy import stats as ss

    missing = [c for c in (ref, *order) if c not in nll]
    if missing:
        raise ValueError(f"semantic gradient needs conditions {missing}; the run has {sorted(nll)}")
    rel = np.arange(len(order), dtype=float)
    benefit = np.stack([nll[ref] - nll[c] for c in order], axis=1)  # (n, k)
    per = np.array([ss.spearmanr(rel, b).statistic if np.ptp(b) > 0 else np.nan for b in benefit])
    ok = per[np.isfinite(per)]
    pooled = ss.spearmanr(np.tile(rel, len(benefit)), benefit.ravel())
    return {
        "order": list(order),
        "per_sample_mean_rho": float(ok.mean()) if ok.size else float("nan"),
        "per_sample_share_positive": float((ok > 0).mean()) if ok.size else float("nan"),
        "per_sample_wilcoxon_p": float(ss.wilcoxon(ok).pvalue) if ok.size > 1 and np.any(ok != 0) else float("nan"),
        "pooled_rho": float(pooled.statistic),
        "pooled_p": float(pooled.pvalue),
        "mean_benefit": {c: float(benefit[:, i].mean()) for i, c in enumerate(order)},
    }


def structural_fraction(nll: dict[str, np.ndarray], ref: str = "bare", structural: str = "random_tokens",
                        full: str = "oracle_matched") -> dict:
    """How much of the oracle's effect a content-free prefix of the same length already gives.

    Reported as the ratio of mean benefits and the ratio of Cohen's d (both vs ``ref``); values
    near 1 mean the effect is structural, near 0 semantic; a negative or >1 value means the two
    effects differ in sign or the random prefix does more than the oracle.
    """
    s, f = nll[ref] - nll[structural], nll[ref] - nll[full]
    d_s, d_f = stats.cohens_d_paired(nll[ref], nll[structural]), stats.cohens_d_paired(nll[ref], nll[full])
    return {
        "structural": structural, "full": full,
        "mean_benefit_structural": float(s.mean()), "mean_benefit_full": float(f.mean()),
        "fraction_of_mean_benefit": float(s.mean() / f.mean()) if f.mean() != 0 else float("nan"),
        "d_structural": d_s, "d_full": d_f,
        "fraction_of_d": float(d_s / d_f) if d_f not in (0, 0.0) else float("nan"),
    }
