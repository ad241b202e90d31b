"""Tests for lib/lab/runs.py (resumable store, kill recovery, config checks) and lib/lab/records.py (writers,
provenance)."""
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lib.data.jsonio import write_json_atomic
from lib.lab.records import provenance, read_per_item_csv, write_per_item_csv, write_results_json
from lib.lab.runs import ConfigMismatch, RunStore, config_hash

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"model": "tiny", "n_samples": 4, "seed": 0, "layers": (1, 2)}


def _rows(ids, conditions=("bare", "oracle")):
    return [{"sample_id": s, "condition": c, "nll": [0.5, float(s)], "n_tokens": 2}
            for s in ids for c in conditions]


def test_resume_after_chunked_appends(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    written = _rows(range(5))
    for start in range(0, len(written), 3):
        store.append(written[start:start + 3])
    again = RunStore(tmp_path, dict(reversed(list(CONFIG.items()))))  # same config, other order
    assert again.done() == {(r["sample_id"], r["condition"]) for r in written}
    assert again.rows() == json.loads(json.dumps(written))
    assert len(again) == 10 and again.recovered_partial == 0
    assert again.is_done(3, "oracle") and not again.is_done(5, "bare")
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["config_hash"] == config_hash(CONFIG) and stored["config"]["layers"] == [1, 2]
    with pytest.raises(ValueError, match="is_done takes 2 values"):
        again.is_done(3)


def test_partial_last_line_is_cut_counted_and_append_continues(tmp_path):
    RunStore(tmp_path, CONFIG).append(_rows([0, 1]))
    items = tmp_path / "items.jsonl"
    before = items.read_bytes()
    with open(items, "ab") as f:
        f.write(b'{"sample_id": 2, "condition": "ba')
    store = RunStore(tmp_path, CONFIG)
    assert store.recovered_partial == 1
    assert items.read_bytes() == before and len(store) == 4
    store.append(_rows([2]))
    reopened = RunStore(tmp_path, CONFIG)
    assert reopened.recovered_partial == 0 and len(reopened) == 6
    assert reopened.done() == {(s, c) for s in range(3) for c in ("bare", "oracle")}


def test_invalid_last_line_with_newline_is_cut(tmp_path):
    RunStore(tmp_path, CONFIG).append(_rows([0]))
    with open(tmp_path / "items.jsonl", "ab") as f:
        f.write(b"\x00\x00\x00\n")
    store = RunStore(tmp_path, CONFIG)
    assert store.recovered_partial == 1 and len(store) == 2


def test_corrupt_middle_line_raises_with_line_number(tmp_path):
    RunStore(tmp_path, CONFIG).append(_rows([0]))
    items = tmp_path / "items.jsonl"
    lines = items.read_text().splitlines(keepends=True)
    items.write_text(lines[0] + "{not json\n" + lines[1])
    with pytest.raises(RuntimeError, match=r"line 2 is corrupt"):
        RunStore(tmp_path, CONFIG)


def test_duplicate_and_missing_keys_rejected_whole_batch(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    store.append(_rows([0]))
    with pytest.raises(ValueError, match=r"duplicate key \(sample_id=0, condition='bare'\): "
                                         r"already stored"):
        store.append(_rows([1]) + _rows([0], ["bare"]))
    with pytest.raises(ValueError, match=r"sample_id=7, condition='x'\) appears twice"):
        store.append([{"sample_id": 7, "condition": "x"}] * 2)
    with pytest.raises(ValueError, match=r"missing key field\(s\) \['condition'\]"):
        store.append([{"sample_id": 9}])
    assert len(store) == 2 and len(RunStore(tmp_path, CONFIG)) == 2


def test_two_stores_on_one_dir_never_duplicate(tmp_path):
    a, b = RunStore(tmp_path, CONFIG), RunStore(tmp_path, CONFIG)
    a.append(_rows([0]))
    with pytest.raises(ValueError, match="already stored"):
        b.append(_rows([0], ["oracle"]))
    b.append(_rows([1]))
    assert b.done() == {(s, c) for s in (0, 1) for c in ("bare", "oracle")}


def test_config_mismatch_names_keys_and_values(tmp_path):
    RunStore(tmp_path, {**CONFIG, "opt": {"lr": 0.1}}).append(_rows([0]))
    new = {**CONFIG, "n_samples": 8, "opt": {"lr": 0.2}, "extra_knob": "x"}
    with pytest.raises(ConfigMismatch) as info:
        RunStore(tmp_path, new)
    msg = str(info.value)
    assert "n_samples: stored 4, new 8" in msg
    assert "opt.lr: stored 0.1, new 0.2" in msg
    assert 'extra_knob: stored <missing>, new "x"' in msg
    assert "model" not in msg.split("\n", 1)[1].split("To keep")[0]
    assert "new out_dir" in msg and "fresh=True" in msg
    with pytest.raises(ConfigMismatch, match=r"key_fields: stored \[\"sample_id\", "):
        RunStore(tmp_path, {**CONFIG, "opt": {"lr": 0.1}}, key_fields=("sample_id",))


def test_fresh_moves_old_store_aside(tmp_path):
    RunStore(tmp_path, CONFIG).append(_rows([0, 1]))
    old_bytes = (tmp_path / "items.jsonl").read_bytes()
    store = RunStore(tmp_path, {**CONFIG, "n_samples": 99}, fresh=True)
    assert len(store) == 0 and store.moved_to is not None
    olds = list(tmp_path.glob("_old_*"))
    assert olds == [store.moved_to]
    assert (store.moved_to / "items.jsonl").read_bytes() == old_bytes
    assert json.loads((store.moved_to / "config.json").read_text())["config"]["n_samples"] == 4
    store.append(_rows([5]))
    second = RunStore(tmp_path, CONFIG, fresh=True)
    assert len(second) == 0 and len(list(tmp_path.glob("_old_*"))) == 2
    assert (second.moved_to / "items.jsonl").read_bytes().count(b"\n") == 2


def test_orphan_items_without_config_raise(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"sample_id": 1, "condition": "bare"}\n')
    with pytest.raises(RuntimeError, match="config.json is missing"):
        RunStore(tmp_path, CONFIG)


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from lib.lab.runs import RunStore
    store = RunStore(sys.argv[2], {"exp": "kill"})
    print("ready", flush=True)
    payload = [0.125] * 300
    for i in range(int(sys.argv[3])):
        if not store.is_done(i, "c"):
            store.append([{"sample_id": i, "condition": "c", "nll": payload}])
""")


@pytest.mark.parametrize("trial", range(4))
def test_sigkill_during_appends_then_resume_covers_every_key_once(tmp_path, trial):
    total = 20000
    rng = random.Random(trial)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(REPO), str(tmp_path), str(total)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    try:
        child.wait(timeout=rng.uniform(0.02, 0.3))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL, "child finished before it was killed"
    child.stdout.close()
    store = RunStore(tmp_path, {"exp": "kill"})
    assert 0 < len(store) < total and store.recovered_partial in (0, 1)
    store.append([{"sample_id": i, "condition": "c", "nll": []}
                  for i in range(total) if not store.is_done(i, "c")])
    ids = [r["sample_id"] for r in RunStore(tmp_path, {"exp": "kill"}).rows()]
    assert sorted(ids) == list(range(total))


def test_config_hash_stable_and_strict():
    a = {"b": 1, "a": [1, 2], "c": {"y": 2, "x": 1}}
    b = {"c": {"x": 1, "y": 2}, "a": (1, 2), "b": 1}
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(a))
    assert config_hash(a) != config_hash({**a, "b": 2})
    with pytest.raises(ValueError, match=r"opt\.lr: nan is not allowed"):
        config_hash({"opt": {"lr": float("nan")}})
    with pytest.raises(ValueError, match=r"tags: value of type set is not JSON-able"):
        config_hash({"tags": {"a"}})
    with pytest.raises(ValueError, match=r"model: value of type object"):
        config_hash({"model": object()})


@dataclasses.dataclass
class _Point:
    x: int
    where: Path


def test_write_json_atomic_numpy_nan_path_dataclass(tmp_path):
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "nan": float("nan"),
           "inf": np.float64("inf"), "arr": np.array([[1.0, np.nan], [2.0, 3.0]]),
           "p": _Point(1, Path("/x/y")), "t": (1, 2), 5: "int key"}
    path = write_json_atomic(tmp_path / "sub" / "out.json", obj)
    assert path == tmp_path / "sub" / "out.json"
    assert json.loads(path.read_text()) == {
        "i": 3, "f": 0.5, "b": True, "nan": None, "inf": None, "arr": [[1.0, None], [2.0, 3.0]],
        "p": {"x": 1, "where": "/x/y"}, "t": [1, 2], "5": "int key"}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"bad\[1\]: value of type object"):
        write_json_atomic(tmp_path / "bad.json", {"bad": [1, object()]})
    assert not (tmp_path / "bad.json").exists()


def test_write_results_json(tmp_path):
    prov = {"commit": "unknown"}
    path = write_results_json(tmp_path, config=CONFIG, summary={"bare": {"mean": np.float64(1.5)}},
                              provenance=prov, extra={"figures": ["a.png"]})
    data = json.loads(path.read_text())
    assert path.name == "results.json"
    assert data == {"config": {**CONFIG, "layers": [1, 2]}, "config_hash": config_hash(CONFIG),
                    "provenance": prov, "summary": {"bare": {"mean": 1.5}},
                    "per_item_csv": "per_item.csv", "figures": ["a.png"]}
    with pytest.raises(ValueError, match=r"extra keys \['summary'\] would overwrite"):
        write_results_json(tmp_path, config=CONFIG, summary={}, provenance=prov,
                           extra={"summary": 1})


def test_per_item_csv_round_trip(tmp_path):
    rows = [{"sample_id": "123", "condition": "bare", "nll": [0.25, 1.5], "n": 2, "ok": True,
             "meta": {"k": "v"}, "note": ""},
            {"sample_id": "s,2", "condition": "NaN", "nll": [], "n": np.int32(0), "ok": False,
             "meta": {}, "note": "line\nbreak \"quoted\"", "score": float("nan")},
            {"sample_id": "true", "condition": "[1]", "nll": [1e-9], "n": -1, "ok": None,
             "meta": None, "note": " padded ", "score": 2.0}]
    path = write_per_item_csv(tmp_path, rows)
    assert path == tmp_path / "per_item.csv"
    back = read_per_item_csv(path)
    header = path.read_text().splitlines()[0]
    assert header == "sample_id,condition,nll,n,ok,meta,note,score"
    assert back[0] == {**rows[0], "score": None}
    assert math.isnan(back[1].pop("score")) and back[1] == {
        k: (int(v) if k == "n" else v) for k, v in rows[1].items() if k != "score"}
    assert back[2] == rows[2]
    assert isinstance(back[0]["sample_id"], str) and isinstance(back[2]["sample_id"], str)
    sub = write_per_item_csv(tmp_path / "sub", rows[:1], columns=["condition", "sample_id",
                                                                  "nll", "n", "ok", "meta",
                                                                  "note", "extra"])
    assert read_per_item_csv(sub)[0] == {**rows[0], "extra": None}
    with pytest.raises(ValueError, match=r"keys \['nll'\] not in columns .*did you mean.*'nlls'"):
        write_per_item_csv(tmp_path, rows[:1], columns=["sample_id", "condition", "nlls", "n",
                                                        "ok", "meta", "note"])


def test_provenance_keys_and_commit():
    prov = provenance(seeds={"torch": 0, "data": np.int64(1)}, extra={"run": "x"})
    for key in ("commit", "dirty", "python", "packages", "seeds", "date", "device", "hostname",
                "platform"):
        assert key in prov, key
    assert prov["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", prov["commit"])
    assert (prov["dirty"] is None) == (prov["commit"] == "unknown")
    assert set(prov["packages"]) >= {"torch", "transformers", "datasets", "numpy", "scipy"}
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["seeds"] == {"torch": 0, "data": 1} and prov["run"] == "x"
    assert prov["date"].endswith("+00:00") and prov["device"]
    with pytest.raises(ValueError, match=r"extra keys \['commit'\] would overwrite"):
        provenance(extra={"commit": "abc"})


# what ``lib.lab.records.provenance`` imports: the lab modules, the JSON writers of lib.data (the package's
# __init__ loads its core) and lib.kv.hashing
PROVENANCE_FILES = ("lib/__init__.py", "lib/lab/__init__.py", "lib/lab/runs.py", "lib/lab/records.py",
                    "lib/lab/codestate.py",
                    "lib/data/__init__.py", "lib/data/core.py", "lib/data/realdata.py", "lib/data/registry.py",
                    "lib/data/schema.py", "lib/data/hub.py", "lib/data/synthetic.py",
                    "lib/data/jsonio.py", "lib/kv/__init__.py", "lib/kv/hashing.py")


def test_provenance_outside_git_is_unknown(tmp_path):
    for name in PROVENANCE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    code = "import json, lib.lab.records as r; print(json.dumps(r.provenance()))"
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout
    prov = json.loads(out)
    assert prov["commit"] == "unknown" and prov["dirty"] is None


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        p = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_run_waves_scores_only_what_is_missing_and_never_appends_twice(tmp_path):
    from lib.lab.runs import RunStore, run_waves

    store = RunStore(tmp_path / "s", {"k": 1})
    calls = []

    def score(ids):
        calls.append(list(ids))
        return [{"sample_id": i, "condition": c, "nll": 1.0} for i in ids for c in ("a", "b")]

    store.append([{"sample_id": "s0", "condition": "a", "nll": 1.0}])  # s0 half done (a kill mid-append)
    rows = run_waves(store, ["s0", "s1", "s2"], ["a", "b"], score, wave=2, progress=False)
    assert calls == [["s0", "s1"], ["s2"]]
    assert sorted((r["sample_id"], r["condition"]) for r in rows) == [(s, c) for s in ("s0", "s1", "s2") for c in ("a", "b")]
    calls.clear()
    run_waves(store, ["s0", "s1", "s2"], ["a", "b"], score, progress=False)
    assert calls == []


def test_checkpoint_helpers(tmp_path):
    import random

    import torch

    from lib.lab import ckpt

    p = ckpt.save_atomic(tmp_path / "a.ckpt.pt", {"x": torch.arange(3)})
    assert torch.equal(torch.load(p)["x"], torch.arange(3)) and not (tmp_path / "a.ckpt.pt.tmp").exists()
    assert ckpt.move_aside(p) == tmp_path / "a.ckpt.pt.old-1" and not p.exists()
    ckpt.save_atomic(p, {})
    assert ckpt.move_aside(p).name == "a.ckpt.pt.old-2" and ckpt.move_aside(p) is None
    st = ckpt.rng_state()
    a = (torch.rand(1), random.random())
    ckpt.restore_rng(st)
    assert (torch.rand(1), random.random()) == a
    f = ckpt.warmup(4)
    assert [f(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0] and ckpt.warmup(0)(0) == 1.0
