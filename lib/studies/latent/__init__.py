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
from dataclasses import asdict, dataclass, field

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


Interrupted = ckpt_io.Interrupted  # raised by ``train(stop_after=...)`` to simulate a kill (tests)


def train(lm, items: list[Item], cfg: LatentConfig, checkpoint=None, *, anchor: str = ANCHOR,
          progress: bool = False, stop_after: int | None = None) -> Trained:
    """AdamW + linear warm-up; epochs over a seeded permutation; resumes from ``checkpoint``
    (``lib.lab.ckpt.epoch_loop``).

    The checkpoint (one file, written atomically every ``checkpoint_every`` steps and at the end)
    holds the compressor, optimizer, scheduler, RNG states, step, history and ``meta`` (config,
    data fingerprint, model, anchor, BOS/EOS ids): everything ``load`` and evaluation need.
    """
    if not items:
        raise ValueError("no training items")
    model = lm.model
    for p in model.parameters():
        p.requires_grad_(False)
    meta = _meta(lm, cfg, items, anchor)
    torch.manual_seed(cfg.seed)
    comp = Compressor(cfg, model.get_input_embeddings().weight.shape[1], embedding_rms(model)).to(lm.device)

    def step_fn(idx):
        out = losses(model, lm.arch.bos_id, comp, [items[j] for j in idx])
        out["loss"].backward()
        return out

    def row_fn(step, epoch, lr, gn, out):
        return {"opt_step": step, "epoch": epoch, "lr": lr, "grad_norm": gn, "prefix_norm": comp.target_rms,
                **{k: float(v.detach()) for k, v in out.items()}}

    history, resumed = ckpt_io.epoch_loop(
        comp, cfg, len(items), step_fn, row_fn, checkpoint, meta, "compressor",
        lambda: {"target_rms": comp.target_rms, "d_model": comp.d_model},
        device=lm.device, progress=progress, desc=f"train M={cfg.m}", stop_after=stop_after)
    return Trained(comp, history, resumed, meta)


def load(path, device="cpu") -> Trained:
    """A trained compressor (eval mode) and its meta from a checkpoint written by ``train``."""
    st = torch.load(path, weights_only=False, map_location=device)
    comp = Compressor(LatentConfig(**st["meta"]["config"]), st["d_model"], st["target_rms"]).to(device)
    comp.load_state_dict(st["compressor"])
    comp.eval()
    return Trained(comp, st["history"], st["step"], st["meta"])
