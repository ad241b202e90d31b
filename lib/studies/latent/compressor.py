"""exp12's compressor: the encoder + adapter that turn a passage into M prefix vectors
(``lib.studies.latent``).

Encoder: features of the passage tokens (frozen LM token embeddings, ``enc_layer=0``, or the frozen
LM's hidden states at layer ``enc_layer``), LayerNorm -> Linear to d_z + sinusoidal positions; M learned
queries cross-attend (``n_layers`` blocks of cross-attention + MLP) -> (M, d_z); adapter LayerNorm
-> MLP -> d_model; per-example RMS calibration to the LM's input-embedding RMS. Only encoder and
adapter train.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.lab.ckpt import check_positive_ints
from lib.studies.latent.layout import Item, decoder, embed


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
        check_positive_ints(self, ("m", "d_z", "n_heads", "n_layers", "adapter_hidden", "batch_size", "epochs", "checkpoint_every"))
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
