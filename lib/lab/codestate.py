"""Which code produced a run: the commit, whether the tree was dirty, and a hash of the code itself,
taken when the run STARTS and again when its results are written.

* ``dirty`` is true when a tracked file outside ``results/`` differs from the commit OR an untracked,
  not-ignored file exists under the code folders (``lib/``, ``builders/``, ``experiments/``,
  ``sweeps/``, ``tests/``): a new module a run imports counts.
* ``code_sha256`` hashes the path and bytes of every tracked or untracked, not-ignored file under
  ``lib/`` and ``builders/`` as they are on disk, so an edit made while a run is going is seen even
  when nothing was committed.
* ``mark_start(config, defaults)`` (called by every notebook's setup cell) records the state at the
  start and the run's kind: SMOKE, the size knobs set below the design's defaults ("cut down");
  ``lib.lab.records.provenance`` adds both and ``code_changed_during_run``.
"""
from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("lib", "builders")
UNTRACKED_DIRS = ("lib", "builders", "experiments", "sweeps", "tests")
SIZE_SUFFIXES = ("SAMPLES", "STEPS", "EPOCHS", "TARGETS", "TEXTS", "RESTARTS")
_START: dict | None = None


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def code_state() -> dict:
    """``{"commit", "dirty", "dirty_files", "code_sha256"}``; commit "unknown" (dirty None) outside git."""
    head = _git("rev-parse", "HEAD")
    commit = head.strip() if head and len(head.strip()) == 40 else "unknown"
    files = _git("ls-files", "-co", "--exclude-standard", "-z", "--", *CODE_DIRS)
    digest = hashlib.sha256()
    for rel in sorted(f for f in (files or "").split("\0") if f):
        p = ROOT / rel
        if p.is_file():
            digest.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    if commit == "unknown":
        return {"commit": commit, "dirty": None, "dirty_files": [], "code_sha256": digest.hexdigest()}
    tracked = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    untracked = _git("ls-files", "-o", "--exclude-standard", "--", *UNTRACKED_DIRS)
    if tracked is None or untracked is None:
        return {"commit": commit, "dirty": None, "dirty_files": [], "code_sha256": digest.hexdigest()}
    changed = [line[3:] for line in tracked.splitlines() if line.strip()] + [f"?? {f}" for f in untracked.splitlines() if f]
    return {"commit": commit, "dirty": bool(changed), "dirty_files": changed[:50], "code_sha256": digest.hexdigest()}


def run_kind(config: dict | None, defaults: dict | None) -> dict:
    """``{"smoke", "cut_down"}``: SMOKE, and every size knob (``N_*`` or ``*_SAMPLES``/``*_STEPS``/...)
    resolved below its design default, as ``{name: [value, default]}``."""
    config, defaults = dict(config or {}), dict(defaults or {})
    cut = {}
    for k, v in config.items():
        d = defaults.get(k)
        sized = k.startswith("N_") or k.endswith(SIZE_SUFFIXES)
        if sized and isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(d, (int, float)) and v < d:
            cut[k] = [v, d]
    return {"smoke": bool(config.get("SMOKE", False)), "cut_down": cut}


def mark_start(config: dict | None = None, defaults: dict | None = None) -> dict:
    """Record the code state and the run's kind now (a notebook's setup cell); returns the record."""
    global _START
    _START = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **code_state(),
              "run_kind": run_kind(config, defaults)}
    return _START


def start() -> dict | None:
    return _START
