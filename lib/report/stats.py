"""Paired statistics for per-sample answer NLLs: tests, Holm, comparisons of many conditions, ranks; the
effect sizes (d, bootstrap CIs, win rate) live in ``stats_effects`` and are re-exported here.

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
* Float noise is not an effect: a per-sample delta with ``|delta| <= atol`` counts as exactly 0
  in d, its CI, the mean delta, the win rate, the tests, ranks and hardness means. The rule and
  its dtype-dependent tolerances live in ``lib/kv/noise.py`` (``noise_atol(dtype)``); every function
  here takes ``atol=`` (default ``NOISE_ATOL``, float32's 1e-5 nats). Without the rule, two
  identical conditions scored in different batches get an arbitrary d (measured: d = +0.43 from
  deltas of 1e-8), because d divides the mean by the sd of the noise.
* Every comparison carries its absolute size beside d: the mean delta in nats and as a
  percentage of the mean reference NLL (``pct_of_ref``), each with a bootstrap CI drawn from the
  same resamples as d's CI.
* Randomness (bootstrap, RTM null) comes from ``numpy.random.default_rng(seed)`` only, so every
  result is deterministic for a seed.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
from scipy import stats as _sps

from lib.kv.noise import snap_ties
from lib.report.stats_effects import (NOISE_ATOL, _check_name, _check_positive_int, _d_rows, _delta, _nll_dict, _paired,
                                      bootstrap_ci_d, bootstrap_ci_mean, cohens_d_paired, win_rate)
from lib.report.verdicts import check_primary_test

__all__ = [
    "PairedResult",
    "bootstrap_ci_d",
    "cohens_d_paired",
    "compare_conditions",
    "bootstrap_ci_mean",
    "holm",
    "paired_test",
    "ranks_per_sample",
    "win_rate",
]


# ----------------------------------------------------------------------------- tests
@dataclass(frozen=True)
class PairedResult:
    """Summary of one paired comparison; signs follow ``delta = ref - cond`` (positive: cond better).

    ``mean_delta`` is the mean noise-cleaned delta in nats and ``pct_of_ref`` the same as a
    percentage of ``mean_ref``; both with bootstrap CIs from the resamples of d's CI.
    ``t``/``p_t`` come from a one-sample t-test of the noise-cleaned deltas (``ttest_rel(ref, cond)``
    when no delta is within ``noise_atol``) and ``p_wilcoxon`` from ``scipy.stats.wilcoxon`` of the
    same deltas (two-sided), with ``rank_biserial`` its effect size and direction
    ((R+ - R-) / (R+ + R-) over non-zero deltas); p-values are nan where the test is undefined
    (n < 2, or all deltas 0 for Wilcoxon).
    """

    n: int
    mean_ref: float
    mean_cond: float
    mean_delta: float
    mean_delta_ci_low: float
    mean_delta_ci_high: float
    pct_of_ref: float
    pct_ci_low: float
    pct_ci_high: float
    d: float
    ci_low: float
    ci_high: float
    win_rate: float
    t: float
    p_t: float
    p_wilcoxon: float
    rank_biserial: float
    noise_atol: float

    def __post_init__(self):
        _check_positive_int(self.n, "n")
        if not (0.0 <= self.win_rate <= 1.0):
            raise ValueError(f"win_rate must lie in [0, 1], got {self.win_rate!r}")
        for name in ("p_t", "p_wilcoxon"):
            p = getattr(self, name)
            if not (np.isnan(p) or 0.0 <= p <= 1.0):
                raise ValueError(f"{name} must be nan or lie in [0, 1], got {p!r}")
        for lo, hi in (("ci_low", "ci_high"), ("mean_delta_ci_low", "mean_delta_ci_high"), ("pct_ci_low", "pct_ci_high")):
            vlo, vhi = getattr(self, lo), getattr(self, hi)
            if not (np.isnan(vlo) or np.isnan(vhi)) and vlo > vhi:
                raise ValueError(f"{lo} {vlo!r} exceeds {hi} {vhi!r}")
        if not (self.noise_atol >= 0):
            raise ValueError(f"noise_atol must be >= 0 nats, got {self.noise_atol!r}")

    def to_dict(self) -> dict:
        """Plain dict of the fields (python floats/ints), ready for JSON."""
        return asdict(self)


def _rank_biserial(delta: np.ndarray) -> float:
    nz = delta[delta != 0]
    if nz.size == 0:
        return float("nan")
    rk = _sps.rankdata(np.abs(nz))
    return float((rk[nz > 0].sum() - rk[nz < 0].sum()) / rk.sum())


def paired_test(ref, cond, n_boot: int = 2000, seed: int = 0, *, atol: float | None = None) -> PairedResult:
    """Paired comparison of ``cond`` against ``ref``: means, mean delta (nats, % of ref) with CIs, d with
    bootstrap CI, win rate, paired t-test and Wilcoxon signed-rank test (see ``PairedResult``)."""
    r, c = _paired(ref, cond)
    tol = NOISE_ATOL if atol is None else atol
    delta = _delta(r, c, tol)
    n = delta.size
    lo, hi = bootstrap_ci_d(r, c, n_boot=n_boot, seed=seed, atol=tol)
    mci = bootstrap_ci_mean(r, c, n_boot=n_boot, seed=seed, atol=tol)
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
    mean_ref, mean_delta = float(r.mean()), float(delta.mean())
    return PairedResult(
        n=int(n),
        mean_ref=mean_ref,
        mean_cond=float(c.mean()),
        mean_delta=mean_delta,
        mean_delta_ci_low=mci["mean_delta_ci"][0],
        mean_delta_ci_high=mci["mean_delta_ci"][1],
        pct_of_ref=100.0 * mean_delta / mean_ref if mean_ref != 0 else float("nan"),
        pct_ci_low=mci["pct_ci"][0],
        pct_ci_high=mci["pct_ci"][1],
        d=float(_d_rows(delta)),
        ci_low=lo,
        ci_high=hi,
        win_rate=win_rate(r, c, atol=tol),
        t=t,
        p_t=p_t,
        p_wilcoxon=p_w,
        rank_biserial=_rank_biserial(delta),
        noise_atol=float(tol),
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
    *,
    atol: float | None = None,
    primary_test: str = "t",
) -> list[dict]:
    """One row per comparison, with Holm-adjusted p-values across the rows of this call.

    Either ``ref`` (with ``conds``, default: every other condition in ``nll`` order) or explicit
    ``pairs`` of ``(ref_name, cond_name)``; passing both ``pairs`` and ``ref``/``conds`` raises.
    Each row holds ``label`` ("<cond> vs <ref>"), ``ref``, ``cond``, the ``PairedResult`` fields,
    ``p_holm`` (Holm over ``p_t``) and ``p_holm_wilcoxon`` (Holm over ``p_wilcoxon``), the declared
    ``primary_test`` ("t" or "wilcoxon") and its Holm p as ``p_primary``; classify a row with
    ``lib.report.verdicts.verdict`` (never "null" while either test rejects). ``atol``: the noise
    tolerance of the scoring dtype (``lib.kv.noise.noise_atol``). Every row uses the same ``seed``, so
    equal-length comparisons share bootstrap indices.
    """
    primary_test = check_primary_test(primary_test)
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
        res = paired_test(data[a], data[b], n_boot=n_boot, seed=seed, atol=atol)
        rows.append({"label": f"{b} vs {a}", "ref": a, "cond": b, **res.to_dict()})
    p_holm = holm([r["p_t"] for r in rows])
    p_holm_w = holm([r["p_wilcoxon"] for r in rows])
    for row, ph, pw in zip(rows, p_holm, p_holm_w):
        row["p_holm"] = float(ph)
        row["p_holm_wilcoxon"] = float(pw)
        row["primary_test"] = primary_test
        row["p_primary"] = row["p_holm"] if primary_test == "t" else row["p_holm_wilcoxon"]
    return rows


# ----------------------------------------------------------------------------- ranks
def ranks_per_sample(nll: Mapping[str, object], *, atol: float | None = None) -> dict:
    """Per-sample ranking of conditions: 1 = lowest NLL (best), ties get the average rank.

    NLLs of one sample within ``atol`` of each other (float noise, ``lib.kv.noise.snap_ties``) tie.

    Returns ``{"n": n, "mean_rank": {cond: float}, "share_best": {cond: float}}``. A sample whose
    lowest NLL is shared by k conditions gives each of them 1/k, so the shares sum to 1.
    """
    data = _nll_dict(nll)
    names = list(data)
    mat = snap_ties(np.stack([data[k] for k in names]), atol)  # (n_cond, n)
    ranks = _sps.rankdata(mat, method="average", axis=0)  # (n_cond, n)
    is_best = mat == mat.min(axis=0, keepdims=True)  # (n_cond, n)
    share = (is_best / is_best.sum(axis=0, keepdims=True)).mean(axis=1)
    return {
        "n": int(mat.shape[1]),
        "mean_rank": {k: float(v) for k, v in zip(names, ranks.mean(axis=1))},
        "share_best": {k: float(v) for k, v in zip(names, share)},
    }
