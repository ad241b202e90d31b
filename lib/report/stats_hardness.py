"""Effect of a condition within bins of sample hardness, against a regression-to-the-mean null that
keeps the condition's mean effect.

Samples are split into equal-count quantile bins of a hardness measure (default: the reference
condition's own NLL). Binning on the scores under test creates regression to the mean: a sample
lands in the hardest bin partly because its reference NLL was high by noise, and that noise
enters ``delta = ref - cond`` with a plus sign, so the hardest bin looks improved and the easiest
looks harmed even when every sample gains the same.

The null (``rtm_null_mean_delta``): a UNIFORM effect of the observed mean size ``mu`` plus that
artefact. The deltas are centred first (``cond' = cond + mu``, i.e. ``delta - mu``), then in each
of ``n_perm`` permutations every sample's ``(ref, cond')`` pair is swapped with probability 1/2,
the samples are re-binned on the swapped reference, and the per-bin mean centred delta is
averaged over permutations; ``mu`` is added back. Swapping is exchangeable exactly when the
centred condition and the reference differ by noise only, i.e. when the effect is uniform, so
``excess_delta = mean_delta - null`` measures how much a bin gains beyond a uniform effect of the
mean size (0 in every bin for a uniform effect; tested on simulated data with a known effect).
An earlier null swapped the raw pairs, which is valid only when the effect is 0; with a uniform
0.3-nat effect it reported excesses of +0.39 ... +0.19 from easy to hard, an invented pattern.

With ``hardness`` given (an external measure chosen independently of these scores, e.g.
``lib.studies.crossdata``'s cross-fitted prediction) the artefact does not arise and the null is nan.
Means, d and win rate use the one noise rule (``lib.kv.noise``) with the caller's ``atol``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from lib.kv.noise import clean_delta
from lib.report.stats_effects import _as_values, _check_name, _check_positive_int, _nll_dict, cohens_d_paired, win_rate


def _rank_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-count quantile bins along the last axis: bin 0 holds the lowest values.

    Ranks break ties by position (stable sort), so bins differ in size by at most one.
    """
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    bins = np.empty(values.shape, dtype=np.int64)
    rank_bin = (np.arange(n) * n_bins) // n  # (n,)
    np.put_along_axis(bins, order, np.broadcast_to(rank_bin, values.shape), axis=-1)
    return bins


def rtm_null(ref: np.ndarray, delta: np.ndarray, n_bins: int, n_perm: int, seed: int) -> np.ndarray:
    """(n_bins,) expected mean delta per bin of ``ref`` under a uniform effect of ``mean(delta)`` (see module)."""
    n = ref.size
    mu = float(delta.mean())
    centred = delta - mu  # (n,)
    cond_c = ref - centred  # the condition shifted to the reference's mean
    rng = np.random.default_rng(seed)  # same draws for every cond: order-independent
    swap = rng.random((n_perm, n)) < 0.5  # (n_perm, n)
    ref_sw = np.where(swap, cond_c, ref)  # (n_perm, n)
    delta_sw = np.where(swap, -centred, centred)  # (n_perm, n)
    bins_sw = _rank_bins(ref_sw, n_bins)  # (n_perm, n)
    null = np.empty(n_bins)
    for b in range(n_bins):
        mask = bins_sw == b
        null[b] = mu + float(np.mean((delta_sw * mask).sum(axis=1) / mask.sum(axis=1)))
    return null


def hardness_table(
    nll: Mapping[str, object],
    ref: str,
    conds: list[str],
    n_bins: int = 5,
    hardness=None,
    n_perm: int = 1000,
    seed: int = 0,
    *,
    atol: float | None = None,
) -> list[dict]:
    """Effect of each condition within quantile bins of sample hardness (see the module docstring).

    Bin 0 is the easiest (lowest hardness; default hardness: the reference NLL). One row per
    (bin, cond) with ``bin``, ``cond``, ``n``, ``hardness_low``/``hardness_high``, ``mean_ref``,
    ``mean_cond``, ``mean_delta`` (nats, noise-cleaned), ``pct_of_ref``, ``d``, ``win_rate``,
    ``rtm_null_mean_delta`` (uniform effect + regression to the mean), ``excess_delta`` (=
    mean_delta - rtm_null_mean_delta), ``null_model`` and ``hardness_source`` ("ref_scores" or
    "external").
    """
    data = _nll_dict(nll)
    known = list(data)
    _check_name(ref, known)
    if not conds:
        raise ValueError(f"conds is empty; choose from {[k for k in known if k != ref]}")
    for c in conds:
        _check_name(c, known)
        if c == ref:
            raise ValueError(f"cond {c!r} is the reference itself")
    if len(set(conds)) != len(conds):
        raise ValueError(f"conds lists a condition twice: {conds!r}")
    n_bins = _check_positive_int(n_bins, "n_bins")
    n_perm = _check_positive_int(n_perm, "n_perm")
    r = data[ref]
    n = r.size
    if n_bins > n:
        raise ValueError(f"n_bins={n_bins} exceeds the number of samples {n}")
    if hardness is None:
        h, source = r, "ref_scores"
    else:
        h = _as_values(hardness, "hardness")
        if h.size != n:
            raise ValueError(f"hardness has {h.size} values but the conditions have {n} samples")
        source = "external"
    bins = _rank_bins(h, n_bins)  # (n,)

    rows = []
    for c in conds:
        cv = data[c]
        delta = clean_delta(r, cv, atol)  # (n,)
        null = rtm_null(r, delta, n_bins, n_perm, seed) if source == "ref_scores" else np.full(n_bins, np.nan)
        for b in range(n_bins):
            sel = bins == b
            rb, cb, hb = r[sel], cv[sel], h[sel]
            mean_delta = float(delta[sel].mean())
            rows.append({
                "bin": b, "cond": c, "n": int(sel.sum()),
                "hardness_low": float(hb.min()), "hardness_high": float(hb.max()),
                "mean_ref": float(rb.mean()), "mean_cond": float(cb.mean()), "mean_delta": mean_delta,
                "pct_of_ref": 100.0 * mean_delta / float(rb.mean()) if rb.mean() != 0 else float("nan"),
                "d": cohens_d_paired(rb, cb, atol=atol), "win_rate": win_rate(rb, cb, atol=atol),
                "rtm_null_mean_delta": float(null[b]), "excess_delta": mean_delta - float(null[b]),
                "null_model": "uniform_effect_plus_rtm" if source == "ref_scores" else "none",
                "hardness_source": source,
            })
    return rows
