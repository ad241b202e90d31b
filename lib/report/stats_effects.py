"""Validated paired inputs and effect sizes for per-sample answer NLLs: Cohen's d of the paired
differences, its bootstrap CI, the bootstrap CI of the mean delta (nats and % of the reference) and
the win rate. The conventions (``delta = ref - cond``, the float-noise rule, seeds) are in
``lib/report/stats.py``, which re-exports every public name here.
"""
from __future__ import annotations

import difflib
from typing import Mapping, Sequence

import numpy as np

from lib.kv.noise import clean_delta, noise_atol

__all__ = ["NOISE_ATOL", "bootstrap_ci_d", "bootstrap_ci_mean", "cohens_d_paired", "win_rate"]


# ----------------------------------------------------------------------------- validation
def _as_values(x, name: str) -> np.ndarray:
    """Return ``x`` as a finite, non-empty 1-D float64 array or raise ValueError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one sample")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} non-finite value(s), first at index {bad[0]}: {arr[bad[0]]!r}"
        )
    return arr


NOISE_ATOL = noise_atol("float32")  # the float32 default; other dtypes: lib.kv.noise.noise_atol(dtype)


def _delta(r: np.ndarray, c: np.ndarray, atol: float | None = None) -> np.ndarray:
    """``r - c`` with float-noise differences (``|delta| <= atol``) set to exactly 0 (``lib.kv.noise``)."""
    return clean_delta(r, c, atol)


def _paired(ref, cond) -> tuple[np.ndarray, np.ndarray]:
    r = _as_values(ref, "ref")
    c = _as_values(cond, "cond")
    if r.shape != c.shape:
        raise ValueError(f"ref and cond differ in length: {r.size} vs {c.size}; pairs need equal length")
    return r, c


def _check_name(name: str, known: Sequence[str], what: str = "condition") -> None:
    if name not in known:
        close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}; known: {sorted(map(str, known))}.{hint}")


def _nll_dict(nll: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Validate a {condition: per-sample NLL} mapping; all arrays must share one length."""
    if not isinstance(nll, Mapping) or len(nll) == 0:
        raise ValueError(f"nll must be a non-empty mapping of condition -> values, got {type(nll).__name__}")
    out = {k: _as_values(v, f"nll[{k!r}]") for k, v in nll.items()}
    lengths = {k: v.size for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"conditions differ in number of samples: {lengths}")
    return out


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- effect sizes
def _d_rows(delta: np.ndarray) -> np.ndarray:
    """Cohen's d along the last axis of ``delta`` (any leading shape), with the sd==0 rule."""
    n = delta.shape[-1]
    if n < 2:
        return np.full(delta.shape[:-1], np.nan)
    mean = delta.mean(axis=-1)
    sd = delta.std(axis=-1, ddof=1)
    # sd is exactly 0 only when every delta in the row is identical; then d is 0 or +-inf.
    zero_sd = sd == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        d = mean / np.where(zero_sd, 1.0, sd)
    d = np.where(zero_sd, np.where(mean == 0, 0.0, np.where(mean > 0, np.inf, -np.inf)), d)
    return d


def cohens_d_paired(ref, cond, *, atol: float | None = None) -> float:
    """Cohen's d of the paired differences ``delta = ref - cond`` (positive: condition better).

    ``mean(delta) / std(delta, ddof=1)``; nan if fewer than 2 samples; if the sd is 0, 0.0 when
    the mean is 0 and +-inf otherwise.
    """
    r, c = _paired(ref, cond)
    return float(_d_rows(_delta(r, c, atol)))


def _boot_setup(ref, cond, n_boot, ci, seed, atol):
    """Validated ``(ref, cleaned delta, (n_boot, n) resample indices or None for n < 2, alpha)``."""
    r, c = _paired(ref, cond)
    n_boot = _check_positive_int(n_boot, "n_boot")
    if not (isinstance(ci, (float, int)) and 0.0 < float(ci) < 1.0):
        raise ValueError(f"ci must be a level strictly between 0 and 1 (e.g. 0.95), got {ci!r}")
    delta = _delta(r, c, atol)
    n = delta.size
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n)) if n >= 2 else None  # (n_boot, n)
    return r, delta, idx, (1.0 - float(ci)) / 2.0


def bootstrap_ci_d(ref, cond, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, *,
                   atol: float | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of the paired Cohen's d, resampling sample indices (pairs kept).

    All ``n_boot`` resamples are drawn at once as an ``(n_boot, n)`` index matrix. Replicates
    with sd 0 follow ``cohens_d_paired``'s rule (0 or +-inf); quantiles interpolate linearly,
    or use the order statistic (``inverted_cdf``) when a replicate is infinite. Returns
    ``(nan, nan)`` for fewer than 2 samples.
    """
    _, delta, idx, alpha = _boot_setup(ref, cond, n_boot, ci, seed, atol)
    if idx is None:
        return (float("nan"), float("nan"))
    boot_d = _d_rows(delta[idx])  # (n_boot,)
    method = "linear" if np.all(np.isfinite(boot_d)) else "inverted_cdf"
    lo, hi = np.quantile(boot_d, [alpha, 1.0 - alpha], method=method)
    return (float(lo), float(hi))


def bootstrap_ci_mean(ref, cond, n_boot: int = 2000, ci: float = 0.95, seed: int = 0, *,
                      atol: float | None = None) -> dict:
    """Percentile bootstrap CIs of the mean delta (nats) and of ``pct_of_ref`` = 100 * mean delta /
    mean reference NLL, from the same resamples as ``bootstrap_ci_d`` with the same seed.

    Returns ``{"mean_delta_ci": (lo, hi), "pct_ci": (lo, hi)}``; nan for fewer than 2 samples,
    and a nan pct CI when a resample's mean reference NLL is 0.
    """
    r, delta, idx, alpha = _boot_setup(ref, cond, n_boot, ci, seed, atol)
    nan2 = (float("nan"), float("nan"))
    if idx is None:
        return {"mean_delta_ci": nan2, "pct_ci": nan2}
    m = delta[idx].mean(axis=1)  # (n_boot,)
    ref_m = r[idx].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(m, [alpha, 1.0 - alpha])
    out = {"mean_delta_ci": (float(lo), float(hi)), "pct_ci": nan2}
    if np.all(ref_m != 0):
        plo, phi = np.quantile(100.0 * m / ref_m, [alpha, 1.0 - alpha])
        out["pct_ci"] = (float(plo), float(phi))
    return out


def win_rate(ref, cond, *, atol: float | None = None) -> float:
    """Share of samples on which the condition is strictly better (``delta = ref - cond > 0``).

    Ties (``delta == 0``) count half, so two identical conditions have a win rate of exactly 0.5.
    """
    r, c = _paired(ref, cond)
    delta = _delta(r, c, atol)
    return float((np.sum(delta > 0) + 0.5 * np.sum(delta == 0)) / delta.size)
