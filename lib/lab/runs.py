"""Resumable per-item result store (provenance and the results.json / per_item.csv writers:
``lib.lab.records``; atomic JSON writes: ``lib.data.jsonio``).

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
  other value is JSON-encoded (floats keep ``NaN``). ``lib.lab.records.read_per_item_csv`` inverts this exactly.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from lib.data.jsonio import _where, to_jsonable, write_json_atomic

CONFIG_FILE = "config.json"
ITEMS_FILE = "items.jsonl"
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

