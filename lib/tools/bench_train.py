"""exp07 training throughput: the reference path against the fast path, in one process on the same data.

    python -m lib.tools.bench --design exp07train --model gemma-3-270m --n 8

Reference: every micro-step runs the bare forward and the full soft-primed forward (all layers),
then splices (``soft.train(fast=False, bare_cache_gb=0)``). Fast: the primed forward stops after
layer ``cutoff - 1`` and bare caches are computed once and reused across epochs
(``soft.train()`` defaults). Both train the same prefix from the same seed on the same examples;
the agreement is the largest relative difference of the per-step losses and the largest absolute
difference of the final prefixes. Useful FLOPs per micro-step: the primed forward through the
cutoff layers and Phase B (each counted 3x: forward + backward to activations and inputs) plus the
bare forward once per example (forward only, no gradient). The cutoff keeps the seed's ratio
(16 of Gemma 3 4B's 34 layers) unless ``--cutoff`` is given.
"""
from __future__ import annotations

import gc
import time

import torch

SEED_CUTOFF_RATIO = 16 / 34
PREFIX_LEN = 7  # the seed's static_fact token count


def _examples(lm, n: int, seed: int):
    from lib.data import load_samples
    from lib.studies import soft

    data = load_samples("synthetic", n, seed=seed)
    return soft.examples(lm, data.samples, PREFIX_LEN)


def useful_flops(lm, exs, cutoff: int, epochs: int) -> float:
    from lib.tools.flops import forward_flops

    anchor = 0 if lm.arch.bos_id is None else 1
    frac = cutoff / lm.arch.n_layers  # decoder work of the first `cutoff` layers (no LM head)
    total = 0.0
    for e in exs:
        n_doc = anchor + len(e.doc_ids)
        primed = forward_flops(lm, n_doc + PREFIX_LEN, 0, 0) * frac
        phase_b = forward_flops(lm, len(e.prompt_ids) + len(e.answer_ids), n_doc, len(e.answer_ids))
        total += epochs * 3 * (primed + phase_b) + forward_flops(lm, n_doc, 0, 0)
    return total


def bench_train(lm, n: int = 8, epochs: int = 2, cutoff: int | None = None, repeats: int = 2, seed: int = 42,
                exs=None) -> dict:
    """``exs``: training examples to use instead of ``n`` synthetic ones (tests)."""
    from lib.studies import soft
    from lib.tools.flops import matmul_peak

    cutoff = cutoff or max(2, round(lm.arch.n_layers * SEED_CUTOFF_RATIO))
    exs = exs if exs is not None else _examples(lm, n, seed)
    cfg = soft.TrainConfig(prefix_len=PREFIX_LEN, cutoff=cutoff, lr=0.1, warmup_steps=2, grad_accum=4, epochs=epochs,
                           checkpoint_every=10 ** 6, seed=seed)
    device = next(lm.model.parameters()).device
    peak = matmul_peak(device, next(lm.model.parameters()).dtype)
    paths = {"reference": dict(fast=False, bare_cache_gb=0), "fast": dict(fast=True, bare_cache_gb=2.0)}
    times, out = {k: [] for k in paths}, {}
    for r in range(repeats):
        for which in (("reference", "fast") if r % 2 == 0 else ("fast", "reference")):
            gc.collect()
            t = time.perf_counter()
            out[which] = soft.train(lm, exs, cfg, **paths[which])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[which].append(time.perf_counter() - t)
    ref, fast = out["reference"], out["fast"]
    loss_rel = max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12) for a, b in zip(ref.history, fast.history))
    prefix_diff = float((ref.prefix - fast.prefix).abs().max())
    steps = epochs * len(exs)
    t_ref, t_fast = min(times["reference"]), min(times["fast"])
    useful = useful_flops(lm, exs, cutoff, epochs)
    return {
        "design": "exp07train", "model": lm.name, "dtype": str(next(lm.model.parameters()).dtype),
        "device": str(device), "threads": torch.get_num_threads(), "n_samples": len(exs), "epochs": epochs,
        "cutoff": cutoff, "n_layers": lm.arch.n_layers, "prefix_len": PREFIX_LEN, "micro_steps": steps,
        "repeats": repeats, "times_s": times,
        "steps_per_s": {"reference": steps / t_ref, "fast": steps / t_fast}, "speedup": t_ref / t_fast,
        "max_rel_loss_diff": loss_rel, "max_abs_prefix_diff": prefix_diff, "agreement_limit_rel": 1e-5,
        "agreement_ok": loss_rel <= 1e-5, "matmul_peak_flops": peak, "useful_flops": useful,
        "fast_useful_flops_per_s": useful / t_fast, "fast_useful_fraction_of_peak": useful / t_fast / peak,
        "reference_useful_fraction_of_peak": useful / t_ref / peak,
    }


def report(res: dict) -> str:
    return "\n".join([
        f"[exp07train] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['n_samples']} "
        f"examples x {res['epochs']} epochs = {res['micro_steps']} micro-steps, cutoff {res['cutoff']} of {res['n_layers']} layers",
        f"  micro-steps/s: reference {res['steps_per_s']['reference']:.2f}, fast {res['steps_per_s']['fast']:.2f}, "
        f"ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  agreement: max relative loss difference {res['max_rel_loss_diff']:.1e} "
        f"({'OK' if res['agreement_ok'] else 'FAIL'}, limit {res['agreement_limit_rel']:g}); max |prefix diff| "
        f"{res['max_abs_prefix_diff']:.1e}",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; fast path useful "
        f"{res['fast_useful_flops_per_s'] / 1e9:.1f} GFLOP/s = {res['fast_useful_fraction_of_peak']:.0%} of peak "
        f"(reference {res['reference_useful_fraction_of_peak']:.0%})",
    ])
