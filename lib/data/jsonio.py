"""JSON conversion and atomic writes (temp file in the same folder, ``fsync``, ``os.replace``), shared by
the data layer (``surrogates``' JSON cache) and the run stores (``lib.lab.runs``, which re-exports them).

``to_jsonable``: numpy scalars and arrays become Python values, ``Path`` becomes ``str``, dataclass
instances become dicts, tuples become lists, int dict keys become strings; ``nan`` is "error",
"null" or "keep" for NaN/inf.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path, PurePath

import numpy as np

_NAN_POLICIES = ("error", "null", "keep")


def _where(path: str) -> str:
    return path or "<root>"


def to_jsonable(obj, *, nan: str = "null", _path: str = ""):
    """Return ``obj`` as plain JSON types; ``nan`` is "error", "null" or "keep" for NaN/inf."""
    if nan not in _NAN_POLICIES:
        raise ValueError(f"nan={nan!r} is not one of {_NAN_POLICIES}")
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj) or nan == "keep":
            return float(obj)
        if nan == "null":
            return None
        raise ValueError(f"{_where(_path)}: {obj!r} is not allowed (NaN/inf has no canonical JSON)")
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), nan=nan, _path=_path)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), nan=nan, _path=_path)
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
                key = str(int(key))
            elif not isinstance(key, str):
                raise ValueError(f"{_where(_path)}: dict key {key!r} ({type(key).__name__}) "
                                 "is not JSON-able; use str or int keys")
            if key in out:
                raise ValueError(f"{_where(_path)}: keys collide as {key!r} after conversion")
            out[key] = to_jsonable(value, nan=nan, _path=f"{_path}.{key}" if _path else key)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nan=nan, _path=f"{_path}[{i}]") for i, v in enumerate(obj)]
    hint = " (convert it to a sorted list)" if isinstance(obj, (set, frozenset)) else ""
    raise ValueError(f"{_where(_path)}: value of type {type(obj).__name__} is not JSON-able{hint}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_bytes_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as indented JSON via a temp file in the same directory and ``os.replace``."""
    text = json.dumps(to_jsonable(obj, nan="null"), indent=2, ensure_ascii=False, allow_nan=False)
    return _write_bytes_atomic(Path(path), (text + "\n").encode())
