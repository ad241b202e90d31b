"""exp08 optimization throughput: one target's restarts per forward (a loop over targets, the seed's
shape of work) against every target and restart of a part in one batch, in one process on the same
targets.

    python -m lib.tools.bench --design exp08 --model smollm2-135m-instruct --n 16

Both paths call ``reachability.optimize`` with the same seeds, so each prompt's trajectory is the
same up to float reassociation (Adam is elementwise and the batched loss is a sum of per-prompt
MSEs); the agreement is the largest relative difference of the final MSEs. Useful FLOPs per prompt
and step: the forward of ``seq_len`` tokens through every layer, counted 2x (the forward, and the
backward to activations and inputs; the model is frozen, so no weight gradients), no LM head (the reader stops at the residual).
"""
from __future__ import annotations

import torch


def bench_reach(lm, n: int = 16, restarts: int = 5, steps: int = 20, seq_len: int = 20, repeats: int = 2, seed: int = 0) -> dict:
    from lib.studies import reachability as R
    from lib.tools.flops import forward_flops, matmul_peak, time_interleaved

    reader = R.ResidualReader(lm.model)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, lm.model.get_input_embeddings().weight.shape[0], (n, seq_len), generator=g)
    targets = reader.of_ids(ids)  # real residuals of random windows: reachable, a fair workload
    device, dtype = reader.device, reader.dtype
    peak = matmul_peak(device, dtype)
    paths = {"per_target": restarts, "batched": n * restarts}  # chunk: prompts per forward
    times, fits = time_interleaved(paths, lambda chunk: R.optimize(reader, targets, restarts=restarts, steps=steps, lr=0.01,
                                                                   seed=seed, chunk=chunk), repeats, device)
    a, b = fits["per_target"].final_mse, fits["batched"].final_mse
    rel = float(max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)))
    prompt_steps = n * restarts * steps
    useful = 2 * forward_flops(lm, seq_len, 0, 0) * prompt_steps
    best = {k: min(v) for k, v in times.items()}
    return {"design": "exp08", "model": lm.name, "dtype": str(dtype), "device": str(device), "threads": torch.get_num_threads(),
            "n_targets": n, "restarts": restarts, "steps": steps, "seq_len": seq_len, "repeats": repeats, "times_s": times,
            "prompt_steps_per_s": {k: prompt_steps / v for k, v in best.items()}, "speedup": best["per_target"] / best["batched"],
            "max_rel_final_mse_diff": rel, "agreement_limit_rel": 1e-4, "agreement_ok": rel <= 1e-4,
            "nll_agreement_ok": rel <= 1e-4, "matmul_peak_flops": peak, "useful_flops": useful,
            "batched_fraction_of_peak": useful / best["batched"] / peak, "per_target_fraction_of_peak": useful / best["per_target"] / peak}


def report(res: dict) -> str:
    return "\n".join([
        f"[exp08] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['n_targets']} targets x "
        f"{res['restarts']} restarts x {res['steps']} steps, {res['seq_len']}-token soft prompts",
        f"  prompt-steps/s: one target's restarts per forward {res['prompt_steps_per_s']['per_target']:.1f}, the whole part in one "
        f"batch {res['prompt_steps_per_s']['batched']:.1f}, ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  agreement: max relative final-MSE difference {res['max_rel_final_mse_diff']:.1e} "
        f"({'OK' if res['agreement_ok'] else 'FAIL'}, limit {res['agreement_limit_rel']:g})",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; batched useful "
        f"{res['useful_flops'] / min(res['times_s']['batched']) / 1e9:.1f} GFLOP/s = {res['batched_fraction_of_peak']:.0%} of peak "
        f"(per target {res['per_target_fraction_of_peak']:.0%})"])
