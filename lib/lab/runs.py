"""Resumable per-item result store, provenance, and JSON/CSV result writers.

Conventions
-----------
* A run store is a directory holding ``config.json`` (the run's config, its hash, key fields and
  creation date) and ``items.jsonl`` (one JSON object per line, one line per finished item).
  An item is identified by the tuple of its ``key_fields`` values (default
  ``("sample_id", "condition")``); key values must be ``str`` or ``int``.
* A row counts as stored once its line, newline included, is on disk. ``RunStore.append`` writes
  a batch with one ``os.write`` on an ``O_APPEND`` descriptor, then ``fsync``; a kill leaves at
  most one partial last line, which the next open cuts off and counts in ``recovered_partial``.
  An unreadable line anywhere else is corruption and raises ``RuntimeError`` with its line number.
* Reopening with a config whose hash differs raises ``ConfigMismatch`` naming every differing key.
  ``fresh=True`` moves everything in the directory (except earlier ``_old_*`` folders) to
  ``_old_<UTC timestamp>/`` and starts empty; nothing is ever deleted.
* Appends take an exclusive ``flock`` on ``items.jsonl`` (POSIX) and first read any lines another
  store object appended since, so two stores on one directory never write a duplicate key.
  Between appends a store reflects the file as of its last open or append.
* JSON conversion (``to_jsonable``): numpy scalars and arrays become Python values, ``Path``
  becomes ``str``, dataclass instances become dicts, tuples become lists, int dict keys become
  strings. Config hashing rejects NaN/inf; result files and rows write NaN/inf as ``null``.
* CSV cells: ``None`` is an empty cell; a ``str`` is written as is unless it would read back as
  something else (empty, or valid JSON such as ``"123"``), in which case it is JSON-quoted; every
  other value is JSON-encoded (floats keep ``NaN``). ``read_per_item_csv`` inverts this exactly.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import difflib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from lib.data.jsonio import (  # noqa: F401  (re-exported: runs.write_json_atomic, runs.to_jsonable)
    _fsync_dir, _umask, _where, _write_bytes_atomic, to_jsonable, write_json_atomic)

CONFIG_FILE = "config.json"
ITEMS_FILE = "items.jsonl"
RESULTS_FILE = "results.json"
PER_ITEM_FILE = "per_item.csv"
PROVENANCE_PACKAGES = ("torch", "transformers", "datasets", "numpy", "scipy", "papermill")
_MISSING = "<missing>"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def config_hash(config: dict) -> str:
    """sha256 hex of the canonical JSON of ``config`` (sorted keys, compact, no NaN)."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    return hashlib.sha256(_canonical(to_jsonable(config, nan="error")).encode()).hexdigest()


class ConfigMismatch(ValueError):
    """A run store exists with a different config; the message lists every differing key."""


def _config_diff(old, new, path: str = "") -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else key
            diffs += _config_diff(old.get(key, _MISSING), new.get(key, _MISSING), sub)
        return diffs
    return [] if _canonical(old) == _canonical(new) else [(_where(path), old, new)]


def _show(value) -> str:
    return value if value is _MISSING else json.dumps(value, ensure_ascii=False)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RunStore:
    """Append-only, resumable store of per-item rows in ``out_dir`` (see module docstring)."""

    def __init__(self, out_dir, config: dict, *, key_fields=("sample_id", "condition"),
                 fresh: bool = False):
        if isinstance(key_fields, str) or not key_fields or \
                not all(isinstance(k, str) and k for k in key_fields) or \
                len(set(key_fields)) != len(key_fields):
            raise ValueError(f"key_fields={key_fields!r} must be a non-empty sequence of "
                             "distinct non-empty strings")
        self.out_dir = Path(out_dir)
        self.key_fields = tuple(key_fields)
        self.config = to_jsonable(config, nan="error") if isinstance(config, dict) else None
        self.config_hash = config_hash(config)
        self.config_path = self.out_dir / CONFIG_FILE
        self.items_path = self.out_dir / ITEMS_FILE
        self.recovered_partial = 0
        self.moved_to: Path | None = None
        self._rows: list[dict] = []
        self._done: set[tuple] = set()
        self._size = 0
        self._nlines = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.moved_to = self._move_aside()
        if self.config_path.exists():
            self._check_stored_config()
        elif self.items_path.exists() and self.items_path.stat().st_size > 0:
            raise RuntimeError(f"{self.items_path} has rows but {self.config_path} is missing; "
                               "pass fresh=True to move them aside or use a new out_dir")
        else:
            write_json_atomic(self.config_path, {
                "config": self.config, "config_hash": self.config_hash,
                "key_fields": list(self.key_fields), "created": _utc_now().isoformat()})
        with self._locked() as fd:
            self._read_new(fd)

    # -- opening -------------------------------------------------------------------------------
    def _move_aside(self) -> Path | None:
        entries = [p for p in self.out_dir.iterdir() if not p.name.startswith("_old_")]
        if not entries:
            return None
        stamp = _utc_now().strftime("%Y%m%dT%H%M%S%fZ")
        dest, n = self.out_dir / f"_old_{stamp}", 1
        while dest.exists():
            dest, n = self.out_dir / f"_old_{stamp}_{n}", n + 1
        dest.mkdir()
        for p in entries:
            os.replace(p, dest / p.name)
        return dest

    def _check_stored_config(self) -> None:
        try:
            stored = json.loads(self.config_path.read_text())
            old_config, old_hash = stored["config"], stored["config_hash"]
            old_keys = tuple(stored["key_fields"])
        except (ValueError, KeyError, TypeError) as err:
            raise RuntimeError(f"{self.config_path} is unreadable ({err!r}); "
                               "pass fresh=True to move it aside or use a new out_dir") from err
        if config_hash(old_config) != old_hash:
            raise RuntimeError(f"{self.config_path}: stored config_hash {old_hash} does not match "
                               "its stored config (edited by hand?)")
        diffs = [] if old_hash == self.config_hash else _config_diff(old_config, self.config)
        if old_keys != self.key_fields:
            diffs.append(("key_fields", list(old_keys), list(self.key_fields)))
        if diffs:
            lines = "\n".join(f"  {k}: stored {_show(a)}, new {_show(b)}" for k, a, b in diffs)
            raise ConfigMismatch(
                f"run store {self.out_dir} was made with a different config "
                f"(stored hash {old_hash[:12]}, new {self.config_hash[:12]}):\n{lines}\n"
                "To keep both runs, pass a new out_dir; to start over here, pass fresh=True "
                "(the old store is moved to _old_<timestamp>/, nothing is deleted).")

    @contextlib.contextmanager
    def _locked(self):
        """Open ``items.jsonl`` for appending and hold an exclusive flock; yields the fd."""
        fd = os.open(self.items_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock

    def _read_new(self, fd: int) -> None:
        """Parse lines appended since ``self._size``; cut a partial final line (lock held)."""
        size = os.fstat(fd).st_size
        if size < self._size:
            raise RuntimeError(f"{self.items_path} shrank from {self._size} to {size} bytes "
                               "while open; another process rewrote it")
        if size == self._size:
            return
        data = os.pread(fd, size - self._size, self._size)
        lines = data.split(b"\n")
        tail = lines.pop()  # bytes after the last newline: empty unless the last line is partial
        parsed, cut_from = [], None
        for i, line in enumerate(lines):
            lineno = self._nlines + i + 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"a {type(row).__name__}, not an object")
            except ValueError as err:
                if i == len(lines) - 1 and not tail:
                    cut_from = size - len(line) - 1
                    break
                raise RuntimeError(f"{self.items_path} line {lineno} is corrupt ({err}); "
                                   "it is not the last line, so it is not a killed write") from err
            parsed.append((lineno, row))
        if tail:
            cut_from = size - len(tail)
        if cut_from is not None:
            os.ftruncate(fd, cut_from)
            os.fsync(fd)
            self.recovered_partial += 1
            size = cut_from
        for lineno, row in parsed:
            try:
                key = self._key_of(row)
            except ValueError as err:
                raise RuntimeError(f"{self.items_path} line {lineno}: {err}") from err
            if key in self._done:
                raise RuntimeError(f"{self.items_path} line {lineno}: duplicate key {key!r}")
            self._done.add(key)
            self._rows.append(row)
        self._nlines += len(parsed)
        self._size = size

    # -- public API ----------------------------------------------------------------------------
    def _key_of(self, row: dict) -> tuple:
        missing = [k for k in self.key_fields if k not in row]
        if missing:
            raise ValueError(f"row is missing key field(s) {missing} (key_fields="
                             f"{list(self.key_fields)}, row has {sorted(row)})")
        key = tuple(row[k] for k in self.key_fields)
        for name, value in zip(self.key_fields, key):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"key field {name!r}={value!r} must be str or int")
        return key

    def done(self) -> set[tuple]:
        """Keys (tuples in ``key_fields`` order) already stored."""
        return set(self._done)

    def is_done(self, *key) -> bool:
        if len(key) != len(self.key_fields):
            raise ValueError(f"is_done takes {len(self.key_fields)} values "
                             f"{list(self.key_fields)}, got {key!r}")
        return key in self._done

    def append(self, rows: list[dict]) -> None:
        """Store ``rows`` (all or none); a missing key field or an already-stored key raises."""
        if isinstance(rows, dict):
            raise ValueError("append takes a list of rows, got a single dict")
        converted = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"row {i} is a {type(row).__name__}, expected dict")
            converted.append(to_jsonable(row, nan="null", _path=f"row {i}"))
        if not converted:
            return
        with self._locked() as fd:
            self._read_new(fd)
            seen: set[tuple] = set()
            for i, row in enumerate(converted):
                key = self._key_of(row)
                named = ", ".join(f"{k}={v!r}" for k, v in zip(self.key_fields, key))
                if key in self._done:
                    raise ValueError(f"duplicate key ({named}): already stored in "
                                     f"{self.items_path}; nothing from this batch was written")
                if key in seen:
                    raise ValueError(f"duplicate key ({named}) appears twice in this batch "
                                     f"(row {i}); nothing from this batch was written")
                seen.add(key)
            data = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"
                           for r in converted).encode()
            written = os.write(fd, data)  # one call; a short write (rare) is continued below
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
            self._size += len(data)
            self._nlines += len(converted)
            for row in converted:
                self._done.add(self._key_of(row))
                self._rows.append(row)

    def rows(self) -> list[dict]:
        """Stored rows in insertion order (copies)."""
        return copy.deepcopy(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"RunStore({str(self.out_dir)!r}, {len(self)} rows, "
                f"hash={self.config_hash[:12]}, recovered_partial={self.recovered_partial})")


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


def run_waves(store: RunStore, sample_ids: list[str], names: list[str], score, *, wave: int = 8,
              progress: bool = True, desc: str = "samples") -> list[dict]:
    """Resumable scoring loop: ``score(ids)`` for the samples whose ``(id, name)`` rows are not all in
    ``store``, ``wave`` samples at a time; rows already stored are not appended twice. Returns every
    stored row. A kill loses at most the wave in flight."""
    from tqdm.auto import tqdm

    if wave < 1:
        raise ValueError(f"wave must be >= 1, got {wave}")
    todo = [i for i in sample_ids if not all(store.is_done(i, n) for n in names)]
    bar = tqdm(total=len(sample_ids), initial=len(sample_ids) - len(todo), desc=desc, disable=not progress)
    for w in range(0, len(todo), wave):
        chunk = todo[w:w + wave]
        store.append([r for r in score(chunk) if not store.is_done(r["sample_id"], r["condition"])])
        bar.update(len(chunk))
    bar.close()
    return store.rows()

