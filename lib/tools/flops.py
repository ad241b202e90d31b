"""FLOP counts, the machine's matmul peak and interleaved timing (``time_interleaved``), shared by the benchmarks (``lib.tools.bench``,
``lib.tools.bench_train``)."""
from __future__ import annotations

import gc
import time

import torch

from lib.lab.peakmem import _sync


def linear_weights(model) -> int:
    """Weights of the decoder's linear layers (the LM head excluded)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.base_model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


def forward_flops(lm, n_new: int, n_cache: int, n_logits: int) -> float:
    """FLOPs of one forward of ``n_new`` tokens over ``n_cache`` cached entries, logits at ``n_logits``."""
    a = lm.arch
    per_layer_keys = []
    for lt in a.layer_types:
        w = a.sliding_window if lt == "sliding_attention" and a.sliding_window else None
        keys = sum(min(n_cache + i + 1, w) if w else n_cache + i + 1 for i in range(n_new))
        per_layer_keys.append(keys)
    attn = sum(4 * a.n_heads * a.head_dim * k for k in per_layer_keys)
    return 2.0 * lm_linear(lm) * n_new + attn + 2.0 * a.hidden_size * a.vocab_size * n_logits


_LINEAR_CACHE: dict[int, int] = {}


def lm_linear(lm) -> int:
    key = id(lm.model)
    if key not in _LINEAR_CACHE:
        _LINEAR_CACHE[key] = linear_weights(lm.model)
    return _LINEAR_CACHE[key]


def matmul_peak(device, dtype, sizes=(1024, 2048, 3072), reps: int = 5) -> float:
    """Best dense matmul FLOP/s over a few square sizes, timed now."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def time_interleaved(paths: dict, run, repeats: int, device) -> tuple[dict, dict]:
    """Time ``run(arg)`` for every ``name: arg`` of ``paths``, ``repeats`` rounds, the order reversed on odd
    rounds (so neither path always runs warm or first); ``gc.collect()`` before each. Returns the
    per-path wall times (s) and each path's last result."""
    times, out = {k: [] for k in paths}, {}
    for r in range(repeats):
        for which in (tuple(paths) if r % 2 == 0 else tuple(reversed(paths))):
            gc.collect()
            t = time.perf_counter()
            out[which] = run(paths[which])
            _sync(device)
            times[which].append(time.perf_counter() - t)
    return times, out
