"""Sweeps: a grid of experiment x model x data set x parameters, run as papermill jobs.

    python -m lib.lab.sweep GRID.toml [--executor local|submitit-local|slurm] [--force] [--dry-run] [--only REGEX]

Grid file (TOML or JSON)::

    name = "smoke"
    out_root = "results/sweeps/smoke"      # job folders go here (relative to the repo root)
    executor = "local"                      # local | submitit-local | slurm
    parallel = 1                            # submitit executors: jobs running at once
    [resources]                             # slurm only, passed to submitit (one GPU per job by default)
    gpus_per_node = 1
    timeout_min = 240
    [[experiments]]
    notebook = "experiments/exp02/exp02_surrogate_priming.ipynb"
    models = ["smollm2-135m-instruct", "gemma-3-270m"]
    datasets = ["synthetic"]
    model_param = "MODEL"                   # the notebook knob the model goes into (exp10: DEC_MODEL)
    dataset_param = "DATASET"               # (exp04: DATASETS)
    out_dirs = {"exp02__gemma-3-270m__squad_v1.1" = "results/exp02_squad_gemma3_270m"}  # optional: pin a job's folder
    [experiments.params]                    # other knobs; a list value becomes one more grid axis
    N_SAMPLES = 8

Each job gets ``OUT_DIR = <out_root>/<job id>`` and writes ``executed.ipynb`` and ``sweep_status.json``
there. A job whose status says ``done`` with the same parameters is skipped; a job that was killed
(status ``running`` or missing, no results) is run again and its notebook resumes from its run
store; a failed job keeps its executed notebook (with the error) and the error text. A job pinned by
``out_dirs`` to a run made outside the sweep counts as done when that run's results.json config
agrees with the job's parameters (``is_done``). Every call ends
with a summary table (printed and written to ``<out_root>/SUMMARY.md``).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXECUTORS = ("local", "submitit-local", "slurm")
STATUS = "sweep_status.json"


@dataclass(frozen=True)
class Job:
    job_id: str
    notebook: str
    out_dir: str  # relative to the repo root, or absolute
    params: dict = field(default_factory=dict)

    def folder(self) -> Path:
        p = Path(self.out_dir)
        return p if p.is_absolute() else ROOT / p

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]


def _slug(x) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "-", str(x)).strip("-")[:40] or "x"


def load_grid(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {str(path)!r} does not exist")
    if path.suffix == ".toml":
        import tomllib

        grid = tomllib.loads(path.read_text())
    elif path.suffix == ".json":
        grid = json.loads(path.read_text())
    else:
        raise ValueError(f"grid file {str(path)!r}: expected .toml or .json")
    for key in ("out_root", "experiments"):
        if key not in grid:
            raise ValueError(f"grid file {str(path)!r} lacks {key!r}")
    if grid.get("executor", "local") not in EXECUTORS:
        raise ValueError(f"executor {grid.get('executor')!r} not in {EXECUTORS}")
    return grid


def expand(grid: dict) -> list[Job]:
    """Every (experiment, model, data set, parameter combination) as a Job, in grid order."""
    from lib.lab.notebook import read_parameters

    jobs = []
    for i, e in enumerate(grid["experiments"]):
        nb = e.get("notebook")
        if not nb or not (ROOT / nb).is_file():
            raise ValueError(f"experiments[{i}]: notebook {nb!r} not found under {ROOT}")
        known = read_parameters(ROOT / nb)
        mp, dp = e.get("model_param", "MODEL"), e.get("dataset_param", "DATASET")
        params = dict(e.get("params", {}))
        out_dirs = dict(e.get("out_dirs", {}))  # {job id: folder}: a run made outside the sweep (see is_done)
        for k in [mp, dp, *params]:
            if k not in known:
                raise ValueError(f"experiments[{i}] ({nb}): {k!r} is not a parameter of the notebook; it has {sorted(known)}")
        axes = {k: v for k, v in params.items() if isinstance(v, list)}
        fixed = {k: v for k, v in params.items() if not isinstance(v, list)}
        exp = re.search(r"exp\d+", nb)
        exp = exp.group(0) if exp else Path(nb).stem
        for model, ds, combo in itertools.product(e.get("models", [None]), e.get("datasets", [None]),
                                                  itertools.product(*axes.values()) if axes else [()]):
            p = {**fixed, **dict(zip(axes, combo))}
            if model is not None:
                p[mp] = model
            if ds is not None:
                p[dp] = ds
            tag = "__".join([exp, _slug(model), _slug(ds)] + [f"{k}-{_slug(v)}" for k, v in zip(axes, combo)])
            job_id = tag
            p["OUT_DIR"] = str(out_dirs.get(job_id) or Path(grid["out_root"]) / job_id)
            p.setdefault("PROGRESS", False)
            jobs.append(Job(job_id, nb, p["OUT_DIR"], p))
        unknown = sorted(set(out_dirs) - {j.job_id for j in jobs})
        if unknown:
            raise ValueError(f"experiments[{i}] ({nb}): out_dirs names jobs the grid does not produce: {unknown}; "
                             f"job ids look like {jobs[-1].job_id if jobs else 'exp02__<model>__<data set>'}")
    ids = [j.job_id for j in jobs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"grid produces the same job twice: {dup}")
    return jobs


def read_status(job: Job) -> dict:
    f = job.folder() / STATUS
    return json.loads(f.read_text()) if f.is_file() else {}


def _write_status(job: Job, **kw) -> None:
    from lib.data.jsonio import write_json_atomic

    job.folder().mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.folder() / STATUS, {"job_id": job.job_id, "params_hash": job.params_hash(), "params": job.params, **kw})


UNCOMPARED = ("OUT_DIR", "PROGRESS", "FRESH")  # knobs that never change what a run computes


def is_done(job: Job) -> bool:
    """Done by the sweep with the same parameters; or, for a folder without a sweep status (a run made
    outside the sweep, pinned by the grid's ``out_dirs``), a results.json whose config records every
    parameter of the job it records at all with the same value (keys it lacks are not compared)."""
    res = job.folder() / "results.json"
    if not res.is_file():
        return False
    st = read_status(job)
    if st:
        return st.get("status") == "done" and st.get("params_hash") == job.params_hash()
    cfg = json.loads(res.read_text()).get("config", {})
    return all(cfg[k] == v for k, v in job.params.items() if k in cfg and k not in UNCOMPARED)


def run_job(job: Job) -> dict:
    """Execute one job with papermill (in this process; the kernel is a subprocess). Never raises."""
    import papermill as pm

    prev = read_status(job)
    resumed = prev.get("status") in ("running", "failed")
    t0 = time.time()
    _write_status(job, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), resumed=resumed)
    out_nb = job.folder() / "executed.ipynb"
    try:
        pm.execute_notebook(str(ROOT / job.notebook), str(out_nb), parameters=job.params, cwd=str(ROOT),
                            progress_bar=False, log_output=False)
        res = {"status": "done", "seconds": round(time.time() - t0, 1), "resumed": resumed}
    except Exception as err:  # noqa: BLE001 - a failed job is recorded, the sweep goes on
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        res = {"status": "failed", "seconds": round(time.time() - t0, 1), "resumed": resumed,
               "error": (lines[-1] if lines else type(err).__name__)[:300], "traceback": traceback.format_exc()[-4000:]}
    _write_status(job, **res, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return {"job_id": job.job_id, **res}


def select(jobs: list[Job], only: str | None) -> list[Job]:
    """The jobs whose id matches the regular expression ``only`` (all when None); none raises."""
    if not only:
        return jobs
    picked = [j for j in jobs if re.search(only, j.job_id)]
    if not picked:
        raise ValueError(f"--only {only!r} matches no job id; ids: {[j.job_id for j in jobs]}")
    return picked


def run_sweep(grid: dict, *, executor: str | None = None, force: bool = False, log=print,
              progress: bool = False, only: str | None = None) -> list[dict]:
    """Run every job of the grid that is not done (``only``: those whose id matches this regular
    expression); returns one summary row per job. ``progress``: a bar over the jobs to run
    (``tqdm.auto``: a widget in JupyterLab, text in a terminal)."""
    from tqdm.auto import tqdm

    jobs = select(expand(grid), only)
    executor = executor or grid.get("executor", "local")
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r} not in {EXECUTORS}")
    todo = [j for j in jobs if force or not is_done(j)]
    results = {j.job_id: {"job_id": j.job_id, "status": "skipped (done)"} for j in jobs if j not in todo}
    log(f"{len(jobs)} jobs, {len(todo)} to run, {len(jobs) - len(todo)} already done; executor {executor}")
    bar = tqdm(total=len(todo), desc="sweep jobs", disable=not progress)
    if executor == "local":
        for j in todo:
            log(f"-> {j.job_id}")
            results[j.job_id] = run_job(j)
            log(f"   {results[j.job_id]['status']} in {results[j.job_id]['seconds']} s")
            bar.update(1)
    else:
        import os

        import submitit

        # the job processes unpickle lib.lab.sweep.run_job: make the repo importable wherever they start
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        root = ROOT / grid["out_root"] / "_submitit"
        if executor == "submitit-local":
            ex = submitit.LocalExecutor(folder=str(root))
            ex.update_parameters(timeout_min=int(grid.get("resources", {}).get("timeout_min", 60)))
        else:
            ex = submitit.AutoExecutor(folder=str(root), cluster="slurm")
            res = {"gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1, **grid.get("resources", {})}
            ex.update_parameters(**res)
        parallel = max(1, int(grid.get("parallel", 1)))
        for w in range(0, len(todo), parallel):
            wave = todo[w:w + parallel]
            subs = [(j, ex.submit(run_job, j)) for j in wave]
            for j, s in subs:
                log(f"-> {j.job_id} (submitit job {s.job_id})")
                try:
                    results[j.job_id] = s.result()
                except Exception as err:  # noqa: BLE001 - the job process itself died
                    results[j.job_id] = {"job_id": j.job_id, "status": "failed", "error": f"submitit: {err}"[:300]}
                    _write_status(j, status="failed", error=results[j.job_id]["error"])
                log(f"   {results[j.job_id]['status']}")
                bar.update(1)
    bar.close()
    rows = [results[j.job_id] for j in jobs]
    write_summary(grid, jobs, rows)
    return rows


def write_summary(grid: dict, jobs: list[Job], rows: list[dict]) -> Path:
    """``<out_root>/SUMMARY.md``: one row per job. Rows of jobs this invocation did not run (``--only``) are kept
    from the file as it was; a job run again gets its new row in its old place."""
    out = ROOT / grid["out_root"] / "SUMMARY.md"
    table = {}  # job id -> row line, in first-seen order
    if out.is_file():
        for line in out.read_text().splitlines():
            job = line.strip("| ").split(" |", 1)[0]
            if line.startswith("| ") and job != "job":  # the header; the separator row starts "|---"
                table[job] = line
    for j, r in zip(jobs, rows):
        table[j.job_id] = (f"| {j.job_id} | {r['status']} | {r.get('seconds', '')} | {r.get('resumed', '')} | "
                           f"{str(r.get('error', '')).replace('|', '/')} |")
    lines = [f"# Sweep {grid.get('name', '')}", "", "| job | status | seconds | resumed | error |", "|---|---|---|---|---|",
             *table.values()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid")
    ap.add_argument("--executor", choices=EXECUTORS)
    ap.add_argument("--force", action="store_true", help="rerun jobs that are done")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs and their state, run nothing")
    ap.add_argument("--only", help="run only the jobs whose id matches this regular expression")
    a = ap.parse_args(argv)
    grid = load_grid(a.grid)
    if a.dry_run:
        for j in select(expand(grid), a.only):
            print(f"{j.job_id:60s} {'done' if is_done(j) else read_status(j).get('status', 'new')}")
        return 0
    rows = run_sweep(grid, executor=a.executor, force=a.force, progress=True, only=a.only)
    return 0 if all(r["status"] != "failed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
