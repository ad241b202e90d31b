"""Standard figures for paired NLL comparisons.

Conventions follow ``lib.stats``: values are per-sample answer NLLs (lower is better) and
``delta = ref - cond``, so positive delta / d means the condition is better. Every function
draws on its own ``matplotlib.figure.Figure`` rendered by the Agg canvas (no pyplot, no global
backend switch, no ``show``), creates the parent folder of ``path``, saves, closes, and returns
the saved ``Path``. The format follows the suffix of ``path`` (.png, .pdf or .svg).
Non-finite numbers are never dropped silently: they are skipped in the drawing and written into
the label or cell text instead.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Mapping

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

__all__ = ["plot_delta_hist", "plot_effects", "plot_hardness_heatmap", "plot_mean_nll"]

_SUFFIXES = (".png", ".pdf", ".svg")


def _out_path(path) -> Path:
    p = Path(path)
    if p.suffix.lower() not in _SUFFIXES:
        close = difflib.get_close_matches(p.suffix.lower(), _SUFFIXES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unsupported figure suffix {p.suffix!r} in {str(p)!r}; choose from {_SUFFIXES}.{hint}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def out_path(path) -> Path:
    """A figure path with a supported suffix, its folder created (public for experiment-specific plot modules)."""
    return _out_path(path)


def new_figure(width: float, height: float) -> Figure:
    """An Agg-backed figure with constrained layout; save it with ``save_figure``."""
    return _new_figure(width, height)


def save_figure(fig: Figure, path) -> Path:
    return _save(fig, _out_path(path))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    fig.clear()
    return path


def _values(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name} has non-finite value {arr[bad[0]]!r} at index {bad[0]}")
    return arr


def _stars(p) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _fmt(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else str(x)


def plot_effects(rows: list[dict], path, title: str = "") -> Path:
    """Horizontal bars of Cohen's d with bootstrap-CI whiskers, one per comparison.

    ``rows`` come from ``lib.stats.compare_conditions`` (keys ``d``, ``ci_low``, ``ci_high``,
    ``p_holm``, and ``label`` or ``ref``/``cond``). Stars after the value mark Holm-adjusted
    p < 0.05 / 0.01 / 0.001. Non-finite d is not drawn and is written into the label.
    """
    if not rows:
        raise ValueError("rows is empty; nothing to plot")
    for i, row in enumerate(rows):
        missing = [k for k in ("d", "ci_low", "ci_high", "p_holm") if k not in row]
        if "label" not in row and not ("ref" in row and "cond" in row):
            missing.append("label (or ref and cond)")
        if missing:
            raise ValueError(f"rows[{i}] lacks key(s) {missing}; rows come from compare_conditions")
    labels = [row.get("label", f"{row.get('cond')} vs {row.get('ref')}") for row in rows]
    d = np.array([float(r["d"]) for r in rows])
    lo = np.array([float(r["ci_low"]) for r in rows])
    hi = np.array([float(r["ci_high"]) for r in rows])
    y = np.arange(len(rows))[::-1]  # first row on top

    fig = _new_figure(7.0, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    finite = np.isfinite(d)
    colors = np.where(d >= 0, "tab:blue", "tab:red")
    ax.barh(y[finite], d[finite], color=colors[finite], alpha=0.75)
    whisk = finite & np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(
        d[whisk], y[whisk], xerr=[d[whisk] - lo[whisk], hi[whisk] - d[whisk]],
        fmt="none", ecolor="black", capsize=3, lw=1,
    )
    ax.axvline(0.0, color="black", lw=0.8)
    ticks = [f"{lab}  (d={_fmt(v)}{_stars(r['p_holm'])})" for lab, v, r in zip(labels, d, rows)]
    ax.set_yticks(y, ticks)
    ax.set_xlabel("Cohen's d of ref - cond (positive: condition better)")
    ax.set_title(title or "Paired effect sizes, 95% bootstrap CI; * Holm p")
    return _save(fig, _out_path(path))


def plot_delta_hist(deltas: Mapping[str, object], path, title: str = "") -> Path:
    """One histogram panel per comparison of per-sample deltas (ref - cond), with zero and mean lines."""
    if not isinstance(deltas, Mapping) or not deltas:
        raise ValueError("deltas must be a non-empty mapping of label -> per-sample deltas")
    arrays = {k: _values(v, f"deltas[{k!r}]") for k, v in deltas.items()}
    k = len(arrays)
    ncols = min(3, k)
    nrows = math.ceil(k / ncols)
    fig = _new_figure(4.0 * ncols, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (label, v) in zip(axes.flat, arrays.items()):
        ax.hist(v, bins=min(40, max(5, v.size // 5)), color="tab:gray", alpha=0.8)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.axvline(v.mean(), color="tab:blue", lw=1.5, ls="--", label=f"mean {v.mean():.3f}")
        ax.set_title(f"{label} (n={v.size})", fontsize=9)
        ax.set_xlabel("ref - cond NLL (positive: cond better)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[k:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, _out_path(path))


def plot_hardness_heatmap(table: list[dict], path, title: str = "") -> Path:
    """Grid of d per (hardness bin, condition) from ``lib.stats.hardness_table``.

    Diverging colormap centred at 0 (blue: condition better), every cell annotated with d;
    non-finite d is left uncoloured and annotated with its value, absent cells with "n/a".
    """
    if not table:
        raise ValueError("table is empty; nothing to plot")
    cells: dict[tuple[int, str], float] = {}
    ranges: dict[int, tuple[float, float]] = {}
    conds: list[str] = []
    for i, row in enumerate(table):
        missing = [k for k in ("bin", "cond", "d") if k not in row]
        if missing:
            raise ValueError(f"table[{i}] lacks key(s) {missing}; the table comes from hardness_table")
        key = (int(row["bin"]), str(row["cond"]))
        if key in cells:
            raise ValueError(f"table has (bin, cond) = {key!r} twice")
        cells[key] = float(row["d"])
        if key[1] not in conds:
            conds.append(key[1])
        if "hardness_low" in row and "hardness_high" in row:
            ranges[key[0]] = (float(row["hardness_low"]), float(row["hardness_high"]))
    bins = sorted({b for b, _ in cells})
    grid = np.full((len(bins), len(conds)), np.nan)  # (bins, conds)
    for (b, c), v in cells.items():
        grid[bins.index(b), conds.index(c)] = v
    finite = np.isfinite(grid)
    vmax = float(np.max(np.abs(grid[finite]))) if finite.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0

    fig = _new_figure(1.6 + 1.3 * len(conds), 1.4 + 0.6 * len(bins))
    ax = fig.add_subplot()
    im = ax.imshow(
        np.ma.masked_invalid(grid), cmap="RdBu", aspect="auto",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
    )
    for i, b in enumerate(bins):
        for j, c in enumerate(conds):
            text = _fmt(grid[i, j]) if (b, c) in cells else "n/a"
            dark = np.isfinite(grid[i, j]) and abs(grid[i, j]) > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right")
    ylabels = [f"{b} [{ranges[b][0]:.2f}, {ranges[b][1]:.2f}]" if b in ranges else str(b) for b in bins]
    ax.set_yticks(range(len(bins)), ylabels)
    ax.set_ylabel("hardness bin (0 easiest) [range]")
    fig.colorbar(im, ax=ax, label="d (positive: condition better)")
    ax.set_title(title or "Paired d by hardness bin")
    return _save(fig, _out_path(path))


def plot_mean_nll(nll: Mapping[str, object], path, title: str = "") -> Path:
    """Mean NLL per condition with 95% CI bars (1.96 * sd/sqrt(n), ddof=1; zero-length for n == 1)."""
    if not isinstance(nll, Mapping) or not nll:
        raise ValueError("nll must be a non-empty mapping of condition -> per-sample NLL")
    arrays = {k: _values(v, f"nll[{k!r}]") for k, v in nll.items()}
    names = list(arrays)
    means = np.array([v.mean() for v in arrays.values()])
    half = np.array([1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0 for v in arrays.values()])
    x = np.arange(len(names))

    fig = _new_figure(1.5 + 0.9 * len(names), 4.0)
    ax = fig.add_subplot()
    ax.bar(x, means, yerr=half, capsize=4, color="tab:gray", alpha=0.8, ecolor="black")
    ax.set_xticks(x, [f"{k}\n(n={arrays[k].size})" for k in names], rotation=30, ha="right")
    ax.set_ylabel("mean answer NLL (lower is better)")
    ax.set_title(title or "Mean NLL per condition, 95% CI")
    return _save(fig, _out_path(path))


def plot_d_grid(grid: Mapping[str, Mapping[str, float]], path, title: str = "", ylabel: str = "") -> Path:
    """Heatmap of d per (row, condition), e.g. rows = data sets; diverging at 0 (blue: better).

    ``grid`` maps a row label to {condition: d}; a condition missing from a row shows "n/a".
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping of row label -> {condition: d}")
    rows = list(grid)
    conds: list[str] = []
    for r in rows:
        conds += [c for c in grid[r] if c not in conds]
    if not conds:
        raise ValueError("grid has no conditions")
    vals = np.full((len(rows), len(conds)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(conds):
            if c in grid[r]:
                vals[i, j] = float(grid[r][c])
    finite = np.isfinite(vals)
    vmax = float(np.max(np.abs(vals[finite]))) if finite.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    label_w = 0.075 * max(len(str(r)) for r in rows)  # inches for the row labels
    label_h = 0.06 * max(len(str(c)) for c in conds)  # rotated column labels
    fig = _new_figure(2.2 + label_w + 1.1 * len(conds), 1.6 + label_h + 0.55 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="RdBu", aspect="auto",
                   norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax))
    for i, r in enumerate(rows):
        for j, c in enumerate(conds):
            text = _fmt(vals[i, j]) if c in grid[r] else "n/a"
            dark = np.isfinite(vals[i, j]) and abs(vals[i, j]) > 0.6 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    if ylabel:
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label="d (positive: condition better)")
    ax.set_title(title or "Paired d")
    return _save(fig, _out_path(path))


def plot_length_curves(curv: Mapping[str, list[dict]], path, title: str = "", dashed=(),
                       xlabel: str = "prefix length L (tokens)", log_x: bool = True) -> Path:
    """d vs bare against prefix length L (log2 axis), one line per content with its CI band (``dashed``: names drawn dashed)."""
    if not curv:
        raise ValueError("no curves to plot")
    fig = _new_figure(8, 5)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab20"]
    for i, (c, pts) in enumerate(curv.items()):
        L = [p["length"] for p in pts]
        color = cmap((2 * i) % 20 + (i // 10) % 2)  # the 10 dark tab20 colours first, then the light ones
        ax.plot(L, [p["d"] for p in pts], marker="o", label=c, color=color, linestyle="--" if c in dashed else "-")
        ax.fill_between(L, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=color, alpha=0.08)
    ax.axhline(0, color="black", lw=0.8)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("d vs bare (positive: lower answer NLL)")
    ax.set_title(title or "effect vs prefix length")
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, _out_path(path))


def plot_decomposition(rows: list[dict], path, title: str = "") -> Path:
    """Stacked mean NLL components per L (``lib.prefixlen.decompose`` rows), one panel per content; a black tick marks the total."""
    if not rows:
        raise ValueError("no decomposition rows to plot")
    contents = list(dict.fromkeys(r["content"] for r in rows))
    ncol = min(4, len(contents))
    nrow = -(-len(contents) // ncol)
    fig = _new_figure(4 * ncol, 3.6 * nrow)
    grid = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
    axes = [list(grid.ravel())]
    for ax in axes[0][len(contents):]:
        ax.set_visible(False)
    parts = ("structure", "vocabulary", "meaning", "content_effect")
    colors = {"structure": "tab:gray", "vocabulary": "tab:orange", "meaning": "tab:blue", "content_effect": "tab:green"}
    for ax, c in zip(axes[0], contents):
        rs = [r for r in rows if r["content"] == c]
        x = np.arange(len(rs))
        pos, neg = np.zeros(len(rs)), np.zeros(len(rs))
        for part in parts:
            v = np.array([r[part]["mean"] if part in r else 0.0 for r in rs])
            if not v.any():
                continue
            base = np.where(v >= 0, pos, neg)
            ax.bar(x, v, bottom=base, color=colors[part], label=part)
            pos, neg = pos + np.clip(v, 0, None), neg + np.clip(v, None, 0)
        ax.plot(x, [r["total"]["mean"] for r in rs], "k_", markersize=18, mew=2, label="total")
        ax.set_xticks(x, [str(r["length"]) for r in rs])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(c)
        ax.set_xlabel("L")
    for row in grid:
        row[0].set_ylabel("mean NLL reduction vs bare (nats/token)")
    seen = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), fontsize=8, loc="outside lower center", ncol=len(seen))
    fig.suptitle(title or "structure / vocabulary / meaning")
    return _save(fig, _out_path(path))


def plot_training_curves(histories: Mapping[str, list[dict]], path, title: str = "", smooth: int = 10) -> Path:
    """Loss (raw, light; running mean over ``smooth`` steps, bold), gradient norm and prefix norm per optimizer step."""
    if not histories or not any(histories.values()):
        raise ValueError("no training history to plot")
    fig = _new_figure(14, 4)
    axes = fig.subplots(1, 3)
    for i, (name, hist) in enumerate(histories.items()):
        if not hist:
            continue
        color = f"C{i}"
        x = [h["opt_step"] for h in hist]
        loss = np.array([h["loss"] for h in hist])
        k = max(1, min(smooth, len(loss)))
        run = np.convolve(loss, np.ones(k) / k, mode="valid")
        axes[0].plot(x, loss, color=color, alpha=0.25)
        axes[0].plot(x[k - 1:], run, color=color, label=name)
        axes[1].plot(x, [h["grad_norm"] for h in hist], color=color, label=name)
        axes[2].plot(x, [h["prefix_norm"] for h in hist], color=color, label=name)
    for ax, lab in zip(axes, ("answer NLL (training)", "gradient norm (before clipping)", "mean prefix vector norm")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(lab)
        ax.legend(fontsize=8)
    fig.suptitle(title or "soft prefix training")
    return _save(fig, _out_path(path))


def plot_soft_eval(comparisons: list[dict], nll: Mapping[str, object], hardness: list[dict], ref: str, path,
                   title: str = "", pair: tuple[str, str] | None = None) -> Path:
    """Four panels: d vs ``ref`` with CI; mean NLL with CI; d by hardness quintile; per-sample deltas of ``pair``."""
    if not comparisons:
        raise ValueError("no comparisons to plot")
    arrays = {k: _values(v, f"nll[{k!r}]") for k, v in nll.items()}
    fig = _new_figure(13, 9)
    (a, b), (c, d) = fig.subplots(2, 2)
    names = [r["cond"] for r in comparisons]
    y = np.arange(len(names))
    ds = np.array([r["d"] for r in comparisons])
    a.barh(y, ds, color=["tab:blue" if v > 0 else "tab:red" for v in ds], alpha=0.8)
    a.errorbar(ds, y, xerr=[ds - np.array([r["ci_low"] for r in comparisons]), np.array([r["ci_high"] for r in comparisons]) - ds],
               fmt="none", ecolor="black", capsize=3)
    a.set_yticks(y, names)
    a.axvline(0, color="black", lw=0.8)
    a.set_xlabel(f"d vs {ref} (positive: lower NLL)")
    a.set_title("effect sizes, 95% bootstrap CI")
    conds = list(arrays)
    means = [arrays[k].mean() for k in conds]
    half = [1.96 * arrays[k].std(ddof=1) / math.sqrt(arrays[k].size) if arrays[k].size > 1 else 0.0 for k in conds]
    b.bar(range(len(conds)), means, yerr=half, capsize=4, color="tab:gray")
    b.set_xticks(range(len(conds)), conds, rotation=20, ha="right")
    b.set_ylabel("mean answer NLL")
    b.set_title("mean NLL, 95% CI")
    if hardness:
        for i, cond in enumerate(dict.fromkeys(h["cond"] for h in hardness)):
            rows = sorted((h for h in hardness if h["cond"] == cond), key=lambda h: h["bin"])
            c.plot([h["bin"] for h in rows], [h["d"] for h in rows], marker="o", label=cond, color=f"C{i}")
        c.axhline(0, color="black", lw=0.8)
        c.set_xlabel(f"hardness quintile of {ref} NLL (0 easiest)")
        c.set_ylabel("d within the quintile")
        c.legend(fontsize=8)
    c.set_title("hardness interaction")
    if pair and all(p in arrays for p in pair) and ref in arrays:
        x0, x1 = arrays[ref] - arrays[pair[0]], arrays[ref] - arrays[pair[1]]
        d.scatter(x0, x1, s=10, alpha=0.6)
        lim = float(np.max(np.abs(np.concatenate([x0, x1])))) or 1.0
        d.plot([-lim, lim], [-lim, lim], color="black", lw=0.8)
        d.set_xlabel(f"{ref} - {pair[0]} (per sample)")
        d.set_ylabel(f"{ref} - {pair[1]} (per sample)")
        d.set_title("per-sample benefit")
    fig.suptitle(title or "soft prefix evaluation")
    return _save(fig, _out_path(path))
