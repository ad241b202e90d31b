"""SMOKE never swallows an explicit value: a knob given with ``-p`` keeps its value even when it
equals the default (issue 15, item 3). "Given" is read from the cells that ran after the parameters
cell (``lib.lab.notebook.given_names``), not from the values, which cannot tell (see below)."""
import json

import pytest

from lib.lab.notebook import PARAMS_HEADER, Param, code, given_names, parameters, setup, smoke_values, write_notebook
from nbrun import run_notebook

DEFAULTS = {"MODEL": "big", "N_SAMPLES": 200, "RATE": 0.5, "PROGRESS": True, "SMOKE": False}
SMOKE_VALUES = {"MODEL": "small", "N_SAMPLES": 4, "RATE": 0.1, "PROGRESS": False}
PARAMS_CELL = PARAMS_HEADER + "\nMODEL: str = 'big'  # m\nN_SAMPLES: int = 200  # n\nRATE: float = 0.5  # r\nPROGRESS: bool = True  # p\nSMOKE: bool = False  # s"


def test_identity_cannot_tell_an_injected_value_from_the_default():
    """Why the values (and their identities) are not used: papermill's ``N_SAMPLES = 200`` binds the
    very object the parameters cell bound (small-int cache, interned strings, bool singletons)."""
    ns: dict = {}
    exec(compile("N = 200\nS = 'big'\nB = True", "<parameters>", "exec"), ns)
    first = {k: id(ns[k]) for k in "NSB"}
    exec(compile("N = 200\nS = 'big'\nB = True", "<injected>", "exec"), ns)
    assert {k: id(ns[k]) for k in "NSB"} == first


def test_given_names_reads_the_cells_after_the_last_parameters_cell():
    injected = "# Parameters\nSMOKE = True\nN_SAMPLES = 200\nMODEL = 'big'\n"
    hist = ["", "import os", PARAMS_CELL, injected, "import sys\nCONFIG = {}"]
    assert given_names(DEFAULTS, hist) == {"SMOKE", "N_SAMPLES", "MODEL"}
    # no injected cell: nothing given
    assert given_names(DEFAULTS, ["", PARAMS_CELL, "x = 1"]) == set()
    # the parameters cell re-run (JupyterLab): only what ran after its LAST run counts
    assert given_names(DEFAULTS, ["", PARAMS_CELL, injected, PARAMS_CELL, "RATE = 0.5"]) == {"RATE"}
    # annotated, augmented, tuple assignments; names bound inside functions or non-knobs do not count
    hist = ["", PARAMS_CELL, "RATE: float = 0.5\nN_SAMPLES += 0\n(MODEL, other) = ('big', 1)\ndef f():\n    PROGRESS = 1"]
    assert given_names(DEFAULTS, hist) == {"RATE", "N_SAMPLES", "MODEL"}
    # a cell with IPython syntax (raw history) falls back to line starts
    assert given_names(DEFAULTS, ["", PARAMS_CELL, "%time x = 1\nN_SAMPLES = 200"]) == {"N_SAMPLES"}
    # no history / no parameters cell in it: unknown
    assert given_names(DEFAULTS, []) is None
    assert given_names(DEFAULTS, ["", "N_SAMPLES = 200"]) is None
    assert given_names(DEFAULTS) is None  # outside an IPython kernel


@pytest.mark.parametrize("given, expect", [
    (set(), {"MODEL": "small", "N_SAMPLES": 4, "RATE": 0.1, "PROGRESS": False, "SMOKE": True}),
    # equal to the default but given: kept, for every type
    ({"SMOKE", "MODEL", "N_SAMPLES", "RATE", "PROGRESS"}, {**DEFAULTS, "SMOKE": True}),
    ({"N_SAMPLES"}, {"MODEL": "small", "N_SAMPLES": 200, "RATE": 0.1, "PROGRESS": False, "SMOKE": True}),
    (None, {"MODEL": "small", "N_SAMPLES": 4, "RATE": 0.1, "PROGRESS": False, "SMOKE": True}),
])
def test_smoke_values_keep_every_given_knob(given, expect):
    current = {**DEFAULTS, "SMOKE": True}
    assert smoke_values(True, current, DEFAULTS, SMOKE_VALUES, given) == expect


def test_smoke_values_keep_a_value_that_differs_from_the_default():
    current = {**DEFAULTS, "SMOKE": True, "N_SAMPLES": 50}  # e.g. edited in the parameters cell
    out = smoke_values(True, current, DEFAULTS, SMOKE_VALUES, set())
    assert out["N_SAMPLES"] == 50 and out["MODEL"] == "small"
    assert smoke_values(False, current, DEFAULTS, SMOKE_VALUES, set()) == current


@pytest.mark.slow  # papermill starts a kernel (~10 s); no model
def test_papermill_explicit_default_valued_knob_survives_smoke(tmp_path):
    """``-p SMOKE True -p N_SAMPLES 200 -p MODEL big -p PROGRESS True`` on a notebook built by the kit
    (parameters + setup cells only): the given knobs keep their default-equal values, RATE takes SMOKE's."""
    params = [Param("MODEL", str, "big", "m"), Param("N_SAMPLES", int, 200, "n"), Param("RATE", float, 0.5, "r"),
              Param("PROGRESS", bool, True, "p"), Param("SMOKE", bool, False, "s")]
    out = tmp_path / "config.json"
    nb = write_notebook([parameters(params), setup(params, SMOKE_VALUES),
                         code(f"import json\nPath({str(out)!r}).write_text(json.dumps({{'config': CONFIG, 'given': sorted(GIVEN)}}))")],
                        tmp_path / "knobs.ipynb")
    run_notebook(nb, tmp_path / "executed.ipynb", timeout=300, SMOKE=True, N_SAMPLES=200, MODEL="big", PROGRESS=True)
    got = json.loads(out.read_text())
    assert got["given"] == ["MODEL", "N_SAMPLES", "PROGRESS", "SMOKE"]
    assert got["config"] == {"MODEL": "big", "N_SAMPLES": 200, "RATE": 0.1, "PROGRESS": True, "SMOKE": True}
    executed = (tmp_path / "executed.ipynb").read_text()
    assert "set by SMOKE: {'RATE': 0.1}" in executed
