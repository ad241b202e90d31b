"""Phase B: teacher-forced answer NLL against a document cache, batched; single-pass reference.

For one item, the new tokens are ``prompt_ids + answer_ids`` and they start at the cache's next
position. Token t of the answer is predicted by the logits at the position just before it: the
last prompt token predicts answer[0], answer[t-1] predicts answer[t]. Labels are shifted exactly
once, here. The prompt must be non-empty (otherwise answer[0] would be predicted by the cache's
last entry, whose logits Phase B does not have); a one-token answer gets that token's real NLL.

Batching (B items, caches of lengths L_b, new tokens of lengths T_b): caches are left-padded with
zeros to Lmax, new tokens right-padded to Tmax, the 2D attention mask is 1 on
``[Lmax - L_b, Lmax + T_b)``, and ``position_ids = next_position_b + arange(Tmax)``. Relative
index distances between cache entries and new tokens are those of the unpadded item, so
sliding-window masks stay exact. Logits are computed only at the positions that predict answer
tokens (hidden states of the base model, then the LM head), never over the full sequence.

Prompt sharing: ``extend`` appends tokens to a cache (Phase B without logits); scoring
``[prompt[-1]] + answer`` on ``extend(cache, prompt[:-1])`` equals scoring ``prompt + answer`` on the
cache, so answers sharing a prompt run it once (``lib.kv.engine``).

Guards: a cache whose next position differs from its length (the one-token look-ahead bug: the
causal mask's offset comes from the cache length, RoPE from position_ids) raises unless
``allow_position_gap=True``; every forward gets a fresh cache wrapper, so the DocCache is never
modified; the mask width is checked against cache length + new tokens.
"""
from __future__ import annotations

import torch

from lib.kv import cache as kv
from lib.kv import headloss


def _check_item(i: int, prompt_ids, answer_ids) -> None:
    if len(answer_ids) == 0:
        raise ValueError(f"item {i}: empty answer (no answer tokens to score)")
    if len(prompt_ids) == 0:
        raise ValueError(f"item {i}: empty prompt; the last prompt token must predict answer[0]")


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from final hidden states with the model's head (and its final soft-capping, if any).

    The head runs in float32 whatever the model dtype (float64 stays float64): hidden states and
    the head weight are upcast before the matmul. A bfloat16 head rounds logits to 8 bits of
    mantissa (steps of 0.125 at |logit| 16-32), which moved answer NLLs by up to ~0.04 nats per
    token on a tiny bf16 model (``tests/test_noise.py``); upcasting removes that error. ``.to``
    keeps the autograd graph, so soft-prefix training still gets gradients.
    """
    head = model.get_output_embeddings()
    dt = headloss.head_dtype(hidden)
    w = head.weight.to(dt)  # (V, hidden)
    bias = getattr(head, "bias", None)
    logits = torch.nn.functional.linear(hidden.to(dt), w, None if bias is None else bias.to(dt))
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _answer_nll(model, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL in float32 (float64 for float64 hidden states): head and log-softmax never in bf16/fp16."""
    logits = lm_logits(model, hidden[rows, cols])  # (N, V), float32 or float64
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def score(
    model,
    caches: list[kv.DocCache],
    prompt_ids: list[list[int]],
    answer_ids: list[list[int]],
    *,
    batch_size: int = 16,
    allow_position_gap: bool = False,
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """Per-token answer NLL (float32, on CPU) for each item; items are batch-1 DocCaches."""
    if not (len(caches) == len(prompt_ids) == len(answer_ids)):
        raise ValueError(f"got {len(caches)} caches, {len(prompt_ids)} prompts, {len(answer_ids)} answers")
    for i, (c, p, a) in enumerate(zip(caches, prompt_ids, answer_ids)):
        _check_item(i, p, a)
        if c.batch != 1:
            raise ValueError(f"item {i}: score takes batch-1 caches, got batch {c.batch}; use DocCache.item(b)")
        nxt = int(c.next_position[0])
        if not allow_position_gap and nxt != c.length:
            raise ValueError(
                f"item {i}: cache holds {c.length} entries but its next position is {nxt}; the causal mask's offset "
                f"comes from the cache length, so this would shift RoPE or leak a future token (the one-token "
                f"look-ahead bug). Compact the cache, or pass allow_position_gap=True to study un-repositioned caches."
            )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for s in range(0, len(caches), batch_size):
            sl = slice(s, s + batch_size)
            out.extend(_score_batch(model, caches[sl], prompt_ids[sl], answer_ids[sl], pad_id))
    return out


def extend(model, caches: list[kv.DocCache], new_ids: list[list[int]], *, pad_id: int = 0) -> list[kv.DocCache]:
    """Each cache with ``new_ids`` appended (Phase B on a prompt, no logits): new batch-1 caches.

    Prompt sharing (``lib.kv.engine``): run ``prompt[:-1]`` once on a shaped cache, then score every
    answer candidate as ``score(extended, [prompt[-1]], answer)``: the last prompt token still
    predicts answer[0]. Same batching as ``score`` (caches left-padded, new tokens right-padded,
    ``position_ids = next_position + arange``); row b keeps entries ``[Lmax - L_b, Lmax + T_b)``,
    cloned so no padded batch stays alive. The input caches are never modified (a fresh wrapper
    per forward); they must be contiguous (next position == length).
    """
    if len(caches) != len(new_ids) or not caches:
        raise ValueError(f"got {len(caches)} caches and {len(new_ids)} id lists; need the same number, at least one")
    for i, (c, ids) in enumerate(zip(caches, new_ids)):
        if len(ids) == 0:
            raise ValueError(f"item {i}: empty ids to extend the cache with")
        if c.batch != 1:
            raise ValueError(f"item {i}: extend takes batch-1 caches, got batch {c.batch}")
        if int(c.next_position[0]) != c.length:
            raise ValueError(f"item {i}: cache holds {c.length} entries but its next position is "
                             f"{int(c.next_position[0])}; compact it first")
    dev = caches[0].keys[0].device
    batched, cache_mask = kv.stack_left_padded(caches)
    B, lmax, tmax = len(caches), batched.length, max(len(x) for x in new_ids)
    ids = torch.full((B, tmax), pad_id, dtype=torch.long, device=dev)
    new_mask = torch.zeros(B, tmax, dtype=torch.long, device=dev)
    for b, x in enumerate(new_ids):
        ids[b, : len(x)] = torch.tensor(list(x), device=dev)
        new_mask[b, : len(x)] = 1
    mask = torch.cat([cache_mask.to(dev), new_mask], dim=1)
    position_ids = torch.tensor([c.length for c in caches], device=dev)[:, None] + torch.arange(tmax, device=dev)[None]
    past = kv.to_dynamic(batched)
    with torch.no_grad():
        from lib.kv.encode import forward_for_cache

        forward_for_cache(model, past, lambda: model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=past, use_cache=True))
    out = []
    for b, (c, x) in enumerate(zip(caches, new_ids)):
        sl = slice(lmax - c.length, lmax + len(x))  # (B, H, Lmax + Tmax, D) -> row b's real entries
        keys = tuple(layer.keys[b : b + 1, :, sl].clone() for layer in past.layers)
        values = tuple(layer.values[b : b + 1, :, sl].clone() for layer in past.layers)
        n = c.length + len(x)
        out.append(kv.DocCache(keys, values, torch.arange(n, device=c.positions.device)[None],
                               {**c.meta, "extended_by": len(x)}))
    return out


def score_with_grad(model, cache: kv.DocCache, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """Per-token answer NLL of one item with autograd ON: gradients reach whatever ``cache`` depends on.

    Same computation as ``score`` (one label shift, logits only at answer positions); the cache is
    wrapped in a fresh ``DynamicCache`` and never modified in place. Model weights should be frozen
    (``requires_grad_(False)``) by the caller when only the cache's inputs are trained.
    """
    return score_with_grad_batch(model, [cache], [prompt_ids], [answer_ids])[0]


def score_with_grad_batch(model, caches: list[kv.DocCache], prompt_ids: list[list[int]], answer_ids: list[list[int]],
                          *, pad_id: int = 0, one_pass_head: bool = False) -> list[torch.Tensor]:
    """``score_with_grad`` of several items in ONE forward (``score``'s batching: caches left-padded with
    zeros, new tokens right-padded with ``pad_id``, both masked); per-token NLL per item, autograd on.

    one_pass_head: the answer NLL and its gradient in one pass over the LM head's weight
    (``lib.kv.headloss``; the same numbers up to float rounding, tested); False: logits, log-softmax
    and autograd's backward (two passes)."""
    if not (len(caches) == len(prompt_ids) == len(answer_ids)) or not caches:
        raise ValueError(f"got {len(caches)} caches, {len(prompt_ids)} prompts, {len(answer_ids)} answers; "
                         f"need the same number, at least one")
    for i, (c, p, a) in enumerate(zip(caches, prompt_ids, answer_ids)):
        _check_item(i, p, a)
        if c.batch != 1:
            raise ValueError(f"item {i}: score_with_grad takes batch-1 caches, got batch {c.batch}")
        if int(c.next_position[0]) != c.length:
            raise ValueError(f"item {i}: cache holds {c.length} entries but its next position is "
                             f"{int(c.next_position[0])}; compact it first")
    return _score_batch(model, caches, [list(p) for p in prompt_ids], [list(a) for a in answer_ids], pad_id, one_pass_head)


def _score_batch(model, caches, prompt_ids, answer_ids, pad_id, one_pass_head: bool = False) -> list[torch.Tensor]:
    dev = caches[0].keys[0].device
    batched, cache_mask = kv.stack_left_padded(caches)
    new = [list(p) + list(a) for p, a in zip(prompt_ids, answer_ids)]
    B, lmax, tmax = len(new), batched.length, max(len(x) for x in new)
    ids = torch.full((B, tmax), pad_id, dtype=torch.long, device=dev)
    new_mask = torch.zeros(B, tmax, dtype=torch.long, device=dev)
    for b, x in enumerate(new):
        ids[b, : len(x)] = torch.tensor(x, device=dev)
        new_mask[b, : len(x)] = 1
    mask = torch.cat([cache_mask.to(dev), new_mask], dim=1)
    if mask.shape[1] != lmax + tmax:
        raise AssertionError(f"mask width {mask.shape[1]} != cache {lmax} + new {tmax}")
    start = torch.stack([c.next_position[0] for c in caches]).to(dev)
    position_ids = start[:, None] + torch.arange(tmax, device=dev)[None]
    past = kv.to_dynamic(batched)
    hidden = model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=past, use_cache=True
    ).last_hidden_state  # (B, Tmax, hidden)
    # the last prompt token predicts answer[0]; answer[t-1] predicts answer[t] (the one label shift)
    rows = [b for b, a in enumerate(answer_ids) for _ in a]
    cols = [len(p) - 1 + t for p, a in zip(prompt_ids, answer_ids) for t in range(len(a))]
    tgts = [tok for a in answer_ids for tok in a]
    rows_t, cols_t, tgts_t = (torch.tensor(x, device=dev) for x in (rows, cols, tgts))
    if one_pass_head:
        nll = headloss.answer_nll(model, hidden[rows_t, cols_t], tgts_t).cpu()
    else:
        nll = _answer_nll(model, hidden, rows_t, cols_t, tgts_t).cpu()
    res, k = [], 0
    for a in answer_ids:
        res.append(nll[k : k + len(a)])
        k += len(a)
    return res


def score_single_pass(model, arch, doc_ids, prompt_ids, answer_ids, prefix_ids=None) -> torch.Tensor:
    """Reference: one forward over ``[anchor] + prefix + doc + prompt + answer`` with no cache.

    Equals two-phase scoring of a cache that keeps every entry (bare, or prefix kept).
    """
    _check_item(0, prompt_ids, answer_ids)
    anchor = [] if arch.bos_id is None else [int(arch.bos_id)]
    ctx = anchor + list(prefix_ids or []) + list(doc_ids)
    seq = ctx + list(prompt_ids) + list(answer_ids)
    dev = model.get_input_embeddings().weight.device
    ids = torch.tensor([seq], device=dev)
    mask = torch.ones_like(ids)
    pos = torch.arange(len(seq), device=dev)[None]
    first = len(ctx) + len(prompt_ids) - 1
    cols = torch.arange(first, first + len(answer_ids), device=dev)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return _answer_nll(model, hidden, torch.zeros_like(cols), cols, torch.tensor(list(answer_ids), device=dev)).cpu()
