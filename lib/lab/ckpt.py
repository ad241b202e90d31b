"""Pieces every resumable training loop shares (exp07 soft prefixes, exp12 latent compressors).

- ``save_atomic``: ``torch.save`` to a temp file beside the target, then ``os.replace``: a kill
  mid-write leaves the previous checkpoint intact.
- ``move_aside``: rename a checkpoint to ``<name>.old-<n>`` (never deleted), for ``FRESH`` runs.
- ``rng_state`` / ``restore_rng``: torch, python and numpy generator states.
- ``warmup``: the LambdaLR factor of a linear warm-up over ``steps`` optimizer steps, then constant.
- ``epoch_loop``: AdamW + warm-up over seeded per-epoch permutations, checkpointed and resumable (exp12's
  single-model compressor and its multi-model wire).
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Callable

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



class Interrupted(RuntimeError):
    """Raised by ``epoch_loop(stop_after=...)`` to simulate a kill (tests)."""


def epoch_loop(module: torch.nn.Module, cfg, n_items: int, step_fn: Callable[[list[int]], dict],
               row_fn: Callable[[int, int, float, float, dict], dict], checkpoint, meta: dict, weights_key: str,
               extra_state: Callable[[], dict], *, device, progress: bool = False, desc: str = "train",
               stop_after: int | None = None) -> tuple[list[dict], int]:
    """Train ``module``'s parameters; returns (history, the step it resumed from).

    AdamW (``cfg.lr``, ``cfg.weight_decay``) with a linear warm-up over ``cfg.warmup_steps``; ``cfg.epochs``
    epochs, each over ``np.random.default_rng([cfg.seed, epoch])``'s permutation of the ``n_items`` indices in
    batches of ``cfg.batch_size``. One optimizer step: ``step_fn(batch indices)`` runs the forward AND the
    backward and returns its loss terms; gradients are clipped to ``cfg.clip``; ``row_fn(step, epoch, lr,
    grad_norm, terms)`` is the history row. ``checkpoint`` (a path, or None for none) holds ``meta``, the
    weights under ``weights_key``, ``extra_state()``, optimizer, scheduler, step, history and RNG states; it
    is written atomically every ``cfg.checkpoint_every`` steps and at the end, and a run whose checkpoint
    exists resumes from it (a different ``meta`` is an error). The module is left in eval mode.
    """
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup(cfg.warmup_steps))
    step, history = 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        st = torch.load(ckpt, weights_only=False, map_location=device)
        if st["meta"] != meta:
            diff = sorted(k for k in meta if st["meta"].get(k) != meta[k])
            raise ValueError(f"checkpoint {ckpt} belongs to another run (differs in {diff}); use another path or FRESH")
        module.load_state_dict(st[weights_key])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        restore_rng(st["rng"])
        step, history = st["step"], st["history"]
    resumed = step

    def save():
        if ckpt:
            save_atomic(ckpt, {"meta": meta, **extra_state(), weights_key: module.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "step": step, "history": history, "rng": rng_state()})

    per_epoch = math.ceil(n_items / cfg.batch_size)
    total = cfg.epochs * per_epoch
    bar = tqdm(total=total, initial=step, disable=not progress, desc=desc)
    done_here = 0
    module.train()
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(n_items).tolist()
        terms = step_fn(order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size])
        gn = float(torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.clip))
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        history.append(row_fn(step, epoch, lr, gn, terms))
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == total:
            save()
        if stop_after is not None and done_here >= stop_after and step < total:
            bar.close()
            raise Interrupted(f"stopped after {done_here} steps (step {step}/{total})")
    bar.close()
    module.eval()
    return history, resumed
