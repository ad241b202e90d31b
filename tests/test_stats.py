"""Tests for lib.report.stats on fixed inputs, checked against hand formulas and scipy."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from lib.report import stats as S
from lib.report import stats_hardness as H

# 12 fixed paired NLLs; delta = ref - cond has both signs and two exact ties.
REF = np.array([2.10, 1.85, 3.40, 0.95, 2.70, 1.20, 4.05, 2.30, 1.60, 3.10, 0.80, 2.55])
COND = np.array([1.90, 1.85, 2.95, 1.10, 2.20, 1.05, 3.50, 2.30, 1.75, 2.60, 0.70, 2.15])
DELTA = [r - c for r, c in zip(REF.tolist(), COND.tolist())]


def test_cohens_d_matches_hand_formula():
    expected = statistics.mean(DELTA) / statistics.stdev(DELTA)
    assert S.cohens_d_paired(REF, COND) == pytest.approx(expected, rel=1e-12)
    assert S.cohens_d_paired(REF, COND) > 0  # cond lower on most samples: cond better -> positive


def test_cohens_d_edge_rules():
    assert math.isnan(S.cohens_d_paired([1.0], [0.5]))
    assert S.cohens_d_paired([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert S.cohens_d_paired([1.0, 2.0], [0.5, 1.5]) == math.inf
    assert S.cohens_d_paired([1.0, 2.0], [1.5, 2.5]) == -math.inf


def test_paired_test_matches_scipy():
    res = S.paired_test(REF, COND, n_boot=500, seed=1)
    tt = sps.ttest_rel(REF, COND)
    wx = sps.wilcoxon(REF, COND)
    assert res.n == 12
    assert res.t == pytest.approx(tt.statistic, rel=1e-12)
    assert res.p_t == pytest.approx(tt.pvalue, rel=1e-12)
    assert res.p_wilcoxon == pytest.approx(wx.pvalue, rel=1e-12)
    assert res.mean_ref == pytest.approx(statistics.mean(REF.tolist()))
    assert res.mean_cond == pytest.approx(statistics.mean(COND.tolist()))
    assert res.mean_delta == pytest.approx(statistics.mean(DELTA))
    assert res.d == pytest.approx(S.cohens_d_paired(REF, COND))
    assert res.win_rate == pytest.approx(S.win_rate(REF, COND))
    assert (res.ci_low, res.ci_high) == S.bootstrap_ci_d(REF, COND, n_boot=500, seed=1)
    d = res.to_dict()
    assert set(d) == {"n", "mean_ref", "mean_cond", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
                      "pct_of_ref", "pct_ci_low", "pct_ci_high", "d", "ci_low", "ci_high",
                      "win_rate", "t", "p_t", "p_wilcoxon", "rank_biserial", "noise_atol"}
    assert d["t"] == res.t
    # absolute size beside d: nats and % of the reference NLL, each with its CI
    assert res.pct_of_ref == pytest.approx(100 * statistics.mean(DELTA) / statistics.mean(REF.tolist()))
    assert res.mean_delta_ci_low < res.mean_delta < res.mean_delta_ci_high
    assert res.pct_ci_low < res.pct_of_ref < res.pct_ci_high
    # rank-biserial by hand: |delta| ranks of the 10 non-zero deltas, positive minus negative over total
    nz = [x for x in DELTA if x != 0]
    rk = sps.rankdata(np.abs(nz))
    assert res.rank_biserial == pytest.approx((rk[np.array(nz) > 0].sum() - rk[np.array(nz) < 0].sum()) / rk.sum())


def test_bootstrap_ci_mean_equals_explicit_resampling():
    idx = np.random.default_rng(4).integers(0, 12, size=(300, 12))
    delta = REF - COND
    m = [delta[i].mean() for i in idx]
    pct = [100 * delta[i].mean() / REF[i].mean() for i in idx]
    got = S.bootstrap_ci_mean(REF, COND, n_boot=300, seed=4)
    assert got["mean_delta_ci"] == pytest.approx(tuple(np.quantile(m, [0.025, 0.975])), rel=1e-10)
    assert got["pct_ci"] == pytest.approx(tuple(np.quantile(pct, [0.025, 0.975])), rel=1e-10)


def test_paired_test_wilcoxon_nan_when_all_deltas_zero():
    res = S.paired_test(REF, REF, n_boot=50)
    assert math.isnan(res.p_wilcoxon)
    assert res.d == 0.0 and res.win_rate == 0.5


def test_paired_result_validates_itself():
    good = S.paired_test(REF, COND, n_boot=50).to_dict()
    with pytest.raises(ValueError, match="win_rate"):
        S.PairedResult(**{**good, "win_rate": 1.5})
    with pytest.raises(ValueError, match="p_t"):
        S.PairedResult(**{**good, "p_t": -0.1})
    with pytest.raises(ValueError, match="ci_low"):
        S.PairedResult(**{**good, "ci_low": 5.0, "ci_high": 1.0})
    with pytest.raises(ValueError, match="pct_ci_low"):
        S.PairedResult(**{**good, "pct_ci_low": 5.0, "pct_ci_high": 1.0})


def test_bootstrap_ci_contains_d_and_is_deterministic():
    d = S.cohens_d_paired(REF, COND)
    lo, hi = S.bootstrap_ci_d(REF, COND, n_boot=2000, seed=0)
    assert lo < d < hi
    assert S.bootstrap_ci_d(REF, COND, n_boot=2000, seed=0) == (lo, hi)
    assert S.bootstrap_ci_d(REF, COND, n_boot=2000, seed=7) != (lo, hi)
    lo90, hi90 = S.bootstrap_ci_d(REF, COND, n_boot=2000, ci=0.90, seed=0)
    assert lo <= lo90 and hi90 <= hi  # same draws, narrower level


def test_bootstrap_ci_equals_explicit_resampling():
    """The vectorised bootstrap equals a plain loop over the same index matrix."""
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 12, size=(300, 12))
    delta = REF - COND
    boot = [statistics.mean(delta[i].tolist()) / statistics.stdev(delta[i].tolist()) for i in idx]
    expected = tuple(np.quantile(boot, [0.025, 0.975]))
    got = S.bootstrap_ci_d(REF, COND, n_boot=300, seed=3)
    assert got == pytest.approx(expected, rel=1e-10)


def test_bootstrap_ci_argument_checks():
    with pytest.raises(ValueError, match="ci must"):
        S.bootstrap_ci_d(REF, COND, ci=95)
    with pytest.raises(ValueError, match="n_boot"):
        S.bootstrap_ci_d(REF, COND, n_boot=0)
    assert all(math.isnan(v) for v in S.bootstrap_ci_d([1.0], [2.0]))


def test_win_rate_tie_rule():
    # deltas [1, 0, 1, -1]: two wins, one tie (counts half), one loss
    assert S.win_rate([1, 2, 3, 4], [0, 2, 2, 5]) == pytest.approx(2.5 / 4)
    assert S.win_rate([1, 2, 3], [1, 2, 3]) == 0.5
    assert S.win_rate([1, 2], [2, 3]) == 0.0
    # fixed data: 8 wins (delta > 0), 2 ties, 2 losses
    assert S.win_rate(REF, COND) == pytest.approx((8 + 1) / 12)


def test_holm_hand_example():
    got = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_clips_nan_and_monotone():
    got = S.holm([0.5, np.nan, 0.2, 0.01])
    assert math.isnan(got[1])
    # m = 3 non-nan: sorted 0.01*3=0.03, 0.2*2=0.4, 0.5*1=0.5
    np.testing.assert_allclose(got[[0, 2, 3]], [0.5, 0.4, 0.03])
    assert S.holm([0.6, 0.7]).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="1.5"):
        S.holm([0.1, 1.5])


def test_compare_conditions_rows_and_holm():
    other = COND + np.array([0.3, -0.2, 0.1, 0.0, 0.4, -0.1, 0.2, 0.05, -0.3, 0.1, 0.2, 0.0])
    nll = {"bare": REF, "a": COND, "b": other}
    rows = S.compare_conditions(nll, "bare", n_boot=200, seed=0)
    assert [r["label"] for r in rows] == ["a vs bare", "b vs bare"]
    direct = S.paired_test(REF, other, n_boot=200, seed=0).to_dict()
    assert {k: rows[1][k] for k in direct} == direct
    np.testing.assert_allclose([r["p_holm"] for r in rows], S.holm([r["p_t"] for r in rows]))
    np.testing.assert_allclose(
        [r["p_holm_wilcoxon"] for r in rows], S.holm([r["p_wilcoxon"] for r in rows])
    )
    pair_rows = S.compare_conditions(nll, None, pairs=[("a", "b")], n_boot=200)
    assert pair_rows[0]["ref"] == "a" and pair_rows[0]["cond"] == "b"
    assert pair_rows[0]["p_holm"] == pytest.approx(pair_rows[0]["p_t"])  # one row: no correction


def test_compare_conditions_rejects_bad_requests():
    nll = {"bare": REF, "prefix": COND}
    with pytest.raises(ValueError, match=r"unknown condition 'prefx'.*known.*Did you mean 'prefix'"):
        S.compare_conditions(nll, "bare", conds=["prefx"])
    with pytest.raises(ValueError, match="not both"):
        S.compare_conditions(nll, "bare", pairs=[("bare", "prefix")])
    with pytest.raises(ValueError, match="itself"):
        S.compare_conditions(nll, None, pairs=[("bare", "bare")])
    with pytest.raises(ValueError, match="twice"):
        S.compare_conditions(nll, "bare", conds=["prefix", "prefix"])


@pytest.mark.parametrize(
    "ref, cond, match",
    [
        (REF, COND[:-1], "differ in length: 12 vs 11"),
        (REF, np.r_[COND[:-1], np.nan], "non-finite.*index 11"),
        ([], [], "empty"),
        (REF.reshape(3, 4), COND.reshape(3, 4), "one-dimensional"),
    ],
)
def test_validation_errors(ref, cond, match):
    for fn in (S.cohens_d_paired, S.win_rate, S.paired_test, S.bootstrap_ci_d):
        with pytest.raises(ValueError, match=match):
            fn(ref, cond)


def test_nll_dict_validation():
    with pytest.raises(ValueError, match="differ in number of samples"):
        S.ranks_per_sample({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match=r"nll\['b'\] has 1 non-finite"):
        S.compare_conditions({"a": [1.0, 2.0], "b": [1.0, np.inf]}, "a")
    with pytest.raises(ValueError, match="non-empty mapping"):
        S.ranks_per_sample({})


def test_hardness_bins_and_columns():
    nll = {"bare": REF, "a": COND}
    rows = H.hardness_table(nll, "bare", ["a"], n_bins=3, n_perm=200)
    assert [r["bin"] for r in rows] == [0, 1, 2] and all(r["n"] == 4 for r in rows)
    order = np.argsort(REF)
    for r, idx in zip(rows, np.split(order, 3)):
        assert r["hardness_low"] == REF[idx].min() and r["hardness_high"] == REF[idx].max()
        assert r["mean_ref"] == pytest.approx(REF[idx].mean())
        assert r["mean_delta"] == pytest.approx((REF[idx] - COND[idx]).mean())
        assert r["d"] == pytest.approx(S.cohens_d_paired(REF[idx], COND[idx]))
        assert r["win_rate"] == pytest.approx(S.win_rate(REF[idx], COND[idx]))
        assert r["hardness_source"] == "ref_scores"
        assert r["excess_delta"] == pytest.approx(r["mean_delta"] - r["rtm_null_mean_delta"])
    assert rows == H.hardness_table(nll, "bare", ["a"], n_bins=3, n_perm=200)  # seeded


def test_rtm_null_is_positive_in_hardest_bin_for_pure_noise():
    rng = np.random.default_rng(123)
    n = 600
    truth = rng.normal(2.0, 0.5, n)  # shared per-sample difficulty
    ref = truth + rng.normal(0, 0.3, n)
    cond = truth + rng.normal(0, 0.3, n)  # same distribution: the condition does nothing
    rows = H.hardness_table({"ref": ref, "cond": cond}, "ref", ["cond"], n_bins=5, n_perm=300)
    hardest, easiest = rows[-1], rows[0]
    # the artefact exists: binning on ref makes the hardest bin look improved by chance ...
    assert hardest["mean_delta"] > 0.15 and easiest["mean_delta"] < -0.15
    # ... and the RTM null column measures it: clearly positive, close to the observed value.
    assert hardest["rtm_null_mean_delta"] > 0.15 and easiest["rtm_null_mean_delta"] < -0.15
    assert abs(hardest["excess_delta"]) < 0.5 * hardest["rtm_null_mean_delta"]
    # with an independent external hardness there is no RTM column
    ext = H.hardness_table({"ref": ref, "cond": cond}, "ref", ["cond"], hardness=truth)
    assert all(math.isnan(r["rtm_null_mean_delta"]) and r["hardness_source"] == "external" for r in ext)
    assert abs(ext[-1]["mean_delta"]) < 0.1


def test_hardness_table_validation():
    nll = {"bare": REF, "a": COND}
    with pytest.raises(ValueError, match="Did you mean 'bare'"):
        H.hardness_table(nll, "baer", ["a"])
    with pytest.raises(ValueError, match="n_bins=13 exceeds"):
        H.hardness_table(nll, "bare", ["a"], n_bins=13)
    with pytest.raises(ValueError, match="hardness has 3 values"):
        H.hardness_table(nll, "bare", ["a"], hardness=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="reference itself"):
        H.hardness_table(nll, "bare", ["bare"])


def test_ranks_per_sample_fixed_example():
    nll = {"x": [1.0, 3.0, 2.0, 1.0], "y": [2.0, 1.0, 2.0, 5.0], "z": [3.0, 2.0, 2.0, 1.0]}
    out = S.ranks_per_sample(nll)
    # per-sample ranks: s0 x1 y2 z3; s1 x3 y1 z2; s2 all 2; s3 x1.5 y3 z1.5
    assert out["n"] == 4
    assert out["mean_rank"] == pytest.approx({"x": 7.5 / 4, "y": 8 / 4, "z": 8.5 / 4})
    # best: s0 x; s1 y; s2 three-way tie (1/3 each); s3 x,z tie (1/2 each)
    assert out["share_best"] == pytest.approx({"x": (1 + 1 / 3 + 0.5) / 4, "y": (1 + 1 / 3) / 4,
                                               "z": (1 / 3 + 0.5) / 4})
    assert sum(out["share_best"].values()) == pytest.approx(1.0)


def test_float_noise_is_not_an_effect():
    rng = np.random.default_rng(0)
    ref = rng.normal(2, 0.5, 50)
    noisy = ref + rng.normal(0, 1e-8, 50)  # the same computation in another batch
    assert S.cohens_d_paired(ref, noisy) == 0.0
    assert S.win_rate(ref, noisy) == 0.5
    r = S.paired_test(ref, noisy, n_boot=100)
    assert r.d == 0.0 and (r.ci_low, r.ci_high) == (0.0, 0.0) and np.isnan(r.p_wilcoxon)
    real = ref - 1e-3 + rng.normal(0, 1e-4, 50)  # a small real effect is untouched
    assert S.cohens_d_paired(ref, real) == pytest.approx(np.mean(ref - real) / np.std(ref - real, ddof=1))


def _difficulty_data(effect, n=2000, seed=11):
    """ref = truth + noise, cond = truth - effect + noise: ``effect`` is the known per-sample gain."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(2.0, 0.5, n)
    return truth, truth + rng.normal(0, 0.3, n), truth - effect + rng.normal(0, 0.3, n)


def test_rtm_null_keeps_a_uniform_effect_flat():
    """A uniform true effect of 0.3 nats is the same in every bin: excess over the null must be ~0 everywhere.
    (The old sign-flip null assumed no effect and invented "hard samples gain less": +0.36 ... +0.20.)"""
    truth, ref, cond = _difficulty_data(0.3)
    rows = H.hardness_table({"ref": ref, "cond": cond}, "ref", ["cond"], n_bins=5, n_perm=300)
    excess = [r["excess_delta"] for r in rows]
    assert max(abs(e) for e in excess) < 0.04, excess
    # the observed bin means still show the RTM artefact, and the null reproduces it around the mean effect
    assert rows[-1]["mean_delta"] - rows[0]["mean_delta"] > 0.3
    assert rows[-1]["rtm_null_mean_delta"] - rows[0]["rtm_null_mean_delta"] > 0.3


def test_rtm_null_finds_a_planted_hardness_gradient():
    """The gain grows with true difficulty (0 for the easiest, 0.6 for the hardest): excess is negative in the
    easiest bin and positive in the hardest, and an external hardness measure sees the same ordering."""
    rng = np.random.default_rng(12)
    truth = rng.normal(2.0, 0.5, 2000)
    gain = 0.6 * (truth - truth.min()) / np.ptp(truth)
    ref, cond = truth + rng.normal(0, 0.3, 2000), truth - gain + rng.normal(0, 0.3, 2000)
    rows = H.hardness_table({"ref": ref, "cond": cond}, "ref", ["cond"], n_bins=5, n_perm=300)
    assert rows[0]["excess_delta"] < -0.02 and rows[-1]["excess_delta"] > 0.02
    ext = H.hardness_table({"ref": ref, "cond": cond}, "ref", ["cond"], n_bins=5, hardness=truth)
    assert ext[-1]["mean_delta"] - ext[0]["mean_delta"] > 0.2
