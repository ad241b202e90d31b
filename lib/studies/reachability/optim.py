"""The soft-prompt optimizer of exp08: targets x restarts as batches of soft prompts, the
step-extension rule, and resumable runs through ``lib.studies.reachability.store.ChunkStore``.

Prompt ``p`` belongs to target ``p // restarts`` and is restart ``p % restarts`` (target-major).
Every prompt's initial value comes from its own seed, and the batched loss is the SUM of per-prompt
MSEs, so with Adam (elementwise) a prompt's trajectory does not depend on which other prompts
share its batch (up to float reassociation: tested). A CHUNK is a run of whole targets (all their
restarts, ``max(1, chunk // restarts)`` targets): the unit optimized in one forward, checkpointed
and stored. Re-exported by ``lib.studies.reachability``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lib.studies.reachability.store import ChunkStore, stack_losses, tensor_sha256


def check_pos_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class ExtendRule:
    """Keep optimizing (to ``max_steps``) when curves still fall: the best restart's running-min
    loss dropped by more than ``tol`` (relative) over the last ``window`` fraction of steps, for the
    median target. Targets already below the reach threshold count as flat."""

    window: float = 0.1
    tol: float = 0.01

    def __post_init__(self):
        if not 0 < self.window < 1:
            raise ValueError(f"window must be in (0, 1), got {self.window!r}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")

    def decide(self, best_curves: np.ndarray, reached: np.ndarray) -> dict:
        steps = best_curves.shape[1] - 1
        w = max(1, int(round(self.window * steps)))
        run_min = np.minimum.accumulate(best_curves, axis=1)
        drop = 1.0 - run_min[:, -1] / np.maximum(run_min[:, -1 - w], 1e-30)
        drop = np.where(reached, 0.0, drop)
        med = float(np.median(drop))
        return {"rule": f"extend if median over targets of the relative drop of the best restart's running-min "
                        f"loss over the last {self.window:.0%} of steps ({w} steps) > {self.tol}; reached targets "
                        f"count as 0", "window_steps": w, "median_relative_drop": med,
                "share_falling": float(np.mean(drop > self.tol)), "still_falling": med > self.tol}


@dataclass
class Fit:
    """Result of optimizing P = targets x restarts prompts. Curves hold the loss before each step
    plus the final loss after the last step (``[P, steps + 1]``)."""

    restarts: int
    curves: np.ndarray          # [P, S+1]
    final_mse: np.ndarray       # [P]
    cosine: np.ndarray          # [P, T] per-position cosine(achieved, target) at the end
    steps: int
    extension: dict | None = None
    prompts: torch.Tensor | None = field(default=None, repr=False)  # [P, T, d] final soft prompts
    chunks: int = 1
    resumed_chunks: int = 0     # chunks that started from a stored state (a checkpoint or a finished result)


def init_prompts(seeds: list[int], seq_len: int, d: int, std: float) -> torch.Tensor:
    """``[P, T, d]``: prompt p ~ N(0, std^2) from its own generator seeded with seeds[p]."""
    return torch.stack([torch.randn(seq_len, d, generator=torch.Generator().manual_seed(int(s))) * std
                        for s in seeds])


class _Chunk:
    """Prompts, Adam and the losses of one chunk; ``state()`` / ``state=`` round-trip them exactly."""

    def __init__(self, reader, targets, seeds, lr, std, state: dict | None = None):
        self.reader = reader
        self.target = targets.to(reader.device)
        self.prompt = init_prompts(seeds, targets.shape[1], targets.shape[2], std).to(reader.device).requires_grad_(True)
        self.opt = torch.optim.Adam([self.prompt], lr=lr)
        self.losses: list[np.ndarray] = []
        self.result = None
        if state is not None:
            with torch.no_grad():
                self.prompt.copy_(state["prompt"])
            self.opt.load_state_dict(state["optimizer"])
            self.losses = list(state["losses"])
            self.result = state.get("result")

    @property
    def step(self) -> int:
        return len(self.losses)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            mse = (self.reader(self.prompt) - self.target).pow(2).mean(dim=(1, 2))   # [P]
            self.opt.zero_grad(set_to_none=True)
            mse.sum().backward()
            self.opt.step()
            self.losses.append(mse.detach().cpu().numpy())

    @torch.no_grad()
    def finish(self) -> dict:
        res = self.reader(self.prompt)
        mse = (res - self.target).pow(2).mean(dim=(1, 2)).cpu().numpy()
        cos = torch.nn.functional.cosine_similarity(res, self.target, dim=-1).cpu().numpy()
        self.result = {"curves": np.stack(self.losses + [mse], axis=1), "final_mse": mse, "cosine": cos}
        return self.result

    def state(self) -> dict:
        return {"step": self.step, "prompt": self.prompt.detach().cpu().clone(), "optimizer": self.opt.state_dict(),
                "losses": stack_losses(self.losses, self.prompt.shape[0]), "result": self.result}


class _Runner:
    """Advances chunks to a step count, from memory (no store) or from the store's files."""

    def __init__(self, reader, flat, seeds, spans, restarts, lr, std, store, part, progress, on_checkpoint):
        self.reader, self.flat, self.seeds, self.spans, self.r = reader, flat, seeds, spans, restarts
        self.lr, self.std, self.store, self.part = lr, std, store, part
        self.progress, self.on_checkpoint = progress, on_checkpoint
        self.live: dict[int, _Chunk] = {}
        self.seen: dict[int, int] = {}      # steps of chunk i already reported to progress in this call
        self.resumed = 0

    def _new(self, i: int, state: dict | None) -> _Chunk:
        lo, hi = (a * self.r for a in self.spans[i])
        return _Chunk(self.reader, self.flat[lo:hi], self.seeds[lo:hi], self.lr, self.std, state)

    def _at(self, i: int, step: int) -> None:
        """Chunk ``i`` is at ``step``: a first sight of a stored chunk counts as resumed; progress
        gets the prompt-steps not reported yet."""
        if i not in self.seen and step > 0:
            self.resumed += 1
        if self.progress and step > self.seen.get(i, 0):
            self.progress((step - self.seen.get(i, 0)) * (self.spans[i][1] - self.spans[i][0]) * self.r)
        self.seen[i] = max(step, self.seen.get(i, 0))

    def _chunk(self, i: int) -> _Chunk:
        if i in self.live:
            return self.live[i]
        state = self.store.load(self.part, i) if self.store is not None else None
        c = self._new(i, state)
        if state is not None:
            if i not in self.seen:   # resuming another process's work: its RNG state too
                ChunkStore.restore_rng(state)
            if c.result is not None:
                self.store.mark_finished(self.part, i, state)
        self._at(i, c.step)
        return c

    def advance(self, i: int, to: int, finish: bool) -> None:
        """Run chunk ``i`` to step ``to`` (checkpointing every ``store.every`` steps); with ``finish``
        compute and store its result. A finished chunk is left as it is."""
        if self.store is not None and self.store.finished(self.part, i):
            self._at(i, self.store.finished_step(self.part, i))
            return
        c = self._chunk(i)
        if c.result is not None:
            return
        if c.step >= to and not finish:   # phase 1 again, for a chunk that already went on to max_steps
            return
        if c.step > to:
            raise RuntimeError(f"chunk {i} of part {self.part!r} is stored at step {c.step}, past {to}")
        every = self.store.every if self.store is not None else None
        while c.step < to:
            c.run(to - c.step if every is None else min(to - c.step, every - c.step % every))
            self._at(i, c.step)
            if self.store is not None and (c.step < to or not finish):
                self.store.save(self.part, i, c.state())
                if self.on_checkpoint:
                    self.on_checkpoint(self.part, i, c.step)
        if finish:
            c.finish()
            if self.store is not None:
                self.store.save(self.part, i, c.state())
        if self.store is None:
            self.live[i] = c
        else:
            self.live.pop(i, None)   # at most one chunk's tensors in memory

    def _done(self, i: int) -> _Chunk:
        return self.live[i] if i in self.live else self._new(i, self.store.load(self.part, i))

    def losses(self, i: int) -> np.ndarray:
        """``[P_i, steps]`` losses recorded so far (before each step)."""
        return np.stack(self._done(i).losses, axis=1)

    def result(self, i: int) -> tuple[dict, torch.Tensor]:
        c = self._done(i)
        return c.result, c.prompt.detach().cpu()


def optimize(reader, targets: torch.Tensor, *, restarts: int, steps: int, lr: float = 0.01,
             init_std: float = 1.0, seed: int = 0, chunk: int = 256, max_steps: int | None = None,
             rule: ExtendRule | None = None, reach_frac: float = 0.01, progress=None,
             store: ChunkStore | None = None, part: str = "0", on_checkpoint=None) -> Fit:
    """Optimize ``restarts`` soft prompts per target in chunks of ``max(1, chunk // restarts)``
    targets (one forward each). Prompt (target i, restart r) starts from seed
    ``seed + 1_000_003 * r + i``. With ``max_steps``, ``rule`` decides after ``steps`` (every
    chunk first runs ``steps``) whether every chunk continues to ``max_steps``.

    store: a ``ChunkStore``; this call is its part ``part``. Chunks are checkpointed every
    ``store.every`` steps and kept when finished; a rerun resumes each chunk where its last
    checkpoint left it (bit-identical on CPU float32) and reuses the stored extension decision.
    Other arguments or targets for a stored part raise ``PartMismatch``.
    on_checkpoint: called as ``on_checkpoint(part, chunk, step)`` after each checkpoint (tests
    raise from it to simulate a kill)."""
    check_pos_int("restarts", restarts)
    check_pos_int("steps", steps)
    check_pos_int("chunk", chunk)
    if targets.dim() != 3 or targets.shape[-1] != reader.d_model:
        raise ValueError(f"targets must be [n, T, {reader.d_model}], got {tuple(targets.shape)}")
    if max_steps is not None and max_steps < steps:
        raise ValueError(f"max_steps={max_steps} is below steps={steps}")
    rule = rule or ExtendRule()
    n = targets.shape[0]
    per = max(1, chunk // restarts)
    spans = [(lo, min(lo + per, n)) for lo in range(0, n, per)]
    seeds = [seed + 1_000_003 * r + i for i in range(n) for r in range(restarts)]
    flat = targets.float().repeat_interleave(restarts, dim=0)
    if store is not None:
        store.check_part(part, {"n_targets": n, "shape": list(targets.shape[1:]), "targets_sha256": tensor_sha256(targets),
                                "restarts": restarts, "steps": steps, "max_steps": max_steps, "lr": lr,
                                "init_std": init_std, "seed": seed, "targets_per_chunk": per,
                                "rule": [rule.window, rule.tol] if max_steps is not None else None,
                                "reach_frac": reach_frac if max_steps is not None else None})
    run = _Runner(reader, flat, seeds, spans, restarts, lr, init_std, store, part, progress, on_checkpoint)
    for i in range(len(spans)):
        run.advance(i, steps, finish=max_steps is None)
    extension, total = None, steps
    if max_steps is not None:
        extension = store.decision(part) if store is not None else None
        if extension is None:
            curves = np.concatenate([run.losses(i) for i in range(len(spans))])
            best = best_rows(curves[:, -1], n, restarts)
            init = curves[:, 0].reshape(n, restarts).mean(1)
            extension = rule.decide(curves[best], curves[best, -1] <= reach_frac * init)
            total = max_steps if extension["still_falling"] and max_steps > steps else steps
            extension.update(steps=steps, max_steps=max_steps, steps_run=total)
            if store is not None:
                store.set_decision(part, extension)
        total = extension["steps_run"]
        for i in range(len(spans)):
            run.advance(i, total, finish=True)
    done = [run.result(i) for i in range(len(spans))]
    return Fit(restarts, np.concatenate([d["curves"] for d, _ in done]), np.concatenate([d["final_mse"] for d, _ in done]),
               np.concatenate([d["cosine"] for d, _ in done]), total, extension,
               torch.cat([p for _, p in done]), len(spans), run.resumed)


def best_rows(final: np.ndarray, n: int, restarts: int) -> np.ndarray:
    """Row index (into P) of each target's best restart by final loss."""
    return np.arange(n) * restarts + final.reshape(n, restarts).argmin(1)
