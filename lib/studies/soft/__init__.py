"""exp07: soft surrogates trained through the hybrid cache (bare keys, soft-primed values below a cutoff).

The path, for one example (doc, query prompt, answer) and a soft prefix S (P, hidden):
  1. bare cache of ``[anchor, doc]`` (no gradient);
  2. ``[anchor, S, doc]`` forward with S as input embeddings (``encode_full(prefix_embeds=S)``),
     prefix entries dropped, document re-positioned (``shape``): the soft-primed cache;
  3. hybrid = bare keys everywhere, soft-primed values at layers < ``cutoff``, bare values above;
  4. Phase B over ``[prompt, answer]`` with autograd on (``scoring.score_with_grad``): mean answer NLL.
Every step is functional (new tensors, fresh cache wrappers), so the gradient of the loss reaches
S and nothing else (the model is frozen). ``hybrid_nll`` with S equal to the embeddings of a token
prefix gives exactly the token prefix's hybrid NLL (tested), so learned and discrete prefixes are
scored by the same code.

Training (``train``): AdamW, linear warm-up then constant learning rate, gradient accumulation,
gradient-norm clipping, epochs over a seeded permutation per epoch. A checkpoint (one file,
written atomically every ``checkpoint_every`` optimizer steps) holds the prefix, optimizer and
scheduler state, RNG states, the position in the data order and the history, so a run killed at
any moment and resumed ends with the same prefix as an uninterrupted run. ``examples_per_forward``
runs several examples of one optimizer step in one forward (``lib.studies.soft.batch``).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lib.kv import cache as kv
from lib.lab import ckpt as ckpt_io
from lib.kv import encode as enc_mod
from lib.kv import scoring
from lib.studies.soft.batch import hybrid_from_values, hybrid_nll_batch, primed_values_batch
from lib.studies.soft.support import (SEED_PROMPT, SEED_REFERENCE, SUCCESS_CRITERIA, load_splits,  # noqa: F401 (re-exported)
                                      nearest_tokens, success_verdicts, tensor_hash)


@dataclass(frozen=True)
class Example:
    """Token ids of one training or evaluation item (the query prompt is scored)."""

    sample_id: str
    doc_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    # evaluation only: other samples' answers scored on the same caches (``lib.kv.margin``)
    distractor_ids: tuple[tuple[int, ...], ...] = ()
    distractor_samples: tuple[str, ...] = ()


def examples(lm, samples, prefix_len: int, *, prompt_query: str | None = None, n_distractors: int = 0,
             seed: int = 42) -> list[Example]:
    """Examples from samples (matched tokenization as in ``priming.prepare``, with its query template
    unless ``prompt_query`` is given); documents cut to fit. ``n_distractors`` (evaluation): other
    articles' answers among ``samples`` (``priming.distractor_pairs``), tokenized as the gold answer."""
    from lib.studies import priming

    pairs = priming.distractor_pairs(samples, n_distractors, seed) if n_distractors else {}
    out = []
    for s in samples:
        p = priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id, pairs.get(s.id, ()),
                            prompt_query=prompt_query or priming.PROMPT_QUERY)
        longest = max(map(len, [p.answer_ids, *p.distractor_ids]))
        doc, _ = enc_mod.fit_document(p.doc_ids, lm.arch, prefix_len + len(p.prompt_ids["query"]) + longest)
        out.append(Example(s.id, tuple(doc), tuple(p.prompt_ids["query"]), tuple(p.answer_ids),
                           tuple(tuple(d) for d in p.distractor_ids), tuple(p.distractor_samples)))
    return out


@dataclass(frozen=True)
class TrainConfig:
    prefix_len: int
    cutoff: int
    lr: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_accum: int = 4
    clip: float = 1.0
    epochs: int = 3
    init: str = "random"  # "random" (N(0, init_std)) or "tokens" (embeddings of init_ids)
    init_std: float = 0.02
    init_ids: tuple[int, ...] = ()
    seed: int = 42
    checkpoint_every: int = 10  # optimizer steps

    def __post_init__(self):
        ckpt_io.check_positive_ints(self, ("prefix_len", "cutoff", "grad_accum", "epochs", "checkpoint_every"))
        if self.warmup_steps < 0 or self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"need warmup_steps >= 0, lr > 0, clip > 0; got {self.warmup_steps}, {self.lr}, {self.clip}")
        if self.init not in ("random", "tokens"):
            raise ValueError(f"init must be 'random' or 'tokens', got {self.init!r}")
        if self.init == "tokens" and len(self.init_ids) != self.prefix_len:
            raise ValueError(f"init='tokens' needs {self.prefix_len} init_ids (prefix_len), got {len(self.init_ids)}")


# ----------------------------------------------------------------------------- the differentiable path
def bare_cache(lm, ex: Example) -> kv.DocCache:
    with torch.no_grad():
        return enc_mod.encode(lm.model, lm.arch, list(ex.doc_ids))


def bare_caches_batch(lm, exs: list[Example]) -> list[kv.DocCache]:
    """``bare_cache`` of several examples in ONE right-padded forward (``encode.encode_full_batch``; each row
    copied out with ``padded_row``): equal to one at a time up to float rounding (tested)."""
    with torch.no_grad():
        full, encs = enc_mod.encode_full_batch(lm.model, lm.arch, [list(e.doc_ids) for e in exs])
        return [enc_mod.shape(enc_mod.padded_row(full, b, enc), enc, lm.arch) for b, enc in enumerate(encs)]


def primed_cache(lm, ex: Example, *, prefix_embeds: torch.Tensor | None = None, prefix_ids=None) -> kv.DocCache:
    """Cache of ``[anchor, prefix, doc]`` with the prefix dropped and the document re-positioned."""
    full, enc = enc_mod.encode_full(lm.model, lm.arch, list(ex.doc_ids), list(prefix_ids) if prefix_ids else None,
                                    prefix_embeds=prefix_embeds)
    return enc_mod.shape(full, enc, lm.arch)


def hybrid(bare: kv.DocCache, primed: kv.DocCache, cutoff: int) -> kv.DocCache:
    """Bare keys; primed values at layers < cutoff; bare values above."""
    if not 1 <= cutoff <= bare.n_layers:
        raise ValueError(f"cutoff {cutoff} must be in [1, {bare.n_layers}] for a {bare.n_layers}-layer model")
    return kv.splice(bare, primed, range(cutoff), values=True)


def primed_values(lm, ex: Example, cutoff: int, *, prefix_embeds: torch.Tensor | None = None,
                  prefix_ids=None) -> tuple[torch.Tensor, ...]:
    """The primed cache's values at layers < ``cutoff``, prefix entries dropped: the only part of the
    primed cache the hybrid uses. The forward stops after layer ``cutoff - 1``
    (``encode_full(n_layers=cutoff)``) and values carry no RoPE, so dropping the prefix is a plain
    selection; the tensors equal ``primed_cache(...).values[:cutoff]`` (tested)."""
    full, enc = enc_mod.encode_full(lm.model, lm.arch, list(ex.doc_ids), list(prefix_ids) if prefix_ids else None,
                                    prefix_embeds=prefix_embeds, n_layers=cutoff)
    keep = torch.as_tensor(enc.keep_index(False), dtype=torch.long, device=full.values[0].device)
    return tuple(v.index_select(2, keep) for v in full.values)


def hybrid_nll(lm, ex: Example, cutoff: int, *, prefix_embeds: torch.Tensor | None = None, prefix_ids=None,
               bare: kv.DocCache | None = None, fast: bool = True) -> torch.Tensor:
    """Per-token answer NLL through the hybrid cache (differentiable in ``prefix_embeds``).

    fast: run the primed forward only through layer ``cutoff - 1`` (``primed_values``); False runs
    every layer and splices (the reference path; same numbers, tested)."""
    bare = bare if bare is not None else bare_cache(lm, ex)
    if fast:
        cache = hybrid_from_values(bare, primed_values(lm, ex, cutoff, prefix_embeds=prefix_embeds, prefix_ids=prefix_ids))
    else:
        cache = hybrid(bare, primed_cache(lm, ex, prefix_embeds=prefix_embeds, prefix_ids=prefix_ids), cutoff)
    return scoring.score_with_grad(lm.model, cache, list(ex.prompt_ids), list(ex.answer_ids))


class BareCaches:
    """Bare caches of training examples, computed once and kept while they fit in ``budget_gb``
    (the bare cache does not depend on the prefix, so every step and epoch can reuse it); examples
    past the budget are recomputed at each use. ``budget_gb=0`` keeps none (the reference path)."""

    def __init__(self, lm, budget_gb: float):
        if not budget_gb >= 0:
            raise ValueError(f"budget_gb must be >= 0, got {budget_gb!r}")
        self.lm, self.budget, self.used, self.kept = lm, int(budget_gb * 2 ** 30), 0, {}
        self.hits = self.misses = 0

    def get(self, i: int, ex: Example) -> kv.DocCache:
        return self.get_many([(i, ex)])[0]

    def get_many(self, items: list[tuple[int, Example]]) -> list[kv.DocCache]:
        """The caches of ``(index, example)`` items; the missing ones (two or more) in one batched forward
        (``bare_caches_batch``), so an optimizer step's first epoch does not run its bare forwards one by one."""
        missing = [(i, ex) for i, ex in dict(items).items() if i not in self.kept]
        exs = [ex for _, ex in missing]
        caches = bare_caches_batch(self.lm, exs) if len(exs) > 1 else [bare_cache(self.lm, ex) for ex in exs]
        fresh = {i: c for (i, _), c in zip(missing, caches)}
        out = []
        for i, _ in items:  # an optimizer step across an epoch boundary may hold an example twice
            if i in self.kept:
                self.hits += 1
                out.append(self.kept[i])
                continue
            self.misses += 1
            c = fresh[i]
            size = sum(t.numel() * t.element_size() for t in (*c.keys, *c.values))
            if self.used + size <= self.budget:
                self.kept[i], self.used = c, self.used + size
            out.append(c)
        return out


def init_prefix(lm, cfg: TrainConfig) -> torch.Tensor:
    emb = lm.model.get_input_embeddings()
    dev = emb.weight.device
    if cfg.init == "tokens":
        with torch.no_grad():
            return emb(torch.tensor(list(cfg.init_ids), device=dev)).float().clone()
    g = torch.Generator().manual_seed(cfg.seed)
    hidden = emb.weight.shape[1]
    return (torch.randn(cfg.prefix_len, hidden, generator=g) * cfg.init_std).to(dev)


# ----------------------------------------------------------------------------- training
def _order(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def fingerprint(exs: list[Example]) -> str:
    h = hashlib.sha256()
    for e in exs:
        h.update(repr((e.sample_id, e.doc_ids, e.prompt_ids, e.answer_ids)).encode())
    return h.hexdigest()[:16]


@dataclass
class TrainResult:
    prefix: torch.Tensor
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    config: dict = field(default_factory=dict)


# examples per forward in training: the best on CPU in ``python -m lib.tools.bench --design exp07train``
# (Gemma 3 270M, optimizer steps of 4: 4 beat 2 and 1)
EXAMPLES_PER_FORWARD = 4


class Interrupted(RuntimeError):
    """Raised by ``train(stop_after=...)`` to simulate a kill (tests)."""


def train(lm, exs: list[Example], cfg: TrainConfig, checkpoint: str | Path | None = None, *,
          progress: bool = False, stop_after: int | None = None, fast: bool = True,
          bare_cache_gb: float = 2.0, examples_per_forward: int | None = None) -> TrainResult:
    """Train a soft prefix (see the module docstring); resumes from ``checkpoint`` when it exists.

    stop_after: raise ``Interrupted`` after this many micro-steps of THIS call (simulates a kill;
    whatever was not checkpointed is lost and redone on resume, like a real kill).
    fast: the primed forward stops after layer ``cutoff - 1`` (``hybrid_nll(fast=True)``);
    bare_cache_gb: memory for bare caches reused across steps and epochs (``BareCaches``). Neither
    changes a number (the trajectory equals ``fast=False, bare_cache_gb=0``; tested), so neither is
    part of the run's identity and a checkpoint resumes under either setting.
    examples_per_forward: up to this many examples of one optimizer step share a Phase A and a
    Phase B forward (``batch.hybrid_nll_batch``, fast path only; the same trajectory to float
    rounding, tested; not part of the run's identity either); 1 runs them one at a time; None:
    ``EXAMPLES_PER_FORWARD`` with ``fast``, else 1. ``stop_after`` then counts whole forwards.
    """
    from tqdm.auto import tqdm

    if not exs:
        raise ValueError("no training examples")
    if cfg.cutoff > lm.arch.n_layers:
        raise ValueError(f"cutoff {cfg.cutoff} exceeds the model's {lm.arch.n_layers} layers")
    if examples_per_forward is None:
        examples_per_forward = EXAMPLES_PER_FORWARD if fast else 1
    if isinstance(examples_per_forward, bool) or not isinstance(examples_per_forward, int) or examples_per_forward < 1:
        raise ValueError(f"examples_per_forward must be an int >= 1, got {examples_per_forward!r}")
    if examples_per_forward > 1 and not fast:
        raise ValueError("examples_per_forward > 1 runs the fast path only; use fast=True or examples_per_forward=1")
    if cfg.cutoff < 2:
        raise ValueError(f"cutoff {cfg.cutoff}: layer-0 values are projections of each token's own embedding and do not "
                         f"depend on the prefix, so the gradient would be exactly 0; use cutoff >= 2")
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    run_id = {"config": asdict(cfg), "data": fingerprint(exs), "model": getattr(lm, "name", "")}
    prefix = torch.nn.Parameter(init_prefix(lm, cfg))
    opt = torch.optim.AdamW([prefix], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ckpt_io.warmup(cfg.warmup_steps))
    step, history, resumed = 0, [], 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        if st["run_id"] != run_id:
            diff = sorted(k for k in run_id["config"] if st["run_id"]["config"].get(k) != run_id["config"][k])
            raise ValueError(f"checkpoint {ckpt} belongs to another run (differs in {diff or ['data/model']}); "
                             f"use another path or delete it")
        with torch.no_grad():
            prefix.copy_(st["prefix"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        ckpt_io.restore_rng(st["rng"])
        step, history, resumed = st["step"], st["history"], st["step"]

    def save():
        if ckpt:
            ckpt_io.save_atomic(ckpt, {"run_id": run_id, "prefix": prefix.detach().clone(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "step": step, "history": history,
                         "rng": ckpt_io.rng_state()})

    n, total = len(exs), cfg.epochs * len(exs)
    bares = BareCaches(lm, bare_cache_gb)
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train {cfg.init}")
    done_here, acc_loss, acc_n = 0, 0.0, 0
    # a checkpoint is only written at an optimizer-step boundary, so the accumulators start empty
    while step < total:
        k = min(examples_per_forward, cfg.grad_accum - acc_n, total - step)  # never across an optimizer step
        idx = [_order(n, cfg.seed, s // n)[s % n] for s in range(step, step + k)]
        if k == 1:
            losses = [hybrid_nll(lm, exs[idx[0]], cfg.cutoff, prefix_embeds=prefix, bare=bares.get(idx[0], exs[idx[0]]),
                                 fast=fast).mean()]
        else:
            losses = [t.mean() for t in hybrid_nll_batch(lm, [exs[i] for i in idx], cfg.cutoff,
                                                          bares.get_many([(i, exs[i]) for i in idx]), prefix_embeds=prefix)]
        (sum(losses) / cfg.grad_accum).backward()
        acc_loss, acc_n = acc_loss + sum(float(x.detach()) for x in losses), acc_n + k
        step += k
        done_here += k
        bar.update(k)
        epoch = (step - 1) // n
        if acc_n == cfg.grad_accum or step == total:
            if acc_n < cfg.grad_accum:  # a short last group: rescale so every step averages its losses
                prefix.grad.mul_(cfg.grad_accum / acc_n)
            gn = float(torch.nn.utils.clip_grad_norm_([prefix], cfg.clip))
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append({"opt_step": len(history) + 1, "micro_step": step, "epoch": epoch, "loss": acc_loss / acc_n,
                            "grad_norm": gn, "prefix_norm": float(prefix.detach().norm(dim=-1).mean()), "lr": lr})
            acc_loss, acc_n = 0.0, 0
            if len(history) % cfg.checkpoint_every == 0 or step == total:
                save()
        if stop_after is not None and done_here >= stop_after and step < total:
            bar.close()
            raise Interrupted(f"stopped after {done_here} micro-steps (step {step}/{total})")
    bar.close()
    return TrainResult(prefix.detach().clone(), history, resumed, run_id)


# ----------------------------------------------------------------------------- evaluation
def _eval_caches(lm, exs: list[Example], cutoff: int, static_ids, soft: dict[str, torch.Tensor],
                 phase_a_batch: int) -> list[dict[str, kv.DocCache]]:
    """Per example {condition: cache}. ``phase_a_batch`` > 1: every prefix's Phase A runs over that many
    examples per forward (``encode.encode_full_batch``; the primed forwards stop at the cutoff,
    ``batch.primed_values_batch``); 1: one example at a time with full primed forwards (the reference path)."""
    if not isinstance(phase_a_batch, int) or phase_a_batch < 1:
        raise ValueError(f"phase_a_batch must be an int >= 1, got {phase_a_batch!r}")
    out = []
    if phase_a_batch == 1:
        for ex in exs:
            bare = bare_cache(lm, ex)
            caches = {"bare": bare, "vel_static": hybrid(bare, primed_cache(lm, ex, prefix_ids=static_ids), cutoff)}
            for name, s in soft.items():
                caches[f"vel_soft_{name}"] = hybrid(bare, primed_cache(lm, ex, prefix_embeds=s), cutoff)
            out.append(caches)
        return out
    for i in range(0, len(exs), phase_a_batch):  # no_grad: evaluate's
        chunk = exs[i:i + phase_a_batch]
        full, encs = enc_mod.encode_full_batch(lm.model, lm.arch, [list(e.doc_ids) for e in chunk])
        bares = [enc_mod.shape(enc_mod.padded_row(full, b, enc), enc, lm.arch) for b, enc in enumerate(encs)]
        static = primed_values_batch(lm, chunk, cutoff, prefix_ids=static_ids)
        softs = {k: primed_values_batch(lm, chunk, cutoff, prefix_embeds=s) for k, s in soft.items()}
        for b, bare in enumerate(bares):
            caches = {"bare": bare, "vel_static": hybrid_from_values(bare, static[b])}
            for name in soft:
                caches[f"vel_soft_{name}"] = hybrid_from_values(bare, softs[name][b])
            out.append(caches)
    return out


@torch.no_grad()
def evaluate(lm, exs: list[Example], cutoff: int, *, static_ids, soft: dict[str, torch.Tensor], batch_size: int = 16,
             phase_a_batch: int = 8) -> list[dict]:
    """Rows: bare, vel_static (token prefix) and one ``vel_soft_<name>`` per learned prefix, per example.
    An example's distractor answers are scored on each of its caches after the same prompt: the row
    gets ``distractor_nlls``, ``margin``, ``gold_rank``, ``top1`` (``margin.row_fields``, as the engine's rows).
    ``phase_a_batch``: examples per Phase A forward (``_eval_caches``; 1 is the one-at-a-time reference)."""
    from lib.kv import margin
    from lib.kv.noise import noise_atol

    atol = noise_atol(next(lm.model.parameters()).dtype)
    rows = []
    for ex, caches in zip(exs, _eval_caches(lm, exs, cutoff, static_ids, soft, phase_a_batch)):
        names = list(caches)
        answers = [list(ex.answer_ids), *map(list, ex.distractor_ids)]  # the gold answer first per cache
        nlls = scoring.score(lm.model, [caches[k] for k in names for _ in answers], [list(ex.prompt_ids)] * (len(names) * len(answers)),
                             answers * len(names), batch_size=batch_size)
        extra = {"distractor_samples": list(ex.distractor_samples)} if ex.distractor_ids else {}
        for i, k in enumerate(names):
            t, dn = nlls[i * len(answers)], [float(x.mean()) for x in nlls[i * len(answers) + 1:(i + 1) * len(answers)]]
            rows.append({"sample_id": ex.sample_id, "condition": k, "n_doc_tokens": len(ex.doc_ids),
                         "n_answer_tokens": len(ex.answer_ids), "token_nlls": [round(float(x), 6) for x in t],
                         "nll": float(t.mean()), **extra, **margin.row_fields(float(t.mean()), dn, atol)})
    return rows


# ----------------------------------------------------------------------------- notebook helpers


def run_eval(lm, exs: list[Example], store, cutoff: int, *, static_ids, soft: dict[str, torch.Tensor], wave: int = 8,
             batch_size: int = 16, phase_a_batch: int = 8, progress: bool = True) -> list[dict]:
    """``evaluate`` every example not yet complete in ``store``, ``wave`` at a time (resumable)."""
    from lib.lab.runs import run_waves

    names = ["bare", "vel_static", *[f"vel_soft_{k}" for k in soft]]
    by = {e.sample_id: e for e in exs}
    return run_waves(store, list(by), names, lambda ids: evaluate(lm, [by[i] for i in ids], cutoff, static_ids=static_ids,
                                                                   soft=soft, batch_size=batch_size, phase_a_batch=phase_a_batch),
                     wave=wave, progress=progress, desc="eval")
