"""Semantic gradient and structural fraction on constructed data with known answers."""
import numpy as np
import pytest

from lib import analysis


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
