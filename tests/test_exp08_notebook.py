"""exp08 notebook: the real experiment's defaults, and a papermill SMOKE run that writes every figure
and metrics file of the four parts and its checkpoint store (the build itself: tests/test_notebooks.py).
Kill and resume are tested at the lib level (``tests/test_reachability_resume.py``, a SIGKILLed
subprocess included): here they would cost two more notebook runs."""
import json
import os

import pytest

from lib.lab.records import read_per_item_csv
from nbrun import ROOT, load_builder, smoke

PART_DIRS = ("part1_real", "part2a_matched", "part2b_raw", "part3_interpolation", "part4_dimensions")
PART_FILES = ("loss_curves.png", "final_mse_histogram.png", "cosine_by_position.png", "metrics.json")


def test_exp08_defaults_are_the_experiment():
    """The build itself (deterministic, equal to the committed notebook, every knob) is checked for every
    builder in test_notebooks.py; here: the defaults are the real experiment's."""
    defaults = {p.name: p.default for p in load_builder(ROOT / "builders" / "build_exp08.py").PARAMS}
    assert defaults["MODEL"] == "EleutherAI/pythia-160m" and defaults["TEXT"] == "wikitext"
    assert (defaults["LR"], defaults["STEPS"], defaults["MAX_STEPS"], defaults["RESTARTS"]) == (0.01, 2000, 5000, 5)


@pytest.mark.slow
def test_exp08_smoke_run_writes_every_file(tmp_path):
    small = {"N_FIT": "100", "N_REAL": "2", "N_RANDOM": "2", "ALPHAS": "0,1,2", "FRACTIONS": "0,0.5,1",
             "STEPS": "4", "MAX_STEPS": "6", "N_TEXTS": "80", "CHECKPOINT_EVERY": "3"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = smoke("experiments/exp08/exp08_reachability.ipynb", tmp_path, env=env, **small)
    for d in PART_DIRS:
        for f in PART_FILES:
            assert (tmp_path / d / f).is_file(), f"{d}/{f}"
    for f in ("summary.png", "experiment3_pair_curves.png", "experiment4_transition.png", "results.json"):
        assert (tmp_path / f).is_file(), f
    r = json.loads((tmp_path / "results.json").read_text())
    # part 3's reachability curve per pair (alpha -> relative MSE), in results.json and metrics.json
    (pair,) = r["summary"]["per_pair"]
    assert pair["alpha"] == [0.0, 1.0, 2.0] and len(pair["relative_mse"]) == 3 and {pair["a"], pair["b"]} == {0, 1}
    m3 = json.loads((tmp_path / "part3_interpolation" / "metrics.json").read_text())
    assert m3["summary"]["by_group"][0]["relative_mse"] == pair["relative_mse"]
    # the checkpoint store: one finished chunk per part (CHUNK 500), the step decision, nothing resumed
    rows = [json.loads(x) for x in (tmp_path / "_store" / "items.jsonl").read_text().splitlines()]
    assert {(x["part"], x["chunk"]) for x in rows if isinstance(x["chunk"], int)} == {(k, 0) for k in ("1", "2a", "2b", "3", "4")}
    assert [x["decision"] for x in rows if x["chunk"] == "extension"] == [r["extension"]]
    assert r["store"]["1"] == {"chunks": 1, "resumed_chunks": 0}
    assert r["config"]["MODEL"] == "smollm2-135m-instruct" and r["config"]["STEPS"] == 4
    assert r["steps_run"] in (4, 6) and r["extension"]["steps_run"] == r["steps_run"]
    assert r["shared"]["norm_check"]["hidden_states_includes_final_norm"] is True
    assert len(r["summary"]["interpretation"]) == 9 and all(isinstance(row["holds"], bool) for row in r["summary"]["interpretation"])
    # like every other experiment: a config hash, N (targets over all parts), a per-item CSV, the run kind
    assert len(r["config_hash"]) == 64 and r["summary"]["n_samples"] == sum(r["summary"]["n_targets"].values())
    assert r["provenance"]["run_kind"]["smoke"] is True and "N_FIT" in r["provenance"]["run_kind"]["cut_down"]
    per = read_per_item_csv(tmp_path / "per_item.csv")
    assert len(per) == r["summary"]["n_samples"] and {p["part"] for p in per} == {"1", "2a", "2b", "3", "4"}
    m4 = json.loads((tmp_path / "part4_dimensions" / "metrics.json").read_text())
    assert m4["summary"]["n_targets"] == 3 and m4["summary"]["restarts"] == 2 and set(m4["by_label"]) == {"0.0", "0.5", "1.0"}
    m1 = json.loads((tmp_path / "part1_real" / "metrics.json").read_text())
    assert len(m1["summary"]["targets"]) == 2 and len(m1["summary"]["cosine_by_position"]["mean"]) == 20
    assert m1["provenance"]["commit"] and m1["summary"]["threshold"]["reach_frac"] == 0.01
    # which texts: the source and a hash of the texts read; the log renders it as an exp08 block
    assert r["data"]["name"] == "synthetic" and r["data"]["n_texts"] == 80 and len(r["data"]["content_sha256"]) == 64
    from lib.report import blockkinds

    assert blockkinds.kind(r) == "reachability"
