"""Figures of old executed notebooks: the run's own PNGs attached beside the printed paths, once, missing ones reported."""
import base64
import json

from lib.tools import attach_figures

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _nb(folder, outputs_per_cell):
    cells = [{"cell_type": "code", "source": "x", "metadata": {}, "outputs": outs, "execution_count": 1} for outs in outputs_per_cell]
    p = folder / "run.executed.ipynb"
    p.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return p


def test_attaches_the_folder_pngs_once_and_reports_missing(tmp_path):
    (tmp_path / "effects.png").write_bytes(PNG)
    printed = {"output_type": "stream", "name": "stdout", "text": [f"['{tmp_path}/effects.png', '/elsewhere/mean_nll.png']\n"]}
    shown = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "AAA", "text/plain": ["<x>"]}}
    nb = _nb(tmp_path, [[printed], [dict(printed), shown], [{"output_type": "stream", "name": "stdout", "text": ["no figures\n"]}]])
    r = attach_figures.attach(nb)
    assert r == {"attached": ["effects.png"], "missing": ["mean_nll.png"]}
    cells = json.loads(nb.read_text())["cells"]
    outs = cells[0]["outputs"]
    assert outs[0] == printed  # the run's own output stays
    assert "attached after the run" in "".join(outs[1]["text"])
    assert base64.b64decode(outs[2]["data"]["image/png"]) == PNG
    assert len(cells[1]["outputs"]) == 2 and len(cells[2]["outputs"]) == 1  # already showing images / no paths: untouched
    before = nb.read_text()
    assert attach_figures.attach(nb)["attached"] == [] and nb.read_text() == before  # idempotent


def test_attaches_the_run_tables_once_when_the_notebook_rendered_none(tmp_path):
    import nbformat

    from lib.report import logblocks

    run = tmp_path / "exp02_x"
    run.mkdir()
    res = {"experiment": "exp02", "config": {"MODEL": "m", "N_SAMPLES": 2}, "summary": {
        "primary_test": "t", "mean_nll": {"bare": 1.0, "oracle": 0.9},
        "comparisons": [{"ref": "bare", "cond": "oracle", "n": 2, "mean_delta": 0.1, "mean_delta_ci_low": 0.05,
                         "mean_delta_ci_high": 0.15, "pct_of_ref": 10.0, "pct_ci_low": 5.0, "pct_ci_high": 15.0, "d": 0.5,
                         "ci_low": 0.1, "ci_high": 0.9, "win_rate": 1.0, "p_holm": 0.01, "p_wilcoxon_holm": 0.02}]}}
    (run / "results.json").write_text(json.dumps(res))
    nb = _nb(run, [[{"output_type": "stream", "name": "stdout", "text": ["bare vs oracle  d +0.50\n"]}]])
    assert attach_figures.attach_tables(nb) is True
    data = json.loads(nb.read_text())
    last = data["cells"][-1]
    assert last["cell_type"] == "markdown" and last["metadata"][attach_figures.TABLES_MARK]
    assert logblocks.render("exp02_x", tmp_path) in last["source"] and "+0.1000" in last["source"]
    nbformat.validate(nbformat.reads(nb.read_text(), as_version=4))
    before = nb.read_text()
    assert attach_figures.attach_tables(nb) is False and nb.read_text() == before  # idempotent
    html = {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<table></table>", "text/plain": ["t"]}}
    shown = _nb(run, [[html]])
    assert attach_figures.attach_tables(shown) is False  # it rendered its own tables
