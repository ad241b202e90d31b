"""Phase A: matched tokenization and conditioned document caches.

Token layout of a conditioned document (one item)::

    [anchor] + prefix_ids + doc_ids          anchor = ArchInfo.bos_id (absent when bos_source == "none")

Matched tokenization: the document is tokenized ONCE, alone, and every condition of a sample
(bare included) uses those same ``doc_ids``; a prefix is tokenized on its own, separator
included (``prefix + sep``), and the ids are concatenated. So every condition scores identical
document and answer tokens whatever the prefix. ``boundary_drift`` reports whether tokenizing
the joined string would have produced different ids (a BPE merge across the boundary); it is
recorded, never silently "fixed".

``encode`` runs the forward pass with ``past_key_values=DynamicCache()`` (no config: every layer
keeps every entry, sliding-window layers included), keeps the anchor and the document entries
(or everything with ``keep_prefix=True``) and re-positions the kept keys to 0..L-1 with each
layer's own rotary parameters. The result is a ``DocCache`` whose next position equals its
length, which is what Phase B requires.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lib.kv import cache as kv


@dataclass(frozen=True)
class Encoded:
    """Input ids of one conditioned document and where its segments sit."""

    input_ids: list[int]
    n_anchor: int  # 0 or 1
    n_prefix: int
    n_doc: int
    flags: dict = field(default_factory=dict)

    @property
    def doc_start(self) -> int:
        return self.n_anchor + self.n_prefix

    def keep_index(self, keep_prefix: bool) -> list[int]:
        """Entries to keep: anchor + document (+ prefix when ``keep_prefix``)."""
        if keep_prefix:
            return list(range(len(self.input_ids)))
        return list(range(self.n_anchor)) + list(range(self.doc_start, len(self.input_ids)))


def tokenize(tokenizer, text: str) -> list[int]:
    """Ids of ``text`` with no special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def boundary_drift(tokenizer, prefix_text: str, doc: str, prefix_ids: list[int], doc_ids: list[int]) -> bool:
    """True when tokenizing ``prefix_text + doc`` as one string differs from the concatenation."""
    return tokenize(tokenizer, prefix_text + doc) != list(prefix_ids) + list(doc_ids)


def build_inputs(arch, doc_ids: list[int], prefix_ids: list[int] | None = None, n_soft: int = 0) -> Encoded:
    """``[anchor] + prefix + doc``; ``n_soft`` reserves prefix slots for soft (embedding) prefixes."""
    if not doc_ids:
        raise ValueError("empty document: doc_ids has no tokens")
    prefix_ids = list(prefix_ids or [])
    if prefix_ids and n_soft:
        raise ValueError("give prefix_ids or n_soft, not both")
    anchor = [] if arch.bos_id is None else [int(arch.bos_id)]
    n_prefix = len(prefix_ids) or n_soft
    ids = anchor + prefix_ids + ([-1] * n_soft) + list(doc_ids)  # -1: a soft-prefix slot (fed as embeddings)
    return Encoded(ids, len(anchor), n_prefix, len(doc_ids), {"bos_source": arch.bos_source})


def fit_document(doc_ids: list[int], arch, reserve: int) -> tuple[list[int], bool]:
    """Cut ``doc_ids`` so that anchor + doc + ``reserve`` tokens fit the model's context.

    Returns (ids, truncated). The caller records ``truncated`` with the sample.
    """
    room = arch.max_positions - (0 if arch.bos_id is None else 1) - reserve
    if room <= 0:
        raise ValueError(f"reserve={reserve} leaves no room in the model's context of {arch.max_positions} positions")
    return (list(doc_ids[:room]), True) if len(doc_ids) > room else (list(doc_ids), False)


def _embed(model, ids: torch.Tensor) -> torch.Tensor:
    # get_input_embeddings() includes any embedding scale (Gemma 3 multiplies by sqrt(hidden))
    return model.get_input_embeddings()(ids)


class _StopForward(Exception):
    """Raised right after the last cache write a forward needs (``forward_for_cache``)."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder's layer list (``base_model.layers``, or ``base_model.language_model.layers`` for
    multimodal wrappers such as Gemma 3's)."""
    base = model.base_model
    for obj in (base, getattr(base, "language_model", None)):
        layers = getattr(obj, "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"{type(model).__name__}: no decoder layer list at base_model.layers or base_model.language_model.layers")


def encode_full(
    model,
    arch,
    doc_ids: list[int],
    prefix_ids: list[int] | None = None,
    *,
    prefix_embeds: torch.Tensor | None = None,
    condition: str = "",
    n_layers: int | None = None,
) -> tuple[kv.DocCache, Encoded]:
    """Phase A forward of ``[anchor] + prefix + doc``; the cache keeps every entry at its position.

    n_layers: run only the first ``n_layers`` decoder layers (the forward stops once the last of them
      has written its cache entries); the returned cache holds those layers only, with exactly the
      tensors a full forward computes there. For callers that use early-layer entries only (exp07's
      values below a cutoff).

    prefix_embeds: (P, hidden) soft prefix in the input-embedding space. The forward tracks
      gradients only when ``prefix_embeds.requires_grad`` (and grad mode is on); otherwise it runs
      under no_grad.
    Several conditions can be derived from one full cache with ``shape`` (e.g. a full-oracle cache
    and a truncated-oracle cache come from the same ``[query + doc]`` forward).
    """
    if prefix_ids and prefix_embeds is not None:
        raise ValueError("give prefix_ids or prefix_embeds, not both")
    n_soft = 0 if prefix_embeds is None else int(prefix_embeds.shape[0])
    enc = build_inputs(arch, doc_ids, prefix_ids, n_soft=n_soft)
    n = len(enc.input_ids)
    if n > arch.max_positions:
        raise ValueError(f"input of {n} tokens exceeds the model's {arch.max_positions} positions; use fit_document first")
    dev = model.get_input_embeddings().weight.device
    positions = torch.arange(n, device=dev)[None]
    mask = torch.ones(1, n, dtype=torch.long, device=dev)
    past = DynamicCache()
    track = prefix_embeds is not None and prefix_embeds.requires_grad and torch.is_grad_enabled()
    _run_layers(model, n_layers, past, lambda: _forward(model, [enc], prefix_embeds, dev, mask, positions, past, track, 0))
    meta = {
        "condition": condition,
        "n_anchor": enc.n_anchor,
        "n_prefix": enc.n_prefix,
        "n_doc": enc.n_doc,
        "soft_prefix": prefix_embeds is not None,
    }
    return kv.from_model_cache(past, positions, meta), enc


def _run_layers(model, n_layers: int | None, past, forward) -> None:
    """Run ``forward()`` and stop it once decoder layer ``n_layers - 1`` (every layer when None) has
    written its cache entries (``forward_for_cache``)."""
    forward_for_cache(model, past, forward, n_layers)


def forward_for_cache(model, past, forward, n_layers: int | None = None) -> None:
    """Run ``forward()`` (a forward of ``model`` writing into the ``DynamicCache`` ``past``) and stop it
    right after decoder layer ``n_layers - 1`` (the last layer when None) has written its keys and
    values: the rest of that layer (attention output, MLP), the layers above and the final norm feed
    nothing a cache holds, so they are never computed. The cached tensors are those a full forward
    writes (tested). ``past.update`` is wrapped for the call and restored after it."""
    layers = decoder_layers(model)
    if n_layers is None:
        n_layers = len(layers)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= len(layers):
        raise ValueError(f"n_layers must be an int in [1, {len(layers)}], got {n_layers!r}")
    last, real = n_layers - 1, past.update

    def update(key_states, value_states, layer_idx, *args, **kwargs):
        out = real(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == last:
            raise _StopForward
        return out

    past.update = update
    try:
        forward()
    except _StopForward:
        pass
    finally:
        del past.update  # the class's method again
    if len(past.layers) != n_layers:
        raise RuntimeError(f"expected {n_layers} cached layers after the early stop, got {len(past.layers)}")


def _forward(model, encs: list[Encoded], prefix_embeds, dev, mask, positions, past, track: bool, pad_id: int) -> None:
    """One forward of the rows ``encs`` (same anchor and prefix lengths), right-padded with ``pad_id``."""
    width = mask.shape[1]
    ids = torch.full((len(encs), width), pad_id, dtype=torch.long, device=dev)  # (B, N)
    for b, e in enumerate(encs):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids, device=dev)
    with torch.set_grad_enabled(track):
        if prefix_embeds is None:
            model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
        else:
            a, d = encs[0].n_anchor, encs[0].doc_start  # the soft slots [a, d) hold -1: never embedded
            head, tail = _embed(model, ids[:, :a]), _embed(model, ids[:, d:])
            soft = prefix_embeds.to(dtype=tail.dtype, device=dev)[None].expand(len(encs), -1, -1)
            embeds = torch.cat([head, soft, tail], dim=1)  # (B, N, hidden)
            model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)


def encode_full_batch(model, arch, docs: list[list[int]], prefix_ids: list[int] | None = None, *,
                      prefix_embeds: torch.Tensor | None = None, n_layers: int | None = None,
                      pad_id: int = 0) -> tuple[kv.DocCache, list[Encoded]]:
    """``encode_full`` of several documents in ONE forward, every row with the same prefix (ids or soft).

    Rows are RIGHT-padded with ``pad_id`` to the longest ``[anchor] + prefix + doc``: every real token
    keeps its unbatched index and position (0..n_b-1), the causal mask puts every pad of a row after
    all of its real tokens, and the 2D mask hides pad keys; so real entries equal the unbatched ones
    whatever the pads hold (sliding windows count index distances, which padding at the end leaves
    unchanged). Returns the (B, H, Nmax, D) cache (positions ``arange(Nmax)`` per row) and one
    ``Encoded`` per row: row b's real entries are ``[0, len(encs[b].input_ids))``, the rest are pads
    for the caller to drop (``Encoded.keep_index``). ``n_layers`` and gradient tracking as in ``encode_full``.
    """
    if not docs:
        raise ValueError("no documents to encode")
    if prefix_ids and prefix_embeds is not None:
        raise ValueError("give prefix_ids or prefix_embeds, not both")
    n_soft = 0 if prefix_embeds is None else int(prefix_embeds.shape[0])
    encs = [build_inputs(arch, d, prefix_ids, n_soft=n_soft) for d in docs]
    width = max(len(e.input_ids) for e in encs)
    if width > arch.max_positions:
        raise ValueError(f"input of {width} tokens exceeds the model's {arch.max_positions} positions; use fit_document first")
    dev = model.get_input_embeddings().weight.device
    positions = torch.arange(width, device=dev)[None].expand(len(encs), -1)  # (B, N)
    mask = torch.zeros(len(encs), width, dtype=torch.long, device=dev)
    for b, e in enumerate(encs):
        mask[b, : len(e.input_ids)] = 1
    past = DynamicCache()
    track = prefix_embeds is not None and prefix_embeds.requires_grad and torch.is_grad_enabled()
    _run_layers(model, n_layers, past, lambda: _forward(model, encs, prefix_embeds, dev, mask, positions, past, track, pad_id))
    meta = {"n_anchor": encs[0].n_anchor, "n_prefix": encs[0].n_prefix, "n_doc": [e.n_doc for e in encs],
            "soft_prefix": prefix_embeds is not None, "right_padded": True}
    return kv.from_model_cache(past, positions, meta), encs


def padded_row(full: kv.DocCache, b: int, enc: Encoded) -> kv.DocCache:
    """Row ``b`` of a RIGHT-padded batch cache (``encode_full_batch`` or alike) with its real entries only,
    ``[0, len(enc.input_ids))``, copied out of the batch (``index_select``: the row does not keep the batch alive)."""
    return kv.select(full.item(b), list(range(len(enc.input_ids))))


def shape(full: kv.DocCache, enc: Encoded, arch, *, keep_prefix: bool = False, compact: bool = True) -> kv.DocCache:
    """Derive a condition's cache from a full Phase A cache.

    keep_prefix: keep the prefix entries (visible to Phase B), e.g. a full-oracle cache.
    compact: re-position the kept entries to 0..L-1 (close the gap the prefix left); with
      compact=False the document keeps its original positions (Phase B then needs
      ``allow_position_gap=True``).
    """
    keep = enc.keep_index(keep_prefix)
    if len(keep) == full.length:
        out = full
    elif compact:
        out = kv.compact(full, keep, arch.rope)
    else:
        out = kv.select(full, keep)
    return kv.DocCache(out.keys, out.values, out.positions, {**full.meta, "prefix_kept": keep_prefix})


def encode(
    model,
    arch,
    doc_ids: list[int],
    prefix_ids: list[int] | None = None,
    *,
    prefix_embeds: torch.Tensor | None = None,
    keep_prefix: bool = False,
    compact: bool = True,
    condition: str = "",
) -> kv.DocCache:
    """Phase A for one item: ``encode_full`` then ``shape`` (see both)."""
    full, enc = encode_full(model, arch, doc_ids, prefix_ids, prefix_embeds=prefix_embeds, condition=condition)
    return shape(full, enc, arch, keep_prefix=keep_prefix, compact=compact)
