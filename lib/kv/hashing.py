"""Content checksums shared by every layer (data files, model weights, code): sha256, streamed.

``cached_sha256`` keeps the digest of a large file in a sidecar JSON keyed by the file's size and
modification time, so a multi-GB weights file is hashed once per conversion, not once per load.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def cached_sha256(path, sidecar) -> str:
    """sha256 of ``path``, read from ``sidecar`` when it records the same size and mtime, else
    computed and written there (atomically; an unwritable sidecar only costs the cache)."""
    path, sidecar = Path(path), Path(sidecar)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        known = json.loads(sidecar.read_text()).get(path.name, {})
        if {k: known.get(k) for k in key} == key and len(known.get("sha256", "")) == 64:
            return known["sha256"]
    except (OSError, ValueError):
        known = {}
    digest = sha256_file(path)
    try:
        table = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    except (OSError, ValueError):
        table = {}
    table[path.name] = {**key, "sha256": digest}
    tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, sidecar)
    except OSError:
        tmp.unlink(missing_ok=True)
    return digest
