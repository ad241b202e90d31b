"""What the notebook tests share: load a builder, run a notebook through papermill, read what it wrote."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_builder(builder: Path):
    """A fresh import of ``builders/build_*.py`` (its ``CELLS``, ``PARAMS``, ``OUT``), without writing the notebook."""
    spec = importlib.util.spec_from_file_location(builder.stem, builder)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def command(nb: Path, executed: Path, **params) -> list[str]:
    """``python -m papermill NB EXECUTED -p NAME VALUE ...`` (values as ``str`` gives them: ``True``, ``200``)."""
    return [sys.executable, "-m", "papermill", str(nb), str(executed), *[a for k, v in params.items() for a in ("-p", k, str(v))]]


def run_notebook(nb: Path, executed: Path, timeout: int = 600, env: dict | None = None, **params) -> subprocess.CompletedProcess:
    """Run the notebook from the repo root; a failure shows the tail of its output."""
    res = subprocess.run(command(nb, executed, **params), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def smoke(nb: Path | str, out_dir: Path, executed: Path | None = None, timeout: int = 600, env: dict | None = None,
          **params) -> dict:
    """A ``SMOKE=True`` run into ``out_dir`` (``nb`` relative to the repo root or absolute); its results.json."""
    run_notebook(ROOT / nb, executed or out_dir / "executed.ipynb", timeout=timeout, env=env, SMOKE=True, OUT_DIR=out_dir, **params)
    return json.loads((out_dir / "results.json").read_text())


def rows(out_dir: Path) -> list[dict]:
    """The run's per_item.csv rows."""
    with open(out_dir / "per_item.csv") as f:
        return list(csv.DictReader(f))
