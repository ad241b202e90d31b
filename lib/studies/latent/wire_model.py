"""exp12's LatentWire pieces (``lib.studies.latent.wire``): ONE shared encoder producing Z (M x d_z) read by
several frozen LMs, one adapter per LM; the per-model items and the encoder's inputs.

- ``WireConfig``: ``LatentConfig`` plus what the wire adds: ``encoder`` (``tokens``: the frozen token
  embeddings, or hidden states at ``enc_layer``, of ONE source model, index ``encoder_source`` in the model
  list; ``bytes``: UTF-8 bytes of the text with learned byte embeddings, tokenizer-free, capped at
  ``byte_max`` bytes, each cut recorded), ``latent_input`` (``prompt``: the latent holds passage AND
  question, the model reads ``[BOS][latent][answer cue]``; ``passage``: the question stays text after the
  latent, the single-model exp12 layout), ``k_tokens`` (loss positions, 0 = every answer token).
- ``SharedEncoder``: inputs -> (B, M, d_z); built in the same order as ``Compressor``'s encoder half, so one
  seed gives the same initial weights (the single-model path is a special case: ``tests/test_wire.py``).
- ``Adapter``: LayerNorm -> Linear (to ``adapter_hidden``, or ``adapter_mult`` x d_model) -> GELU -> Linear to
  THAT model's d_model, then per-example RMS
  calibration to that model's input-embedding RMS.
- ``WireItem``: ``Item`` (one model's tokenization) plus the whole prompt's ids (passage + question, no cue;
  the token-budget baseline cuts it), the cue ids and the text the byte encoder reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lib.studies.latent.compressor import LatentConfig, _Block, _sinusoid, features
from lib.studies.latent.layout import ANCHOR, Item

ENCODERS = ("tokens", "bytes")
LATENT_INPUTS = ("prompt", "passage")
QUESTION = "\nQuestion: {query}"
CUE = "\nAnswer:"
BYTE_MAX = 2048  # the seed's cap on the byte encoder's input


@dataclass(frozen=True)
class WireConfig(LatentConfig):
    encoder: str = "tokens"
    latent_input: str = "passage"
    byte_max: int = BYTE_MAX
    k_tokens: int = 0            # CE and KD over answer positions t < k_tokens (0: all answer tokens)
    encoder_source: int = 0      # tokens encoder: index of the model whose tokenizer and embeddings feed it
    adapter_mult: int = 0        # > 0: adapter hidden width = adapter_mult * that model's d_model (the seed's 4)

    def __post_init__(self):
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder {self.encoder!r} unknown; choose from {ENCODERS}")
        if self.latent_input not in LATENT_INPUTS:
            raise ValueError(f"latent_input {self.latent_input!r} unknown; choose from {LATENT_INPUTS}")
        for k in ("byte_max", "k_tokens", "encoder_source", "adapter_mult"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "byte_max" else 0):
                raise ValueError(f"{k} must be an int >= {1 if k == 'byte_max' else 0}, got {v!r}")
        if self.encoder == "bytes" and self.enc_layer:
            raise ValueError(f"enc_layer={self.enc_layer} needs encoder 'tokens' (the byte encoder reads no LM)")


@dataclass(frozen=True)
class WireItem(Item):
    prompt_ids: tuple[int, ...] = ()   # passage + question (no cue), this model's tokens; budget cuts it
    cue_ids: tuple[int, ...] = ()      # the answer cue after a budget prompt
    text: str = ""                     # what the latent holds, as text (the byte encoder's input)
    context_cut: bool = False          # the passage was cut to max_context_tokens


def make_wire_items(tokenizer, samples, latent_input: str, *, max_context_tokens: int = 0) -> list[WireItem]:
    """One model's items. ``passage``: context = passage, anchor = question + cue (``layout.ANCHOR``, as the
    single-model exp12); ``prompt``: context = passage + question, anchor = the cue. Passages over
    ``max_context_tokens`` (> 0) are cut in tokens (flagged ``context_cut``); the byte text is never cut here."""
    if latent_input not in LATENT_INPUTS:
        raise ValueError(f"latent_input {latent_input!r} unknown; choose from {LATENT_INPUTS}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; EOS is a supervised answer token")
    tok = lambda s: tuple(tokenizer(s, add_special_tokens=False).input_ids)  # noqa: E731
    cue = tok(CUE)
    out = []
    for s in samples:
        full = tok(s.passage)
        passage = full[:max_context_tokens] if max_context_tokens > 0 else full
        question = tok(QUESTION.format(query=s.query))
        if latent_input == "passage":
            ctx, anchor, text = passage, tok(ANCHOR.format(query=s.query)), s.passage
        else:
            ctx, anchor, text = passage + question, cue, s.passage + QUESTION.format(query=s.query)
        out.append(WireItem(s.id, ctx, anchor, tok(" " + s.answer.strip()) + (eos,), tuple(s.answers or (s.answer,)),
                            len(text.encode()), prompt_ids=passage + question, cue_ids=cue, text=text,
                            context_cut=len(passage) < len(full)))
    return out


def parse_models(spec) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``; empty or repeated names raise."""
    names = [x.strip() for x in str(spec).split(",") if x.strip()]
    if not names:
        raise ValueError(f"models list is empty ({spec!r}); expected comma-separated model names")
    if len(set(names)) != len(names):
        raise ValueError(f"models {names!r} repeat a name; expected distinct models")
    return names


def parse_anchors(spec, names: list[str]) -> list[str | None]:
    """Per-model position-0 anchors for ``names``: ``""`` -> every model's BOS policy; else one comma-separated
    entry per model in order, an empty entry keeping that model's policy (``",<|im_start|>"``: the second
    model reads ``<|im_start|>``). Each given entry goes to ``load_model(anchor=)``."""
    spec = "" if spec is None else str(spec)
    if not spec.strip():
        return [None] * len(names)
    parts = [x.strip() for x in spec.split(",")]
    if len(parts) != len(names):
        raise ValueError(f"ANCHORS={spec!r} has {len(parts)} entries for {len(names)} models {names!r}; expected one per "
                         "model in order (an empty entry keeps that model's BOS policy), or empty for all")
    return [x or None for x in parts]


def source_index(name: str, names: list[str]) -> int:
    """Index of the tokens encoder's source model (empty: the first)."""
    if not name:
        return 0
    if name not in names:
        raise ValueError(f"encoder model {name!r} is not in the models list {names!r}")
    return names.index(name)


def byte_inputs(items, byte_max: int, device="cpu"):
    """(B, T) long UTF-8 bytes of each item's ``text`` cut to ``byte_max``, right-padded; the (B, T) mask;
    per item whether it was cut."""
    raw = [it.text.encode() for it in items]
    if any(len(r) == 0 for r in raw):
        raise ValueError(f"item {items[[len(r) for r in raw].index(0)].sample_id} has no text for the byte encoder")
    cut = [len(r) > byte_max for r in raw]
    raw = [r[:byte_max] for r in raw]
    T = max(map(len, raw))
    ids = torch.zeros(len(raw), T, dtype=torch.long, device=device)
    mask = torch.zeros(len(raw), T, dtype=torch.long, device=device)
    for i, r in enumerate(raw):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask, cut


class SharedEncoder(nn.Module):
    """Encoder inputs -> Z (B, M, d_z): token features (LayerNorm -> Linear) or learned byte embeddings, plus
    sinusoidal positions; M learned queries cross-attend (``n_layers`` blocks)."""

    def __init__(self, cfg: WireConfig, d_in: int | None):
        super().__init__()
        self.cfg = cfg
        if cfg.encoder == "tokens":
            if not d_in:
                raise ValueError(f"the tokens encoder needs the source model's width, got {d_in!r}")
            self.ln_in, self.proj = nn.LayerNorm(d_in), nn.Linear(d_in, cfg.d_z)
        else:
            self.byte_emb = nn.Embedding(256, cfg.d_z)
        self.queries = nn.Parameter(torch.randn(cfg.m, cfg.d_z) * 0.02)
        self.blocks = nn.ModuleList(_Block(cfg.d_z, cfg.n_heads) for _ in range(cfg.n_layers))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T = feats.shape[:2]
        x = self.proj(self.ln_in(feats.float())) if self.cfg.encoder == "tokens" else self.byte_emb(feats)
        kv = x + _sinusoid(T, self.cfg.d_z).to(feats.device)
        q = self.queries.expand(B, -1, -1)
        for blk in self.blocks:
            q = blk(q, kv, mask == 0)
        return q


class Adapter(nn.Module):
    """Z (B, M, d_z) -> (B, M, d_model) calibrated to ``target_rms`` per example."""

    def __init__(self, cfg: WireConfig, d_model: int, target_rms: float):
        super().__init__()
        self.d_model, self.target_rms = d_model, float(target_rms)
        hidden = cfg.adapter_mult * d_model if cfg.adapter_mult else cfg.adapter_hidden
        self.net = nn.Sequential(nn.LayerNorm(cfg.d_z), nn.Linear(cfg.d_z, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.net(z)
        rms = y.pow(2).mean(dim=(1, 2), keepdim=True).add(1e-8).sqrt()
        return y * (self.target_rms / rms)


class Wire(nn.Module):
    """The shared encoder and one adapter per model (list order = the model list)."""

    def __init__(self, cfg: WireConfig, d_in: int | None, d_models: list[int], target_rms: list[float]):
        super().__init__()
        if not d_models or len(d_models) != len(target_rms):
            raise ValueError(f"need one width and one RMS per model, got {d_models!r} and {target_rms!r}")
        self.cfg = cfg
        self.encoder = SharedEncoder(cfg, d_in)
        self.adapters = nn.ModuleList(Adapter(cfg, d, r) for d, r in zip(d_models, target_rms))

    def inputs(self, source_lm, items_by_model: list[list[WireItem]]):
        """The encoder's inputs for one batch: (feats, mask, cut flags)."""
        cfg = self.cfg
        if cfg.encoder == "bytes":
            return byte_inputs(items_by_model[0], cfg.byte_max, self.encoder.queries.device)
        feats, mask = features(source_lm.model, source_lm.arch.bos_id, items_by_model[cfg.encoder_source], cfg.enc_layer)
        return feats, mask, [False] * len(items_by_model[0])

    def latent(self, source_lm, items_by_model) -> torch.Tensor:
        feats, mask, _ = self.inputs(source_lm, items_by_model)
        return self.encoder(feats, mask)
