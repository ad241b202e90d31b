"""Pure operations on document KV caches.

Layout: every key/value tensor is ``[batch, kv_heads, seq, head_dim]`` (B, H, S, D), one pair per
decoder layer. A ``DocCache`` also records the absolute RoPE position of every kept entry
(``positions``, (B, S)), so that a later query knows where it starts.

Rules every function here follows:
- inputs are never mutated; results share tensors with their inputs where nothing changed (no
  deep copies);
- caches keep EVERY entry on every layer, sliding-window layers included: the attention mask
  applies the window, so absolute indices always point at the right tokens;
- ``to_dynamic`` wraps the tensors in a FRESH ``DynamicCache`` for each forward pass: transformers
  appends to the cache object (rebinding its tensors with ``torch.cat``), so a wrapper may be
  used once and thrown away, while the DocCache itself never changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lib.kv.rope import LayerRope, rotate_keys


@dataclass(frozen=True)
class DocCache:
    """A document cache: per-layer keys/values (B, H, S, D) and entry positions (B, S)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    positions: torch.Tensor  # (B, S) long: RoPE position each kept key carries
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.keys) != len(self.values) or not self.keys:
            raise ValueError(f"need one key and one value tensor per layer, got {len(self.keys)} keys, {len(self.values)} values")
        shape = self.keys[0].shape[:3]
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k.dim() != 4 or k.shape[:3] != shape or v.shape[:3] != shape:
                raise ValueError(
                    f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not match layer 0's (B, H, S) = {tuple(shape)}"
                )
        if tuple(self.positions.shape) != (shape[0], shape[2]):
            raise ValueError(f"positions shape {tuple(self.positions.shape)} != (batch, seq) = {(shape[0], shape[2])}")

    @property
    def n_layers(self) -> int:
        return len(self.keys)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        """Number of cached entries (the same on every layer)."""
        return self.keys[0].shape[2]

    @property
    def next_position(self) -> torch.Tensor:
        """(B,) RoPE position of the first token that will follow the cache."""
        return self.positions[:, -1] + 1

    @property
    def is_contiguous(self) -> bool:
        """True when entry i sits at position i (the state Phase B expects)."""
        ar = torch.arange(self.length, device=self.positions.device)
        return bool((self.positions == ar).all())

    def item(self, b: int) -> "DocCache":
        """Batch item ``b`` as a batch-1 cache (views, no copy)."""
        sl = slice(b, b + 1)
        return DocCache(
            tuple(k[sl] for k in self.keys), tuple(v[sl] for v in self.values), self.positions[sl], dict(self.meta)
        )


def from_model_cache(cache, positions: torch.Tensor, meta: dict | None = None) -> DocCache:
    """Wrap a transformers cache (after a forward pass) as a DocCache; shares its tensors."""
    layers = cache.layers
    keys = tuple(layer.keys for layer in layers)
    values = tuple(layer.values for layer in layers)
    for i, k in enumerate(keys):
        if k.shape[2] != positions.shape[-1]:
            raise ValueError(
                f"layer {i} holds {k.shape[2]} entries but {positions.shape[-1]} positions were given: a sliding-window "
                f"layer trimmed its cache? build Phase A with past_key_values=DynamicCache() (no config)"
            )
    return DocCache(keys, values, positions, dict(meta or {}))


def to_dynamic(dc: DocCache) -> DynamicCache:
    """A fresh single-use ``DynamicCache`` around the DocCache's tensors (no copy)."""
    cache = DynamicCache()
    for k, v in zip(dc.keys, dc.values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v  # bind, do not torch.cat into an empty tensor (a copy)
        cache.layers.append(layer)
    return cache


def select(dc: DocCache, index: torch.Tensor | list[int]) -> DocCache:
    """Keep entries ``index`` (1-D, same for every batch item), positions unchanged."""
    idx = torch.as_tensor(index, dtype=torch.long, device=dc.positions.device)
    if idx.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(idx.shape)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= dc.length):
        raise ValueError(f"index out of range [0, {dc.length}): min {int(idx.min())}, max {int(idx.max())}")
    kidx = idx.to(dc.keys[0].device)
    keys = tuple(k.index_select(2, kidx) for k in dc.keys)
    values = tuple(v.index_select(2, kidx) for v in dc.values)
    return DocCache(keys, values, dc.positions.index_select(1, idx), {**dc.meta, "selected": int(idx.numel())})


def reposition(dc: DocCache, new_positions: torch.Tensor, ropes: tuple[LayerRope, ...]) -> DocCache:
    """Rotate every key from its current position to ``new_positions`` ((S,) or (B, S)).

    Values are position-free and are shared unchanged.
    """
    if len(ropes) != dc.n_layers:
        raise ValueError(f"got rotary params for {len(ropes)} layers, cache has {dc.n_layers}")
    newp = torch.as_tensor(new_positions, dtype=torch.long, device=dc.positions.device)
    newp = newp.expand_as(dc.positions) if newp.dim() == 1 else newp
    if newp.shape != dc.positions.shape:
        raise ValueError(f"new positions shape {tuple(newp.shape)} != cache positions {tuple(dc.positions.shape)}")
    delta = newp - dc.positions
    if not bool(delta.any()):
        return replace(dc, positions=newp)
    keys = tuple(rotate_keys(k, delta, r) for k, r in zip(dc.keys, ropes))
    return DocCache(keys, dc.values, newp, dict(dc.meta))


def compact(dc: DocCache, keep: torch.Tensor | list[int], ropes: tuple[LayerRope, ...]) -> DocCache:
    """Keep entries ``keep`` and re-position them to 0..len(keep)-1 (drop a prefix, close the gap)."""
    kept = select(dc, keep)
    return reposition(kept, torch.arange(kept.length, device=dc.positions.device), ropes)


def splice(
    base: DocCache, donor: DocCache, layers, *, keys: bool = False, values: bool = True, entries=None
) -> DocCache:
    """Hybrid cache: ``base`` everywhere, except that at ``layers`` the keys and/or values come from ``donor``.

    Both caches must hold the same entries at the same positions (e.g. a bare and a primed cache of
    the same document after ``compact``). ``entries``: only these cache entries (indices along the
    sequence) come from ``donor`` at ``layers``; None = all of them (the spliced tensors are then
    ``donor``'s own, not copies).
    """
    if not (keys or values):
        raise ValueError("splice needs keys=True and/or values=True")
    if base.n_layers != donor.n_layers or base.keys[0].shape != donor.keys[0].shape:
        raise ValueError(
            f"caches differ in shape: base {base.n_layers} layers {tuple(base.keys[0].shape)}, "
            f"donor {donor.n_layers} layers {tuple(donor.keys[0].shape)}"
        )
    if not torch.equal(base.positions, donor.positions):
        raise ValueError("base and donor entries sit at different positions; compact both first")
    chosen = sorted(set(int(i) for i in layers))
    bad = [i for i in chosen if not 0 <= i < base.n_layers]
    if bad:
        raise ValueError(f"layer indices {bad} out of range [0, {base.n_layers})")
    cs = set(chosen)
    pick = lambda b, d: d  # noqa: E731
    meta = {**base.meta, "spliced_layers": chosen, "spliced": ("keys+values" if keys and values else "keys" if keys else "values")}
    if entries is not None:
        idx = sorted(set(int(j) for j in entries))
        bad = [j for j in idx if not 0 <= j < base.length]
        if bad:
            raise ValueError(f"entry indices {bad} out of range [0, {base.length})")
        mask = torch.zeros(base.length, dtype=torch.bool, device=base.positions.device)
        mask[idx] = True
        mask = mask.view(1, 1, -1, 1)
        pick = lambda b, d: torch.where(mask.to(b.device), d, b)  # noqa: E731
        meta["spliced_entries"] = idx
    ks = tuple(pick(base.keys[i], donor.keys[i]) if (keys and i in cs) else base.keys[i] for i in range(base.n_layers))
    vs = tuple(pick(base.values[i], donor.values[i]) if (values and i in cs) else base.values[i] for i in range(base.n_layers))
    return DocCache(ks, vs, base.positions, meta)


def stack_left_padded(caches: list[DocCache]) -> tuple[DocCache, torch.Tensor]:
    """Batch single-item caches by left-padding with zeros.

    Returns the batched cache (S = longest) and ``cache_mask`` (B, S) with 1 on real entries.
    Padded slots get position -1. The positions of the real entries are unchanged. When every row is
    the SAME cache object, its tensors are expanded along the batch (stride 0, no copy); a forward
    pass materialises them once when it appends the new tokens.
    """
    if not caches:
        raise ValueError("no caches to stack")
    for c in caches:
        if c.batch != 1:
            raise ValueError(f"stack_left_padded takes batch-1 caches, got batch {c.batch}")
    n_layers = caches[0].n_layers
    lmax = max(c.length for c in caches)
    dev = caches[0].positions.device
    mask = torch.zeros(len(caches), lmax, dtype=torch.long, device=dev)
    pos = torch.full((len(caches), lmax), -1, dtype=torch.long, device=dev)
    for b, c in enumerate(caches):
        mask[b, lmax - c.length:] = 1
        pos[b, lmax - c.length:] = c.positions[0]
    if all(c is caches[0] for c in caches):  # one cache under every row: broadcast it, no copy along the batch
        keys = tuple(k.expand(len(caches), -1, -1, -1) for k in caches[0].keys)
        values = tuple(v.expand(len(caches), -1, -1, -1) for v in caches[0].values)
    elif all(c.length == lmax for c in caches):
        keys = tuple(torch.cat([c.keys[i] for c in caches]) for i in range(n_layers))
        values = tuple(torch.cat([c.values[i] for c in caches]) for i in range(n_layers))
    else:
        keys = tuple(_left_pad_cat([c.keys[i] for c in caches], lmax) for i in range(n_layers))
        values = tuple(_left_pad_cat([c.values[i] for c in caches], lmax) for i in range(n_layers))
    return DocCache(keys, values, pos, {"stacked": len(caches)}), mask


def _left_pad_cat(ts: list[torch.Tensor], lmax: int) -> torch.Tensor:
    t0 = ts[0]
    out = t0.new_zeros((len(ts), t0.shape[1], lmax, t0.shape[3]))
    for b, t in enumerate(ts):
        out[b, :, lmax - t.shape[2]:] = t[0]
    return out
