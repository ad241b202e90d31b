"""`make gpu-check`: the bundled models on a CUDA GPU, in bfloat16 and in 4-bit nf4, one JSON of figures.

    python -m lib.tools.gpu_check                       # writes results/gpu_check/gpu_check.json
    python -m lib.tools.gpu_check --out /tmp/g.json --steps exactness,bench

Without a CUDA device it exits at once (status 2) with "no CUDA device: ...", before loading anything.
Needs the converted models (``make models``); no data download (every notebook runs on synthetic
samples or random-init models). Sized for ~10 minutes on one H200; each step has its own timeout.

Steps, each in a subprocess (a failing or timed-out step is recorded and the next one runs):

1. ``exactness``: the real-model oracle tests (``tests/test_real_models.py`` and the engine's
   real-model tests) with ``DKV_TEST_DEVICE=cuda`` and ``DKV_TEST_DTYPE=bfloat16``, then with
   ``DKV_TEST_QUANT=nf4``; tolerances per dtype in ``tests/real_env.py`` (float32's are the CI ones).
   Figures: passed / failed per test, and each failure's message (it prints the measured difference).
2. ``bench``: ``python -m lib.tools.bench --design exp01`` (the engine against the seeds' loop, with
   peak memory) in bfloat16 and nf4 (nf4 without the memory probes), and ``--design many8`` in
   bfloat16 (shared prompts vs the prompt re-run per candidate). Figures: the benches' JSON.
3. ``notebooks``: one SMOKE notebook per experiment family (``FAMILIES``) through papermill with
   ``-p SMOKE True`` (their ``DTYPE`` "auto" is bfloat16 on CUDA), exp01 also with
   ``LOAD_IN_4BIT True``; ``PARALLEL`` at a time. Figures: status and seconds per notebook.

The JSON holds the machine (GPU name, torch/transformers/bitsandbytes versions), per step its
commands, return codes and seconds, and ``ok`` (every step passed). Exit status 0 when ok, else 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("exactness", "bench", "notebooks")
EXACTNESS_TESTS = ["tests/test_real_models.py", "tests/test_engine.py::test_engine_equals_unbatched_real",
                   "tests/test_engine_sharing.py::test_many_continuations_share_one_cache_real",
                   "tests/test_engine_sharing.py::test_shared_prompt_equals_unshared_real"]
MODES = {"bfloat16": {"DKV_TEST_DTYPE": "bfloat16"}, "nf4": {"DKV_TEST_DTYPE": "bfloat16", "DKV_TEST_QUANT": "nf4"}}
FAMILIES = {  # family (lib/studies module) -> (notebook, extra papermill parameters)
    "priming": ("exp01/exp01_back_to_basics.ipynb", ["DATASET", "synthetic", "N_SAMPLES", "16", "N_DISTRACTORS", "1"]),
    "conditions": ("exp02/exp02_surrogate_priming.ipynb", ["N_SAMPLES", "16"]),
    "crossdata": ("exp04/exp04_hard_examples_cross_dataset.ipynb", []),
    "prefixlen": ("exp05/exp05_prefix_length_content.ipynb", []),
    "contamination": ("exp06/exp06_value_contamination.ipynb", []),
    "soft": ("exp07/exp07_soft_surrogates.ipynb", []),
    "reachability": ("exp08/exp08_reachability.ipynb", []),
    "encdec": ("exp09/exp09_encdec_enrichment.ipynb", []),
    "prefixlm": ("exp11/exp11_prefix_lm.ipynb", []),
    "latent": ("exp12/exp12_latent_prefix.ipynb", []),
}
PARALLEL = 4
TIMEOUT_S = {"exactness": 200, "bench": 240, "notebook": 240}  # per subprocess


def require_cuda() -> None:
    """Exit with status 2 and a message on stderr when torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        print(f"no CUDA device: {why} (torch {torch.__version__}); make gpu-check runs the bundled models in "
              f"bfloat16 and 4-bit nf4 on a CUDA GPU only", file=sys.stderr)
        raise SystemExit(2)


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                             timeout=timeout, check=False)
        rc, tail = res.returncode, (res.stdout + res.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = "timeout", str(err.stdout or "")[-3000:]
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t, 1), "tail": tail}


def junit_figures(path: Path) -> dict:
    """{"passed", "failed", "tests": {name: {"outcome", "seconds", "message"}}} from a pytest junit XML."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped") is not None
        tests[f"{case.get('classname')}::{case.get('name')}"] = {
            "outcome": "failed" if bad is not None else "skipped" if skipped else "passed",
            "seconds": round(float(case.get("time", 0)), 2),
            "message": None if bad is None else (bad.get("message") or "")[:500]}
    outcomes = [t["outcome"] for t in tests.values()]
    return {"passed": outcomes.count("passed"), "failed": outcomes.count("failed"), "skipped": outcomes.count("skipped"),
            "tests": tests}


def exactness(work: Path) -> dict:
    out = {}
    for mode, env in MODES.items():
        xml = work / f"exactness_{mode}.xml"
        r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *EXACTNESS_TESTS],
                 TIMEOUT_S["exactness"], {**env, "DKV_TEST_DEVICE": "cuda"})
        r["ok"] = r["rc"] == 0
        if xml.exists():
            r.update(junit_figures(xml))
        out[mode] = r
    return out


def bench(work: Path) -> dict:
    runs = {"exp01_bfloat16": ["--design", "exp01", "--dtype", "bfloat16", "--n", "16"],
            "exp01_nf4": ["--design", "exp01", "--load-in-4bit", "--n", "16", "--no-memory"],
            "many8_bfloat16": ["--design", "many8", "--dtype", "bfloat16", "--n", "12", "--no-memory"]}
    out = {}
    for name, args in runs.items():
        d = work / f"bench_{name}"
        r = _run([sys.executable, "-m", "lib.tools.bench", "--out", str(d), *args], TIMEOUT_S["bench"])
        r["ok"] = r["rc"] == 0
        got = sorted(d.glob("*.json"))
        r["figures"] = json.loads(got[0].read_text()) if got else None
        out[name] = r
    return out


def notebooks(work: Path) -> dict:
    jobs = [(fam, nb, extra, False) for fam, (nb, extra) in FAMILIES.items()]
    jobs.append(("priming_nf4", FAMILIES["priming"][0], FAMILIES["priming"][1] + ["LOAD_IN_4BIT", "True"], True))
    running, out = [], {}
    while jobs or running:
        while jobs and len(running) < PARALLEL:
            name, nb, extra, _ = jobs.pop(0)
            d = work / f"nb_{name}"
            d.mkdir(parents=True, exist_ok=True)
            params = ["SMOKE", "True", "OUT_DIR", str(d), *extra]
            cmd = [sys.executable, "-m", "papermill", str(ROOT / "experiments" / nb), str(d / "executed.ipynb"),
                   *[x for i in range(0, len(params), 2) for x in ("-p", params[i], params[i + 1])]]
            with (d / "papermill.log").open("w") as log:  # the child keeps its own descriptor
                p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            running.append((name, cmd, p, time.perf_counter(), d))
        time.sleep(1)
        for job in list(running):
            name, cmd, p, t0, d = job
            if p.poll() is None and time.perf_counter() - t0 < TIMEOUT_S["notebook"]:
                continue
            if p.poll() is None:
                p.kill()
                p.wait()
            running.remove(job)
            rc = "timeout" if p.returncode < 0 else p.returncode
            out[name] = {"cmd": " ".join(cmd), "rc": rc, "ok": rc == 0, "seconds": round(time.perf_counter() - t0, 1),
                         "tail": (d / "papermill.log").read_text()[-1500:] if rc != 0 else ""}
    return out


def machine() -> dict:
    import torch
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "bitsandbytes": bnb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.tools.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/gpu_check/gpu_check.json", help="the JSON of figures")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {STEPS}")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise ValueError(f"unknown steps {bad}; choices: {STEPS}")
    require_cuda()
    from lib.data.jsonio import write_json_atomic

    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # executed notebooks, run stores: not results (tests/test_results_tree.py)
    res = {"machine": machine(), "work_dir": str(work), "steps": {}}
    t0 = time.perf_counter()
    for step in steps:
        print(f"gpu-check: {step} ...", flush=True)
        res["steps"][step] = {"exactness": exactness, "bench": bench, "notebooks": notebooks}[step](work)
        for name, r in res["steps"][step].items():
            print(f"  {step}/{name}: {'ok' if r['ok'] else 'FAILED'} ({r['seconds']} s)", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["ok"] = all(r["ok"] for step in res["steps"].values() for r in step.values())
    write_json_atomic(out, res)
    print(f"gpu-check: {'ok' if res['ok'] else 'FAILED'} in {res['seconds']} s; figures in {out}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
