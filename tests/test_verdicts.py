"""A comparison is called null only when neither test rejects; the primary test is declared and recorded."""
import numpy as np
import pytest

from lib.report import stats as S
from lib.report.verdicts import verdict, words


def _row(p_t, p_w, mean_delta=0.1, rb=0.3, primary="t"):
    return {"p_holm": p_t, "p_holm_wilcoxon": p_w, "mean_delta": mean_delta, "rank_biserial": rb, "primary_test": primary}


def test_null_only_when_neither_test_rejects():
    # exp01 Gemma C vs A: Holm-t 0.14, Holm-Wilcoxon 0.0011 -> not "not distinguishable"
    assert verdict(_row(0.14, 0.0011)) == "test-dependent"
    assert verdict(_row(0.14, 0.0011, primary="wilcoxon")) == "better"
    assert verdict(_row(0.14, 0.0011, mean_delta=-0.1, rb=-0.2, primary="wilcoxon")) == "worse"
    assert verdict(_row(0.3, 0.2)) == "null" and words(_row(0.3, 0.2)) == "not distinguishable from"
    assert verdict(_row(0.01, 0.3)) == "better"  # the primary rejects; the other does not
    assert verdict(_row(0.01, 0.01, mean_delta=0.1, rb=-0.4)) == "test-dependent"  # opposite directions
    assert verdict(_row(float("nan"), float("nan"))) == "null"
    with pytest.raises(ValueError, match="primary test 'z'.*'t', 'wilcoxon'"):
        verdict(_row(0.1, 0.1, primary="z"))


def test_skewed_deltas_where_the_tests_disagree():
    """Most samples gain a little, a few lose a lot: the median shift is real (Wilcoxon rejects), the mean is ~0."""
    rng = np.random.default_rng(0)
    n = 120
    ref = rng.normal(2, 0.5, n)
    gain = np.where(np.arange(n) < 100, 0.05 + rng.normal(0, 0.01, n), -0.25 + rng.normal(0, 0.3, n))
    rows = S.compare_conditions({"ref": ref, "cond": ref - gain}, "ref", n_boot=200, primary_test="t")
    r = rows[0]
    assert r["primary_test"] == "t" and r["p_primary"] == r["p_holm"]
    assert r["p_holm"] > 0.05 and r["p_holm_wilcoxon"] < 0.05
    assert verdict(r) == "test-dependent"
    w = S.compare_conditions({"ref": ref, "cond": ref - gain}, "ref", n_boot=50, primary_test="wilcoxon")[0]
    assert w["p_primary"] == w["p_holm_wilcoxon"] and verdict(w) == "better"
    with pytest.raises(ValueError, match="primary test 'mean'"):
        S.compare_conditions({"ref": ref, "cond": ref - gain}, "ref", primary_test="mean")


def test_exp01_diagnosis_never_calls_a_comparison_null_when_wilcoxon_rejects():
    from lib.studies import priming

    rng = np.random.default_rng(0)
    n = 120
    a = rng.normal(2, 0.5, n)
    skew = np.where(np.arange(n) < 100, 0.05 + rng.normal(0, 0.01, n), -0.25 + rng.normal(0, 0.3, n))
    nll = {"A_bare": a, "B_full_oracle": a - 0.3 + rng.normal(0, 0.1, n), "C_full_repeat": a - skew,
           "D_trunc_oracle": a - 0.2 + rng.normal(0, 0.1, n), "E_trunc_random": a + rng.normal(0, 0.1, n)}
    comps = S.compare_conditions(nll, None, pairs=list(priming.EXP01_COMPARISONS), n_boot=50)
    lines = priming.diagnose(comps)
    c_line = next(x for x in lines if x.startswith("Query in context and repeated"))
    assert "not distinguishable" not in c_line and "test-dependent" in c_line
    assert "nats" in c_line and "% of A_bare" in c_line
