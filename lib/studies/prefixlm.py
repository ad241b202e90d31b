"""exp11: prefix-LM attention for decoder-only models: Phase A over ``[anchor, prefix, doc]`` with a custom mask.

Modes (``MODES``):
  causal         the model's own mask: token i sees j <= i (reproduces a plain forward exactly)
  bidirectional  the block ``[prefix + doc]`` attends within itself in both directions; the anchor
                 (BOS) still sees only itself, and every block token sees the anchor. So a document
                 token sees every prefix and document token, earlier or later, and nothing else.

Sliding-window layers (Gemma 3, Mistral) additionally keep only pairs closer than the window:
causal ``0 <= i - j < W``; in the bidirectional block ``|i - j| < W`` (the window, made
symmetric). Models whose layers differ get one mask per layer type (transformers accepts a dict
``{layer_type: mask}`` for Gemma 3); a single-type model gets one 4D mask. Masks are additive
floats (0 where allowed, the dtype's minimum elsewhere), which every attention implementation reads.

Phase B is unchanged: ``scoring.score`` on the resulting cache (new tokens see every cached entry
under the model's usual causal/sliding rules). ``encode`` keeps the prefix entries by default (the
prefix-LM design: Phase B reads them); ``keep_prefix=False`` drops them and re-positions the document.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from lib.kv import cache as kv
from lib.kv import encode as enc_mod

MODES = ("causal", "bidirectional")


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def allowed(n_anchor: int, n_block: int, mode: str, window: int | None = None) -> torch.Tensor:
    """(T, T) bool: may query i attend to key j (T = n_anchor + n_block)."""
    if mode not in MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose from {MODES}")
    t = n_anchor + n_block
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    ok = j <= i
    if mode == "bidirectional":
        ok = ok | ((i >= n_anchor) & (j >= n_anchor))
    if window is not None:
        ok = ok & ((i - j).abs() < window)
    return ok


def _layer_kinds(model) -> tuple[list[str], int | None]:
    """The distinct layer types (``full_attention`` / ``sliding_attention``) and the sliding window."""
    cfg = _text_config(model)
    window = getattr(cfg, "sliding_window", None)
    # no layer_types: every layer slides when the config has a window (Mistral), else none does
    default = "sliding_attention" if window is not None else "full_attention"
    types = list(getattr(cfg, "layer_types", None) or [default] * cfg.num_hidden_layers)
    kinds = sorted(set(types))
    unknown = [k for k in kinds if k not in ("full_attention", "sliding_attention")]
    if unknown:
        raise ValueError(f"layer types {unknown} are not supported by the prefix-LM masks")
    return kinds, window


def _additive(ok: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    m = torch.zeros(ok.shape, dtype=dtype, device=device)
    return m.masked_fill(~ok.to(device), torch.finfo(dtype).min)


def masks(model, n_anchor: int, n_block: int, mode: str, dtype: torch.dtype, device=None):
    """The attention mask(s) for ``model``: one (1, 1, T, T) additive tensor, or {layer_type: tensor}."""
    kinds, window = _layer_kinds(model)

    def one(kind):
        w = window if kind == "sliding_attention" else None
        return _additive(allowed(n_anchor, n_block, mode, w), dtype, device)[None, None]

    if len(kinds) == 1:
        return one(kinds[0])
    return {k: one(k) for k in kinds}


def batch_masks(model, n_anchor: int, n_blocks: list[int], width: int, mode: str, dtype: torch.dtype, device=None):
    """``masks`` for a RIGHT-padded batch: (B, 1, width, width) per layer type. Row b's real tokens
    ``[0, n_anchor + n_blocks[b])`` get exactly ``allowed`` (so they never see a pad); its pads attend
    causally (within the window) and are dropped by the caller, so no query row is fully masked."""
    kinds, window = _layer_kinds(model)

    def one(kind):
        w = window if kind == "sliding_attention" else None
        ok = allowed(width, 0, "causal", w)[None].repeat(len(n_blocks), 1, 1)  # (B, W, W): causal everywhere
        for b, nb in enumerate(n_blocks):
            n = n_anchor + nb
            ok[b, :n, :] = False
            ok[b, :n, :n] = allowed(n_anchor, nb, mode, w)
        return _additive(ok, dtype, device)[:, None]

    if len(kinds) == 1:
        return one(kinds[0])
    return {k: one(k) for k in kinds}


def encode(model, arch, doc_ids: list[int], prefix_ids: list[int] | None = None, *, mode: str = "causal",
           keep_prefix: bool = True) -> kv.DocCache:
    """Phase A of ``[anchor] + prefix + doc`` under ``mode``; the cache keeps every entry (or drops the prefix)."""
    enc = enc_mod.build_inputs(arch, list(doc_ids), list(prefix_ids or []))
    n = len(enc.input_ids)
    if n > arch.max_positions:
        raise ValueError(f"input of {n} tokens exceeds the model's {arch.max_positions} positions")
    dev = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    ids = torch.tensor([enc.input_ids], device=dev)
    pos = torch.arange(n, device=dev)[None]
    past = DynamicCache()
    with torch.no_grad():
        enc_mod.forward_for_cache(model, past, lambda: model.base_model(
            input_ids=ids, attention_mask=masks(model, enc.n_anchor, n - enc.n_anchor, mode, dtype, dev),
            position_ids=pos, past_key_values=past, use_cache=True))
    full = kv.from_model_cache(past, pos, {"mode": mode, "n_anchor": enc.n_anchor, "n_prefix": enc.n_prefix, "n_doc": enc.n_doc})
    return enc_mod.shape(full, enc, arch, keep_prefix=keep_prefix)


def encode_batch(model, arch, pairs: list[tuple[list[int], list[int]]], *, mode: str = "causal",
                 keep_prefix: bool = True, pad_id: int = 0) -> list[kv.DocCache]:
    """``encode`` of several ``(doc_ids, prefix_ids)`` pairs in ONE forward (exp11's batched Phase A).

    Rows are RIGHT-padded to the longest ``[anchor] + prefix + doc``: every real token keeps its
    unbatched index and position, and ``batch_masks`` gives the real tokens exactly the unbatched
    mask (pads hidden), so each returned cache equals ``encode`` of its pair up to float rounding
    (tested on tiny and bundled models). Each cache is copied out of the batch (its own storage)."""
    if not pairs:
        raise ValueError("no (doc, prefix) pairs to encode")
    encs = [enc_mod.build_inputs(arch, list(d), list(p or [])) for d, p in pairs]
    if len({e.n_anchor for e in encs}) != 1:
        raise ValueError(f"rows disagree on the anchor length: {sorted({e.n_anchor for e in encs})}")
    width = max(len(e.input_ids) for e in encs)
    if width > arch.max_positions:
        raise ValueError(f"input of {width} tokens exceeds the model's {arch.max_positions} positions")
    dev = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    ids = torch.full((len(encs), width), pad_id, dtype=torch.long, device=dev)
    for b, e in enumerate(encs):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids, device=dev)
    pos = torch.arange(width, device=dev)[None].expand(len(encs), -1)
    n0 = encs[0].n_anchor
    mask = batch_masks(model, n0, [len(e.input_ids) - n0 for e in encs], width, mode, dtype, dev)
    past = DynamicCache()
    with torch.no_grad():
        enc_mod.forward_for_cache(model, past, lambda: model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True))
    full = kv.from_model_cache(past, pos)
    out = []
    for b, e in enumerate(encs):
        row = enc_mod.padded_row(full, b, e)
        row = kv.DocCache(row.keys, row.values, row.positions,
                          {"mode": mode, "n_anchor": e.n_anchor, "n_prefix": e.n_prefix, "n_doc": e.n_doc})
        out.append(enc_mod.shape(row, e, arch, keep_prefix=keep_prefix))
    return out


def hidden_states(model, arch, doc_ids, prefix_ids=None, *, mode: str = "causal") -> torch.Tensor:
    """Last hidden states (T, hidden) of the Phase A input under ``mode`` (for tests and probes)."""
    enc = enc_mod.build_inputs(arch, list(doc_ids), list(prefix_ids or []))
    n = len(enc.input_ids)
    dev = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    with torch.no_grad():
        out = model.base_model(input_ids=torch.tensor([enc.input_ids], device=dev),
                               attention_mask=masks(model, enc.n_anchor, n - enc.n_anchor, mode, dtype, dev),
                               position_ids=torch.arange(n, device=dev)[None], use_cache=False)
    return out.last_hidden_state[0]


# ----------------------------------------------------------------------------- exp11 design
CONDITIONS = {"bare": "bare", "oracle": "oracle", "random": "random_tokens", "surr_doc": "kw10"}


def build_items(lm, samples, conds=tuple(CONDITIONS), *, seed: int = 42, n_distractors: int = 0):
    """``engine.WorkItem`` per (sample, condition) from the registry recipes in ``CONDITIONS``
    (random: Q random tokens; surr_doc: the document's top-10 TF-IDF keywords); ``n_distractors``
    other samples' answers ride along on each item (``lib.kv.margin``)."""
    from dataclasses import replace

    from lib.studies import conditions

    unknown = [c for c in conds if c not in CONDITIONS]
    if unknown or "bare" not in conds:
        raise ValueError(f"conditions {list(conds)}: must include 'bare' and come from {list(CONDITIONS)}")
    regs = conditions.get([CONDITIONS[c] for c in conds])
    items = conditions.build_items(lm, samples, regs, seed=seed, n_distractors=n_distractors)
    back = {CONDITIONS[c]: c for c in conds}
    return [replace(it, condition=back[it.condition]) for it in items]


def score_items(lm, items, modes=MODES, *, keep_prefix: bool = True, batch_size: int = 16,
                phase_a_batch: int = 8) -> list[dict]:
    """Rows ``<condition>__<mode>``: Phase A under each mode (``phase_a_batch`` items of similar length
    per forward, ``encode_batch``; 1: one ``encode`` per item, the reference path), Phase B batched.
    An item's distractor answers are scored on the same cache after the same prompt: the row gets
    ``distractor_nlls``, ``margin``, ``gold_rank``, ``top1`` (``lib.kv.margin.row_fields``, as the engine's rows)."""
    from lib.kv import margin, scoring
    from lib.kv.noise import noise_atol

    atol = noise_atol(getattr(lm, "dtype", None) or next(lm.model.parameters()).dtype)
    if not isinstance(phase_a_batch, int) or phase_a_batch < 1:
        raise ValueError(f"phase_a_batch must be an int >= 1, got {phase_a_batch!r}")
    meta = [(it, mode) for it in items for mode in modes]
    caches: list = [None] * len(meta)
    for mode in modes:
        rows = sorted((i for i, (_, m) in enumerate(meta) if m == mode),
                      key=lambda i: len(meta[i][0].prefix_ids) + len(meta[i][0].doc_ids))  # little padding per forward
        for s in range(0, len(rows), phase_a_batch):
            chunk = rows[s:s + phase_a_batch]
            if phase_a_batch == 1:
                it = meta[chunk[0]][0]
                got = [encode(lm.model, lm.arch, list(it.doc_ids), list(it.prefix_ids), mode=mode, keep_prefix=keep_prefix)]
            else:
                got = encode_batch(lm.model, lm.arch, [(list(meta[i][0].doc_ids), list(meta[i][0].prefix_ids)) for i in chunk],
                                   mode=mode, keep_prefix=keep_prefix)
            for i, c in zip(chunk, got):
                caches[i] = c
    jobs = [(k, list(it.prompt_ids), list(a)) for k, (it, _) in enumerate(meta)  # the gold answer first per cache
            for a in (it.answer_ids, *it.distractor_ids)]
    nlls = []
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        nlls += scoring.score(lm.model, [caches[c] for c, _, _ in chunk], [p for _, p, _ in chunk], [a for _, _, a in chunk],
                              batch_size=batch_size)
    rows, k = [], 0
    for (it, mode), c in zip(meta, caches):
        t, dn = nlls[k], [float(x.mean()) for x in nlls[k + 1:k + 1 + len(it.distractor_ids)]]
        k += 1 + len(it.distractor_ids)
        extra = margin.row_fields(float(t.mean()), dn, atol)
        rows.append({"sample_id": it.sample_id, "condition": f"{it.condition}__{mode}", "mode": mode,
                     "n_prefix_tokens": len(it.prefix_ids), "n_doc_tokens": len(it.doc_ids), "cache_len": c.length,
                     "n_answer_tokens": len(it.answer_ids), **it.row, "token_nlls": [round(float(x), 6) for x in t],
                     "nll": float(t.mean()), **extra})
    return rows


def run(lm, items, store, modes=MODES, *, keep_prefix: bool = True, wave: int = 8, batch_size: int = 16,
        phase_a_batch: int = 8, progress: bool = True) -> list[dict]:
    """Resumable: score the samples not yet complete in ``store``, ``wave`` at a time."""
    from lib.lab.runs import run_waves

    by: dict[str, list] = {}
    for it in items:
        by.setdefault(it.sample_id, []).append(it)
    names = sorted({f"{it.condition}__{m}" for it in items for m in modes})
    return run_waves(store, list(by), names, lambda ids: score_items(lm, [it for i in ids for it in by[i]], modes,
                                                                      keep_prefix=keep_prefix, batch_size=batch_size,
                                                                      phase_a_batch=phase_a_batch),
                     wave=wave, progress=progress)


def discrimination(summary: dict, rows: list[dict], ids: list[str], names: list[str], **kw) -> dict:
    """exp11's margins: every NLL comparison ``analyse`` made (vs bare per mode, bidirectional vs causal)
    again on the margin, with the gold-rank change (``lib.report.discrimination``); ``{}`` when the rows
    carry no distractors. ``kw``: n_boot, seed, atol, primary_test."""
    from lib.report.discrimination import discrimination_summary

    nll_rows = [r for rows_ in summary["vs_bare"].values() for r in rows_] + summary.get("bidirectional_vs_causal", [])
    return discrimination_summary(rows, ids, names, pairs=[(r["ref"], r["cond"]) for r in nll_rows], nll_comparisons=nll_rows, **kw)


def analyse(nll: dict, conds, modes=MODES, *, n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Per mode: d vs that mode's bare; bidirectional vs causal per condition; structural fraction per mode."""
    from lib.report import analysis, stats

    out = {"vs_bare": {}, "structural_fraction": {}}
    for m in modes:
        out["vs_bare"][m] = stats.compare_conditions(nll, f"bare__{m}", [f"{c}__{m}" for c in conds if c != "bare"],
                                                     n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test) if len(conds) > 1 else []
        if "random" in conds and "oracle" in conds:
            out["structural_fraction"][m] = analysis.structural_fraction(nll, ref=f"bare__{m}", structural=f"random__{m}",
                                                                         full=f"oracle__{m}")
    if set(modes) >= {"causal", "bidirectional"}:
        out["bidirectional_vs_causal"] = stats.compare_conditions(
            nll, None, pairs=[(f"{c}__causal", f"{c}__bidirectional") for c in conds], n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    return out
