"""lib.report.index's cross-model figure: full row labels with N, d with its 95% CI, exp11's bidirectional vs causal."""
import json

import pytest

from lib.report import index


def _cmp(ref, cond, d):
    return {"label": f"{cond} vs {ref}", "ref": ref, "cond": cond, "n": 16, "d": d, "ci_low": d - 0.3, "ci_high": d + 0.3}


def _exp11(root, run, model, d_bidir):
    folder = root / run
    folder.mkdir(parents=True)
    summary = {"n_samples": 16,
               "vs_bare": {"causal": [_cmp("bare__causal", "oracle__causal", 0.2)],
                           "bidirectional": [_cmp("bare__bidirectional", "oracle__bidirectional", 0.1)]},
               "bidirectional_vs_causal": [_cmp("bare__causal", "bare__bidirectional", d_bidir),
                                           _cmp("oracle__causal", "oracle__bidirectional", d_bidir + 0.05)]}
    (folder / "results.json").write_text(json.dumps({"config": {"MODEL": model, "DATASET": "synthetic"}, "summary": summary}))


def test_cross_model_grid_has_full_run_labels_n_and_cis():
    run = "sweeps/smoke_with_a_long_name/exp02__qwen2.5-coder-0.5b-instruct__squad_v1.1__n300"
    rows = [{"experiment": "exp02", "run": run, "model": "qwen2.5-coder-0.5b-instruct", "dataset": "squad_v1.1", "n": 300,
             "headline": [], "effects": [{"label": "oracle", "d": 0.42, "ci_low": 0.31, "ci_high": 0.54}]},
            {"experiment": "exp02", "run": "exp02", "model": "m", "dataset": "d", "n": "", "headline": [],
             "effects": [{"label": "oracle", "d": None, "ci_low": None, "ci_high": None}]}]
    grid = index._cross_model_grid(rows, "exp02")
    assert list(grid) == [f"qwen2.5-coder-0.5b-instruct | squad_v1.1 | {run} | N=300", "m | d | exp02 | N=?"]
    assert grid[list(grid)[0]] == {"oracle": {"d": 0.42, "ci_low": 0.31, "ci_high": 0.54}}
    with pytest.raises(ValueError, match="no results for experiment 'exp03'"):
        index._cross_model_grid(rows, "exp03")



def test_exp06_best_cutoffs_share_one_column_and_name_their_cutoff():
    from lib.report import plots

    rows = [{"experiment": "exp06", "run": f"r{c}", "model": f"m{c}", "dataset": "d", "n": 8, "headline": [],
             "effects": [{"label": "primed", "d": 0.1, "ci_low": 0.0, "ci_high": 0.2},
                         {"label": f"best early cutoff {c}", "d": 0.3, "ci_low": 0.1, "ci_high": 0.5}]} for c in (2, 21)]
    grid = index._cross_model_grid(rows, "exp06")
    cols = {k for row in grid.values() for k in row}
    assert cols == {"primed", "best early cutoff (chosen on these samples)"}
    assert grid["m21 | d | r21 | N=8"]["best early cutoff (chosen on these samples)"]["note"] == "c=21"
    assert plots._grid_cell(grid["m2 | d | r2 | N=8"]["best early cutoff (chosen on these samples)"])[1] == "c=2: +0.30\n[+0.10, +0.50]"


def test_exp11_cross_model_figure_includes_bidirectional_vs_causal(tmp_path):
    _exp11(tmp_path, "sweeps/smoke/exp11__gemma-3-270m__synthetic", "gemma-3-270m", -2.14)
    _exp11(tmp_path, "exp11", "smollm2-135m-instruct", -0.22)
    rows = index.collect(tmp_path)
    assert all("bidirectional_vs_causal" not in str(r["effects"]) for r in rows)  # _headline picks vs bare only
    grid = index._cross_model_grid(rows, "exp11", tmp_path / "cross_model_exp11.png")
    gemma = grid["gemma-3-270m | synthetic | sweeps/smoke/exp11__gemma-3-270m__synthetic | N=16"]
    assert gemma["bare__bidirectional vs bare__causal"] == {"d": -2.14, "ci_low": pytest.approx(-2.44), "ci_high": pytest.approx(-1.84)}
    assert {"oracle__causal", "oracle__bidirectional", "oracle__bidirectional vs oracle__causal"} <= set(gemma)
    # the figure's folder, an explicit results_root, or the rows' own summary (lib.report.overview) all find it
    assert index._cross_model_grid(rows, "exp11", results_root=tmp_path) == grid
    with_summary = [{**r, "summary": json.loads((tmp_path / r["run"] / "results.json").read_text())["summary"]} for r in rows]
    assert index._cross_model_grid(with_summary, "exp11") == grid
    out = index.cross_model_figure(rows, "exp11", tmp_path / "cross_model_exp11.png")
    assert out.stat().st_size > 1000
    # rows from collect() carry their folder; without it, a results_root that lacks the run raises
    bare_rows = [{k: v for k, v in r.items() if k != "folder"} for r in rows]
    assert index._cross_model_grid(rows, "exp11", results_root=tmp_path / "elsewhere") == grid
    with pytest.raises(ValueError, match="no results.json of it found"):
        index._cross_model_grid(bare_rows, "exp11", results_root=tmp_path / "elsewhere")
    # a run of the same name with another model (e.g. the repository's results/exp11) is not this row's run
    other = [{**r, "model": "another-model"} for r in bare_rows if r["run"] == "exp11"]
    with pytest.raises(ValueError, match="another-model"):
        index._cross_model_grid(other, "exp11", tmp_path / "figs" / "x.png")


def test_real_data_figures_leave_out_synthetic_and_smoke_runs(tmp_path):
    _exp11(tmp_path, "sweeps/smoke/exp11__gemma-3-270m__synthetic", "gemma-3-270m", -2.14)
    _exp11(tmp_path, "exp11_real", "smollm2-135m-instruct", -0.22)
    f = tmp_path / "exp11_real" / "results.json"
    r = json.loads(f.read_text())
    f.write_text(json.dumps({**r, "config": {**r["config"], "DATASET": "squad_v1.1"}}))
    rows = index.collect(tmp_path)
    grids = {}
    paths = index.real_figures(rows, tmp_path / "figs", draw=lambda grid, path: grids.setdefault(path.name, grid))
    assert [p.name for p in paths] == ["cross_model_real_exp11.png"]
    assert list(grids["cross_model_real_exp11.png"]) == ["smollm2-135m-instruct | squad_v1.1 | exp11_real | N=16"]


def test_real_data_figures_skip_a_family_without_d_comparisons(tmp_path):
    """exp12's real run has a per-model F1 table and no paired d: no empty cross-model figure (plotting one raised)."""
    _exp11(tmp_path, "exp11_real", "smollm2-135m-instruct", -0.22)
    f = tmp_path / "exp11_real" / "results.json"
    r = json.loads(f.read_text())
    f.write_text(json.dumps({**r, "config": {**r["config"], "DATASET": "squad_v1.1"}}))
    (tmp_path / "exp12_real").mkdir()
    (tmp_path / "exp12_real" / "results.json").write_text(json.dumps({
        "config": {"MODELS": "a,b", "DATASET": "squad_v1.1"}, "provenance": {"run_kind": {"smoke": False, "random_init": False}},
        "summary": {"by_model": {"a": [{"condition": "text", "m": 0, "n": 100, "f1": 0.3}]}}}))
    rows = index.collect(tmp_path)
    assert {r["experiment"] for r in rows} == {"exp11", "exp12"}
    paths = index.real_figures(rows, tmp_path / "figs")
    assert [p.name for p in paths] == ["cross_model_real_exp11.png"]


def test_exp10_cross_model_figure_shows_every_length_curve_point():
    rows = [r for r in index.collect() if r["run"] == "exp10"]  # the committed SMOKE run: lengths 0, 256, 600, two paths
    grid = index._cross_model_grid(rows, "exp10", results_root=index.ROOT / "results")
    (cells,) = grid.values()
    assert len(cells) == 2 * 3 * 3  # paths x lengths x (oracle vs bare, random vs bare, oracle vs random)
    assert "decoder: oracle_len600 vs random_len600" in cells and "encdec: random_len0 vs bare_len0" in cells
    assert not any("@L=" in k for k in cells)  # the headline's single point is replaced, not repeated
