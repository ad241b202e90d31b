"""Batch and group planning for the engine (``lib.kv.engine``): memory per token, batches, groups.

Pure arithmetic on lengths and byte counts; no tensors. ``token_budget`` sizes Phase A / Phase B
batches from half of ``mem_budget_gb``; ``batches`` cuts a list of lengths into padded batches;
``groups`` cuts encodings into runs whose shaped (and prompt-extended) caches fit the other half.
"""
from __future__ import annotations


def sizes(model) -> tuple[int, int]:
    """(KV bytes per cached token over all layers, largest transient activation bytes per token)."""
    cfg = model.config.get_text_config(decoder=True)
    p = next(model.parameters())
    size = p.element_size() if p.is_floating_point() else 2  # quantized weights compute in 16 bits
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    kv_bytes = 2 * cfg.num_hidden_layers * n_kv * head_dim * size
    inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    act_bytes = size * (6 * cfg.hidden_size + 3 * inter + 2 * n_heads * head_dim)
    return kv_bytes, act_bytes


def token_budget(model, mem_budget_gb: float) -> int:
    """Tokens per Phase A batch that fit half of ``mem_budget_gb`` (activations + the kept KV cache).

    Per token: KV entries of every layer, plus the largest transient activations of one layer
    (hidden states, the MLP's intermediate, q/k/v), with a safety factor of 2. (The other half of
    the budget holds the shaped caches alive between Phase A and Phase B.)
    """
    if mem_budget_gb <= 0:
        raise ValueError(f"mem_budget_gb must be > 0, got {mem_budget_gb}")
    kv_bytes, act_bytes = sizes(model)
    return max(64, int(mem_budget_gb * 2**30 / (2 * (kv_bytes + act_bytes))))


def batches(lengths: list[int], budget: int, max_batch: int, *, cost: list[int] | None = None,
             min_tokens: int = 512, slack: float = 0.05) -> list[list[int]]:
    """Indices grouped into batches, longest ``lengths`` first (the padded dimension).

    A batch closes when adding the next item would make ``items * max(cost)`` exceed ``budget``
    (``cost`` defaults to ``lengths``) or exceed ``max_batch`` items, or, once it holds
    ``min_tokens`` real tokens (enough for efficient matmuls), when the next item is more than
    ``slack`` shorter than the batch's longest (to keep padding waste low).
    """
    cost = lengths if cost is None else cost
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], -cost[i]))
    out, cur, real, top = [], [], 0, 0
    for i in order:
        if cur:
            full = (len(cur) + 1) * max(top, cost[i]) > budget or len(cur) >= max_batch
            ragged = real >= min_tokens and lengths[i] < (1 - slack) * lengths[cur[0]]
            if full or ragged:
                out.append(cur)
                cur, real, top = [], 0, 0
        cur.append(i)
        real += lengths[i]
        top = max(top, cost[i])
    if cur:
        out.append(cur)
    return out


def groups(encodings: list, cost: dict, budget: int) -> list[list]:
    """Consecutive runs of ``encodings`` whose summed ``cost`` fits ``budget`` (an oversized one stands alone)."""
    out, cur, used = [], [], 0
    for e in encodings:
        if cur and used + cost[e] > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += cost[e]
    if cur:
        out.append(cur)
    return out
