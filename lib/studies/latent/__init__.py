"""exp12: latent-prefix compression. An encoder squeezes a passage into M vectors that a FROZEN LM
reads as a prefix; the question stays as text.

Modules: ``layout`` (the one layout: ``Item``, ``make_items``, ``assemble``, ``answer_logits``,
``greedy``; the frozen reader), ``compressor`` (``LatentConfig``, ``Compressor``, ``features``, ``encode``),
this file (the loss, ``train`` with full-state checkpoints, ``load``; every name of the three is
importable from here), ``evaluation`` (conditions, metrics, curves). LatentWire, the generalisation to ONE
shared latent read by several frozen LMs (a token or byte encoder, one adapter per LM; one LM and the token
encoder over the passage is exactly this file's path): ``wire_model``, ``wire`` (loss, training), ``wire_eval``
(per-model and joint evaluation, resumable).

Loss (one student forward per batch): teacher-forced CE over all answer tokens, position 0 weighted
``first_weight`` (weighted token mean), plus ``kd_weight`` * T^2 * KL(teacher || student) at the
same answer positions, where the teacher is the frozen LM reading the full text prompt (the same
layout with the passage ids as prefix).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib.lab import ckpt as ckpt_io
from lib.studies.latent.compressor import Compressor, LatentConfig, embedding_rms, encode, features
from lib.studies.latent.layout import (ANCHOR, CONDITIONS, PER_M, Batch, Item, answer_logits, assemble, decoder, embed,
                                       greedy, lm_logits, make_items)

__all__ = ["ANCHOR", "CONDITIONS", "PER_M", "Batch", "Compressor", "Interrupted", "Item", "LatentConfig", "Trained",
           "answer_logits", "assemble", "decoder", "embed", "embedding_rms", "encode", "features", "fingerprint",
           "greedy", "lm_logits", "load", "losses", "make_items", "train"]


# ----------------------------------------------------------------------------- the loss
def losses(model, bos_id, comp: Compressor, items: list[Item]) -> dict:
    """One student forward: weighted CE, KD (if kd_weight > 0), total, first-token accuracy."""
    cfg = comp.cfg
    z = encode(model, bos_id, comp, items)
    anchors, answers = [it.anchor_ids for it in items], [it.answer_ids for it in items]
    sb = assemble(model, bos_id, list(z), anchors, answers)
    logits = answer_logits(model, sb)
    nll = F.cross_entropy(logits, sb.targets, reduction="none")
    w = torch.where(sb.first, torch.full_like(nll, cfg.first_weight), torch.ones_like(nll))
    ce = (w * nll).sum() / w.sum()
    out = {"ce": ce, "nll": nll.mean().detach(), "first_acc": (logits[sb.first].argmax(-1) == sb.targets[sb.first]).float().mean()}
    total = ce
    if cfg.kd_weight > 0:
        with torch.no_grad():
            tb = assemble(model, bos_id, [it.context_ids for it in items], anchors, answers)
            t_logits = answer_logits(model, tb)
        if not torch.equal(tb.targets, sb.targets) or not torch.equal(tb.rows, sb.rows):
            raise RuntimeError("teacher and student answer positions disagree")
        T = cfg.kd_temp
        kd = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                      reduction="none").sum(-1).mean() * T * T
        out["kd"] = kd
        total = total + cfg.kd_weight * kd
    out["loss"] = total
    return out


# ----------------------------------------------------------------------------- training with full-state checkpoints
def fingerprint(items: list[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(repr((it.sample_id, it.context_ids, it.anchor_ids, it.answer_ids)).encode())
    return h.hexdigest()[:16]



def _meta(lm, cfg: LatentConfig, items, anchor: str) -> dict:
    return {"config": asdict(cfg), "data": fingerprint(items), "model": getattr(lm, "name", ""), "anchor": anchor,
            "bos_id": lm.arch.bos_id, "eos_id": lm.tokenizer.eos_token_id}


@dataclass
class Trained:
    comp: Compressor
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    meta: dict = field(default_factory=dict)


class Interrupted(RuntimeError):
    """Raised by ``train(stop_after=...)`` to simulate a kill (tests)."""


def train(lm, items: list[Item], cfg: LatentConfig, checkpoint=None, *, anchor: str = ANCHOR,
          progress: bool = False, stop_after: int | None = None) -> Trained:
    """AdamW + linear warm-up; epochs over a seeded permutation; resumes from ``checkpoint``.

    The checkpoint (one file, written atomically every ``checkpoint_every`` steps and at the end)
    holds the compressor, optimizer, scheduler, RNG states, step, history and ``meta`` (config,
    data fingerprint, model, anchor, BOS/EOS ids): everything ``load`` and evaluation need.
    """
    from tqdm.auto import tqdm

    if not items:
        raise ValueError("no training items")
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    meta = _meta(lm, cfg, items, anchor)
    torch.manual_seed(cfg.seed)
    comp = Compressor(cfg, model.get_input_embeddings().weight.shape[1], embedding_rms(model)).to(lm.device)
    opt = torch.optim.AdamW(comp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ckpt_io.warmup(cfg.warmup_steps))
    step, history = 0, []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        st = torch.load(ckpt, weights_only=False, map_location=lm.device)
        if st["meta"] != meta:
            diff = sorted(k for k in meta if st["meta"].get(k) != meta[k])
            raise ValueError(f"checkpoint {ckpt} belongs to another run (differs in {diff}); use another path or FRESH")
        comp.load_state_dict(st["compressor"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        ckpt_io.restore_rng(st["rng"])
        step, history = st["step"], st["history"]
    resumed = step

    def save():
        if ckpt:
            ckpt_io.save_atomic(ckpt, {"meta": meta, "target_rms": comp.target_rms, "d_model": comp.d_model,
                         "compressor": comp.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "step": step, "history": history,
                         "rng": ckpt_io.rng_state()})

    per_epoch = math.ceil(len(items) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train M={cfg.m}")
    done_here = 0
    comp.train()
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(items)).tolist()
        batch = [items[j] for j in order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]]
        out = losses(model, lm.arch.bos_id, comp, batch)
        out["loss"].backward()
        gn = float(torch.nn.utils.clip_grad_norm_(comp.parameters(), cfg.clip))
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        done_here += 1
        history.append({"opt_step": step, "epoch": epoch, "lr": lr, "grad_norm": gn, "prefix_norm": comp.target_rms,
                        **{k: float(v.detach()) for k, v in out.items()}})
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == total:
            save()
        if stop_after is not None and done_here >= stop_after and step < total:
            bar.close()
            raise Interrupted(f"stopped after {done_here} steps (step {step}/{total})")
    bar.close()
    comp.eval()
    return Trained(comp, history, resumed, meta)


def load(path, device="cpu") -> Trained:
    """A trained compressor (eval mode) and its meta from a checkpoint written by ``train``."""
    st = torch.load(path, weights_only=False, map_location=device)
    comp = Compressor(LatentConfig(**st["meta"]["config"]), st["d_model"], st["target_rms"]).to(device)
    comp.load_state_dict(st["compressor"])
    comp.eval()
    return Trained(comp, st["history"], st["step"], st["meta"])
