"""lib.report.power against textbook values and against simulation."""
import numpy as np
import pytest
from scipy import stats

from lib.report.power import paired_n, paired_power, plan


def test_textbook_sample_sizes():
    # G*Power, paired t-test, two-tailed, alpha 0.05, power 0.8: d=0.5 -> 34, d=0.2 -> 199
    assert paired_n(0.5) == 34
    assert paired_n(0.2) == 199
    assert paired_n(0.2, m_tests=5) > paired_n(0.2)  # Holm's first step tests at alpha/5


def test_power_matches_simulation():
    rng = np.random.default_rng(0)
    n, d, reps = 40, 0.4, 4000
    x = rng.normal(d, 1.0, size=(reps, n))
    p = stats.ttest_1samp(x, 0.0, axis=1).pvalue
    simulated = float((p < 0.05).mean())
    assert abs(simulated - paired_power(n, d)) < 0.025  # 4000 reps: sd of the estimate ~0.008


def test_bad_input():
    with pytest.raises(ValueError, match="d must be > 0"):
        paired_n(0.0)
    with pytest.raises(ValueError, match="power must be in"):
        paired_n(0.2, power=1.0)
    with pytest.raises(ValueError, match="n must be >= 2"):
        paired_power(1, 0.2)
    assert [r["n"] for r in plan((0.5, 0.2))] == [34, 199]
