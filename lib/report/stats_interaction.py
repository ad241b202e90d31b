"""Paired interaction contrasts of a factorial design: is one effect larger than another on the same samples?

An interaction ``(a, b, c, d)`` compares two paired effects, each in the repo's sign convention
(effect = reference NLL - condition NLL, positive: the condition is better):

    first  = nll[a] - nll[b]        (effect of moving a -> b)
    second = nll[c] - nll[d]        (effect of moving c -> d)
    interaction_i = first_i - second_i = (a_i - b_i) - (c_i - d_i)      per sample

and tests it against 0 with ``stats.paired_test(first, second)`` (the same bootstrap CIs of d and
of the mean, t-test and Wilcoxon; a per-sample contrast within ``atol`` counts as 0). Positive:
the first effect is the larger (more helpful) one. ``pct_of_first`` is the interaction as a
percentage of the mean first effect, with its CI. Several contrasts in one call share a Holm
correction, as ``compare_conditions`` rows do.

Used by exp09: the truncation wound (coherence x overlap, seed Exp 05) and the decoder-query effect
under a bare vs an oracle encoder (length x encoder, seed Exps 07-08).
"""
from __future__ import annotations

from typing import Mapping

from lib.report import stats
from lib.report.verdicts import check_primary_test


def interaction(nll: Mapping[str, object], a: str, b: str, c: str, d: str, *, n_boot: int = 2000, seed: int = 0,
                atol: float | None = None) -> dict:
    """One contrast ``(a - b) - (c - d)`` of per-sample NLLs (see the module docstring)."""
    data = stats._nll_dict(nll)
    for name in (a, b, c, d):
        stats._check_name(name, list(data))
    if a == b or c == d or (a, b) == (c, d):
        raise ValueError(f"interaction ({a!r} - {b!r}) - ({c!r} - {d!r}) needs two different non-empty effects")
    first, second = data[a] - data[b], data[c] - data[d]
    res = stats.paired_test(first, second, n_boot=n_boot, seed=seed, atol=atol).to_dict()
    return {"a": a, "b": b, "c": c, "d": d, "contrast": f"({a} - {b}) - ({c} - {d})",
            "n": res["n"], "first_effect": res["mean_ref"], "second_effect": res["mean_cond"],
            "interaction": res["mean_delta"], "interaction_ci_low": res["mean_delta_ci_low"],
            "interaction_ci_high": res["mean_delta_ci_high"], "pct_of_first": res["pct_of_ref"],
            "pct_ci_low": res["pct_ci_low"], "pct_ci_high": res["pct_ci_high"],
            # the columns a comparison table shows, under the names show.table and verdicts read
            "mean_delta": res["mean_delta"], "mean_delta_ci_low": res["mean_delta_ci_low"],
            "mean_delta_ci_high": res["mean_delta_ci_high"], "d": res["d"], "ci_low": res["ci_low"],
            "ci_high": res["ci_high"], "win_rate": res["win_rate"], "t": res["t"], "p_t": res["p_t"],
            "p_wilcoxon": res["p_wilcoxon"], "rank_biserial": res["rank_biserial"], "noise_atol": res["noise_atol"]}


def interactions(nll: Mapping[str, object], specs: Mapping[str, tuple[str, str, str, str]], *, n_boot: int = 2000,
                 seed: int = 0, atol: float | None = None, primary_test: str = "t") -> list[dict]:
    """One row per named contrast ``{label: (a, b, c, d)}``, with Holm-adjusted p-values across them."""
    primary_test = check_primary_test(primary_test)
    if not specs:
        raise ValueError("no interaction contrasts given; pass {label: (a, b, c, d)}")
    rows = []
    for label, spec in specs.items():
        if len(spec) != 4:
            raise ValueError(f"interaction {label!r}: expected four condition names (a, b, c, d), got {spec!r}")
        rows.append({"label": label, **interaction(nll, *spec, n_boot=n_boot, seed=seed, atol=atol)})
    p_holm, p_holm_w = stats.holm([r["p_t"] for r in rows]), stats.holm([r["p_wilcoxon"] for r in rows])
    for r, ph, pw in zip(rows, p_holm, p_holm_w):
        r.update(p_holm=float(ph), p_holm_wilcoxon=float(pw), primary_test=primary_test,
                 p_primary=float(ph) if primary_test == "t" else float(pw))
    return rows

