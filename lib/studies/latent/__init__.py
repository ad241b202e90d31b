"""exp12: latent-prefix compression. An encoder squeezes a passage into M vectors that a FROZEN LM
reads as a prefix; the question stays as text.

Layout (one, shared by training, first-token metrics, NLL and generation), per example:
    [BOS] [prefix] [anchor ids] -> [answer ids] [EOS]
- BOS is the model's anchor token (``arch.bos_id``; SmolLM2: ``<|im_start|>``), only at position 0.
- prefix: the latent (M vectors), or token ids (text prompt: the whole passage; token budget: its
  first M tokens), or soft vectors (replay of the passage's own embeddings; zeros; another sample's
  latent).
- anchor: ``ANCHOR.format(query=...)``, the question as text. Answer ids are
  ``tokenize(" " + answer) + [EOS]``: EOS is a supervised target.
Rows are right-padded; padding is expressed ONLY by the attention mask (positions are explicit
``0..len-1``), never by a token id, so EOS == PAD is harmless. The LM predicts answer token t from
position ``prompt_len - 1 + t``; logits are computed only there (``answer_logits``). The shift
happens once, in ``assemble``'s gather index.

Encoder: features of the passage tokens (frozen LM token embeddings, ``enc_layer=0``, or the frozen
LM's hidden states at layer ``enc_layer``), LayerNorm -> Linear to d_z + sinusoidal positions; M learned
queries cross-attend (``n_layers`` blocks of cross-attention + MLP) -> (M, d_z); adapter LayerNorm
-> MLP -> d_model; per-example RMS calibration to the LM's input-embedding RMS. Only encoder and
adapter train.

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
from torch import nn

from lib.lab import ckpt as ckpt_io
from lib.data import squad

ANCHOR = "\nQuestion: {query}\nAnswer:"
CONDITIONS = ("text", "replay", "latent", "budget", "latent_other", "latent_zero")
PER_M = ("latent", "budget", "latent_other", "latent_zero")  # text and replay do not depend on M


@dataclass(frozen=True)
class Item:
    sample_id: str
    context_ids: tuple[int, ...]  # what the latent encodes (the passage)
    anchor_ids: tuple[int, ...]   # what stays text (the question)
    answer_ids: tuple[int, ...]   # answer tokens + EOS
    answers: tuple[str, ...]      # every reference answer (metrics)
    context_bytes: int = 0        # UTF-8 bytes of the passage (compression)

    def __post_init__(self):
        for k in ("context_ids", "anchor_ids", "answer_ids"):
            if len(getattr(self, k)) == 0:
                raise ValueError(f"item {self.sample_id}: {k} is empty; expected at least one token")


def make_items(tokenizer, samples, *, anchor: str = ANCHOR, max_context_tokens: int = 0) -> list[Item]:
    """Tokenize samples into the layout; passages longer than ``max_context_tokens`` (>0) are cut."""
    if "{query}" not in anchor:
        raise ValueError(f"anchor {anchor!r} must contain '{{query}}'")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; EOS is a supervised answer token")
    out = []
    for s in samples:
        ctx = tokenizer(s.passage, add_special_tokens=False).input_ids
        if max_context_tokens > 0:
            ctx = ctx[:max_context_tokens]
        out.append(Item(s.id, tuple(ctx), tuple(tokenizer(anchor.format(query=s.query), add_special_tokens=False).input_ids),
                        tuple(tokenizer(" " + s.answer.strip(), add_special_tokens=False).input_ids) + (eos,),
                        tuple(s.answers or (s.answer,)), len(s.passage.encode())))
    return out


# ----------------------------------------------------------------------------- the frozen reader
def decoder(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits from final hidden states (``lib.kv.scoring.lm_logits``: head in float32 whatever the
    model dtype, final-logit soft-capping where the model has it); float64 input stays float64."""
    from lib.kv.scoring import lm_logits as _head

    return _head(model, hidden)


def embed(model, ids) -> torch.Tensor:
    emb = model.get_input_embeddings()
    return emb(torch.as_tensor(list(ids), device=emb.weight.device))


@dataclass
class Batch:
    inputs_embeds: torch.Tensor     # (B, T, d) right-padded with zeros
    attention_mask: torch.Tensor    # (B, T) 1 = real, 0 = pad
    position_ids: torch.Tensor      # (B, T) 0..T-1
    lengths: list[int]              # real length per row
    prompt_lengths: list[int]       # BOS + prefix + anchor
    rows: torch.Tensor              # (N,) row of each supervised answer token
    cols: torch.Tensor              # (N,) column whose output predicts it (prompt_len - 1 + t)
    targets: torch.Tensor           # (N,) the answer token ids
    first: torch.Tensor             # (N,) bool: answer position 0


def assemble(model, bos_id, prefixes: list, anchors: list, answers: list | None = None) -> Batch:
    """Right-padded batch of ``[BOS][prefix][anchor][answer[:-1]]``; a prefix is token ids or a (P, d) tensor."""
    emb = model.get_input_embeddings()
    dtype, dev = emb.weight.dtype, emb.weight.device
    seqs, plens = [], []
    for i, (pre, anc) in enumerate(zip(prefixes, anchors, strict=True)):
        head = [bos_id] if bos_id is not None else []
        ans = list(answers[i][:-1]) if answers is not None else []
        if isinstance(pre, torch.Tensor):
            if pre.dim() != 2 or pre.shape[1] != emb.weight.shape[1]:
                raise ValueError(f"soft prefix {i} has shape {tuple(pre.shape)}; expected (P, {emb.weight.shape[1]})")
            parts = [embed(model, head), pre.to(dev, dtype), embed(model, list(anc) + ans)]
            seqs.append(torch.cat(parts))
            plens.append(len(head) + pre.shape[0] + len(anc))
        else:
            seqs.append(embed(model, head + list(pre) + list(anc) + ans))
            plens.append(len(head) + len(pre) + len(anc))
    lengths = [s.shape[0] for s in seqs]
    T = max(lengths)
    x = torch.zeros(len(seqs), T, emb.weight.shape[1], dtype=dtype, device=dev)
    mask = torch.zeros(len(seqs), T, dtype=torch.long, device=dev)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    rows, cols, tgts, first = [], [], [], []
    if answers is not None:
        for i, ans in enumerate(answers):
            if len(ans) == 0:
                raise ValueError(f"answer {i} is empty; expected at least the EOS token")
            for t, tok in enumerate(ans):
                rows.append(i), cols.append(plens[i] - 1 + t), tgts.append(int(tok)), first.append(t == 0)
    lt = lambda v, d=torch.long: torch.tensor(v, dtype=d, device=dev)  # noqa: E731
    return Batch(x, mask, torch.arange(T, device=dev).expand(len(seqs), T), lengths, plens,
                 lt(rows), lt(cols), lt(tgts), lt(first, torch.bool))


def answer_logits(model, batch: Batch) -> torch.Tensor:
    """(N, V) float32 logits at the answer positions only (teacher forcing)."""
    h = decoder(model)(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return lm_logits(model, h[batch.rows, batch.cols])


@torch.no_grad()
def greedy(model, bos_id, eos_id, prefixes, anchors, max_new_tokens: int, forced=None):
    """Greedy decoding on the same layout: (tokens per row, list of (B, V) logits per step).

    forced: per-row token lists fed instead of the argmax (teacher forcing through the cache; tests).
    Stops after ``max_new_tokens`` steps or when every row has emitted EOS (never at a gold length).
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b = assemble(model, bos_id, prefixes, anchors)
    B, dev = len(prefixes), b.inputs_embeds.device
    lengths = torch.tensor(b.lengths, device=dev)
    cache = DynamicCache()
    out = decoder(model)(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids,
                         past_key_values=cache, use_cache=True)
    logits = lm_logits(model, out.last_hidden_state[torch.arange(B, device=dev), lengths - 1])
    mask, toks, steps, done = b.attention_mask, [[] for _ in range(B)], [], torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(max_new_tokens):
        steps.append(logits)
        nxt = logits.argmax(-1) if forced is None else torch.tensor([f[t] for f in forced], device=dev)
        for i in range(B):
            if not done[i]:
                toks[i].append(int(nxt[i]))
        done |= nxt == eos_id
        if (forced is None and bool(done.all())) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], 1)
        out = decoder(model)(inputs_embeds=embed(model, nxt.tolist())[:, None], attention_mask=mask,
                             position_ids=(lengths + t)[:, None], past_key_values=cache, use_cache=True)
        logits = lm_logits(model, out.last_hidden_state[:, -1])
    return toks, steps


# ----------------------------------------------------------------------------- encoder + adapter
@dataclass(frozen=True)
class LatentConfig:
    m: int
    d_z: int = 256
    n_heads: int = 4
    n_layers: int = 1
    adapter_hidden: int = 1024
    enc_layer: int = 0          # 0: frozen token embeddings; k > 0: frozen LM hidden states after layer k
    first_weight: float = 2.0
    kd_weight: float = 0.5
    kd_temp: float = 1.0
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    batch_size: int = 8
    epochs: int = 1
    clip: float = 1.0
    seed: int = 42
    checkpoint_every: int = 20

    def __post_init__(self):
        for k in ("m", "d_z", "n_heads", "n_layers", "adapter_hidden", "batch_size", "epochs", "checkpoint_every"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        if self.d_z % self.n_heads:
            raise ValueError(f"d_z={self.d_z} must be a multiple of n_heads={self.n_heads}")
        if self.enc_layer < 0:
            raise ValueError(f"enc_layer must be >= 0, got {self.enc_layer}")
        if self.first_weight <= 0 or self.kd_weight < 0 or self.kd_temp <= 0 or self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"need first_weight > 0, kd_weight >= 0, kd_temp > 0, lr > 0, clip > 0; got "
                             f"{self.first_weight}, {self.kd_weight}, {self.kd_temp}, {self.lr}, {self.clip}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def _sinusoid(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float32) / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, q, kv, pad):  # q (B, M, d_z), kv (B, T, d_z), pad (B, T) True = padding
        kvn = self.ln_kv(kv)
        q = q + self.attn(self.ln_q(q), kvn, kvn, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.ln_mlp(q))


class Compressor(nn.Module):
    """features (B, T, d_model) + mask -> calibrated prefix (B, M, d_model)."""

    def __init__(self, cfg: LatentConfig, d_model: int, target_rms: float):
        super().__init__()
        self.cfg, self.d_model, self.target_rms = cfg, d_model, float(target_rms)
        self.ln_in, self.proj = nn.LayerNorm(d_model), nn.Linear(d_model, cfg.d_z)
        self.queries = nn.Parameter(torch.randn(cfg.m, cfg.d_z) * 0.02)
        self.blocks = nn.ModuleList(_Block(cfg.d_z, cfg.n_heads) for _ in range(cfg.n_layers))
        self.adapter = nn.Sequential(nn.LayerNorm(cfg.d_z), nn.Linear(cfg.d_z, cfg.adapter_hidden), nn.GELU(),
                                     nn.Linear(cfg.adapter_hidden, d_model))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = feats.shape
        kv = self.proj(self.ln_in(feats.float())) + _sinusoid(T, self.cfg.d_z).to(feats.device)
        q = self.queries.expand(B, -1, -1)
        for blk in self.blocks:
            q = blk(q, kv, mask == 0)
        z = self.adapter(q)  # (B, M, d_model)
        rms = z.pow(2).mean(dim=(1, 2), keepdim=True).add(1e-8).sqrt()
        return z * (self.target_rms / rms)


def embedding_rms(model, n: int = 8192) -> float:
    """Mean per-row RMS of the input embeddings (evenly spaced ids; the scale the prefix is calibrated to)."""
    V = model.get_input_embeddings().weight.shape[0]
    ids = torch.linspace(0, V - 1, min(n, V)).long().tolist()
    with torch.no_grad():
        return float(embed(model, ids).float().pow(2).mean(-1).sqrt().mean())


@torch.no_grad()
def features(model, bos_id, items: list[Item], enc_layer: int):
    """(B, T, d) float32 passage features, right-padded, and the (B, T) mask."""
    ids = [list(it.context_ids) for it in items]
    T = max(map(len, ids))
    dev = model.get_input_embeddings().weight.device
    mask = torch.zeros(len(ids), T, dtype=torch.long, device=dev)
    for i, x in enumerate(ids):
        mask[i, : len(x)] = 1
    padded = [x + [x[-1]] * (T - len(x)) for x in ids]  # filler under mask 0 (never read)
    if enc_layer == 0:
        return embed(model, sum(padded, [])).view(len(ids), T, -1).float(), mask
    head = [bos_id] if bos_id is not None else []
    full = torch.tensor([head + x for x in padded], device=dev)
    fmask = torch.cat([torch.ones(len(ids), len(head), dtype=torch.long, device=dev), mask], 1)
    hs = decoder(model)(input_ids=full, attention_mask=fmask, output_hidden_states=True, use_cache=False).hidden_states
    if enc_layer >= len(hs):
        raise ValueError(f"enc_layer {enc_layer} exceeds the model's {len(hs) - 1} layers")
    return hs[enc_layer][:, len(head):].float(), mask


def encode(model, bos_id, comp: Compressor, items: list[Item]) -> torch.Tensor:
    return comp(*features(model, bos_id, items, comp.cfg.enc_layer))


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
