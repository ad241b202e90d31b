"""Where each model parks its attention, and how much priming moves each position's values (exp06's reading).

For each sample, one bare pass over ``[anchor, document, query prompt]`` with eager attention gives, per layer
(mean over heads and prompt positions), the attention mass the query prompt puts on the anchor, on the first
document token, on an average other document token, and on the prompt itself. The document is then encoded bare
and primed (exp06's prefix, dropped, re-positioned: ``lib.kv.encode.encode``), and per layer the relative change
of the values ``|v_primed - v_bare| / |v_bare|`` (mean over heads) is taken at the first document token and over the
rest. A model whose query leans on the first document token (an attention sink there, not on the anchor) is one
where exp06's ``values_first_token`` can matter on its own.

    python -m lib.tools.sinks --model qwen2.5-coder-0.5b-instruct --n 32
        -> results/diagnostics/sinks_<model>.json (rendered by a RUN-BLOCK; lib/report/blockkinds.py)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

FIELDS = ("anchor", "first_doc", "other_doc_mean", "prompt")


def attention_mass(model, ids: list[int], n_anchor: int, n_doc: int) -> np.ndarray:
    """(n_layers, 4): attention of the prompt positions (after anchor + document) on the anchor, the first
    document token, an average other document token, and the prompt (mean over heads and prompt positions;
    the four masses anchor + first + (n_doc - 1) * other + prompt sum to 1 per layer). Eager attention."""
    if n_anchor not in (0, 1) or n_doc < 2:
        raise ValueError(f"need n_anchor in (0, 1) and at least 2 document tokens, got n_anchor={n_anchor}, n_doc={n_doc}")
    q0 = n_anchor + n_doc
    if len(ids) <= q0:
        raise ValueError(f"ids ({len(ids)}) hold no prompt after anchor + document ({q0})")
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([ids], device=dev), output_attentions=True, use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError("the model returned no attention weights; load it with attn_implementation='eager'")
    rows = []
    for a in out.attentions:  # (1, H, S, S)
        w = a[0, :, q0:, :].float().mean(dim=(0, 1))
        anchor = float(w[:n_anchor].sum())
        rows.append([anchor, float(w[n_anchor]), float(w[n_anchor + 1:q0].sum()) / (n_doc - 1), float(w[q0:].sum())])
    return np.array(rows)


def value_change(bare, primed, n_anchor: int) -> np.ndarray:
    """(n_layers, 2): mean over heads of |v_primed - v_bare| / |v_bare| at the first document entry and averaged
    over the other document entries (two caches of the same entries at the same positions)."""
    out = []
    for vb, vp in zip(bare.values, primed.values):
        vb, vp = vb[0].float(), vp[0].float()  # (H, S, D)
        r = (vp - vb).norm(dim=-1) / vb.norm(dim=-1).clamp_min(1e-12)
        out.append([float(r[:, n_anchor].mean()), float(r[:, n_anchor + 1:].mean())])
    return np.array(out)


def profile(lm, samples, prefix_ids: list[int]) -> dict:
    """Per-layer means over ``samples`` of ``attention_mass`` and ``value_change`` (see the module docstring)."""
    from lib.kv.encode import build_inputs, encode
    from lib.studies import priming

    att, val = [], []
    for s in samples:
        p = priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id)
        enc = build_inputs(lm.arch, p.doc_ids)  # [anchor] + document, the anchor policy's own placement
        att.append(attention_mass(lm.model, enc.input_ids + list(p.prompt_ids["query"]), enc.n_anchor, enc.n_doc))
        with torch.no_grad():
            bare, primed = encode(lm.model, lm.arch, p.doc_ids), encode(lm.model, lm.arch, p.doc_ids, prefix_ids)
        val.append(value_change(bare, primed, enc.n_anchor))
    a, v = np.mean(att, axis=0), np.mean(val, axis=0)
    layers = [{"layer": i, **{f: float(a[i, j]) for j, f in enumerate(FIELDS)},
               "value_change_first_doc": float(v[i, 0]), "value_change_other_doc": float(v[i, 1])} for i in range(len(a))]
    first_over_other = a[:, 1] / np.maximum(a[:, 2], 1e-12)
    return {"n_samples": len(samples), "layers": layers,
            "mean_first_doc_over_other": float(first_over_other.mean()),
            "layers_first_doc_above_anchor": int((a[:, 1] > a[:, 0]).sum()),
            "mean_value_change_first_doc": float(v[:, 0].mean()), "mean_value_change_other_doc": float(v[:, 1].mean())}


def main(argv=None) -> int:
    from lib.data import load_samples
    from lib.kv.models import load_model
    from lib.data.jsonio import write_json_atomic
    from lib.lab import records
    from lib.studies import contamination

    ap = argparse.ArgumentParser(description="attention-sink and value-change profile of a model (exp06's reading)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dataset", default="squad_v1.1")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--prefix", default="static_fact", help="exp06's PREFIX (a lib.data.surrogates.STATIC key or a text)")
    ap.add_argument("--anchor", default="", help="position-0 anchor token instead of the model's BOS policy (e.g. <|im_start|>)")
    ap.add_argument("--out", default=None, help="JSON path (default results/diagnostics/sinks_<model>[_anchor-<id>].json)")
    a = ap.parse_args(argv)
    from lib.lab import codestate

    codestate.mark_start()  # the code state when the profile began, beside the one at its end
    lm = load_model(a.model, attn_implementation="eager", anchor=a.anchor or None)
    data = load_samples(a.dataset, a.n, seed=a.seed)
    prefix = contamination.prefix_ids(lm.tokenizer, a.prefix)
    summary = profile(lm, data.samples, prefix)
    tag = f"_anchor-{lm.arch.bos_id}" if a.anchor else ""
    out = Path(a.out or Path(__file__).resolve().parents[2] / "results" / "diagnostics" / f"sinks_{a.model}{tag}.json")
    result = {"design": "sinks", "config": {"MODEL": a.model, "dtype": str(lm.dtype), "DATASET": a.dataset, "N_SAMPLES": a.n,
                                            "SEED": a.seed, "PREFIX": a.prefix, "bos_source": lm.arch.bos_source,
                                            "anchor_id": lm.arch.bos_id,
                                            "anchor": None if lm.arch.bos_id is None else lm.tokenizer.decode([lm.arch.bos_id])},
              "data": data.info(), "provenance": records.provenance(seeds={"seed": a.seed}), "summary": summary,
              "command": f"python -m lib.tools.sinks --model {a.model} --dataset {a.dataset} --n {a.n} --seed {a.seed}"
                         + (f" --anchor '{a.anchor}'" if a.anchor else "")}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"{a.model}: first doc token / other doc token attention x{summary['mean_first_doc_over_other']:.1f}, "
          f"above the anchor in {summary['layers_first_doc_above_anchor']} of {len(summary['layers'])} layers; "
          f"value change first {summary['mean_value_change_first_doc']:.2f} vs other {summary['mean_value_change_other_doc']:.2f} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
