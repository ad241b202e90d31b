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
