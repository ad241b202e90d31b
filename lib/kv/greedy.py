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
every entry; sliding-window layers are masked by index distance, which left padding leaves unchanged)
whose decode layers (``_GrowingLayer``) hold their entries in a buffer with room for every step: a step
writes its token's keys and values in place, where ``DynamicLayer`` concatenates (copies the whole
cache of every layer at every step: 28% of decode time measured on Gemma 3 270M at ~70 rows). Rows
leave with ``batch_select_indices``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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


# model types whose causal-LM logits are exactly ``lm_head(hidden)`` (then final soft-capping, where the
# config sets it): their greedy token is taken from the head by ``_Head``; any other
# model's logits come from its own forward
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text"})
HEAD_CHUNK = 2048  # vocabulary rows per chunk (a half-precision head); at 16-128 rows 1.1-1.4x faster than the full head here


def _plain_head(model) -> bool:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return model.config.model_type in PLAIN_HEAD_TYPES and getattr(cfg, "model_type", "") in PLAIN_HEAD_TYPES


class _Head:
    """The greedy token of hidden states ``[rows, H]`` under a plain head, without ``[rows, V]`` float32 logits.

    float32 head without soft-capping (``screen``): a bfloat16 copy of the weight scores every token
    (3x faster than float32 on this CPU, which has AVX512-BF16), and only the tokens that bound says could
    be the float32 maximum are scored again in float32. With bf16 rounding u = 2^-8 of h and w, float32
    accumulation over K = hidden terms (gamma = K 2^-24) and the bf16 output rounding,

        |z_bf16 - z_fp32| <= e = (2u + u^2 + 2 gamma) ||h|| ||w_v|| + u |z_bf16|   (Cauchy-Schwarz on sum |h_i w_i|)

    taken twice over; a token whose ``z_bf16 + e`` is below some token's ``z_bf16 - e`` cannot be the float32
    argmax. Measured on Gemma 3 270M's decode states: median 1 candidate per row, at most 83. Otherwise (a
    bf16/fp16 head, soft-capping): the head in ``HEAD_CHUNK``-token chunks in the model's dtype. Ties go
    to the lowest token id, as ``argmax`` does; a float32 near-tie within the logits' own rounding can be
    decided either way (the candidates' float32 scores are dot products, not the full matmul's)."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.cap = getattr(cfg, "final_logit_softcapping", None)
        self.w, self.bias = head.weight.detach(), getattr(head, "bias", None)
        self.screen = self.w.dtype == torch.float32 and not self.cap
        if self.screen:
            self.wb = self.w.to(torch.bfloat16)
            self.wn = self.w.norm(dim=1)  # [V]
            self.wmax = float(self.wn.max())
            u, k = 2.0 ** -8, self.w.shape[1]
            self.rel = 2 * (2 * u + u * u + 2 * k * 2.0 ** -24)
            self.u2 = 2 * u

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._screened(hidden) if self.screen else self._chunked(hidden)

    def _screened(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        n, hn = h.shape[0], h.norm(dim=1)  # [rows]
        zb = torch.nn.functional.linear(h.to(torch.bfloat16), self.wb)  # [rows, V] bf16: the only full-size tensor
        top_v, top_i = zb.max(-1)  # the bf16 maximum of each row
        top_v = top_v.float()
        if self.bias is not None:  # bias in float32: its exact value enters every comparison below
            b = self.bias.float()
            top_v = top_v + b[top_i]
        # a lower bound of max_u(z_bf16 - e) (the top token's own), and the largest e any token of the row can have
        bmax = 0.0 if self.bias is None else float(self.bias.abs().max())
        lo = top_v - (self.rel * hn * self.wn[top_i] + self.u2 * (top_v.abs() + bmax))
        widest = self.rel * hn * self.wmax + self.u2 * zb.abs().amax(-1).float()
        # stage 1, uniform bound: z_bf16 + e >= lo needs z_bf16 (bias excluded) >= lo - widest - max|bias|
        rows, toks = (zb >= (lo - widest - 2 * bmax)[:, None]).nonzero(as_tuple=True)  # row-major, ids ascending
        del zb
        z = (h[rows] * self.w[toks]).sum(-1)  # float32 scores of the candidates
        if self.bias is not None:
            z += b[toks]
        top = torch.full((n,), float("-inf"), device=h.device).scatter_reduce(0, rows, z, "amax")
        first = torch.where(z == top[rows], toks, torch.full_like(toks, self.w.shape[0]))
        return torch.full((n,), self.w.shape[0], dtype=toks.dtype, device=h.device).scatter_reduce(0, rows, first, "amin")

    def _chunked(self, hidden: torch.Tensor) -> torch.Tensor:
        best_v = best_i = None
        for c0 in range(0, self.w.shape[0], HEAD_CHUNK):
            b = None if self.bias is None else self.bias[c0 : c0 + HEAD_CHUNK]
            z = torch.nn.functional.linear(hidden, self.w[c0 : c0 + HEAD_CHUNK], b)
            if self.cap:
                z = torch.tanh(z / self.cap) * self.cap
            v, i = z.float().max(-1)
            if best_v is None:
                best_v, best_i = v, i
            else:
                up = v > best_v  # strictly: a tie keeps the earlier (lower) token id
                best_v, best_i = torch.where(up, v, best_v), torch.where(up, i + c0, best_i)
        return best_i


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values ``[rows, H, n, D]`` are views of a buffer with room for
    ``room`` more entries: ``update`` writes into the buffer instead of concatenating (past the room it
    grows by one copy); ``batch_select_indices`` keeps the room."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        b, h, n, _ = keys.shape
        self._k = keys.new_empty(b, h, n + room, keys.shape[-1])
        self._v = values.new_empty(b, h, n + room, values.shape[-1])
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self._n, self.dtype, self.device, self.is_initialized = n, keys.dtype, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

    def update(self, key_states, value_states, *args, **kwargs):
        t = key_states.shape[-2]
        if self._n + t > self._k.shape[-2]:
            grow = lambda buf: torch.cat([buf, buf.new_empty(*buf.shape[:2], max(t, buf.shape[2]), buf.shape[3])], 2)  # noqa: E731
            self._k, self._v = grow(self._k), grow(self._v)
        self._k[:, :, self._n : self._n + t] = key_states
        self._v[:, :, self._n : self._n + t] = value_states
        self._n += t
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._views()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("GrowingLayer: a greedy decode cache is never cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("GrowingLayer: a greedy decode cache is never repeated")


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
    head = _Head(model) if _plain_head(model) else None
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        with torch.no_grad():
            cache, mask, last, tok = _prefill(model, head, [prompts[i] for i in idx], pad_token_id,
                                                 min(prefill_batch, batch_size), device, room=max_new_tokens)
            new = _decode(model, head, cache, mask, last, tok, max_new_tokens, eos, stop)
        for r, i in enumerate(idx):
            out[i] = new[r]
        if on_batch is not None:
            on_batch(idx, new)
    return out


def _prefill(model, head, prompts: list[list[int]], pad_token_id: int, sub: int, device, room: int):
    """Prefill ``prompts`` (longest first) in forwards of ``sub`` rows, each left-padded to its longest;
    join the caches into one left-padded batch with ``room`` free entries per layer (``GrowingLayer``).
    Returns the cache, its ``[rows, W]`` mask, each row's last position ``[rows, 1]`` and each row's next
    token ``[rows]``."""
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
        parts.append((past, mask, pos[:, -1:], _last(model, head, ids, mask, pos, past)))
    pad = lambda t, w: torch.nn.functional.pad(t, (0, 0, width - w, 0))  # noqa: E731 - [.., w, D] -> [.., width, D]
    cache = DynamicCache()
    cache.layers = [GrowingLayer(torch.cat([pad(p.layers[layer].keys, m.shape[1]) for p, m, _, _ in parts]),
                                 torch.cat([pad(p.layers[layer].values, m.shape[1]) for p, m, _, _ in parts]), room)
                    for layer in range(len(parts[0][0].layers))]
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for _, m, _, _ in parts])
    return cache, mask, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])


def _last(model, head, ids, mask, pos, past) -> torch.Tensor:
    """One forward; the greedy next token of each row (its last position) ``[rows]``; ``head``: a ``_Head``
    for a plain-head model (the decoder's last hidden state through it), else None (the model's logits)."""
    if head is not None:
        hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                                  use_cache=True).last_hidden_state[:, -1, :]
        return head(hidden)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float().argmax(-1)


def _decode(model, head, cache, mask, last, tok, max_new_tokens: int, eos: set[int], stop) -> list[list[int]]:
    """Greedy steps from the prefilled batch (``tok``: each row's first new token) until every row is
    done; the new tokens of each row."""
    device = mask.device
    new: list[list[int]] = [[] for _ in range(mask.shape[0])]
    alive = list(range(mask.shape[0]))  # rows still going, in cache row order
    for step in range(max_new_tokens):
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
        tok = _last(model, head, tok[:, None], mask, last, cache)
    return new
