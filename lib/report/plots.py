"""Standard figures for paired NLL comparisons.

Conventions follow ``lib.report.stats``: values are per-sample answer NLLs (lower is better) and
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
import textwrap
from pathlib import Path
from typing import Mapping

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch

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
    # the figures are sized so that every label fits (``_text_width_in``, ``suptitle``); the tight bbox is a
    # backstop so that a label longer than the sizing allowed is never clipped in the saved file
    fig.savefig(path, dpi=120, bbox_inches="tight")
    fig.clear()
    return path


def wrap(text: str, width_in: float, fontsize: float = 12.0) -> str:
    """``text`` wrapped (``textwrap``, each existing line on its own) to lines that fit ``width_in`` inches at
    ``fontsize`` points (DejaVu Sans averages about 0.6 em a character; 0.62 and a 10% margin leave room)."""
    n = max(16, int(width_in * 72 * 0.9 / (0.62 * fontsize)))
    return "\n".join(ln for line in str(text).splitlines() for ln in (textwrap.wrap(line, n, break_on_hyphens=False) or [""]))


def suptitle(fig: Figure, text: str, fontsize: float = 12.0):
    """A figure title wrapped to the figure's current width, centred on the figure (not on an axes pushed
    aside by long tick labels), so it lies inside the figure; set the figure's final size first."""
    return fig.suptitle(wrap(text, fig.get_figwidth(), fontsize), fontsize=fontsize)


def _text_width_in(fig: Figure, texts, fontsize="medium") -> float:
    """Widest rendered width (inches) of ``texts`` (multi-line texts: their widest line) at ``fontsize``."""
    r = fig.canvas.get_renderer()
    prop = FontProperties(size=fontsize)
    lines = [ln for t in texts for ln in str(t).split("\n")]
    if not lines:
        return 0.0
    return max(r.get_text_width_height_descent(ln, prop, ismath=False)[0] for ln in lines) / fig.dpi


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

    ``rows`` come from ``lib.report.stats.compare_conditions`` (keys ``d``, ``ci_low``, ``ci_high``,
    ``p_holm``, and ``label`` or ``ref``/``cond``). Stars after the value mark Holm-adjusted
    p < 0.05 / 0.01 / 0.001. Non-finite d is not drawn and is written into the label. The figure is
    as wide as its row labels need; a long title is wrapped to the figure's width.
    """
    out = _out_path(path)
    return _save(_effects_figure(rows, title), out)


def _effects_figure(rows: list[dict], title: str = "") -> Figure:
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
    ticks = [f"{lab}  (d={_fmt(v)}{_stars(r['p_holm'])})" for lab, v, r in zip(labels, d, rows)]

    fig = _new_figure(7.0, 1.2 + 0.45 * len(rows))
    fig.set_figwidth(max(7.0, _text_width_in(fig, ticks) + 4.5))  # labels + a plot area of >= 4 inches
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
    ax.set_yticks(y, ticks)
    ax.set_xlabel("Cohen's d of ref - cond (positive: condition better)\nwhiskers: 95% bootstrap CI")
    suptitle(fig, title or "Paired effect sizes, 95% bootstrap CI; * Holm p")
    return fig


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
        suptitle(fig, title)
    return _save(fig, _out_path(path))


def plot_hardness_heatmap(table: list[dict], path, title: str = "") -> Path:
    """Grid of d per (hardness bin, condition) from ``lib.report.stats_hardness.hardness_table``.

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
    suptitle(fig, title or "Paired d by hardness bin")
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
    suptitle(fig, title or "Mean NLL per condition, 95% CI")
    return _save(fig, _out_path(path))


def _signed(x) -> str:
    """+0.42 / -0.13; None (results.json's nan) as n/a; other non-finite values as themselves."""
    if x is None:
        return "n/a"
    x = float(x)
    return f"{x:+.2f}" if math.isfinite(x) else str(x)


def _grid_cell(v) -> tuple[float, str]:
    """(d for the colour, cell text) of a grid value: a number (d), or a mapping with ``d`` and
    optionally ``ci_low``/``ci_high`` (then the text is ``"+0.42\\n[+0.31, +0.54]"``) and ``note``
    (written before d, e.g. ``"c=2: +0.42"``)."""
    if isinstance(v, Mapping):
        if "d" not in v:
            raise ValueError(f"grid cell {dict(v)!r} lacks key 'd'")
        d = v["d"]
        text = (f"{v['note']}: " if v.get("note") else "") + _signed(d)
        if "ci_low" in v or "ci_high" in v:
            text += f"\n[{_signed(v.get('ci_low'))}, {_signed(v.get('ci_high'))}]"
    else:
        d, text = v, _signed(v)
    return (float("nan") if d is None else float(d)), text


def plot_d_grid(grid: Mapping[str, Mapping[str, object]], path, title: str = "", ylabel: str = "") -> Path:
    """Heatmap of d per (row, condition), e.g. rows = data sets; diverging at 0 (blue: better).

    ``grid`` maps a row label to {condition: d}, where d is a number or a mapping with ``d`` and its
    95% CI (``ci_low``, ``ci_high``: written under d in the cell); a condition missing from a row shows
    "n/a". Row labels are shown in full: the figure is as wide as they need.
    """
    out = _out_path(path)
    return _save(_d_grid_figure(grid, title, ylabel), out)


def _d_grid_figure(grid: Mapping[str, Mapping[str, object]], title: str = "", ylabel: str = "") -> Figure:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping of row label -> {condition: d}")
    rows = list(grid)
    conds: list[str] = []
    for r in rows:
        conds += [c for c in grid[r] if c not in conds]
    if not conds:
        raise ValueError("grid has no conditions")
    vals = np.full((len(rows), len(conds)), np.nan)
    texts = np.full((len(rows), len(conds)), "n/a", dtype=object)
    for i, r in enumerate(rows):
        for j, c in enumerate(conds):
            if c in grid[r]:
                vals[i, j], texts[i, j] = _grid_cell(grid[r][c])
    finite = np.isfinite(vals)
    vmax = float(np.max(np.abs(vals[finite]))) if finite.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    two_lines = any("\n" in t for t in texts.flat)

    fig = _new_figure(4.0, 3.0)
    # measured sizes (inches): row labels, rotated (30 degrees) column labels, the widest cell text
    label_w = _text_width_in(fig, rows)
    col_w = _text_width_in(fig, conds)
    cell_w = max(1.0, _text_width_in(fig, texts.flat, fontsize=8) + 0.25)
    row_h = 0.65 if two_lines else 0.45
    width = 0.6 * bool(ylabel) + label_w + cell_w * len(conds) + 1.5 + 0.3  # ylabel, labels, cells, colour bar, pad
    fig.set_figwidth(max(4.0, width, 0.5 * col_w + 1.0))  # the first column label leans left of its cell
    n_title = wrap(title or "Paired d", fig.get_figwidth()).count("\n") + 1
    fig.set_figheight(0.6 + 0.25 * n_title + 0.5 * col_w + 0.3 + row_h * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(vals), cmap="RdBu", aspect="auto",
                   norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax))
    for i in range(len(rows)):
        for j in range(len(conds)):
            dark = np.isfinite(vals[i, j]) and abs(vals[i, j]) > 0.6 * vmax
            ax.text(j, i, texts[i, j], ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(conds)), conds, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    if ylabel:
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label="d (positive: condition better)")
    suptitle(fig, title or "Paired d")
    return fig


def plot_length_curves(curv: Mapping[str, list[dict]], path, title: str = "", dashed=(),
                       xlabel: str = "prefix length L (tokens)", log_x: bool = True) -> Path:
    """d vs bare against prefix length L (log2 axis), one line per content with its CI band (``dashed``: names drawn dashed).

    The points' ``ci_low``/``ci_high`` are the bootstrap 95% CIs of ``lib.report.stats.compare_conditions``; the
    legend names the shaded bands as such (exp05's lengths, exp06's layer cutoffs, exp10's document lengths).
    """
    out = _out_path(path)
    return _save(_length_curves_figure(curv, title, dashed, xlabel, log_x), out)


BAND_LABEL = "shaded band: 95% bootstrap CI of d"


def _length_curves_figure(curv: Mapping[str, list[dict]], title: str = "", dashed=(),
                          xlabel: str = "prefix length L (tokens)", log_x: bool = True) -> Figure:
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
    ax.set_ylabel("d vs bare (positive: lower answer NLL), 95% bootstrap CI")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="tab:gray", alpha=0.25, label=BAND_LABEL))
    ax.legend(handles=handles, fontsize=8, ncol=2)
    suptitle(fig, title or "effect vs prefix length")
    return fig


def plot_decomposition(rows: list[dict], path, title: str = "") -> Path:
    """Stacked mean NLL components per L (``lib.studies.prefixlen.decompose`` rows), one panel per content; a black tick marks the total."""
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
    suptitle(fig, title or "structure / vocabulary / meaning")
    return _save(fig, _out_path(path))


def plot_training_curves(histories: Mapping[str, list[dict]], path, title: str = "", smooth: int = 10) -> Path:
    """Loss (raw, light; running mean over ``smooth`` steps, bold), gradient norm and, when it varies,
    prefix norm per optimizer step; one legend for all panels, outside the axes."""
    out = _out_path(path)
    return _save(_training_figure(histories, title, smooth), out)


def _constant(values: list, rtol: float = 1e-9) -> bool:
    lo, hi = min(values), max(values)
    return hi - lo <= rtol * max(1.0, abs(hi))


def _training_figure(histories: Mapping[str, list[dict]], title: str = "", smooth: int = 10) -> Figure:
    if not histories or not any(histories.values()):
        raise ValueError("no training history to plot")
    norms = [h["prefix_norm"] for hist in histories.values() for h in hist if h.get("prefix_norm") is not None]
    # exp12's compressor rescales every prefix to a fixed RMS (``Compressor.target_rms``), so its logged
    # prefix norm is one number for the whole run: a flat panel that carries nothing. It is drawn only when
    # it varies (exp07's free soft prefixes); otherwise its constant value is named under the loss panel.
    show_norm = bool(norms) and not _constant(norms)
    panels = [("loss", "answer NLL (training)"), ("grad_norm", "gradient norm (before clipping)")]
    if show_norm:
        panels.append(("prefix_norm", "mean prefix vector norm"))
    fig = _new_figure(4.6 * len(panels) + 1.6, 4)
    axes = fig.subplots(1, len(panels))
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
        for ax, (key, _) in zip(axes[1:], panels[1:]):
            ax.plot(x, [h[key] for h in hist], color=color, label=name)
    for ax, (_, lab) in zip(axes, panels):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(lab)
    if norms and not show_norm:
        axes[0].set_xlabel(f"optimizer step\n(prefix vector norm constant at {norms[0]:.4g}: not plotted)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside right upper")
    suptitle(fig, title or "soft prefix training")
    return fig


def plot_soft_eval(comparisons: list[dict], nll: Mapping[str, object], hardness: list[dict], ref: str, path,
                   title: str = "", pair: tuple[str, str] | None = None, reference_d: Mapping[str, float] | None = None) -> Path:
    """Four panels: d vs ``ref`` with CI (dashed lines at ``reference_d``: {label: d} of other runs);
    mean NLL with CI; d by hardness quintile (integer ticks); per-sample deltas of ``pair``."""
    out = _out_path(path)
    return _save(_soft_eval_figure(comparisons, nll, hardness, ref, title, pair, reference_d), out)


def _soft_eval_figure(comparisons: list[dict], nll: Mapping[str, object], hardness: list[dict], ref: str,
                      title: str = "", pair: tuple[str, str] | None = None,
                      reference_d: Mapping[str, float] | None = None) -> Figure:
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
    for i, (label, value) in enumerate((reference_d or {}).items()):
        a.axvline(value, color=f"C{i + 2}", lw=1.0, ls="--", label=f"{label} {value:+.3f}")
    if reference_d:
        a.legend(fontsize=7, loc="lower right")
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
        c.set_xticks(sorted({int(h["bin"]) for h in hardness}))  # bins are integers: no 0.5 ticks
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
    suptitle(fig, title or "soft prefix evaluation")
    return fig
