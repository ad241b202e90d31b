"""Float noise: ONE rule for "these two scores are the same number", with a tolerance tied to the
scoring dtype.

Two mathematically equal scoring paths (the same cache scored alone or in a padded batch) give
per-sample NLLs that differ by float rounding. A per-sample delta ``|ref - cond| <= atol`` counts as
exactly 0 in every consumer: paired comparisons (d, CI, tests, win rate, mean delta), ``best_cutoff``,
per-sample ranks and hardness means. Every consumer calls ``clean_delta`` (or ``snap_ties``, its
form for more than two conditions) with ``atol = noise_atol(scoring dtype)``; nothing else decides.

Tolerances (``NOISE_ATOL_BY_DTYPE``, nats of a per-sample mean answer NLL):

* float32 / float64: 1e-5, the measured agreement of two equal float32 scoring paths (batched vs
  unbatched, engine vs single pass) on the bundled models; float64 keeps the float32 value
  because stored token NLLs are rounded to 1e-6.
* bfloat16: 1e-2 nats. The LM head and log-softmax run in float32 whatever the model dtype
  (``lib/kv/scoring.py``), so what is left is the transformer body's rounding. Measured with
  ``python -m lib.tools.noise_check`` (SmolLM2-135M, 16 synthetic samples x 2 conditions = 32 items, each
  scored alone vs in padded batches, CPU): per-sample |difference| median 0.0071, p99 0.115,
  max 0.147 nats (float32 on the same items: max 4.8e-6). The tolerance sits at ~1.4x the median:
  it removes the small, systematic part that made d arbitrary, and leaves the large, symmetric
  tail to the tests as extra variance (a tolerance covering the tail would zero real effects of
  0.05-0.1 nats per sample). So in bfloat16 a per-sample effect below ~0.1 nats is NOT resolvable;
  score in float32 for small effects. The issue reports ~1e-3 nats on GPU; not re-measured here.
* float16: 2e-3, NOT measured: bfloat16's value scaled by the mantissa ratio (2^-10 vs 2^-7).
"""
from __future__ import annotations

import numpy as np

DEFAULT_DTYPE = "float32"
NOISE_ATOL_BY_DTYPE = {"float64": 1e-5, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
# `python -m lib.kv.noise` on CPU (max/p99/median |per-sample NLL difference|, alone vs batched), nats
MEASURED = {
    ("smollm2-135m-instruct", "float32"): {"n_items": 32, "max": 4.8e-6, "p99": 4.2e-6, "median": 7.7e-7},
    ("smollm2-135m-instruct", "bfloat16"): {"n_items": 32, "max": 0.147, "p99": 0.115, "median": 0.0071},
}


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` / ``"torch.bfloat16"`` / ``"bfloat16"`` -> ``"bfloat16"``; None -> the float32 default."""
    if dtype is None:
        return DEFAULT_DTYPE
    name = str(dtype).removeprefix("torch.")
    if name not in NOISE_ATOL_BY_DTYPE:
        raise ValueError(f"scoring dtype {dtype!r} has no noise tolerance; expected one of {sorted(NOISE_ATOL_BY_DTYPE)}")
    return name


def noise_atol(dtype=None) -> float:
    """Largest per-sample |delta| (nats) that counts as float noise for scores computed in ``dtype``."""
    return NOISE_ATOL_BY_DTYPE[dtype_name(dtype)]


def _atol(atol) -> float:
    if atol is None:
        return NOISE_ATOL_BY_DTYPE[DEFAULT_DTYPE]
    if isinstance(atol, bool) or not isinstance(atol, (int, float, np.floating)) or not (0 <= float(atol) < np.inf):
        raise ValueError(f"atol must be a finite number >= 0 (nats), got {atol!r}")
    return float(atol)


def clean_delta(ref, cond, atol: float | None = None) -> np.ndarray:
    """``ref - cond`` with float-noise differences (``|delta| <= atol``, default float32's) set to exactly 0."""
    d = np.asarray(ref, dtype=np.float64) - np.asarray(cond, dtype=np.float64)
    return np.where(np.abs(d) <= _atol(atol), 0.0, d)


def snap_ties(mat, atol: float | None = None, axis: int = 0) -> np.ndarray:
    """Per column of ``mat`` (conditions along ``axis``): values within ``atol`` of their sorted neighbour
    (chains included) are replaced by the group's minimum, so they tie exactly in ranks and "best"."""
    a = np.moveaxis(np.asarray(mat, dtype=np.float64), axis, 0)  # (k, n)
    tol = _atol(atol)
    order = np.argsort(a, axis=0, kind="stable")
    s = np.take_along_axis(a, order, axis=0)
    new_group = np.vstack([np.ones((1,) + s.shape[1:], bool), np.diff(s, axis=0) > tol])  # (k, n)
    # forward-fill each group's first (smallest) value down the sorted axis
    idx = np.where(new_group, np.arange(s.shape[0])[(slice(None),) + (None,) * (s.ndim - 1)], 0)
    idx = np.maximum.accumulate(idx, axis=0)
    snapped_sorted = np.take_along_axis(s, idx, axis=0)
    out = np.empty_like(a)
    np.put_along_axis(out, order, snapped_sorted, axis=0)
    return np.moveaxis(out, 0, axis)
