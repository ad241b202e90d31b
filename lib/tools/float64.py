"""Exactness checks in float64 on real models (the benches' "same point" agreement).

transformers' RMSNorms compute in float32 whatever the input dtype (Llama, Qwen2: the variance; Gemma 3: the
whole norm), so a model merely cast to float64 still rounds at float32 there and two exact computations can
differ at ~1e-8. ``in_float64`` casts the models to float64 and keeps those norms in float64 for the duration,
then restores both (float32 or bfloat16 -> float64 -> back is exact).
"""
from __future__ import annotations

import contextlib

import torch


def _llama_like(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _gemma3(self, x):
    return self._norm(x) * (1.0 + self.weight)


def _norm_patches():
    from transformers.models.gemma3 import modeling_gemma3
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.qwen2 import modeling_qwen2

    return [(modeling_gemma3.Gemma3RMSNorm, _gemma3), (modeling_llama.LlamaRMSNorm, _llama_like),
            (modeling_mistral.MistralRMSNorm, _llama_like), (modeling_qwen2.Qwen2RMSNorm, _llama_like)]


@contextlib.contextmanager
def in_float64(models):
    """Run the block with every model of ``models`` (nn.Modules) in float64, its RMSNorms in float64 too."""
    own = [next(m.parameters()).dtype for m in models]
    saved = [(cls, cls.forward) for cls, _ in _norm_patches()]
    try:
        for cls, fwd in _norm_patches():
            cls.forward = fwd
        for m in models:
            m.to(torch.float64)
        yield
    finally:
        for cls, fwd in saved:
            cls.forward = fwd
        for m, dt in zip(models, own):
            m.to(dt)
