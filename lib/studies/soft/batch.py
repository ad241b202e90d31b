"""exp07: several training examples per forward (``soft.train(examples_per_forward=...)``).

The batched fast path gives every example the numbers of the one-at-a-time path
(``soft.hybrid_nll(fast=True)``; same loss trajectory to float rounding, tested):

  1. Phase A, one forward for all rows: ``[anchor, S, doc_b]`` with the soft prefix S shared by the
     rows, RIGHT-padded to the longest document (``encode.encode_full_batch``): every real token
     keeps its unbatched index and position, the causal mask puts a row's pads after all its real
     tokens and the attention mask hides them, so no real token ever attends a pad. The forward stops
     after layer ``cutoff - 1``; row b's values at the anchor and its own document entries (values
     carry no RoPE) are the primed values below the cutoff.
  2. Each row's hybrid: its bare cache (keys everywhere, values above the cutoff) with those values
     spliced in below the cutoff (``hybrid_from_values``).
  3. Phase B, one forward for all rows (``scoring.score_with_grad_batch``): caches left-padded with
     masked zeros, ``prompt + answer`` right-padded, per-row positions; per-token NLL per row, the LM
     head's loss and gradient in one pass over its weight (``lib.kv.headloss``).

The loss of a micro-batch is the sum of the per-example mean NLLs over ``grad_accum``: its gradient
is the sum the one-at-a-time path accumulates over the same examples.
"""
from __future__ import annotations

import torch

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.kv import scoring


def hybrid_from_values(bare: kv.DocCache, values: tuple[torch.Tensor, ...]) -> kv.DocCache:
    """Bare keys; ``values`` at layers < len(values); bare values above (``hybrid`` without the full primed cache)."""
    cutoff = len(values)
    if not 1 <= cutoff <= bare.n_layers:
        raise ValueError(f"cutoff {cutoff} must be in [1, {bare.n_layers}] for a {bare.n_layers}-layer model")
    if any(v.shape != b.shape for v, b in zip(values, bare.values)):
        raise ValueError(f"primed values {tuple(values[0].shape)} do not match the bare cache's {tuple(bare.values[0].shape)}")
    return kv.DocCache(bare.keys, tuple(values) + tuple(bare.values[cutoff:]), bare.positions,
                       {**bare.meta, "spliced_layers": list(range(cutoff)), "spliced": "values"})


def primed_values_batch(lm, exs, cutoff: int, *, prefix_embeds: torch.Tensor | None = None, prefix_ids=None,
                        pad_id: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``soft.primed_values`` of every example (each a tuple of ``cutoff`` (1, H, L_b, D) tensors) from
    ONE right-padded Phase A forward of all of them."""
    full, encs = enc_mod.encode_full_batch(lm.model, lm.arch, [list(e.doc_ids) for e in exs],
                                           list(prefix_ids) if prefix_ids else None, prefix_embeds=prefix_embeds,
                                           n_layers=cutoff, pad_id=pad_id)
    dev = full.values[0].device
    out = []
    for b, enc in enumerate(encs):
        keep = torch.as_tensor(enc.keep_index(False), dtype=torch.long, device=dev)  # anchor + row b's document
        out.append(tuple(v[b : b + 1].index_select(2, keep) for v in full.values))
    return out


def hybrid_nll_batch(lm, exs, cutoff: int, bares: list[kv.DocCache], *, prefix_embeds: torch.Tensor | None = None,
                     prefix_ids=None, pad_id: int = 0) -> list[torch.Tensor]:
    """Per-token answer NLL of each example through its hybrid cache, all examples in one Phase A and
    one Phase B forward (differentiable in ``prefix_embeds``); equals ``soft.hybrid_nll`` per example.

    bares: each example's bare cache (``soft.bare_cache``); pad_id: the token id of every pad (Phase A's
    right pads and Phase B's); no number depends on it (tested)."""
    if not exs or len(bares) != len(exs):
        raise ValueError(f"got {len(exs)} examples and {len(bares)} bare caches; need the same number, at least one")
    values = primed_values_batch(lm, exs, cutoff, prefix_embeds=prefix_embeds, prefix_ids=prefix_ids, pad_id=pad_id)
    caches = [hybrid_from_values(b, v) for b, v in zip(bares, values)]
    return scoring.score_with_grad_batch(lm.model, caches, [list(e.prompt_ids) for e in exs],
                                         [list(e.answer_ids) for e in exs], pad_id=pad_id, one_pass_head=True)
