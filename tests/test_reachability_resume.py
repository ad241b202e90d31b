"""exp08's checkpoint store (``lib.studies.reachability.store``) on a tiny random Llama: a run killed
mid-chunk (by an exception from the checkpoint hook, or by SIGKILL of a subprocess) and resumed
ends with bit-identical soft prompts, curves, MSEs and cosines (float32, CPU) to an uninterrupted
run, including the part-1 step extension decided before the kill; other knobs raise ValueError."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.lab.runs import ConfigMismatch
from lib.studies import reachability as R
from lib.studies.reachability import report as RR
from tests.tiny import VOCAB, build

ROOT = Path(__file__).resolve().parents[1]
# 3 targets x 2 restarts, one target per chunk; steps 10 extend to 14 (the curves still fall at lr 0.05)
KW = dict(restarts=2, steps=10, max_steps=14, lr=0.05, chunk=2, seed=3)


class Killed(Exception):
    pass


def _reader():
    return R.ResidualReader(build("llama"))


def _targets(reader):
    ids = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(5))
    return reader.of_ids(ids)


def _same(a: R.Fit, b: R.Fit):
    assert a.steps == b.steps == 14 and a.extension == b.extension and a.extension["still_falling"]
    for f in ("curves", "final_mse", "cosine"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert torch.equal(a.prompts, b.prompts)


@pytest.fixture(scope="module")
def setup():
    reader = _reader()
    targets = _targets(reader)
    return reader, targets, R.optimize(reader, targets, **KW)


def test_killed_mid_chunk_and_resumed_is_bit_identical(setup, tmp_path):
    reader, targets, ref = setup
    # an uninterrupted run through the store equals the plain in-memory run
    plain = R.optimize(reader, targets, **KW, store=R.ChunkStore(tmp_path / "a", {"k": 1}, every=3), part="1")
    _same(plain, ref)
    assert plain.chunks == 3 and plain.resumed_chunks == 0
    # kills at checkpoints 2, 6 and 14 of the whole run (steps 3, 6, 9, 10 of each chunk, then 12
    # after the extension decision): chunk 0 at step 6, chunk 1 at step 6, chunk 1 at step 12;
    # every call resumes the one before
    calls = {"n": 0}

    def hook(part, chunk, step):
        calls["n"] += 1
        if calls["n"] in (2, 6, 14):
            raise Killed(f"checkpoint {calls['n']}: part {part} chunk {chunk} step {step}")

    killed, decisions = [], []
    for _ in range(10):
        store = R.ChunkStore(tmp_path / "b", {"k": 1}, every=3)
        try:
            got = R.optimize(reader, targets, **KW, store=store, part="1", on_checkpoint=hook)
            break
        except Killed as err:
            killed.append(str(err))
            decisions.append(store.decision("1"))
    assert len(killed) == 3, killed
    assert decisions[0] is None and decisions[-1] == ref.extension   # the last kill came after the decision
    _same(got, ref)
    assert got.resumed_chunks >= 1
    # a rerun reads every chunk from the store and computes nothing
    again = R.optimize(reader, targets, **KW, store=R.ChunkStore(tmp_path / "b", {"k": 1}, every=3), part="1",
                       on_checkpoint=lambda *a: pytest.fail("a finished run took a step"))
    _same(again, ref)
    assert again.resumed_chunks == 3
    # summaries (what results.json holds) are equal too
    assert RR.summarize(again) == RR.summarize(ref)


def test_finished_chunk_file_without_its_row_is_marked_on_resume(setup, tmp_path):
    reader, targets, ref = setup
    store = R.ChunkStore(tmp_path, {"k": 1}, every=50)
    orig = store.mark_finished

    def die(part, chunk, state):  # the kill lands between the finished file and its row
        raise Killed("between file and row")

    store.mark_finished = die
    with pytest.raises(Killed):
        R.optimize(reader, targets, **{**KW, "max_steps": None}, store=store, part="2")
    store.mark_finished = orig
    assert store.path("2", 0).exists() and not store.finished("2", 0)
    got = R.optimize(reader, targets, **{**KW, "max_steps": None}, store=R.ChunkStore(tmp_path, {"k": 1}), part="2")
    plain = R.optimize(reader, targets, **{**KW, "max_steps": None})
    assert np.array_equal(got.curves, plain.curves) and torch.equal(got.prompts, plain.prompts)
    assert R.ChunkStore(tmp_path, {"k": 1}).finished("2", 0)


def test_other_knobs_raise_value_errors_naming_them(setup, tmp_path):
    reader, targets, _ = setup
    R.ChunkStore(tmp_path, {"STEPS": 10, "LR": 0.05})
    with pytest.raises(ConfigMismatch, match="STEPS") as err:
        R.ChunkStore(tmp_path, {"STEPS": 12, "LR": 0.05})
    assert isinstance(err.value, ValueError) and "LR" not in str(err.value)
    store = R.ChunkStore(tmp_path, {"STEPS": 10, "LR": 0.05}, every=4)
    R.optimize(reader, targets[:1], **{**KW, "max_steps": None, "steps": 2}, store=store, part="x")
    with pytest.raises(R.PartMismatch, match="lr") as err:
        R.optimize(reader, targets[:1], **{**KW, "max_steps": None, "steps": 2, "lr": 0.01}, store=store, part="x")
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="targets_sha256"):
        R.optimize(reader, targets[1:2], **{**KW, "max_steps": None, "steps": 2}, store=store, part="x")
    with pytest.raises(ValueError, match="every"):
        R.ChunkStore(tmp_path / "c", {}, every=0)
    # runtime knobs are left out of the notebook's store config; a number-changing one is kept
    cfg = R.store_config({"STEPS": 10, "OUT_DIR": "a", "CHECKPOINT_EVERY": 5, "PROGRESS": True, "CHUNK": 500})
    assert cfg == {"STEPS": 10, "CHUNK": 500}


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from lib.studies import reachability as R
from tests.test_reachability_resume import KW, _reader, _targets
reader = _reader()
store = R.ChunkStore({store!r}, {{"k": 1}}, every=2)
R.optimize(reader, _targets(reader), **KW, store=store, part="1", on_checkpoint=lambda *a: time.sleep(0.2))
"""


def test_sigkilled_subprocess_resumes_bit_identically(setup, tmp_path):
    """kill -9 of a process in the middle of a part (lib level: a papermill kill test would add
    two notebook runs, over a minute, to the suite)."""
    reader, targets, ref = setup
    code = SCRIPT.format(root=str(ROOT), threads=torch.get_num_threads(), store=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    items = tmp_path / "items.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:   # kill once chunk 0 is finished and chunk 1 has begun
        rows = [json.loads(x) for x in items.read_text().splitlines()] if items.exists() else []
        if any(r["chunk"] == 0 for r in rows) or (tmp_path / "part1" / "chunk00001.pt").exists():
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    store = R.ChunkStore(tmp_path, {"k": 1}, every=2)
    assert not all(store.finished("1", i) for i in range(3))
    got = R.optimize(reader, targets, **KW, store=store, part="1")
    _same(got, ref)
    assert got.resumed_chunks >= 1
