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


def test_word_order_compares_the_ordered_oracle_with_its_scramble_on_nll_and_margin():
    """Simulated: the scrambled oracle costs exactly 0.2 nats on every sample and its margin is
    unchanged -> NLL: delta -0.2 (worse), margin: delta 0 (null); absent conditions give {}."""
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(40)]
    base = rng.normal(3.0, 0.5, len(ids))
    rows = []
    for cond, shift in (("bare", 0.3), ("oracle_matched", 0.0), ("scrambled_oracle", 0.2)):
        for i, sid in enumerate(ids):
            d = [base[i] + 2.0 + shift, base[i] + 3.0 + shift]  # every candidate moves with the gold: margin unchanged
            rows.append({"sample_id": sid, "condition": cond, "nll": base[i] + shift, "distractor_nlls": d,
                         "margin": float(np.mean(d) - (base[i] + shift)), "gold_rank": 1, "top1": 1})
    nll = {c: np.array([r["nll"] for r in rows if r["condition"] == c]) for c in ("bare", "oracle_matched", "scrambled_oracle")}
    out = analysis.word_order(nll, rows, ids, n_boot=200, seed=0, atol=1e-9)
    (row,) = out["word_order"]
    assert (row["ref"], row["cond"]) == ("oracle_matched", "scrambled_oracle")
    assert row["mean_delta"] == pytest.approx(-0.2) and row["p_holm"] < 1e-6
    (m,) = out["word_order_margin"]
    assert m["mean_delta"] == pytest.approx(0.0, abs=1e-9) and m["d"] == 0.0 and m["label"].endswith("(margin)")
    assert analysis.word_order({"bare": nll["bare"], "oracle_matched": nll["oracle_matched"]}, rows, ids) == {}
