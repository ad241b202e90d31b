"""exp12 LatentWire: one shared latent read by several frozen LMs with different tokenizers (the seed's
design; the pieces are in ``wire_model``, evaluation in ``wire_eval``).

Loss per model (one student forward each, on the same examples): CE over the first ``k_tokens`` answer
positions (teacher forcing; 0 = every answer token) as a weighted token mean with position 0 weighted
``first_weight`` -- the seed's "first-token CE folded into the K-step average" -- plus ``kd_weight`` * T^2 *
KL(teacher || student) over the same positions, the teacher being THAT model reading the full text prompt
(``[BOS][context ids][anchor]``). One optimizer step AVERAGES the per-model losses (one model: exactly the
single-model exp12 loss, ``lat.losses``); each model's part is backpropagated in turn (its graph freed
before the next model's forward), the encoder's graph kept until the last. Only encoder + adapters train.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from lib.lab import ckpt as ckpt_io
from lib.studies.latent.compressor import embedding_rms
from lib.studies.latent.layout import answer_logits, assemble
from lib.studies.latent.wire_model import Wire, WireConfig, WireItem  # noqa: F401 (re-exported names)


def check_models(lms, items_by_model) -> None:
    if not lms:
        raise ValueError("models list is empty; expected at least one frozen LM")
    if len(items_by_model) != len(lms):
        raise ValueError(f"{len(items_by_model)} item lists for {len(lms)} models; expected one per model")
    ids = [tuple(it.sample_id for it in its) for its in items_by_model]
    if any(x != ids[0] for x in ids):
        raise ValueError("the models' item lists hold different samples (or orders); expected the same examples")
    if not ids[0]:
        raise ValueError("no items")


def _terms(model, bos_id, prefix: torch.Tensor, items: list, cfg: WireConfig) -> dict:
    """Per loss position (answer position t < ``k_tokens``; every t when 0): the NLL (differentiable), the CE
    weight (``first_weight`` at t = 0, else 1), whether it is a first position and the greedy token hits it;
    with ``kd_weight`` > 0 the KL(teacher || student) at temperature T summed over the vocabulary."""
    anchors, answers = [it.anchor_ids for it in items], [it.answer_ids for it in items]
    sb = assemble(model, bos_id, list(prefix), anchors, answers)
    logits, targets, first = answer_logits(model, sb), sb.targets, sb.first
    sel = None
    if cfg.k_tokens:
        t = sb.cols - torch.tensor(sb.prompt_lengths, device=sb.cols.device)[sb.rows] + 1
        sel = t < cfg.k_tokens
        logits, targets, first = logits[sel], targets[sel], first[sel]
    nll = F.cross_entropy(logits, targets, reduction="none")
    out = {"nll": nll, "w": torch.where(first, torch.full_like(nll, cfg.first_weight), torch.ones_like(nll)),
           "hits": logits[first].argmax(-1) == targets[first]}
    if cfg.kd_weight > 0:
        with torch.no_grad():
            tb = assemble(model, bos_id, [it.context_ids for it in items], anchors, answers)
            t_logits = answer_logits(model, tb)
        if not torch.equal(tb.targets, sb.targets) or not torch.equal(tb.rows, sb.rows):
            raise RuntimeError("teacher and student answer positions disagree")
        if sel is not None:
            t_logits = t_logits[sel]
        T = cfg.kd_temp
        out["kd"] = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                             reduction="none").sum(-1)
    return out


def model_loss(model, bos_id, prefix: torch.Tensor, items: list, cfg: WireConfig) -> dict:
    """One model's loss from its calibrated prefixes (B, M, d_model)."""
    t = _terms(model, bos_id, prefix, items, cfg)
    ce = (t["w"] * t["nll"]).sum() / t["w"].sum()
    out = {"ce": ce, "nll": t["nll"].mean().detach(), "first_acc": t["hits"].float().mean()}
    total = ce
    if cfg.kd_weight > 0:
        out["kd"] = t["kd"].mean() * cfg.kd_temp * cfg.kd_temp
        total = total + cfg.kd_weight * out["kd"]
    out["loss"] = total
    return out


def losses(lms, wire: Wire, batch_by_model: list[list], *, backward: bool = False, micro_batch: int = 0) -> dict:
    """The step's losses: per model (``"<i>/<name>"`` keys) and their means; ``backward`` accumulates the
    gradient of the mean, one model at a time.

    micro_batch: > 0 and below the batch size runs each model's forward and backward over that many examples
    at a time (``_losses_micro``: the same losses and gradient, to float rounding; memory for large batches);
    0 runs the whole batch in one forward per model."""
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
        raise ValueError(f"micro_batch must be an int >= 0 (0: the whole batch), got {micro_batch!r}")
    if 0 < micro_batch < len(batch_by_model[0]):
        return _losses_micro(lms, wire, batch_by_model, micro_batch, backward)
    z = wire.latent(lms[wire.cfg.encoder_source], batch_by_model)
    n, per = len(lms), []
    for j, (lm, items) in enumerate(zip(lms, batch_by_model, strict=True)):
        out = model_loss(lm.model, lm.arch.bos_id, wire.adapters[j](z), items, wire.cfg)
        if backward:
            (out["loss"] / n).backward(retain_graph=j < n - 1)
        per.append({k: v.detach() for k, v in out.items()})
    mean = {k: sum(p[k] for p in per) / n for k in per[0]}
    return {**mean, "per_model": per}


def _positions(items: list, cfg: WireConfig) -> tuple[float, int]:
    """The batch's CE weight total and number of loss positions (``model_loss``'s denominators), from the
    answers' lengths alone: position t is a loss position when ``t < k_tokens`` (every t when 0), weighted
    ``first_weight`` at t = 0 and 1 elsewhere."""
    n = [min(len(it.answer_ids), cfg.k_tokens) if cfg.k_tokens else len(it.answer_ids) for it in items]
    if any(x < 1 for x in n):
        raise ValueError("an answer is empty; expected at least the EOS token")
    return float(sum(cfg.first_weight + (x - 1) for x in n)), sum(n)


def _losses_micro(lms, wire: Wire, batch_by_model: list[list], micro: int, backward: bool) -> dict:
    """``losses`` with each model's forward and backward run ``micro`` examples at a time.

    The latent and each model's prefixes are computed once for the whole batch; every micro-batch reads a
    slice of a detached copy of the prefixes, and its loss is its share of the batch loss (numerators
    over the batch's denominators, ``_positions``), so the per-slice gradients sum to the batch gradient.
    That sum then flows back through the adapter and (after the last model) the encoder in one backward."""
    z = wire.latent(lms[wire.cfg.encoder_source], batch_by_model)
    cfg, n, per = wire.cfg, len(lms), []
    for j, (lm, items) in enumerate(zip(lms, batch_by_model, strict=True)):
        prefix = wire.adapters[j](z)
        leaf = prefix.detach().requires_grad_(backward)
        w_total, n_pos = _positions(items, cfg)
        acc = {"ce": 0.0, "nll": 0.0, "first_hits": 0.0, "kd": 0.0}
        for s in range(0, len(items), micro):
            t = _terms(lm.model, lm.arch.bos_id, leaf[s:s + micro], items[s:s + micro], cfg)
            part = {"ce": (t["w"] * t["nll"]).sum(), "nll": t["nll"].sum(), "first_hits": t["hits"].sum()}
            if "kd" in t:
                part["kd"] = t["kd"].sum() * cfg.kd_temp * cfg.kd_temp
            loss = part["ce"] / w_total + (cfg.kd_weight * part["kd"] / n_pos if "kd" in part else 0.0)
            if backward:
                (loss / n).backward()
            for k, v in part.items():
                acc[k] = acc[k] + v.detach()
        if backward:
            prefix.backward(leaf.grad, retain_graph=j < n - 1)
        out = {"ce": acc["ce"] / w_total, "nll": acc["nll"] / n_pos,
               "first_acc": torch.as_tensor(float(acc["first_hits"]) / len(items))}
        out["loss"] = out["ce"]
        if cfg.kd_weight > 0:
            out["kd"] = acc["kd"] / n_pos
            out["loss"] = out["ce"] + cfg.kd_weight * out["kd"]
        per.append({k: out[k] for k in ("ce", "nll", "first_acc", *(("kd",) if "kd" in out else ()), "loss")})
    mean = {k: sum(p[k] for p in per) / n for k in per[0]}
    return {**mean, "per_model": per}


# ----------------------------------------------------------------------------- training with full-state checkpoints
def fingerprint(items_by_model) -> str:
    h = hashlib.sha256()
    for its in items_by_model:
        for it in its:
            h.update(repr((it.sample_id, it.context_ids, it.anchor_ids, it.answer_ids, it.prompt_ids, it.cue_ids,
                           it.text)).encode())
    return h.hexdigest()[:16]


def _meta(lms, cfg: WireConfig, items_by_model) -> dict:
    return {"config": asdict(cfg), "data": fingerprint(items_by_model), "models": [getattr(lm, "name", "") for lm in lms],
            "bos_ids": [lm.arch.bos_id for lm in lms], "eos_ids": [lm.tokenizer.eos_token_id for lm in lms]}


@dataclass
class TrainedWire:
    wire: Wire
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    meta: dict = field(default_factory=dict)


Interrupted = ckpt_io.Interrupted  # raised by ``train(stop_after=...)`` to simulate a kill (tests)


def build(lms, cfg: WireConfig) -> Wire:
    """A fresh wire seeded with ``cfg.seed`` (encoder first, then the adapters in model order)."""
    if not lms:
        raise ValueError("models list is empty; expected at least one frozen LM")
    if cfg.encoder_source >= len(lms):
        raise ValueError(f"encoder_source {cfg.encoder_source} is not a model index (have {len(lms)} models)")
    emb = [lm.model.get_input_embeddings().weight for lm in lms]
    d_in = emb[cfg.encoder_source].shape[1] if cfg.encoder == "tokens" else None
    torch.manual_seed(cfg.seed)
    return Wire(cfg, d_in, [e.shape[1] for e in emb], [embedding_rms(lm.model) for lm in lms]).to(lms[0].device)


def _row(step, epoch, lr, gn, out, names) -> dict:
    row = {"opt_step": step, "epoch": epoch, "lr": lr, "grad_norm": gn,
           **{k: float(v) for k, v in out.items() if k != "per_model"}}
    if len(names) > 1:
        for j, p in enumerate(out["per_model"]):
            row.update({f"{j}/{names[j]}/{k}": float(v) for k, v in p.items()})
    return row


def train(lms, items_by_model, cfg: WireConfig, checkpoint=None, *, progress: bool = False,
          stop_after: int | None = None, micro_batch: int = 0) -> TrainedWire:
    """AdamW + linear warm-up over a seeded permutation per epoch, every model on the same examples;
    resumes from ``checkpoint`` (one file, written atomically every ``checkpoint_every`` steps and at the
    end: wire (encoder + every adapter), optimizer, scheduler, RNG states, step, history, meta).

    micro_batch: examples per model forward within a step (``losses``; 0: the whole batch). It changes memory,
    not the numbers (to float rounding), so it is not part of the run's identity: a checkpoint resumes under
    any setting."""
    check_models(lms, items_by_model)
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 0:
        raise ValueError(f"micro_batch must be an int >= 0 (0: the whole batch), got {micro_batch!r}")
    for lm in lms:
        for p in lm.model.parameters():
            p.requires_grad_(False)
    meta = _meta(lms, cfg, items_by_model)
    wire = build(lms, cfg)

    def step_fn(idx):
        return losses(lms, wire, [[its[j] for j in idx] for its in items_by_model], backward=True, micro_batch=micro_batch)

    history, resumed = ckpt_io.epoch_loop(
        wire, cfg, len(items_by_model[0]), step_fn, lambda step, epoch, lr, gn, out: _row(step, epoch, lr, gn, out, meta["models"]),
        checkpoint, meta, "wire",
        lambda: {"d_in": wire.encoder.proj.in_features if cfg.encoder == "tokens" else None,
                 "d_models": [a.d_model for a in wire.adapters], "target_rms": [a.target_rms for a in wire.adapters]},
        device=lms[0].device, progress=progress, desc=f"train wire M={cfg.m}", stop_after=stop_after)
    return TrainedWire(wire, history, resumed, meta)


def load(path, device="cpu") -> TrainedWire:
    """A trained wire (eval mode) and its meta from a checkpoint written by ``train``."""
    st = torch.load(path, weights_only=False, map_location=device)
    wire = Wire(WireConfig(**st["meta"]["config"]), st["d_in"], st["d_models"], st["target_rms"]).to(device)
    wire.load_state_dict(st["wire"])
    wire.eval()
    return TrainedWire(wire, st["history"], st["step"], st["meta"])
