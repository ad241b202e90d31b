"""exp12 training throughput (the two-model LatentWire): one example per model forward (the reference,
``wire.losses(micro_batch=1)``) against the whole step's batch in one forward per model (today's path), in one
process on the same examples.

    python -m lib.tools.bench --design exp12train --models smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct --n 16

Both paths run ``wire.train`` from the same seed on the same examples (the real run's layout: byte encoder,
M=16, passages of at most 150 words of SQuAD v1.1 dev; the synthetic generator when the registry copy is
absent), interleaved in every repeat. Agreement AT THE SAME WIRE (the initial one, the first step's examples),
with the LMs and the wire in float64: the loss and the gradient of every wire parameter, one example per forward
against the batch (limit 1e-9 relative: the norm of the gradient difference over the norm of the gradient). In
float32 the two differ by rounding that the adapters' RMS calibration amplifies (measured ~6e-4 on SmolLM2; 0 in
float64), printed beside it with the float32 trajectories (Adam turns rounding-sized gradient differences into
full-size steps).

Useful FLOPs per example and model: the forward of ``[BOS][M latent vectors][question][answer[:-1]]`` (real
tokens only), logits at the answer positions, counted 2x (the forward, and the backward to activations and
inputs: the LMs are frozen, so no weight gradient). The wire's own encoder and adapters (under 2% of the work
here) are not counted, so the fraction of peak is a lower bound.
"""
from __future__ import annotations

import torch

LIMIT = 1e-9  # relative, float64
M = 16
MAX_PASSAGE_WORDS = 150  # the real run's cap (sweeps/real.toml)


def _items(lms, n: int, seed: int):
    from lib.data import load_samples
    from lib.studies.latent.wire_model import make_wire_items

    try:  # the registry copy of SQuAD v1.1 dev (same fallback as the gen and Phase A benches)
        samples, dataset = load_samples("squad_v1.1", n, seed=seed, max_passage_words=MAX_PASSAGE_WORDS).samples, "squad_v1.1"
    except (FileNotFoundError, ValueError):
        samples, dataset = load_samples("synthetic", n, seed=seed).samples, "synthetic"
    return [make_wire_items(lm.tokenizer, samples, "passage") for lm in lms], dataset


def config(batch_size: int, seed: int = 0):
    from lib.studies.latent.wire_model import WireConfig

    # the real run's settings (sweeps/real.toml exp12), one epoch
    return WireConfig(m=M, d_z=256, n_heads=4, n_layers=1, adapter_hidden=1024, encoder="bytes", latent_input="passage",
                      first_weight=2.0, kd_weight=0.0, lr=1e-3, warmup_steps=10, batch_size=batch_size, epochs=1,
                      seed=seed, checkpoint_every=10 ** 6)


def useful_flops(lms, items_by_model) -> float:
    from lib.tools.flops import forward_flops

    total = 0.0
    for lm, items in zip(lms, items_by_model):
        head = 0 if lm.arch.bos_id is None else 1
        for it in items:
            total += 2 * forward_flops(lm, head + M + len(it.anchor_ids) + len(it.answer_ids) - 1, 0, len(it.answer_ids))
    return total


def _grads(lms, items_by_model, cfg, micro: int, float64: bool = False):
    """The loss and every wire parameter's gradient at the initial wire, the first step's examples; ``float64``:
    the LMs and the wire in float64 (``lib.tools.float64.in_float64``: the models' norms too)."""
    import contextlib

    from lib.studies.latent import wire as W
    from lib.tools.float64 import in_float64

    with in_float64([lm.model for lm in lms]) if float64 else contextlib.nullcontext():
        w = W.build(lms, cfg).to(torch.float64 if float64 else torch.float32)
        out = W.losses(lms, w, [its[: cfg.batch_size] for its in items_by_model], backward=True, micro_batch=micro)
        return float(out["loss"]), {n: p.grad.detach().double().clone() for n, p in w.named_parameters()}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in b) ** 0.5
    return num / max(sum(float(b[k].pow(2).sum()) for k in b) ** 0.5, 1e-300)


def bench_wire(lms, n: int = 16, batch_size: int = 8, repeats: int = 2, seed: int = 0) -> dict:
    from lib.studies.latent import wire as W
    from lib.tools.flops import matmul_peak, time_interleaved

    items_by_model, dataset = _items(lms, n, seed)
    cfg = config(batch_size, seed)
    device, dtype = lms[0].device, lms[0].model.dtype
    peak = matmul_peak(device, dtype)
    for lm in lms:
        for p in lm.model.parameters():
            p.requires_grad_(False)
    # agreement at the same wire, one example per forward vs the batch: in float64, where rounding cannot hide
    # a batching error (the float32 difference is reported beside it; the adapters' RMS calibration makes the
    # wire's gradient a difference of large terms, so float32 rounding alone reaches ~1e-3 relative)
    l_ref, g_ref = _grads(lms, items_by_model, cfg, 1, float64=True)
    l_bat, g_bat = _grads(lms, items_by_model, cfg, 0, float64=True)
    grad_rel, loss_rel = _rel(g_bat, g_ref), abs(l_bat - l_ref) / max(abs(l_ref), 1e-300)
    l32_ref, g32_ref = _grads(lms, items_by_model, cfg, 1)
    l32_bat, g32_bat = _grads(lms, items_by_model, cfg, 0)
    grad_rel32 = _rel(g32_bat, g32_ref)
    paths = {"per_example": 1, "batched": 0}  # micro_batch
    times, runs = time_interleaved(paths, lambda micro: W.train(lms, items_by_model, cfg, micro_batch=micro), repeats, device)
    traj = max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-30)
               for a, b in zip(runs["per_example"].history, runs["batched"].history, strict=True))
    best = {k: min(v) for k, v in times.items()}
    flops = useful_flops(lms, items_by_model)  # one epoch: every example once per model
    agree = loss_rel <= LIMIT and grad_rel <= LIMIT
    return {"design": "exp12train", "model": ",".join(lm.name for lm in lms), "dtype": str(dtype), "device": str(device),
            "threads": torch.get_num_threads(), "dataset": dataset, "n_examples": n, "batch_size": batch_size,
            "steps": len(runs["batched"].history), "m": M, "repeats": repeats, "times_s": times,
            "examples_per_s": {k: n / v for k, v in best.items()}, "speedup": best["per_example"] / best["batched"],
            "loss_rel_diff": loss_rel, "grad_rel_diff": grad_rel, "grad_rel_diff_float32": grad_rel32,
            "trajectory_max_rel_loss_diff": traj, "agreement_dtype": "float64",
            "agreement_limit_rel": LIMIT, "agreement_ok": agree, "nll_agreement_ok": agree, "matmul_peak_flops": peak,
            "useful_flops": flops, "batched_fraction_of_peak": flops / best["batched"] / peak,
            "per_example_fraction_of_peak": flops / best["per_example"] / peak}


def report(res: dict) -> str:
    return "\n".join([
        f"[exp12train] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['n_examples']} "
        f"{res['dataset']} examples, batches of {res['batch_size']} ({res['steps']} optimizer steps), M={res['m']}",
        f"  examples/s: one example per model forward {res['examples_per_s']['per_example']:.2f}, the batch in one forward "
        f"{res['examples_per_s']['batched']:.2f}, ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  agreement at the same wire in float64: loss {res['loss_rel_diff']:.1e}, gradient {res['grad_rel_diff']:.1e} relative "
        f"({'OK' if res['agreement_ok'] else 'FAIL'}, limit {res['agreement_limit_rel']:g}); float32 gradient "
        f"{res['grad_rel_diff_float32']:.1e}; float32 trajectory: max relative loss difference "
        f"{res['trajectory_max_rel_loss_diff']:.1e}",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; batched useful "
        f"{res['useful_flops'] / min(res['times_s']['batched']) / 1e9:.1f} GFLOP/s = {res['batched_fraction_of_peak']:.0%} of peak "
        f"(one per forward {res['per_example_fraction_of_peak']:.0%})"])
