"""Figures of exp08 (soft-prompt reachability). Each function takes ``summarize`` outputs (or the
raw best-restart curves), draws on its own Agg figure and returns the saved path (see lib.report.plots)."""
from __future__ import annotations

import numpy as np

from lib.report.plots import new_figure, save_figure

__all__ = ["loss_curves", "final_mse_histogram", "cosine_by_position", "summary_boxes", "transition", "group_curves",
           "part_figures"]


def loss_curves(summary: dict, path, title: str = ""):
    """Every target's best-restart loss curve (light) and the per-step median (bold), log y."""
    steps = np.asarray(summary["best_curves"]["steps"])
    loss = np.asarray(summary["best_curves"]["loss"])        # [n, k]
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for row in loss:
        ax.plot(steps, row, color="tab:blue", alpha=0.25, lw=0.8)
    ax.plot(steps, np.median(loss, 0), color="black", lw=2.2, label="median")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (best restart)")
    ax.set_title(title or f"{summary['n_targets']} targets, best of {summary['restarts']}")
    ax.legend()
    return save_figure(fig, path)


def final_mse_histogram(summary: dict, path, title: str = ""):
    """Histogram of best-of-restarts final MSE (log bins), with the median reach threshold."""
    final = np.array([t["final_mse"] for t in summary["targets"]])
    thr = summary["threshold"]["reach_frac"] * np.median([t["initial_mse"] for t in summary["targets"]])
    lo, hi = np.log10(max(min(final.min(), thr), 1e-30)), np.log10(max(final.max(), thr))
    bins = np.logspace(lo - 0.1, hi + 0.1, 25)
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.hist(final, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(thr, color="tab:red", ls="--", label=f"reach threshold (median target) {thr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("final MSE, best restart")
    ax.set_ylabel("targets")
    ax.set_title(title or f"share reached {summary['share_reached']:.2f}")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def cosine_by_position(summary: dict, path, title: str = ""):
    """Mean (+- std over targets) cosine(achieved, target) at each position, best restart."""
    mean = np.asarray(summary["cosine_by_position"]["mean"])
    std = np.asarray(summary["cosine_by_position"]["std"])
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.errorbar(np.arange(len(mean)), mean, yerr=std, fmt="o-", capsize=3)
    ax.set_xlabel("position")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title or "per-position cosine, best restart")
    return save_figure(fig, path)


def part_figures(summary: dict, folder, title: str = "") -> list:
    return [loss_curves(summary, f"{folder}/loss_curves.png", title),
            final_mse_histogram(summary, f"{folder}/final_mse_histogram.png", title),
            cosine_by_position(summary, f"{folder}/cosine_by_position.png", title)]


def summary_boxes(groups: dict, path, title: str = ""):
    """Box plot of best final MSE per condition ({name: [values]}), log y."""
    names = list(groups)
    fig = new_figure(max(6.0, 0.45 * len(names) + 2), 4.5)
    ax = fig.add_subplot()
    ax.boxplot([np.asarray(groups[k], dtype=float) for k in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("final MSE, best restart")
    ax.set_title(title or "final MSE by condition")
    return save_figure(fig, path)


def transition(summary: dict, path, title: str = ""):
    """Part 4: final MSE vs fraction of dimensions replaced; one light line per target, median bold."""
    fs = sorted({t["label"] for t in summary["targets"]})
    per: dict = {}
    for t in summary["targets"]:  # target-major: len(fs) consecutive targets share one source target
        per.setdefault(t["target"] // len(fs), []).append((t["label"], t["final_mse"]))
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for pts in per.values():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", alpha=0.3, lw=0.9)
    med = [np.median([t["final_mse"] for t in summary["targets"] if t["label"] == f]) for f in fs]
    ax.plot(fs, med, color="black", lw=2.5, marker="o", label="median")
    ax.set_yscale("log")
    ax.set_xlabel("fraction of dimensions replaced")
    ax.set_ylabel("final MSE, best restart")
    ax.set_title(title or "dimension replacement")
    ax.legend()
    return save_figure(fig, path)


def group_curves(summary: dict, path, title: str = "", xlabel: str = "alpha"):
    """Part 3: relative MSE (best final / initial) vs label, one line per group (pair), median bold."""
    groups = summary.get("by_group")
    if not groups:
        raise ValueError("summary has no by_group: pass groups= to summarize")
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for g in groups:
        pts = sorted(zip(g["label"], g["relative_mse"]))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", alpha=0.6, lw=1.0, label=f"pair {g['group']}")
    labels = sorted({x for g in groups for x in g["label"]})
    med = [np.median([v for g in groups for lab, v in zip(g["label"], g["relative_mse"]) if lab == x]) for x in labels]
    ax.plot(labels, med, color="black", lw=2.5, marker="o", label="median")
    for x in (0.0, 1.0):
        ax.axvline(x, color="grey", ls=":", lw=0.8)
    ax.axhline(summary["threshold"]["reach_frac"], color="tab:red", ls="--", lw=0.8, label="reach threshold")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("relative MSE (best final / initial)")
    ax.set_title(title or f"reachability curve per pair ({len(groups)} pairs)")
    if len(groups) <= 10:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_part(folder, summary: dict, *, part: str, config: dict, provenance: dict, extra: dict | None = None,
               title: str = "") -> list:
    """Write ``folder/metrics.json`` and the part's three figures; returns the paths written."""
    from pathlib import Path

    from lib.studies.reachability.report import by_label
    from lib.data.jsonio import write_json_atomic

    figs = part_figures(summary, folder, title)
    metrics = {"part": part, "config": config, "provenance": provenance, **(extra or {}), "summary": summary,
               "figures": [Path(f).name for f in figs]}
    if summary["targets"] and "label" in summary["targets"][0]:
        metrics["by_label"] = by_label(summary)
    return [write_json_atomic(Path(folder) / "metrics.json", metrics), *figs]
