"""Standard analysis of a conditions-vs-reference run: summary statistics and figures.

Every condition is compared with the reference (default ``bare``) on the same samples: the mean
delta in nats and as % of the reference NLL with CIs, d with a bootstrap CI, win rate, paired t
and Wilcoxon p with Holm across the conditions of the run (the declared primary test recorded);
per-sample ranks; hardness bins of the reference NLL with the regression-to-the-mean null.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.report import plots, stats, stats_hardness
from lib.report.discrimination import discrimination_summary
from lib.report.tables import nll_table


def summarize(rows: list[dict], sample_ids: list[str], names: list[str], *, ref: str = "bare",
              n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Comparisons vs ``ref`` (mean delta in nats and % of ref, d, both tests), ranks and hardness bins.

    ``atol``: the noise tolerance of the scoring dtype (``lib.kv.noise.noise_atol(lm.dtype)``; default
    float32's); ``primary_test``: the test the experiment declared ("t" or "wilcoxon"). Both are
    recorded in the summary.
    """
    if ref not in names:
        raise ValueError(f"reference condition {ref!r} is not among the run's conditions {names}")
    nll = nll_table(rows, names, sample_ids)
    others = [n for n in names if n != ref]
    comps = stats.compare_conditions(nll, ref, others, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    return {
        "n_samples": len(sample_ids),
        "reference": ref,
        "primary_test": primary_test,
        "noise_atol": stats.NOISE_ATOL if atol is None else float(atol),
        "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
        "comparisons": comps,
        "ranks": stats.ranks_per_sample(nll, atol=atol),
        "hardness": stats_hardness.hardness_table(nll, ref, others, seed=seed, atol=atol) if len(sample_ids) >= 10 else [],
        **discrimination_summary(rows, sample_ids, names, ref=ref, nll_comparisons=comps, n_boot=n_boot, seed=seed,
                                 atol=atol, primary_test=primary_test),
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


def _pooled_rho(rel_ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of a fixed (n*k,) rank vector against each row of ``y`` (m, n*k)."""
    from scipy import stats as ss

    ry = ss.rankdata(y, axis=-1)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    rx = rel_ranks - rel_ranks.mean()
    return (ry @ rx) / np.sqrt((ry ** 2).sum(axis=-1) * (rx ** 2).sum())


def semantic_gradient(nll: dict[str, np.ndarray], ref: str = "bare", order=RELEVANCE_ORDER, *,
                      n_perm: int = 2000, n_boot: int = 1000, seed: int = 0) -> dict:
    """Does the benefit grow with the prefix's relevance to the query?

    Benefit = ref NLL - condition NLL per sample. Per sample: Spearman rho between the relevance
    rank (position in ``order``) and the benefit; reported as mean, share of samples with rho > 0
    and a Wilcoxon signed-rank p against 0. Pooled: Spearman rho over every (sample, condition)
    pair. A monotone semantic gradient gives rho > 0.

    The k points of one sample are not independent (a sample has its own gradient), so the pooled
    rho gets no point-level p. Its inference treats SAMPLES as units: ``pooled_p_samples`` is a
    sign-flip permutation test (``n_perm``) of the pooled rho of within-sample-centred benefits
    (each sample's centred vector flipped with probability 1/2: valid when per-sample gradients
    are symmetric around 0), and ``pooled_rho_ci`` a percentile bootstrap over samples.
    """
    from scipy import stats as ss

    missing = [c for c in (ref, *order) if c not in nll]
    if missing:
        raise ValueError(f"semantic gradient needs conditions {missing}; the run has {sorted(nll)}")
    rel = np.arange(len(order), dtype=float)
    benefit = np.stack([nll[ref] - nll[c] for c in order], axis=1)  # (n, k)
    n, k = benefit.shape
    per = np.array([ss.spearmanr(rel, b).statistic if np.ptp(b) > 0 else np.nan for b in benefit])
    ok = per[np.isfinite(per)]
    rx = ss.rankdata(np.tile(rel, n))  # (n*k,)
    pooled = float(_pooled_rho(rx, benefit.ravel()[None])[0])
    rng = np.random.default_rng(seed)
    centred = benefit - benefit.mean(axis=1, keepdims=True)  # (n, k)
    obs_c = float(_pooled_rho(rx, centred.ravel()[None])[0])
    signs = np.where(rng.random((n_perm, n, 1)) < 0.5, -1.0, 1.0)  # (n_perm, n, 1)
    null = _pooled_rho(rx, (signs * centred).reshape(n_perm, n * k))  # (n_perm,)
    p_samples = float((1 + np.sum(np.abs(null) >= abs(obs_c) - 1e-12)) / (1 + n_perm)) if np.ptp(centred) > 0 else float("nan")
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    boot = _pooled_rho(rx, benefit[idx].reshape(n_boot, n * k))
    boot = boot[np.isfinite(boot)]
    ci = [float(x) for x in np.quantile(boot, [0.025, 0.975])] if boot.size else [float("nan")] * 2
    return {
        "order": list(order),
        "per_sample_mean_rho": float(ok.mean()) if ok.size else float("nan"),
        "per_sample_share_positive": float((ok > 0).mean()) if ok.size else float("nan"),
        "per_sample_wilcoxon_p": float(ss.wilcoxon(ok).pvalue) if ok.size > 1 and np.any(ok != 0) else float("nan"),
        "pooled_rho": pooled,
        "pooled_rho_ci": ci,
        "pooled_rho_centred": obs_c,
        "pooled_p_samples": p_samples,
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


WORD_ORDER_PAIR = ("oracle_matched", "scrambled_oracle")  # (ordered, scrambled): the same tokens, the same count


def word_order(nll: dict[str, np.ndarray], rows: list[dict], sample_ids: list[str], *, n_boot: int = 2000, seed: int = 0,
               atol: float | None = None, primary_test: str = "t") -> dict:
    """exp03: the oracle's tokens in their order vs the same tokens scrambled (ref ``oracle_matched``, cond
    ``scrambled_oracle``: a negative delta means word order carries part of the benefit; a null means token
    presence does). ``word_order``: the NLL comparison; ``word_order_margin``: the same pair on the margin
    (``lib.report.discrimination``) when the rows carry distractors. ``{}`` when either condition is absent."""
    from lib.report import discrimination

    if not all(c in nll for c in WORD_ORDER_PAIR):
        return {}
    kw = {"n_boot": n_boot, "seed": seed, "atol": atol, "primary_test": primary_test}
    comps = stats.compare_conditions(nll, None, pairs=[WORD_ORDER_PAIR], **kw)
    out = {"word_order": comps}
    names = list(WORD_ORDER_PAIR)
    if discrimination.has_margins([r for r in rows if r["condition"] in names]):
        out["word_order_margin"] = discrimination.discrimination(rows, sample_ids, names, pairs=[WORD_ORDER_PAIR],
                                                                 nll_comparisons=comps, **kw)["comparisons"]
    return out
