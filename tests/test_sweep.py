"""Sweeps (local and submitit executors, kill and resume), the results index and the cross-model figure."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.report import index
from lib.lab import sweep

ROOT = Path(__file__).resolve().parents[1]
EXP02 = "experiments/exp02/exp02_surrogate_priming.ipynb"


def _grid(out_root, executor="local") -> dict:
    common = {"N_SAMPLES": 4, "N_BOOT": 50, "SMOKE": False, "DTYPE": "auto", "LOAD_IN_4BIT": False}
    return {"name": "smoke", "out_root": str(out_root), "executor": executor, "parallel": 1,
            "experiments": [
                {"notebook": EXP02, "models": ["smollm2-135m-instruct", "gemma-3-270m"], "datasets": ["synthetic"],
                 "params": {**common, "CONDITIONS": "bare,oracle,static_fact", "N_DISTRACTORS": 1}},
            ]}


def test_expand_builds_one_job_per_cell_and_checks_parameters(tmp_path):
    g = _grid(tmp_path)
    g["experiments"][0]["params"]["SEED"] = [1, 2]  # a list is one more axis
    jobs = sweep.expand(g)
    assert len(jobs) == 2 * 2
    j = jobs[0]
    assert j.job_id == "exp02__smollm2-135m-instruct__synthetic__SEED-1"
    assert j.params["MODEL"] == "smollm2-135m-instruct" and j.params["SEED"] == 1 and j.params["OUT_DIR"] == str(tmp_path / j.job_id)
    g["experiments"][0]["params"]["N_SAMPLE"] = 3
    with pytest.raises(ValueError, match="'N_SAMPLE' is not a parameter"):
        sweep.expand(g)
    with pytest.raises(ValueError, match="executor"):
        p = tmp_path / "g.json"
        p.write_text(json.dumps({**_grid(tmp_path), "executor": "kubernetes"}))
        sweep.load_grid(p)


def test_out_dirs_pin_jobs_to_earlier_runs_which_count_as_done_when_their_config_agrees(tmp_path):
    """A grid can point a cell at a run made outside the sweep (``out_dirs``); that run is skipped
    when its results.json config records the cell's parameters with the same values, and rerun
    (resuming its store) when one differs."""
    g = _grid(tmp_path / "sweeps")
    jid = "exp02__smollm2-135m-instruct__synthetic"
    g["experiments"][0]["out_dirs"] = {jid: str(tmp_path / "earlier_run")}
    jobs = {j.job_id: j for j in sweep.expand(g)}
    j = jobs[jid]
    assert j.out_dir == j.params["OUT_DIR"] == str(tmp_path / "earlier_run")
    assert jobs["exp02__gemma-3-270m__synthetic"].out_dir == str(tmp_path / "sweeps" / "exp02__gemma-3-270m__synthetic")
    assert not sweep.is_done(j)
    (tmp_path / "earlier_run").mkdir()
    cfg = {k: v for k, v in j.params.items() if k not in ("OUT_DIR", "PROGRESS", "SMOKE")}
    (tmp_path / "earlier_run" / "results.json").write_text(json.dumps({"config": {**cfg, "extra_key": 1}}))
    assert sweep.is_done(j)  # keys the config lacks (OUT_DIR, PROGRESS, SMOKE) are not compared
    (tmp_path / "earlier_run" / "results.json").write_text(json.dumps({"config": {**cfg, "N_SAMPLES": 99}}))
    assert not sweep.is_done(j)
    g["experiments"][0]["out_dirs"] = {"exp02__nope": "x"}
    with pytest.raises(ValueError, match="out_dirs names jobs the grid does not produce"):
        sweep.expand(g)


def test_real_grid_expands_adopts_the_earlier_exp01_runs_and_selects_by_id():
    jobs = sweep.expand(sweep.load_grid(ROOT / "sweeps" / "real.toml"))
    exp01 = [j for j in jobs if j.job_id.startswith("exp01__") and "__ANCHOR-" not in j.job_id]
    assert len(exp01) == 3 and all(sweep.is_done(j) for j in exp01)  # the N=300 runs, pinned by out_dirs
    assert all(j.folder().name.startswith("exp01_squad_") for j in exp01)
    assert {j.job_id.split("__")[0] for j in jobs} >= {"exp01", "exp02", "exp03", "exp04", "exp05", "exp06", "exp07", "exp08",
                                                        "exp10", "exp11"}
    assert [j.job_id for j in sweep.select(jobs, "^exp02__gemma")] == ["exp02__gemma-3-270m__squad_v1.1"]
    with pytest.raises(ValueError, match="matches no job"):
        sweep.select(jobs, "exp99")


def test_failed_job_keeps_its_notebook_and_error(tmp_path):
    g = _grid(tmp_path)
    g["experiments"] = [{"notebook": EXP02, "models": ["no-such-model-xyz"], "datasets": ["synthetic"], "params": {"N_SAMPLES": 2}}]
    rows = sweep.run_sweep(g, log=lambda *a: None)
    assert rows[0]["status"] == "failed" and "no-such-model-xyz" in rows[0]["error"]
    job = sweep.expand(g)[0]
    assert (job.folder() / "executed.ipynb").is_file() and sweep.read_status(job)["status"] == "failed"
    assert "failed" in (tmp_path / "SUMMARY.md").read_text()


def _wait(pred, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(1)
    return False


@pytest.mark.slow
def test_smoke_grid_local_kill_resume_then_submitit_then_index(tmp_path):
    local = tmp_path / "local"
    gfile = tmp_path / "grid.json"
    gfile.write_text(json.dumps(_grid(local)))
    jobs = sweep.expand(_grid(local))
    # 1. local executor, killed while the second job runs
    p = subprocess.Popen([sys.executable, "-m", "lib.lab.sweep", str(gfile)], cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: sweep.is_done(jobs[0]) and sweep.read_status(jobs[1]).get("status") == "running", 400)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not sweep.is_done(jobs[1])
    # 2. rerun: the finished job is skipped, the killed one runs again (its notebook resumes its store), the rest run
    rows = sweep.run_sweep(sweep.load_grid(gfile), log=lambda *a: None)
    assert rows[0]["status"] == "skipped (done)"
    assert rows[1]["status"] == "done" and rows[1]["resumed"] is True
    assert all(r["status"] == "done" for r in rows[2:]) and all(sweep.is_done(j) for j in jobs)
    # 3. through submitit's local executor: the killed-and-resumed cell (job 1) alone, which is the one
    # whose numbers must not depend on the kill (more cells add run time, not checks)
    sub = tmp_path / "submitit"
    sub_grid = _grid(sub, "submitit-local")
    sub_grid["experiments"] = [{**sub_grid["experiments"][0], "models": ["gemma-3-270m"]}]
    srows = sweep.run_sweep(sub_grid, log=lambda *a: None)
    assert [r["status"] for r in srows] == ["done"]
    assert (sub / "_submitit").is_dir()
    # identical numbers from both executors, the killed-and-resumed job included
    a = json.loads((jobs[1].folder() / "results.json").read_text())["summary"]
    b = json.loads((sweep.expand(sub_grid)[0].folder() / "results.json").read_text())["summary"]
    assert [x["d"] for x in a["comparisons"]] == [x["d"] for x in b["comparisons"]]
    assert [x["d"] for x in a["discrimination"]["comparisons"]] == [x["d"] for x in b["discrimination"]["comparisons"]]
    # 4. the index and the cross-model figure from the sweep's results
    rows = index.collect(tmp_path)
    assert len(rows) == 3 and {r["experiment"] for r in rows} == {"exp02"}
    assert {r["model"] for r in rows} == {"smollm2-135m-instruct", "gemma-3-270m"} and all(r["headline"] for r in rows)
    out = index.write_index(rows, tmp_path / "INDEX.md")
    assert out.read_text().count("| exp02 |") == 3
    fig = index.cross_model_figure(rows, "exp02", tmp_path / "cross_model_exp02.png")
    assert fig.stat().st_size > 1000


def test_update_plan_replaces_only_the_marked_table(tmp_path):
    plan = tmp_path / "PLAN.md"
    plan.write_text(f"intro\n{index.START}\nold\n{index.END}\nlog stays\n")
    rows = [{"experiment": "exp02", "run": "r", "model": "m", "dataset": "d", "n": 3, "commit": "abc", "date": "2026",
             "random_init": False, "headline": [{"label": "x", "d": 0.5, "ci_low": 0.1, "ci_high": 0.9}]}]
    index.update_plan(rows, plan)
    text = plan.read_text()
    assert "old" not in text and "x +0.50 [+0.10, +0.90]" in text and text.startswith("intro") and text.endswith("log stays\n")
    plan.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        index.update_plan(rows, plan)


def test_index_shows_missing_numbers_as_na():
    assert index._fmt({"label": "x", "d": 0.2, "ci_low": -1.0, "ci_high": None}) == "x +0.20 [-1.00, n/a]"
    assert index._fmt({"label": "x", "d": None}) == "x n/a"


def test_index_shows_absolute_size_beside_d_when_present():
    h = {"label": "values_early_1", "d": 0.42, "ci_low": 0.1, "ci_high": 0.75, "mean_delta": 0.0011,
         "pct_of_ref": 0.19, "pct_ci_low": 0.05, "pct_ci_high": 0.33}
    assert index._fmt(h) == "values_early_1 +0.0011 nats (+0.19% [+0.05, +0.33]), d +0.42 [+0.10, +0.75]"
    row = {"experiment": "exp06", "run": "r", "model": "m", "dataset": "d", "n": 30, "commit": "abc", "date": "2026",
           "random_init": False, "smoke": True, "primary_test": "wilcoxon", "headline": [h]}
    line = index.table([row]).splitlines()[-1]
    assert "| m | no | yes | ? | d | 30 | wilcoxon |" in line and "+0.0011 nats" in line  # cut down unknown: "?"
    row.update(cut_down=["N_SAMPLES"], overlaps=[("other_run", 30, 30)], code_changed=True,
               headline=[{**h, "d_margin": 0.05, "d_margin_ci_low": -0.1, "d_margin_ci_high": 0.2}])
    line = index.table([row]).splitlines()[-1]
    assert "| N_SAMPLES | d | 30 (shares 30/30 with other_run) |" in line and "(code changed during run)" in line
    assert "d(margin) +0.05 [-0.10, +0.20]" in line


def test_summary_keeps_the_rows_of_earlier_invocations(tmp_path):
    """`--only` runs a subset: SUMMARY.md keeps the other jobs' rows and replaces a rerun job's row."""
    g = {"name": "t", "out_root": str(tmp_path)}
    a, b = (sweep.Job(i, "nb.ipynb", str(tmp_path / i)) for i in ("exp02__a", "exp11__b"))
    sweep.write_summary(g, [a], [{"status": "done", "seconds": 1.0, "resumed": False}])
    sweep.write_summary(g, [b], [{"status": "failed", "seconds": 2.0, "resumed": False, "error": "x|y"}])
    sweep.write_summary(g, [a], [{"status": "done", "seconds": 3.0, "resumed": True}])
    lines = [l for l in (tmp_path / "SUMMARY.md").read_text().splitlines() if l.startswith("| exp")]
    assert lines == ["| exp02__a | done | 3.0 | True |  |", "| exp11__b | failed | 2.0 | False | x/y |"]
