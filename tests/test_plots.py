"""Tests for lib.report.plots: each figure is written, non-empty, and readable back as an image."""

import matplotlib.image as mpimg
import matplotlib.text
import numpy as np
import pytest

from lib.report import plots as P
from lib.report import stats as S
from lib.report import stats_hardness as H

RNG = np.random.default_rng(0)
NLL = {
    "bare": RNG.normal(2.0, 0.5, 40),
    "prefix": RNG.normal(1.8, 0.5, 40),
    "random": RNG.normal(2.1, 0.5, 40),
}


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert float(img[..., :3].std()) > 0  # not a blank canvas


def test_plot_effects(tmp_path):
    rows = S.compare_conditions(NLL, "bare", n_boot=200)
    rows.append({"ref": "bare", "cond": "const", "d": float("inf"), "ci_low": float("nan"),
                 "ci_high": float("nan"), "p_holm": float("nan")})
    out = P.plot_effects(rows, tmp_path / "sub" / "effects.png", title="effects")
    assert out == tmp_path / "sub" / "effects.png"
    _assert_png(out)


def test_plot_effects_rejects_rows_without_keys(tmp_path):
    with pytest.raises(ValueError, match=r"rows\[0\] lacks key\(s\) \['p_holm'\]"):
        P.plot_effects([{"label": "a", "d": 0.1, "ci_low": 0, "ci_high": 0.2}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        P.plot_effects([], tmp_path / "x.png")


def test_plot_delta_hist(tmp_path):
    deltas = {f"{c} vs bare": NLL["bare"] - NLL[c] for c in ("prefix", "random")}
    deltas["third"] = NLL["prefix"] - NLL["random"]
    deltas["fourth"] = NLL["random"] - NLL["prefix"]
    _assert_png(P.plot_delta_hist(deltas, tmp_path / "hist.png", title="deltas"))


def test_plot_hardness_heatmap(tmp_path):
    table = H.hardness_table(NLL, "bare", ["prefix", "random"], n_bins=4, n_perm=50)
    _assert_png(P.plot_hardness_heatmap(table, tmp_path / "heat.png"))
    with pytest.raises(ValueError, match="twice"):
        P.plot_hardness_heatmap(table + table[:1], tmp_path / "heat2.png")


def test_plot_mean_nll(tmp_path):
    _assert_png(P.plot_mean_nll(NLL, str(tmp_path / "mean.png")))
    with pytest.raises(ValueError, match="non-finite"):
        P.plot_mean_nll({"a": [1.0, float("nan")]}, tmp_path / "m.png")


def test_bad_suffix_suggests(tmp_path):
    with pytest.raises(ValueError, match="Did you mean '.png'"):
        P.plot_mean_nll(NLL, tmp_path / "mean.pngg")


# --- layout: labels, titles and legends inside the figure (the figure builders return the Figure) ---

LONG_TITLE = "exp01 qwen2.5-coder-0.5b-instruct squad_v1.1 N=300 prefix=oracle_with_a_long_condition_name"


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _inside(fig, artist, renderer, tol=1.0):
    bb, fb = artist.get_window_extent(renderer), fig.bbox
    return bb.x0 >= fb.x0 - tol and bb.x1 <= fb.x1 + tol and bb.y0 >= fb.y0 - tol and bb.y1 <= fb.y1 + tol


def _title_text(fig, title):
    """The figure's Text whose content, newlines read as spaces, is ``title`` (wrapped, not truncated)."""
    hits = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().replace("\n", " ") == title]
    assert hits, f"no text equals the title {title!r}"
    return hits[0]


def test_plot_effects_long_title_and_labels_lie_inside_the_figure(tmp_path):
    rows = [{"label": f"D_trunc_oracle_{i} vs E_trunc_random_surrogate_{i}", "d": 0.3 - 0.2 * i, "ci_low": 0.1 - 0.2 * i,
             "ci_high": 0.5 - 0.2 * i, "p_holm": 0.01} for i in range(4)]
    fig = P._effects_figure(rows, LONG_TITLE)
    r = _drawn(fig)
    title = _title_text(fig, LONG_TITLE)
    assert _inside(fig, title, r)
    assert all(_inside(fig, t, r) for t in fig.axes[0].get_yticklabels())
    _assert_png(P.plot_effects(rows, tmp_path / "e.png", title=LONG_TITLE))


def test_wrap_keeps_every_word_and_fits_the_width():
    text = LONG_TITLE + " " + LONG_TITLE
    out = P.wrap(text, 4.0)
    assert "".join(out.split()) == "".join(text.split()) and out.count("\n") >= 2  # nothing cut, only wrapped
    assert max(len(line) for line in out.split("\n")) < len(LONG_TITLE)
    assert P.wrap("short", 4.0) == "short"


def test_d_grid_full_row_labels_and_ci_in_cells(tmp_path):
    row = "qwen2.5-coder-0.5b-instruct | squad_v1.1 | sweeps/big/exp02__qwen2.5-coder-0.5b-instruct__squad_v1.1 | N=300"
    grid = {row: {"oracle": {"d": 0.42, "ci_low": 0.31, "ci_high": 0.54}, "random": {"d": None, "ci_low": None, "ci_high": 0.1}},
            "gemma-3-270m | synthetic | exp02 | N=16": {"oracle": -0.2}}
    fig = P._d_grid_figure(grid, LONG_TITLE, ylabel="model | data set | run folder | N")
    r = _drawn(fig)
    ax = fig.axes[0]
    ticks = ax.get_yticklabels()
    assert [t.get_text() for t in ticks] == list(grid)  # in full, N= included
    assert all(_inside(fig, t, r) for t in ticks) and _inside(fig, _title_text(fig, LONG_TITLE), r)
    cells = [t.get_text() for t in ax.texts]
    assert cells == ["+0.42\n[+0.31, +0.54]", "n/a\n[n/a, +0.10]", "-0.20", "n/a"]
    _assert_png(P.plot_d_grid(grid, tmp_path / "g.png", title=LONG_TITLE))


def _curve(shift):
    return [{"length": L, "d": shift + 0.1 * i, "ci_low": shift + 0.1 * i - 0.2, "ci_high": shift + 0.1 * i + 0.2}
            for i, L in enumerate((1, 2, 4, 8))]


def test_length_curves_label_their_bands_as_95_bootstrap_ci(tmp_path):
    fig = P._length_curves_figure({"values_early": _curve(0.0), "values_late": _curve(-0.3)}, "exp06", xlabel="layer cutoff c",
                                  log_x=False)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("95% bootstrap CI" in t for t in legend), legend
    _assert_png(P.plot_length_curves({"a": _curve(0.0)}, tmp_path / "c.png"))


def test_soft_eval_hardness_quintile_ticks_are_integers(tmp_path):
    comps = S.compare_conditions(NLL, "bare", n_boot=50)
    hard = [{"cond": c, "bin": b, "d": 0.1 * b} for c in ("prefix", "random") for b in range(5)]
    fig = P._soft_eval_figure(comps, NLL, hard, "bare", "exp07", pair=("prefix", "random"))
    _drawn(fig)
    c = fig.axes[2]
    assert "quintile" in c.get_xlabel()
    labels = [t.get_text().replace("\u2212", "-") for t in c.get_xticklabels()]
    assert labels == ["0", "1", "2", "3", "4"]


def _history(norm):
    return [{"opt_step": s, "loss": 5.0 - 0.01 * s, "grad_norm": 3.0 + (s % 3), "prefix_norm": norm(s)} for s in range(1, 31)]


def _legend_clear_of_axes(fig, r):
    (leg,) = fig.legends
    lb = leg.get_window_extent(r)
    assert _inside(fig, leg, r)
    assert all(ax.get_legend() is None for ax in fig.axes)
    return all(not lb.overlaps(ax.get_window_extent(r)) for ax in fig.axes)


def test_training_curves_drop_a_constant_prefix_norm_and_keep_the_legend_outside(tmp_path):
    fig = P._training_figure({"M=4": _history(lambda s: 0.1336), "M=16": _history(lambda s: 0.1336)}, LONG_TITLE)
    r = _drawn(fig)
    assert len(fig.axes) == 2 and not any("prefix" in ax.get_ylabel() for ax in fig.axes)
    assert "constant at 0.1336" in fig.axes[0].get_xlabel()
    assert _legend_clear_of_axes(fig, r)
    fig = P._training_figure({"soft": _history(lambda s: 1.0 + 0.01 * s)})  # exp07: the norm moves, the panel stays
    r = _drawn(fig)
    assert len(fig.axes) == 3 and "prefix" in fig.axes[2].get_ylabel()
    assert _legend_clear_of_axes(fig, r)
    _assert_png(P.plot_training_curves({"a": _history(lambda s: 0.5)}, tmp_path / "t.png"))

