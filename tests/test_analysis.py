"""Semantic gradient and structural fraction on constructed data with known answers."""
import numpy as np
import pytest

from lib.report import analysis


def _nll(benefits: dict[str, float], n=40, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    bare = rng.normal(2, 0.5, n)
    out = {"bare": bare}
    for c, b in benefits.items():
        out[c] = bare - b + rng.normal(0, noise, n)
    return out


def test_gradient_detects_a_monotone_benefit_and_its_absence():
    order = analysis.RELEVANCE_ORDER
    up = analysis.semantic_gradient(_nll({c: 0.1 * i for i, c in enumerate(order)}))
    assert up["pooled_rho"] > 0.5 and up["per_sample_mean_rho"] > 0.5 and up["per_sample_wilcoxon_p"] < 0.01
    flat = analysis.semantic_gradient(_nll({c: 0.2 for c in order}))
    assert abs(flat["pooled_rho"]) < 0.2 and flat["per_sample_wilcoxon_p"] > 0.01
    with pytest.raises(ValueError, match="needs conditions"):
        analysis.semantic_gradient({"bare": np.ones(3)})


def test_structural_fraction():
    sf = analysis.structural_fraction(_nll({"random_tokens": 0.1, "oracle_matched": 0.4}, noise=0.01))
    assert sf["fraction_of_mean_benefit"] == pytest.approx(0.25, abs=0.02)
    assert sf["d_full"] > sf["d_structural"] > 0


def _slopes(n, mean_slope, sd_slope, seed):
    """Benefit = slope_i * relevance + noise: each sample has its own gradient; ``mean_slope`` is the truth."""
    rng = np.random.default_rng(seed)
    order = analysis.RELEVANCE_ORDER
    slope = rng.normal(mean_slope, sd_slope, n)
    nll = {"bare": np.full(n, 3.0)}
    for i, c in enumerate(order):
        nll[c] = 3.0 - (slope * i + rng.normal(0, 0.05, n))
    return nll


def test_pooled_gradient_p_treats_samples_not_points_as_units():
    """Per-sample slopes with mean 0: there is no semantic gradient on average. Pooled points of one sample
    are not independent, so the naive pooled Spearman p rejects far above alpha; the sample-level p does not."""
    from scipy import stats as ss

    naive, ours = [], []
    for k in range(100):
        nll = _slopes(25, 0.0, 0.5, seed=k)
        g = analysis.semantic_gradient(nll, n_perm=400, n_boot=50, seed=k)
        benefit = np.stack([nll["bare"] - nll[c] for c in analysis.RELEVANCE_ORDER], axis=1)
        naive.append(ss.spearmanr(np.tile(np.arange(7.0), 25), benefit.ravel()).pvalue < 0.05)
        ours.append(g["pooled_p_samples"] < 0.05)
    assert np.mean(naive) > 0.15  # > 3x alpha
    assert np.mean(ours) < 0.1  # alpha 0.05 plus binomial slack over 100 data sets
    real = analysis.semantic_gradient(_slopes(25, 0.15, 0.2, seed=99), n_perm=400)
    assert real["pooled_p_samples"] < 0.01 and real["pooled_rho_ci"][0] > 0
    assert "pooled_p" not in real  # the point-level p is gone, not relabelled
