"""Tests for lib.plots: each figure is written, non-empty, and readable back as an image."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from lib import plots as P
from lib import stats as S

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
    table = S.hardness_table(NLL, "bare", ["prefix", "random"], n_bins=4, n_perm=50)
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
