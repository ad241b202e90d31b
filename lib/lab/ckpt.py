"""Pieces every resumable training loop shares (exp07 soft prefixes, exp12 latent compressors).

- ``save_atomic``: ``torch.save`` to a temp file beside the target, then ``os.replace``: a kill
  mid-write leaves the previous checkpoint intact.
- ``move_aside``: rename a checkpoint to ``<name>.old-<n>`` (never deleted), for ``FRESH`` runs.
- ``rng_state`` / ``restore_rng``: torch, python and numpy generator states.
- ``warmup``: the LambdaLR factor of a linear warm-up over ``steps`` optimizer steps, then constant.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_atomic(path, state: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def move_aside(path) -> Path | None:
    """Rename an existing checkpoint to ``<name>.old-<n>``; returns the new path (None if there was none)."""
    path = Path(path)
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"{path.name}.old-{n}").exists():
        n += 1
    dest = path.with_name(f"{path.name}.old-{n}")
    os.replace(path, dest)
    return dest


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def warmup(steps: int):
    """``LambdaLR`` factor: (step + 1) / steps during warm-up, then 1 (steps 0: always 1)."""
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


def check_positive_ints(config, names) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value on ``config`` is not a positive int
    (a training config's sizes and step counts)."""
    for k in names:
        v = getattr(config, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")

