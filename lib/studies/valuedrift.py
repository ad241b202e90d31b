"""exp01's value-vector analysis (the seed's "Cell 15"): how far the truncated-oracle cache's document
values move from the bare cache's.

For each sample, the bare cache A ``[anchor, doc]`` and the truncated-oracle cache D (``[anchor,
query, doc]`` with the query entries dropped and the document re-positioned) have the same length
and the same token at every entry (tested). At a layer, the document's value vectors (every head,
every document entry; the anchor is left out, as in the seed) are flattened and compared: cosine
similarity, L2 distance and L2 relative to the bare values' norm.

Values carry no RoPE, so re-positioning does not touch them: any difference is what attending to the
query during encoding wrote into the document. At layer 0 a value depends only on its own token's
embedding, so A and D agree there up to float rounding (a built-in oracle, tested; the seed compared
entries one position apart and reported cosine 0.07 at layer 0).
"""
from __future__ import annotations

import numpy as np
import torch

from lib.kv import encode as enc_mod


def default_layers(n_layers: int) -> list[int]:
    """The seed's layers: first, middle, last."""
    return sorted({0, n_layers // 2, n_layers - 1})


def _check_layers(layers, n_layers: int) -> list[int]:
    out = [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise ValueError(f"layers {layers!r}: each must be in [0, {n_layers - 1}]")
    return out


@torch.no_grad()
def sample_drift(lm, prepared, layers) -> list[dict]:
    """Rows {sample_id, layer, cosine, l2, rel_l2, n_doc} for one ``priming.Prepared`` sample."""
    layers = _check_layers(layers, lm.arch.n_layers)
    a = enc_mod.encode(lm.model, lm.arch, prepared.doc_ids, condition="A_bare")
    d = enc_mod.encode(lm.model, lm.arch, prepared.doc_ids, prepared.prefix_ids["query"], condition="D_trunc_oracle")
    if a.length != d.length or not torch.equal(a.positions, d.positions):
        raise RuntimeError(f"sample {prepared.sample_id!r}: bare and truncated caches differ in length or positions "
                           f"({a.length} vs {d.length})")
    start = a.meta["n_anchor"]
    rows = []
    for layer in layers:
        va = a.values[layer][:, :, start:, :].reshape(-1).double()
        vd = d.values[layer][:, :, start:, :].reshape(-1).double()
        l2 = float(torch.linalg.vector_norm(vd - va))
        norm = float(torch.linalg.vector_norm(va))
        cos = float(torch.dot(va, vd) / (norm * float(torch.linalg.vector_norm(vd))))
        rows.append({"sample_id": prepared.sample_id, "layer": layer, "cosine": cos, "l2": l2,
                     "rel_l2": l2 / norm if norm else float("nan"), "n_doc": a.length - start})
    return rows


def drift(lm, prepared: list, layers=None) -> list[dict]:
    """``sample_drift`` over samples (``layers`` default: first, middle, last)."""
    layers = default_layers(lm.arch.n_layers) if layers is None else layers
    return [r for p in prepared for r in sample_drift(lm, p, layers)]


def drift_samples(lm, samples, n: int, layers=None) -> list[dict]:
    """``drift`` on the first ``n`` samples (tokenized as ``priming.prepare`` does; 0 = none)."""
    from lib.studies import priming

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    prepared = [priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id) for s in list(samples)[:n]]
    return drift(lm, prepared, layers)


def summarize(rows: list[dict], *, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per layer: mean cosine, L2 and relative L2 over samples, each with a 95% percentile bootstrap CI."""
    if not rows:
        raise ValueError("no value-drift rows to summarize")
    rng = np.random.default_rng(seed)
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        sel = [r for r in rows if r["layer"] == layer]
        row = {"layer": layer, "n": len(sel)}
        idx = rng.integers(0, len(sel), size=(n_boot, len(sel)))
        for key in ("cosine", "l2", "rel_l2"):
            x = np.array([r[key] for r in sel], dtype=float)
            boots = x[idx].mean(1)
            row[key] = float(x.mean())
            row[f"{key}_ci"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
        out.append(row)
    return out
