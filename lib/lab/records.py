"""What a finished run records about itself: ``provenance`` (code state, versions, seeds, device, the
loaded models), ``results.json`` (``write_results_json``) and ``per_item.csv`` (``write_per_item_csv``,
read back exactly by ``read_per_item_csv``). The resumable store is ``lib.lab.runs``.

CSV cells: ``None`` is an empty cell; a ``str`` is written as is unless it would read back as
something else (empty, or valid JSON such as ``"123"``), in which case it is JSON-quoted; every
other value is JSON-encoded (floats keep ``NaN``). ``read_per_item_csv`` inverts this exactly.
"""
from __future__ import annotations

import csv
import difflib
import importlib.metadata
import io
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

from lib.data.jsonio import _write_bytes_atomic, to_jsonable, write_json_atomic
from lib.lab.runs import _utc_now, config_hash

RESULTS_FILE = "results.json"
PER_ITEM_FILE = "per_item.csv"
PROVENANCE_PACKAGES = ("torch", "transformers", "datasets", "numpy", "scipy", "papermill")


def _git(root: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "cpu"


def provenance(seeds: dict | None = None, extra: dict | None = None) -> dict:
    """Git commit/dirty flag of the repo holding ``lib/``, versions, seeds, date, device, host.

    ``commit`` is 40 hex digits or "unknown" (``dirty`` is then None); ``dirty`` says whether
    tracked files outside ``results/`` differ from the commit or untracked files exist under the
    code folders (``lib.lab.codestate``; the results a run is rewriting do not count). ``start`` is the
    same state when the run began (``codestate.mark_start``, called by every notebook's setup), and
    ``code_changed_during_run`` compares the two; ``run_kind`` says SMOKE / cut down / random-init;
    ``models`` lists every model loaded in the process with its weights sha256 (``lib.kv.models.LOADED``). Package versions are None for packages that are not installed. ``extra`` keys are
    added at top level and may not shadow the standard keys.
    """
    if seeds is not None and not isinstance(seeds, dict):
        raise ValueError(f"seeds must be a dict or None, got {type(seeds).__name__}")
    from lib.lab import codestate

    now = codestate.code_state()
    commit, dirty = now["commit"], now["dirty"]
    packages = {}
    for name in PROVENANCE_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    prov = {"commit": commit, "dirty": dirty, "python": platform.python_version(),
            "packages": packages, "seeds": to_jsonable(dict(seeds or {}), nan="error"),
            "date": _utc_now().isoformat(timespec="seconds"), "device": _device(),
            "hostname": socket.gethostname(), "platform": platform.platform(),
            "executable": sys.executable,
            "dirty_files": now["dirty_files"], "code_sha256": now["code_sha256"]}
    began = codestate.start()
    prov["start"] = None if began is None else {k: began[k] for k in ("date", "commit", "dirty", "code_sha256")}
    prov["code_changed_during_run"] = None if began is None else (
        began["commit"] != commit or began["code_sha256"] != now["code_sha256"])
    prov["run_kind"] = None if began is None else began["run_kind"]
    models = sys.modules.get("lib.kv.models")
    prov["models"] = [dict(m) for m in getattr(models, "LOADED", [])]
    if prov["run_kind"] is not None:
        prov["run_kind"] = {**prov["run_kind"], "random_init": any(m.get("random_init") for m in prov["models"])}
    if extra:
        clash = sorted(set(extra) & set(prov))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite provenance keys {sorted(prov)}")
        prov.update(extra)
    return prov


def write_results_json(out_dir, *, config: dict, summary: dict, provenance: dict,
                       extra: dict | None = None) -> Path:
    """Write ``out_dir/results.json``: config, its hash, provenance, summary, CSV pointer, extra."""
    result = {"config": config, "config_hash": config_hash(config), "provenance": provenance,
              "summary": summary, "per_item_csv": PER_ITEM_FILE}
    if extra:
        clash = sorted(set(extra) & set(result))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite result keys {sorted(result)}")
        result.update(extra)
    return write_json_atomic(Path(out_dir) / RESULTS_FILE, result)


def _encode_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value if value else '""'
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def _decode_cell(text: str):
    if text == "":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def write_per_item_csv(out_dir, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Write ``out_dir/per_item.csv``; ``columns`` defaults to the union of keys, first seen first.

    A row key not in an explicit ``columns`` raises (nothing is dropped); a column a row lacks
    is an empty cell (read back as None).
    """
    rows = [to_jsonable(r, nan="keep", _path=f"row {i}") for i, r in enumerate(rows)]
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    else:
        columns = list(columns)
        if len(set(columns)) != len(columns):
            raise ValueError(f"columns has duplicates: {columns}")
        for i, r in enumerate(rows):
            extra = [k for k in r if k not in columns]
            if extra:
                near = {k: difflib.get_close_matches(k, columns, n=1) for k in extra}
                raise ValueError(f"row {i} has keys {extra} not in columns {columns} "
                                 f"(did you mean: {near})")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_encode_cell(r.get(c)) for c in columns])
    return _write_bytes_atomic(Path(out_dir) / PER_ITEM_FILE, buf.getvalue().encode())


def read_per_item_csv(path) -> list[dict]:
    """Read a ``write_per_item_csv`` file back: JSON cells decoded, empty cells None."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            columns = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty (no header line)") from None
        out = []
        for lineno, cells in enumerate(reader, start=2):
            if len(cells) != len(columns):
                raise RuntimeError(f"{path} line {lineno}: {len(cells)} cells, "
                                   f"header has {len(columns)}")
            out.append({c: _decode_cell(v) for c, v in zip(columns, cells)})
    return out
