"""Checkpoint store of exp08's soft-prompt optimizations (``lib.studies.reachability.optim.optimize``).

A kill at the design's size (thousands of targets x 2,000-5,000 steps) must not lose finished work.
The unit stored is a CHUNK: a run of whole targets (all their restarts) optimized as one batch.
Every prompt starts from its own seed and the loss is a sum of per-prompt MSEs, so a chunk is
independent of the others. Layout under ``root`` (a git-ignored ``_store`` folder of the run):

* ``config.json`` / ``items.jsonl``: a ``lib.lab.runs.RunStore`` keyed by ``(part, chunk)``. It
  refuses a run with other knobs (``ConfigMismatch``, a ``ValueError`` naming every differing
  knob; ``fresh=True`` moves the old store aside, nothing is deleted). Its rows: one
  ``(part, "meta")`` row per part (the optimizer's arguments and a sha256 of the targets,
  checked on every later call: ``PartMismatch``), one ``(part, "extension")`` row holding the
  step-extension decision once it is made (a resume reuses it, never recomputes it), and one
  ``(part, i)`` row per finished chunk with the sha256 of its file.
* ``part<part>/chunk<i>.pt``: the chunk's state, rewritten atomically (``lib.lab.ckpt.save_atomic``)
  every ``every`` steps: soft prompts, Adam state, step, the per-step losses so far and the RNG
  states. A finished chunk's file also holds its result (curves, final MSE, cosines).

Resuming loads the last state and continues; on CPU in float32 the numbers are bit-identical to
an uninterrupted run (tested), because nothing in a step depends on how the run got there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lib.kv.hashing import sha256_bytes, sha256_file
from lib.lab import ckpt as ckpt_io
from lib.lab.runs import RunStore

# knobs of build_exp08 that change no number: changing them resumes the same run
RUNTIME_KNOBS = ("OUT_DIR", "PROGRESS", "SMOKE", "FRESH", "CURVE_EVERY", "CHECKPOINT_EVERY")


class PartMismatch(ValueError):
    """A part was stored with other optimizer arguments or other targets; the message names them."""


def store_config(params: dict, lm=None) -> dict:
    """The notebook's knobs that change numbers (``RUNTIME_KNOBS`` left out), plus the model's
    resolved source and dtype when ``lm`` is given."""
    out = {k: v for k, v in params.items() if k not in RUNTIME_KNOBS}
    if lm is not None:
        out.update(model_source=str(lm.source), dtype=str(lm.dtype))
    return out


def tensor_sha256(x: torch.Tensor) -> str:
    """sha256 of a tensor's float32 bytes (C order) and its shape."""
    a = x.detach().float().contiguous().cpu().numpy()
    return sha256_bytes(repr(a.shape).encode() + a.tobytes())


class ChunkStore:
    """Per-chunk checkpoints and finished results of every ``optimize`` call of one run (module docstring)."""

    def __init__(self, root, config: dict, *, every: int = 200, fresh: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every (checkpoint interval in steps) must be an int >= 1, got {every!r}")
        self.root, self.every = Path(root), every
        self.runs = RunStore(self.root, config, key_fields=("part", "chunk"), fresh=fresh)

    def __repr__(self) -> str:
        return f"ChunkStore({str(self.root)!r}, every={self.every}, {len(self.runs)} rows)"

    def _row(self, part: str, chunk) -> dict | None:
        if not self.runs.is_done(part, chunk):
            return None
        return next(r for r in self.runs.rows() if r["part"] == part and r["chunk"] == chunk)

    # -- per part -----------------------------------------------------------------------------
    def check_part(self, part: str, meta: dict) -> None:
        """Record ``meta`` (the optimizer's arguments, targets' sha256) the first time ``part`` is
        seen; afterwards raise ``PartMismatch`` naming every argument that differs."""
        if not isinstance(part, str) or not part:
            raise ValueError(f"part must be a non-empty str, got {part!r}")
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
        old = self._row(part, "meta")
        if old is None:
            self.runs.append([{"part": part, "chunk": "meta", "meta": meta}])
            return
        diff = [k for k in sorted(set(old["meta"]) | set(meta)) if old["meta"].get(k) != meta.get(k)]
        if diff:
            lines = "\n".join(f"  {k}: stored {old['meta'].get(k)!r}, now {meta.get(k)!r}" for k in diff)
            raise PartMismatch(f"part {part!r} in {self.root} was optimized with other arguments ({', '.join(diff)}):\n"
                               f"{lines}\nUse another store folder (OUT_DIR) or fresh=True (FRESH) to start over.")

    def decision(self, part: str) -> dict | None:
        row = self._row(part, "extension")
        return None if row is None else row["decision"]

    def set_decision(self, part: str, decision: dict) -> None:
        self.runs.append([{"part": part, "chunk": "extension", "decision": decision}])

    # -- per chunk ----------------------------------------------------------------------------
    def path(self, part: str, chunk: int) -> Path:
        return self.root / f"part{part}" / f"chunk{chunk:05d}.pt"

    def finished(self, part: str, chunk: int) -> bool:
        return self.runs.is_done(part, chunk)

    def finished_step(self, part: str, chunk: int) -> int:
        """Steps a finished chunk ran."""
        return int(self._row(part, chunk)["step"])

    def load(self, part: str, chunk: int) -> dict | None:
        """The chunk's last saved state (None when it has none yet). A finished chunk's file must
        match the sha256 its row recorded."""
        path = self.path(part, chunk)
        row = self._row(part, chunk)
        if not path.exists():
            if row is not None:
                raise RuntimeError(f"{path} is missing but {self.runs.items_path} lists chunk {chunk} of part "
                                   f"{part!r} as finished")
            return None
        if row is not None and sha256_file(path) != row["sha256"]:
            raise RuntimeError(f"{path} changed after chunk {chunk} of part {part!r} finished (sha256 differs from "
                               f"{self.runs.items_path}); move the store aside (FRESH) and rerun")
        return torch.load(path, weights_only=False)

    def save(self, part: str, chunk: int, state: dict) -> None:
        """Write the chunk's state atomically; a state with a ``result`` also marks it finished."""
        path = self.path(part, chunk)
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt_io.save_atomic(path, {**state, "rng": ckpt_io.rng_state()})
        if state.get("result") is not None:
            self.mark_finished(part, chunk, state)

    def mark_finished(self, part: str, chunk: int, state: dict) -> None:
        """Append the chunk's row (its file holds a result); a no-op when the row exists. A kill
        between the file and the row leaves a finished file without a row: the resume marks it."""
        if state.get("result") is None:
            raise ValueError(f"chunk {chunk} of part {part!r} has no result at step {state.get('step')}; not finished")
        if not self.finished(part, chunk):
            self.runs.append([{"part": part, "chunk": chunk, "step": int(state["step"]),
                               "sha256": sha256_file(self.path(part, chunk))}])

    @staticmethod
    def restore_rng(state: dict) -> None:
        ckpt_io.restore_rng(state["rng"])


def stack_losses(losses: list[np.ndarray], n_prompts: int) -> np.ndarray:
    """``[steps, P]`` float32 array of per-step losses (an empty list gives ``[0, P]``)."""
    return np.stack(losses).astype(np.float32) if losses else np.zeros((0, n_prompts), np.float32)
