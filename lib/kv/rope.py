"""Per-layer rotary parameters, read from the model, and pure re-rotation of cached keys.

A cached key at position p carries the rotation R(p). Moving it to position p + delta is the pure
rotation R(delta): ``k' = k * cos(delta * f) + rotate_half(k) * sin(delta * f)`` on the rotated
part of the head (the first ``rotary_dim`` dims; the rest passes through). The model's own
cos/sin tables are NOT reused: they include ``attention_scaling`` (yarn: ~1.14), which the cached
key already carries once.

Parameters are read from the model's rotary module(s), never recomputed from a config with one
theta for all layers: Gemma 3 has one ``{layer_type}_inv_freq`` buffer per layer type (local
theta 1e4, global theta 1e6 with linear scaling on 4B+); Llama/Mistral/Qwen2 have one
``inv_freq``; GPT-NeoX rotates only ``partial_rotary_factor`` of each head. Types whose
frequencies depend on the sequence length (``dynamic``, ``longrope``) are refused: a fixed shift
is not exact for them.

Angles are formed in float64 (delta * inv_freq) and the rotation is applied in float32 at least,
then cast back to the key dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")


@dataclass(frozen=True)
class LayerRope:
    """Rotary parameters of one decoder layer."""

    layer_idx: int
    layer_type: str
    rope_type: str
    inv_freq: torch.Tensor  # (rotary_dim // 2,) as the model holds it
    rotary_dim: int
    head_dim: int
    attention_scaling: float

    def __post_init__(self):
        if self.rotary_dim != 2 * self.inv_freq.numel():
            raise ValueError(f"rotary_dim={self.rotary_dim} must be 2 * len(inv_freq)={self.inv_freq.numel()}")
        if not 0 < self.rotary_dim <= self.head_dim:
            raise ValueError(f"rotary_dim={self.rotary_dim} must be in (0, head_dim={self.head_dim}]")

    @property
    def base(self) -> float:
        """Effective theta implied by the first two frequencies (informational only)."""
        f = self.inv_freq.double()
        if f.numel() < 2:
            return float("nan")
        return float((f[0] / f[1]) ** (self.rotary_dim / 2))

    def to_dict(self) -> dict:
        return {
            "layer_idx": self.layer_idx,
            "layer_type": self.layer_type,
            "rope_type": self.rope_type,
            "rotary_dim": self.rotary_dim,
            "head_dim": self.head_dim,
            "attention_scaling": float(self.attention_scaling),
            "base": round(self.base, 3),
            "inv_freq_min": float(self.inv_freq.min()),
            "inv_freq_max": float(self.inv_freq.max()),
        }


def text_config(config):
    """The text (decoder) config of ``config``: itself for text models, ``text_config`` for wrappers."""
    get = getattr(config, "get_text_config", None)
    if get is None:
        raise TypeError(f"expected a transformers config, got {type(config).__name__}")
    return get(decoder=True)


def attention_layout(cfg) -> tuple[tuple[str, ...], int | None]:
    """Per-layer attention types and the window (None when no layer slides).

    Without ``layer_types`` a set ``sliding_window`` makes every layer sliding, as transformers
    does (cache_utils.get_layer_types_and_kwargs; Mistral picks its sliding mask whenever
    ``config.sliding_window`` is not None).
    """
    n = cfg.num_hidden_layers
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window is not None else "full_attention"] * n
    types = tuple(types)
    return types, (window if "sliding_attention" in types else None)


def _text_model(model):
    """The inner decoder (the module that owns ``rotary_emb`` and ``layers``)."""
    inner = getattr(model, "model", model)
    for attr in ("language_model", "text_model"):
        if hasattr(inner, attr):
            inner = getattr(inner, attr)
    if not hasattr(inner, "rotary_emb"):
        # GPT-NeoX style: model.gpt_neox.rotary_emb
        for child in model.children():
            if hasattr(child, "rotary_emb"):
                return child
        raise ValueError(f"cannot find a rotary_emb module in {type(model).__name__}")
    return inner


def layer_ropes(model) -> tuple[LayerRope, ...]:
    """One ``LayerRope`` per decoder layer, read from the model's rotary module(s)."""

    cfg = text_config(model.config)
    rot = _text_model(model).rotary_emb
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layer_types, _ = attention_layout(cfg)
    out = []
    for i, lt in enumerate(layer_types):
        if hasattr(rot, f"{lt}_inv_freq"):  # per-layer-type module (Gemma 3)
            inv_freq = getattr(rot, f"{lt}_inv_freq")
            scaling = getattr(rot, f"{lt}_attention_scaling")
            rope_type = rot.rope_type[lt] if isinstance(rot.rope_type, dict) else rot.rope_type
        elif hasattr(rot, "inv_freq"):
            inv_freq, scaling, rope_type = rot.inv_freq, rot.attention_scaling, rot.rope_type
        else:
            raise ValueError(f"rotary module {type(rot).__name__} has no inv_freq for layer type {lt!r}")
        if rope_type in SEQ_DEPENDENT_ROPE_TYPES:
            raise ValueError(
                f"layer {i}: rope_type {rope_type!r} recomputes frequencies from the sequence length, "
                f"so re-positioning cached keys by a fixed shift is not exact; supported types are "
                f"fixed-frequency ones (default, linear, llama3, yarn, ...)"
            )
        inv_freq = inv_freq.detach().float().cpu()
        out.append(LayerRope(i, lt, str(rope_type), inv_freq, 2 * inv_freq.numel(), head_dim, float(scaling)))
    return tuple(out)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor | int, rope: LayerRope) -> torch.Tensor:
    """Rotate cached keys by a position delta; returns a new tensor, ``keys`` is untouched.

    keys:  (B, kv_heads, S, head_dim)
    delta: int, or a tensor broadcastable to (B, S) (per item and per entry), in positions.
    """
    if keys.shape[-1] != rope.head_dim:
        raise ValueError(f"keys head_dim {keys.shape[-1]} != layer {rope.layer_idx} head_dim {rope.head_dim}")
    B, _, S, _ = keys.shape
    d = torch.as_tensor(delta, dtype=torch.float64, device=keys.device)
    d = d.expand(B, S) if d.dim() <= 2 else d
    if d.shape != (B, S):
        raise ValueError(f"delta shape {tuple(d.shape)} does not broadcast to (batch, seq) = {(B, S)}")
    ang = d[..., None] * rope.inv_freq.to(device=keys.device, dtype=torch.float64)  # (B, S, rd/2)
    ang = torch.cat((ang, ang), dim=-1)[:, None]  # (B, 1, S, rd)
    work = torch.promote_types(keys.dtype, torch.float32)
    cos, sin = ang.cos().to(work), ang.sin().to(work)
    rd = rope.rotary_dim
    k = keys.to(work)
    k_rot, k_pass = k[..., :rd], k[..., rd:]
    k_rot = k_rot * cos + _rotate_half(k_rot) * sin
    return torch.cat((k_rot, k_pass), dim=-1).to(keys.dtype)
