"""Provenance that cannot lie: dirty includes untracked code, the code hash sees edits made while a
run goes, the start state is kept beside the end state, SMOKE / cut-down runs say so, and model
weights are identified by checksum."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.lab import codestate
from lib.kv import hashing

REPO = Path(__file__).resolve().parents[1]
# what ``lib.lab.records.provenance`` imports (the lab modules, lib.data's JSON writers, lib.kv.hashing)
PROVENANCE_FILES = ("lib/__init__.py", "lib/lab/__init__.py", "lib/lab/runs.py", "lib/lab/records.py",
                    "lib/lab/codestate.py",
                    "lib/data/__init__.py", "lib/data/core.py", "lib/data/realdata.py", "lib/data/registry.py",
                    "lib/data/schema.py", "lib/data/hub.py", "lib/data/synthetic.py",
                    "lib/data/jsonio.py", "lib/kv/__init__.py", "lib/kv/hashing.py")

SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from lib.lab import codestate, records
codestate.mark_start({"SMOKE": True, "N_SAMPLES": 8, "N_BOOT": 2000, "SEED": 1},
                     {"SMOKE": False, "N_SAMPLES": 200, "N_BOOT": 2000, "SEED": 42})
step = sys.argv[1]
if step == "edit":
    Path("builders/build_x.py").write_text("X = 2\\n")
elif step == "untracked":
    Path("lib/new_module.py").write_text("Y = 1\\n")
print(json.dumps(records.provenance()))
"""


def _repo(tmp_path):
    root = tmp_path / "repo"
    (root / "builders").mkdir(parents=True)
    for name in PROVENANCE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((REPO / name).read_bytes())
    (root / "builders" / "build_x.py").write_text("X = 1\n")
    (root / "run.py").write_text(SCRIPT)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root, env


def _prov(root, env, step):
    out = subprocess.run([sys.executable, "run.py", step], cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_clean_run_records_start_state_and_kind(tmp_path):
    root, env = _repo(tmp_path)
    prov = _prov(root, env, "none")
    assert prov["dirty"] is False and prov["start"]["dirty"] is False
    assert prov["start"]["commit"] == prov["commit"] and prov["code_changed_during_run"] is False
    assert prov["run_kind"] == {"smoke": True, "cut_down": {"N_SAMPLES": [8, 200]}, "random_init": False}
    assert len(prov["code_sha256"]) == 64 and prov["models"] == []


def test_an_edit_during_the_run_is_flagged(tmp_path):
    root, env = _repo(tmp_path)
    prov = _prov(root, env, "edit")
    assert prov["code_changed_during_run"] is True
    assert prov["start"]["dirty"] is False and prov["dirty"] is True
    assert prov["start"]["code_sha256"] != prov["code_sha256"]


def test_untracked_code_makes_the_tree_dirty(tmp_path):
    root, env = _repo(tmp_path)
    prov = _prov(root, env, "untracked")
    assert prov["dirty"] is True and "?? lib/new_module.py" in prov["dirty_files"]
    assert prov["code_changed_during_run"] is True  # a new module is new code


def test_run_kind_lists_size_knobs_below_their_defaults():
    got = codestate.run_kind({"N_SAMPLES": 48, "STEPS": 10, "LR": 1e-4, "N_BOOT": 2000, "SMOKE": False, "FAST": True},
                             {"N_SAMPLES": 200, "STEPS": 500, "LR": 1e-3, "N_BOOT": 2000, "SMOKE": False, "FAST": False})
    assert got == {"smoke": False, "cut_down": {"N_SAMPLES": [48, 200], "STEPS": [10, 500]}}
    assert codestate.run_kind(None, None) == {"smoke": False, "cut_down": {}}


def test_cached_sha256_reuses_the_sidecar_until_the_file_changes(tmp_path, monkeypatch):
    f, side = tmp_path / "w.bin", tmp_path / "sums.json"
    f.write_bytes(b"abc")
    want = hashing.sha256_bytes(b"abc")
    assert hashing.cached_sha256(f, side) == want
    assert json.loads(side.read_text())["w.bin"]["sha256"] == want
    monkeypatch.setattr(hashing, "sha256_file", lambda p: pytest.fail("hashed again although unchanged"))
    assert hashing.cached_sha256(f, side) == want
    monkeypatch.undo()
    f.write_bytes(b"abcd")
    assert hashing.cached_sha256(f, side) == hashing.sha256_bytes(b"abcd")


@pytest.mark.slow
def test_a_loaded_bundled_model_is_identified_by_its_weights(smollm2):
    ident = smollm2.identity
    assert ident["name"] == "smollm2-135m-instruct" and ident["random_init"] is False
    folder = Path(smollm2.source.split(":", 1)[1])
    assert ident["weights_sha256"] == {"model.safetensors": hashing.sha256_file(folder / "model.safetensors")}
    assert ident["conversion"]["name"] == "smollm2-135m-instruct"
    from lib.kv import models
    from lib.lab import records

    assert ident in models.LOADED and ident in records.provenance()["models"]
