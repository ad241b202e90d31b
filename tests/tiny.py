"""Tiny random models of each architecture, built in code (no downloads), for unit tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lib.kv.rope import layer_ropes

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def _llama(**rope):
    return LlamaForCausalLM(LlamaConfig(**COMMON, head_dim=16, rope_parameters=rope))


def build(kind: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    if kind == "llama":
        m = _llama(rope_type="default", rope_theta=10000.0)
    elif kind == "llama3":
        m = _llama(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)
    elif kind == "yarn":
        m = _llama(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=128)
    elif kind == "linear":
        m = _llama(rope_type="linear", rope_theta=10000.0, factor=2.0)
    elif kind == "mistral":
        m = MistralForCausalLM(MistralConfig(**COMMON, head_dim=16, sliding_window=12,
                                             rope_parameters=dict(rope_type="default", rope_theta=1e6)))
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**COMMON, rope_parameters=dict(rope_type="default", rope_theta=1e6)))
    elif kind in ("gemma3", "gemma3_softcap"):
        cfg = Gemma3TextConfig(
            **{**COMMON, "num_hidden_layers": 6}, head_dim=16, sliding_window=12,
            layer_types=["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2 + ["full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}},
            final_logit_softcapping=(30.0 if kind == "gemma3_softcap" else None),
        )
        m = Gemma3ForCausalLM(cfg)
    elif kind == "gemma3_mm":  # multimodal wrapper: the kernels must reach its text decoder
        text = dict(**{**COMMON, "vocab_size": VOCAB + 4, "num_hidden_layers": 4}, head_dim=16, sliding_window=12,
                    layer_types=["sliding_attention"] * 3 + ["full_attention"],
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                     "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}})
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        m = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                                        image_token_index=VOCAB + 3, boi_token_index=VOCAB + 1,
                                                        eoi_token_index=VOCAB + 2))
    elif kind == "neox":
        m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                             num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=512,
                                             rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                                  partial_rotary_factor=0.25)))
    else:
        raise ValueError(kind)
    m.config._attn_implementation = attn
    m.config.get_text_config(decoder=True)._attn_implementation = attn
    return m.float().eval()


KINDS = ("llama", "llama3", "yarn", "linear", "mistral", "qwen2", "gemma3", "gemma3_softcap", "gemma3_mm", "neox")


@dataclass(frozen=True)
class TinyArch:
    """The ArchInfo fields the kernels read."""

    rope: tuple
    bos_id: int | None = 1
    bos_source: str = "bos_token"
    max_positions: int = 512
    n_layers: int = 0


def arch_of(model, bos_id: int | None = 1) -> TinyArch:
    ropes = layer_ropes(model)
    cfg = model.config.get_text_config(decoder=True)
    return TinyArch(ropes, bos_id, "bos_token" if bos_id is not None else "none", cfg.max_position_embeddings, len(ropes))


class TinyLM:
    """The loaded-model fields the engine and the studies read (``model``, ``arch``, ``name``), around a tiny model."""

    def __init__(self, model, name: str = "tiny"):
        self.model, self.arch, self.name = model, arch_of(model), name


def random_ids(n: int, seed: int) -> tuple[int, ...]:
    """``n`` seeded token ids in ``[3, VOCAB)`` (0-2 left to the special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(3, VOCAB, (n,), generator=g).tolist())
