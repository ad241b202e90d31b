"""Greedy decoding of many prompts with a KV cache: length-sorted batches, finished rows leave the batch.

``generate`` (below) returns, for every prompt, the tokens greedy decoding appends to it: the same
tokens as ``model.generate(do_sample=False)`` with left padding, up to the first end-of-sequence
token (kept) or ``max_new_tokens`` or the step at which ``stop`` says the row is done. It differs
from ``model.generate`` in what it computes, not in what it returns:

- prompts are sorted by length (longest first) and cut into batches of ``batch_size``, so the
  left padding of a batch is small (the prefill of long prompts is most of the work);
- a row leaves the batch (its cache rows are dropped) as soon as it is done, instead of running on
  until the whole batch is, so later steps compute only the rows still going;
- the prefill computes logits of the last position only.

Positions and masks follow ``model.generate``'s left-padding rules: a row's positions count its
real tokens from 0, padded slots are masked (position 0), and each step appends one real token.
A model whose generation config asks for logits processors greedy decoding would apply (repetition
penalty, suppressed or forced tokens, ...) is refused by name: this loop applies none.

Tensors: ``ids`` / ``mask`` are ``[rows, T]``; the cache is the model's own (``DynamicCache``), rows
selected with ``batch_select_indices`` (sliding-window layers included).
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


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, pad_token_id: int, batch_size: int = 32,
             stop: Callable[[list[int]], bool] | None = None,
             on_batch: Callable[[list[int], list[list[int]]], None] | None = None) -> list[list[int]]:
    """The greedy continuation of each prompt (token ids, no padding), in the order given.

    A row is done at an end-of-sequence token (included in its output), after ``max_new_tokens``, or
    when ``stop(new_tokens)`` is true. ``on_batch(indices, outputs)`` is called after each batch with
    the prompts' indices and their continuations (a caller can persist them: a killed run keeps every
    finished batch).
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        width = len(prompts[idx[0]])  # the longest of the batch: sorted
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [rows, T]
        new: list[list[int]] = [[] for _ in idx]
        alive = list(range(len(idx)))  # rows of the batch still going, in cache row order
        with torch.no_grad():
            res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache, last = res.past_key_values, pos[:, -1:]
            for step in range(max_new_tokens):
                tok = res.logits[:, -1, :].float().argmax(-1)  # [rows]
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
                res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
        del cache, res
        for r, i in enumerate(idx):
            out[i] = new[r]
        if on_batch is not None:
            on_batch(idx, new)
    return out
