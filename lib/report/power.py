"""Sample size for paired comparisons: the exact power of a two-sided paired t-test.

The paired t statistic of n per-sample deltas with standardized mean d (Cohen's d of the paired
differences, the d this repo reports) follows a noncentral t with n-1 degrees of freedom and
noncentrality d*sqrt(n). ``paired_power`` integrates it exactly (scipy's ``nct``);
``paired_n`` is the smallest n reaching a power. With ``m_tests`` comparisons under Holm's
correction, the most stringent step tests at alpha/m, which is what ``paired_n`` plans for.
"""
from __future__ import annotations

from scipy import stats


def _check(d: float, alpha: float, power: float | None = None) -> None:
    if not d > 0:
        raise ValueError(f"d must be > 0 (the effect to detect, in paired Cohen's d), got {d!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if power is not None and not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")


def paired_power(n: int, d: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs and true effect d."""
    _check(d, alpha)
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n!r}")
    df, nc = n - 1, d * n ** 0.5
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def paired_n(d: float, alpha: float = 0.05, power: float = 0.8, m_tests: int = 1) -> int:
    """Smallest n with ``paired_power(n, d, alpha / m_tests) >= power``."""
    _check(d, alpha, power)
    if m_tests < 1:
        raise ValueError(f"m_tests must be >= 1, got {m_tests!r}")
    level = alpha / m_tests
    lo, hi = 2, 4
    while paired_power(hi, d, level) < power:
        lo, hi = hi, hi * 2
        if hi > 10_000_000:
            raise ValueError(f"d={d} needs more than 10 million pairs")
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(mid, d, level) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan(d_values=(0.1, 0.2, 0.3, 0.5), alpha: float = 0.05, power: float = 0.8, m_tests: int = 1) -> list[dict]:
    """A table of required n per effect size (for the log's stated power calculations)."""
    return [{"d": d, "alpha": alpha, "m_tests": m_tests, "power": power, "n": paired_n(d, alpha, power, m_tests)}
            for d in d_values]
