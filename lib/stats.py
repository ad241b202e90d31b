"""Paired statistics for per-sample answer NLLs.

Conventions
-----------
* Values are per-sample answer NLLs: LOWER IS BETTER.
* A comparison is ``(reference, condition)`` measured on the same samples in the same order.
* The paired delta is ``delta = ref - cond``. A POSITIVE delta, d, t or win rate above 0.5
  therefore means the CONDITION IS BETTER than the reference.
* Cohen's d of the paired differences is ``mean(delta) / std(delta, ddof=1)`` (often called d_z).
* Every input array must be one-dimensional, non-empty and finite; paired arrays must have equal
  length. Anything else raises ``ValueError`` naming the offending value; unknown condition names
  list the known ones (with a "did you mean").
* Float noise is not an effect: a per-sample delta with ``|delta| <= NOISE_ATOL`` (1e-5 nats,
  the measured agreement of two numerically different but mathematically equal scoring paths)
  counts as exactly 0 in d, its CI, the win rate and the tests. Without this, two identical
  conditions scored in different batches get an arbitrary d (measured: d = +0.43 from deltas of
  1e-8), because d divides the mean by the sd of the noise.
* Randomness (bootstrap, RTM null) comes from ``numpy.random.default_rng(seed)`` only, so every
  result is deterministic for a seed.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _sps

__all__ = [
    "PairedResult",
    "bootstrap_ci_d",
    "cohens_d_paired",
    "compare_conditions",
    "hardness_table",
    "holm",
    "paired_test",
    "ranks_per_sample",
    "win_rate",
]


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


NOISE_ATOL = 1e-5


def _delta(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``r - c`` with float-noise differences (``|delta| <= NOISE_ATOL``) set to exactly 0."""
    d = r - c
    return np.where(np.abs(d) <= NOISE_ATOL, 0.0, d)


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


def cohens_d_paired(ref, cond) -> float:
    """Cohen's d of the paired differences ``delta = ref - cond`` (positive: condition better).

    ``mean(delta) / std(delta, ddof=1)``; nan if fewer than 2 samples; if the sd is 0, 0.0 when
    the mean is 0 and +-inf otherwise.
    """
    r, c = _paired(ref, cond)
    return float(_d_rows(_delta(r, c)))


def bootstrap_ci_d(ref, cond, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the paired Cohen's d, resampling sample indices (pairs kept).

    All ``n_boot`` resamples are drawn at once as an ``(n_boot, n)`` index matrix. Replicates
    with sd 0 follow ``cohens_d_paired``'s rule (0 or +-inf); quantiles interpolate linearly,
    or use the order statistic (``inverted_cdf``) when a replicate is infinite. Returns
    ``(nan, nan)`` for fewer than 2 samples.
    """
    r, c = _paired(ref, cond)
    n_boot = _check_positive_int(n_boot, "n_boot")
    if not (isinstance(ci, (float, int)) and 0.0 < float(ci) < 1.0):
        raise ValueError(f"ci must be a level strictly between 0 and 1 (e.g. 0.95), got {ci!r}")
    delta = _delta(r, c)
    n = delta.size
    if n < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    boot_d = _d_rows(delta[idx])  # (n_boot,)
    alpha = (1.0 - float(ci)) / 2.0
    method = "linear" if np.all(np.isfinite(boot_d)) else "inverted_cdf"
    lo, hi = np.quantile(boot_d, [alpha, 1.0 - alpha], method=method)
    return (float(lo), float(hi))


def win_rate(ref, cond) -> float:
    """Share of samples on which the condition is strictly better (``delta = ref - cond > 0``).

    Ties (``delta == 0``) count half, so two identical conditions have a win rate of exactly 0.5.
    """
    r, c = _paired(ref, cond)
    delta = _delta(r, c)
    return float((np.sum(delta > 0) + 0.5 * np.sum(delta == 0)) / delta.size)


# ----------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class PairedResult:
    """Summary of one paired comparison; signs follow ``delta = ref - cond`` (positive: cond better).

    ``t``/``p_t`` come from a one-sample t-test of the noise-cleaned deltas (``ttest_rel(ref, cond)``
    when no delta is within ``NOISE_ATOL``) and ``p_wilcoxon`` from ``scipy.stats.wilcoxon`` of the
    same deltas (two-sided); p-values are nan where the test is undefined
    (n < 2, or all deltas 0 for Wilcoxon).
    """

    n: int
    mean_ref: float
    mean_cond: float
    mean_delta: float
    d: float
    ci_low: float
    ci_high: float
    win_rate: float
    t: float
    p_t: float
    p_wilcoxon: float

    def __post_init__(self):
        _check_positive_int(self.n, "n")
        if not (0.0 <= self.win_rate <= 1.0):
            raise ValueError(f"win_rate must lie in [0, 1], got {self.win_rate!r}")
        for name in ("p_t", "p_wilcoxon"):
            p = getattr(self, name)
            if not (np.isnan(p) or 0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be nan or lie in [0, 1], got {p!r}")
        if not (np.isnan(self.ci_low) or np.isnan(self.ci_high)) and self.ci_low > self.ci_high:
            raise ValueError(f"ci_low {self.ci_low!r} exceeds ci_high {self.ci_high!r}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (python floats/ints), ready for JSON."""
        return asdict(self)


def paired_test(ref, cond, n_boot: int = 2000, seed: int = 0) -> PairedResult:
    """Paired comparison of ``cond`` against ``ref``: means, delta, d with bootstrap CI, win rate,
    paired t-test and Wilcoxon signed-rank test (see ``PairedResult``)."""
    r, c = _paired(ref, cond)
    delta = _delta(r, c)
    n = delta.size
    lo, hi = bootstrap_ci_d(r, c, n_boot=n_boot, seed=seed)
    if n < 2:
        t = p_t = float("nan")
    else:
        with warnings.catch_warnings():
            # sd == 0 makes scipy divide by zero; it still returns the limit (+-inf / nan).
            warnings.simplefilter("ignore", RuntimeWarning)
            res = _sps.ttest_1samp(delta, 0.0)  # == ttest_rel(r, c) on the noise-cleaned deltas
        t, p_t = float(res.statistic), float(res.pvalue)
    if np.all(delta == 0):
        p_w = float("nan")
    else:
        p_w = float(_sps.wilcoxon(delta).pvalue)
    return PairedResult(
        n=int(n),
        mean_ref=float(r.mean()),
        mean_cond=float(c.mean()),
        mean_delta=float((r - c).mean()),
        d=float(_d_rows(delta)),
        ci_low=lo,
        ci_high=hi,
        win_rate=win_rate(r, c),
        t=t,
        p_t=p_t,
        p_wilcoxon=p_w,
    )


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values in the input order.

    With the m non-nan p-values sorted ascending, ``adj_(i) = max_{j<=i} min(1, (m-j+1) p_(j))``
    (1-based i, j): monotone in the raw p, clipped at 1. nan entries pass through as nan and do
    not count towards m. Example: [0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02].
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    ok = ~np.isnan(p)
    bad = np.flatnonzero(ok & ((p < 0) | (p > 1)))
    if bad.size:
        raise ValueError(f"p-values must lie in [0, 1] (or be nan); index {bad[0]} is {p[bad[0]]!r}")
    out = np.full(p.shape, np.nan)
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * vals[order])
    adj_sorted = np.maximum.accumulate(scaled)
    adj = np.empty(m)
    adj[order] = adj_sorted
    out[ok] = adj
    return out


def compare_conditions(
    nll: Mapping[str, object],
    ref: str | None,
    conds: list[str] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """One row per comparison, with Holm-adjusted p-values across the rows of this call.

    Either ``ref`` (with ``conds``, default: every other condition in ``nll`` order) or explicit
    ``pairs`` of ``(ref_name, cond_name)``; passing both ``pairs`` and ``ref``/``conds`` raises.
    Each row holds ``label`` ("<cond> vs <ref>"), ``ref``, ``cond``, the ``PairedResult`` fields,
    ``p_holm`` (Holm over ``p_t``) and ``p_holm_wilcoxon`` (Holm over ``p_wilcoxon``). Every row
    uses the same ``seed``, so equal-length comparisons share bootstrap indices.
    """
    data = _nll_dict(nll)
    known = list(data)
    if pairs is not None:
        if ref is not None or conds is not None:
            raise ValueError(
                f"pass either ref/conds or pairs, not both (got ref={ref!r}, conds={conds!r}, pairs={pairs!r})"
            )
        pair_list = [tuple(p) for p in pairs]
        for p in pair_list:
            if len(p) != 2:
                raise ValueError(f"each pair must be (ref_name, cond_name), got {p!r}")
    else:
        if ref is None:
            raise ValueError("ref is None; give a reference condition name or explicit pairs")
        _check_name(ref, known)
        cond_list = [k for k in known if k != ref] if conds is None else list(conds)
        pair_list = [(ref, c) for c in cond_list]
    if not pair_list:
        raise ValueError(f"no comparisons to make: conditions {known}, ref {ref!r}, conds {conds!r}")
    seen = set()
    for a, b in pair_list:
        _check_name(a, known)
        _check_name(b, known)
        if a == b:
            raise ValueError(f"comparison ({a!r}, {b!r}) compares a condition with itself")
        if (a, b) in seen:
            raise ValueError(f"comparison ({a!r}, {b!r}) is listed twice; Holm would count it twice")
        seen.add((a, b))
    rows = []
    for a, b in pair_list:
        res = paired_test(data[a], data[b], n_boot=n_boot, seed=seed)
        rows.append({"label": f"{b} vs {a}", "ref": a, "cond": b, **res.to_dict()})
    p_holm = holm([r["p_t"] for r in rows])
    p_holm_w = holm([r["p_wilcoxon"] for r in rows])
    for row, ph, pw in zip(rows, p_holm, p_holm_w):
        row["p_holm"] = float(ph)
        row["p_holm_wilcoxon"] = float(pw)
    return rows


# ----------------------------------------------------------------------------- hardness
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


def hardness_table(
    nll: Mapping[str, object],
    ref: str,
    conds: list[str],
    n_bins: int = 5,
    hardness=None,
    n_perm: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Effect of each condition within quantile bins of sample hardness.

    Samples are split into ``n_bins`` equal-count bins of ``hardness`` (default: the reference
    condition's NLL; bin 0 is the easiest, i.e. lowest values). One row per (bin, cond) with
    ``bin``, ``cond``, ``n``, ``hardness_low``/``hardness_high`` (range of hardness in the bin),
    ``mean_ref``, ``mean_cond``, ``mean_delta``, ``d``, ``win_rate``, ``rtm_null_mean_delta``,
    ``excess_delta`` (= mean_delta - rtm_null_mean_delta) and ``hardness_source``
    ("ref_scores" or "external").

    Why the RTM null: when the bins are chosen on the reference scores themselves, a sample lands
    in the hardest bin partly because its reference NLL happened to be high by noise, and that
    same noise enters ``delta = ref - cond`` with a plus sign. The hardest bin then shows a
    positive mean delta (and the easiest a negative one) even when the condition does nothing:
    regression to the mean. ``rtm_null_mean_delta`` estimates that artefact: in each of
    ``n_perm`` permutations every sample's (ref, cond) pair is swapped with probability 1/2 (a
    sign flip of delta, valid when the condition has no effect), the samples are re-binned on the
    swapped ref values, and the per-bin mean delta is averaged over permutations. Compare
    ``mean_delta`` with it, not with 0. With ``hardness`` given (an external measure chosen
    independently of these scores) the artefact does not arise this way and the column is nan.
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
        h = r
        source = "ref_scores"
    else:
        h = _as_values(hardness, "hardness")
        if h.size != n:
            raise ValueError(f"hardness has {h.size} values but the conditions have {n} samples")
        source = "external"
    bins = _rank_bins(h, n_bins)  # (n,)

    rows = []
    for c in conds:
        cv = data[c]
        delta = r - cv
        null = np.full(n_bins, np.nan)
        if source == "ref_scores":
            rng = np.random.default_rng(seed)  # same draws for every cond: order-independent
            swap = rng.random((n_perm, n)) < 0.5  # (n_perm, n)
            ref_sw = np.where(swap, cv, r)  # (n_perm, n)
            delta_sw = np.where(swap, -delta, delta)  # (n_perm, n)
            bins_sw = _rank_bins(ref_sw, n_bins)  # (n_perm, n)
            for b in range(n_bins):
                mask = bins_sw == b
                null[b] = float(np.mean((delta_sw * mask).sum(axis=1) / mask.sum(axis=1)))
        for b in range(n_bins):
            sel = bins == b
            rb, cb, hb = r[sel], cv[sel], h[sel]
            mean_delta = float((rb - cb).mean())
            rows.append(
                {
                    "bin": b,
                    "cond": c,
                    "n": int(sel.sum()),
                    "hardness_low": float(hb.min()),
                    "hardness_high": float(hb.max()),
                    "mean_ref": float(rb.mean()),
                    "mean_cond": float(cb.mean()),
                    "mean_delta": mean_delta,
                    "d": cohens_d_paired(rb, cb),
                    "win_rate": win_rate(rb, cb),
                    "rtm_null_mean_delta": float(null[b]),
                    "excess_delta": mean_delta - float(null[b]),
                    "hardness_source": source,
                }
            )
    return rows


def ranks_per_sample(nll: Mapping[str, object]) -> dict:
    """Per-sample ranking of conditions: 1 = lowest NLL (best), ties get the average rank.

    Returns ``{"n": n, "mean_rank": {cond: float}, "share_best": {cond: float}}``. A sample whose
    lowest NLL is shared by k conditions gives each of them 1/k, so the shares sum to 1.
    """
    data = _nll_dict(nll)
    names = list(data)
    mat = np.stack([data[k] for k in names])  # (n_cond, n)
    ranks = _sps.rankdata(mat, method="average", axis=0)  # (n_cond, n)
    is_best = mat == mat.min(axis=0, keepdims=True)  # (n_cond, n)
    share = (is_best / is_best.sum(axis=0, keepdims=True)).mean(axis=1)
    return {
        "n": int(mat.shape[1]),
        "mean_rank": {k: float(v) for k, v in zip(names, ranks.mean(axis=1))},
        "share_best": {k: float(v) for k, v in zip(names, share)},
    }
