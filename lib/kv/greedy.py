"""Greedy decoding of many prompts with a KV cache: length-sorted batches, finished rows leave the batch.

``generate`` (below) returns, for every prompt, the tokens greedy decoding appends to it: the same
tokens as ``model.generate(do_sample=False)`` with left padding, up to the first end-of-sequence
token (kept) or ``max_new_tokens`` or the step at which ``stop`` says the row is done. It differs
from ``model.generate`` in what it computes, not in what it returns:

- prompts are sorted by length (longest first) and cut into decode batches of ``batch_size``;
- each decode batch is prefilled in sub-batches of ``prefill_batch`` consecutive (so similar-length)
  prompts, each left-padded to its own longest, and their caches are joined (left-padded again with
  masked zeros) into one decode batch. Prefill costs its matmuls plus elementwise passes over
  ``(rows, T, intermediate)`` activations that run far faster when they fit in the CPU's cache (small
  sub-batches); a decode step costs one pass over the LM head's weight (671 MB for Gemma 3's 262k
  vocabulary) whatever its rows (large batches: fewer steps for the same rows);
- a row leaves the batch (its cache rows are dropped) as soon as it is done, instead of running on
  until the whole batch is, so later steps compute only the rows still going;
- the prefill computes logits of the last position only.

Positions and masks follow ``model.generate``'s left-padding rules: a row's positions count its
real tokens from 0, padded slots are masked (position 0), and each step appends one real token.
A model whose generation config asks for logits processors greedy decoding would apply (repetition
penalty, suppressed or forced tokens, ...) is refused by name: this loop applies none.

Tensors: ``ids`` / ``mask`` are ``[rows, T]``; the cache is a plain ``DynamicCache`` (every layer keeps
every entry; sliding-window layers are masked by index distance, which left padding leaves unchanged),
rows selected with ``batch_select_indices``.
"""
from __future__ import annotations

from collections.abc import Callable

# generation-config fields whose non-default value would make model.generate's greedy output differ from a plain argmax
_PROCESSORS = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
               "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
               "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
               "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "exponential_decay_length_penalty": (None,)}


def eos_ids(model) -> set[int]:
    """The end-of-sequence ids of ``model``'s generation config (an int or a list there)."""
    eos = model.generation_config.eos_token_id
    return set() if eos is None else ({int(eos)} if isinstance(eos, int) else {int(e) for e in eos})


def check_plain_greedy(model) -> None:
    """Raise when ``model``'s generation config sets a logits processor that greedy ``generate`` would apply."""
    cfg = model.generation_config
    bad = {k: getattr(cfg, k, None) for k, ok in _PROCESSORS.items() if getattr(cfg, k, None) not in ok}
    if bad:
        raise ValueError(f"generation config sets logits processors {bad}; lib.kv.greedy applies none, so its output "
                         "would differ from model.generate: use the reference path")


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, pad_token_id: int, batch_size: int = 128,
             prefill_batch: int = 8, stop: Callable[[list[int]], bool] | None = None,
             on_batch: Callable[[list[int], list[list[int]]], None] | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, no padding), in the order given.

    A row is done at an end-of-sequence token (included in its output), after ``max_new_tokens``, or
    when ``stop(new_tokens)`` is true. ``batch_size``: rows decoded together; ``prefill_batch``: rows
    per prefill forward (at most ``batch_size``). ``on_batch(indices, outputs)`` is called after each
    decode batch with the prompts' indices and their continuations (a caller can persist them: a
    killed run keeps every finished batch).
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for name, v in (("batch_size", batch_size), ("prefill_batch", prefill_batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty; every prompt needs at least one token")
    check_plain_greedy(model)
    eos = eos_ids(model)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[int] | None] = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        with torch.no_grad():
            cache, mask, last, logits = _prefill(model, [prompts[i] for i in idx], pad_token_id,
                                                 min(prefill_batch, batch_size), device)
            new = _decode(model, cache, mask, last, logits, max_new_tokens, eos, stop)
        for r, i in enumerate(idx):
            out[i] = new[r]
        if on_batch is not None:
            on_batch(idx, new)
    return out


def _prefill(model, prompts: list[list[int]], pad_token_id: int, sub: int, device):
    """Prefill ``prompts`` (longest first) in forwards of ``sub`` rows, each left-padded to its longest;
    join the caches into one left-padded batch. Returns the cache, its ``[rows, W]`` mask, each row's
    last position ``[rows, 1]`` and the last position's logits ``[rows, V]``."""
    import torch
    from transformers import DynamicCache

    width = len(prompts[0])  # the longest: sorted
    parts = []
    for s in range(0, len(prompts), sub):
        rows = prompts[s : s + sub]
        w = len(rows[0])
        ids = torch.full((len(rows), w), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), w), dtype=torch.long)
        for r, p in enumerate(rows):
            ids[r, w - len(p):] = torch.tensor(p)
            mask[r, w - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [rows, w]: real tokens count from 0
        past = DynamicCache()
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True,
                    logits_to_keep=1)
        parts.append((past, mask, pos[:, -1:], res.logits[:, -1, :]))
        del res
    if len(parts) == 1:
        return parts[0]
    pad = lambda t, w: torch.nn.functional.pad(t, (0, 0, width - w, 0))  # noqa: E731 - [.., w, D] -> [.., width, D]
    cache = DynamicCache()
    for layer in range(len(parts[0][0].layers)):
        keys = torch.cat([pad(p.layers[layer].keys, m.shape[1]) for p, m, _, _ in parts])
        values = torch.cat([pad(p.layers[layer].values, m.shape[1]) for p, m, _, _ in parts])
        cache.update(keys, values, layer)
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for _, m, _, _ in parts])
    return cache, mask, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


def _decode(model, cache, mask, last, logits, max_new_tokens: int, eos: set[int], stop) -> list[list[int]]:
    """Greedy steps from the prefilled batch until every row is done; the new tokens of each row."""
    import torch

    device = mask.device
    new: list[list[int]] = [[] for _ in range(mask.shape[0])]
    alive = list(range(mask.shape[0]))  # rows still going, in cache row order
    for step in range(max_new_tokens):
        tok = logits.float().argmax(-1)  # [rows]
        keep = []
        for j, (r, t) in enumerate(zip(alive, tok.tolist())):
            new[r].append(t)
            if not (t in eos or step + 1 == max_new_tokens or (stop is not None and stop(new[r]))):
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            tok, mask, last = tok[sel], mask[sel], last[sel]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
        last = last + 1
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
    return new
