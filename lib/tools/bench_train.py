"""exp07 training throughput: the reference path, the fast path and the batched fast path, in one
process on the same data.

    python -m lib.tools.bench --design exp07train --model gemma-3-270m --n 8

Reference: every micro-step runs the bare forward and the full soft-primed forward (all layers),
then splices (``soft.train(fast=False, bare_cache_gb=0)``). Fast: the primed forward stops after
layer ``cutoff - 1`` and bare caches are computed once and reused across epochs
(``soft.train(examples_per_forward=1)``). Batched (``batched_<E>``): the fast path with
up to E examples of an optimizer step in one Phase A and one Phase B forward
(``soft.train(examples_per_forward=E)``, ``--examples-per-forward``, default 2 and 4). All train the
same prefix from the same seed on the same examples, paths interleaved in every repeat.

Agreement: the fast path's per-step losses against the reference's (limit 1e-5 relative; they are
equal). A batched path changes float rounding (other matmul shapes), and Adam steps amplify rounding
along a trajectory; so each batched path is checked AT THE SAME PREFIX (the initial one, on the first
optimizer step's examples: per-token NLL and gradient against one example per forward) in float64, the
model's norms included (``lib.tools.float64``; limit 1e-9 relative), where rounding cannot hide a batching
error; the float32 differences (rounding, ~1e-4 in the gradient) are printed beside it. The trajectory
difference is printed beside a control: today's path from an initial
prefix scaled by 1 + 1e-6 (through ``init_std``), i.e. how far a rounding-sized change moves the
losses over the same steps.

Useful FLOPs per micro-step: the primed forward through the cutoff layers and Phase B (each counted
2x: the forward, and the backward to activations and inputs; the weights are frozen, so no weight
gradient is computed -- counting 3x, as before 2026-12-01, overstated the fraction of peak by 1.5x) plus the bare forward once per example (forward
only, no gradient); padding is not useful work. Peak memory: RSS above the level at the start of
each timed run, sampled in this process, max over the repeats (the CLI calls ``live_rss`` first so
that freed blocks leave the RSS). The cutoff keeps the seed's ratio (16 of Gemma 3 4B's 34 layers)
unless ``--cutoff`` is given.
"""
from __future__ import annotations

import gc
import time
from dataclasses import replace

import torch

SEED_CUTOFF_RATIO = 16 / 34
LIMIT = 1e-5  # relative agreement, fast vs reference (float32; the same operations)
LIMIT64 = 1e-9  # relative agreement at the same prefix in float64, batched vs one per forward
CONTROL_EPS = 1e-6  # the control run's initial prefix is scaled by 1 + CONTROL_EPS
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
        total += epochs * 2 * (primed + phase_b) + forward_flops(lm, n_doc, 0, 0)
    return total


def live_rss() -> None:
    """Make RSS track live memory: blocks of 64 KiB and more are mmapped, so freeing them returns them to the OS."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except OSError:  # not glibc: RSS may keep freed memory, peaks after the first run read low
        pass


def same_prefix_check(lm, exs, cfg, e: int, float64: bool = False) -> dict:
    """The batched path (``e`` examples per forward) against one example per forward at the SAME prefix
    (the initial one) on the first optimizer step's examples: ``nll_rel_diff`` (max |per-token NLL
    difference| / max NLL) and ``grad_rel_diff`` (max |gradient difference| / max |gradient|).
    ``float64``: the model (norms included, ``lib.tools.float64``) and the prefix in float64."""
    import contextlib

    from lib.tools.float64 import in_float64

    with in_float64([lm.model]) if float64 else contextlib.nullcontext():
        return _same_prefix_check(lm, exs, cfg, e, torch.float64 if float64 else None)


def _same_prefix_check(lm, exs, cfg, e: int, dtype) -> dict:
    from lib.studies import soft
    from lib.studies.soft import batch

    for p in lm.model.parameters():
        p.requires_grad_(False)
    group = exs[: cfg.grad_accum]
    bares = [soft.bare_cache(lm, x) for x in group]
    prefix = soft.init_prefix(lm, cfg).to(dtype or torch.float32).requires_grad_(True)
    one = [soft.hybrid_nll(lm, x, cfg.cutoff, prefix_embeds=prefix, bare=b) for x, b in zip(group, bares)]
    sum(t.mean() for t in one).backward()
    g_one, prefix.grad = prefix.grad.clone(), None
    many = [t for s in range(0, len(group), e)
            for t in batch.hybrid_nll_batch(lm, group[s : s + e], cfg.cutoff, bares[s : s + e], prefix_embeds=prefix)]
    sum(t.mean() for t in many).backward()
    top = max(float(t.detach().abs().max()) for t in one)
    return {"nll_rel_diff": max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(one, many)) / top,
            "grad_rel_diff": float((prefix.grad - g_one).abs().max() / g_one.abs().max())}


def bench_train(lm, n: int = 8, epochs: int = 2, cutoff: int | None = None, repeats: int = 2, seed: int = 42,
                exs=None, examples_per_forward: tuple[int, ...] = (2, 4)) -> dict:
    """``exs``: training examples to use instead of ``n`` synthetic ones (tests)."""
    from lib.lab.peakmem import PeakMemory, _sync
    from lib.studies import soft
    from lib.tools.flops import matmul_peak

    cutoff = cutoff or max(2, round(lm.arch.n_layers * SEED_CUTOFF_RATIO))
    exs = exs if exs is not None else _examples(lm, n, seed)
    cfg = soft.TrainConfig(prefix_len=PREFIX_LEN, cutoff=cutoff, lr=0.1, warmup_steps=2, grad_accum=4, epochs=epochs,
                           checkpoint_every=10 ** 6, seed=seed)
    if any(e < 2 for e in examples_per_forward):
        raise ValueError(f"examples_per_forward {examples_per_forward}: each must be >= 2 (1 is the fast path)")
    device = next(lm.model.parameters()).device
    peak = matmul_peak(device, next(lm.model.parameters()).dtype)
    paths = {"reference": dict(fast=False, bare_cache_gb=0), "fast": dict(fast=True, bare_cache_gb=2.0, examples_per_forward=1),
             **{f"batched_{e}": dict(fast=True, bare_cache_gb=2.0, examples_per_forward=e) for e in examples_per_forward}}
    times, mem, out = {k: [] for k in paths}, {k: 0 for k in paths}, {}
    for r in range(repeats):
        for which in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            gc.collect()
            with PeakMemory(device) as pm:
                t = time.perf_counter()
                out[which] = soft.train(lm, exs, cfg, **paths[which])
                _sync(device)
                times[which].append(time.perf_counter() - t)
            mem[which] = max(mem[which], pm.bytes)
    out["control"] = soft.train(lm, exs, replace(cfg, init_std=cfg.init_std * (1 + CONTROL_EPS)), examples_per_forward=1)
    checks = {f"batched_{e}": same_prefix_check(lm, exs, cfg, e, float64=True) for e in examples_per_forward}
    checks32 = {f"batched_{e}": same_prefix_check(lm, exs, cfg, e) for e in examples_per_forward}
    ref = out["reference"]
    loss_rel = {k: max(abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12) for a, b in zip(ref.history, o.history))
                for k, o in out.items() if k != "reference"}
    prefix_diff = {k: float((ref.prefix - o.prefix).abs().max()) for k, o in out.items() if k != "reference"}
    steps = epochs * len(exs)
    best = {k: min(v) for k, v in times.items()}
    useful = useful_flops(lm, exs, cutoff, epochs)
    batched = min((k for k in paths if k.startswith("batched_")), key=best.get, default=None)
    res = {
        "design": "exp07train", "model": lm.name, "dtype": str(next(lm.model.parameters()).dtype),
        "device": str(device), "threads": torch.get_num_threads(), "n_samples": len(exs), "epochs": epochs,
        "cutoff": cutoff, "n_layers": lm.arch.n_layers, "prefix_len": PREFIX_LEN, "micro_steps": steps,
        "grad_accum": cfg.grad_accum, "doc_tokens": [len(e.doc_ids) for e in exs], "repeats": repeats, "times_s": times,
        "steps_per_s": {k: steps / t for k, t in best.items()},
        "speedup_vs_reference": {k: best["reference"] / t for k, t in best.items() if k != "reference"},
        "speedup": best["reference"] / best["fast"],
        "max_rel_loss_diff_by_path": loss_rel, "max_abs_prefix_diff_by_path": prefix_diff,
        "max_rel_loss_diff": loss_rel["fast"], "max_abs_prefix_diff": prefix_diff["fast"], "control_init_scale": 1 + CONTROL_EPS,
        "same_prefix_check": checks, "same_prefix_check_dtype": "float64", "same_prefix_check_float32": checks32,
        "agreement_limit_rel": LIMIT, "same_prefix_limit_rel": LIMIT64,
        "agreement_ok": loss_rel["fast"] <= LIMIT and all(max(c.values()) <= LIMIT64 for c in checks.values()),
        "matmul_peak_flops": peak,
        "useful_flops": useful, "useful_fraction_of_peak": {k: useful / t / peak for k, t in best.items()},
        "fast_useful_flops_per_s": useful / best["fast"], "fast_useful_fraction_of_peak": useful / best["fast"] / peak,
        "reference_useful_fraction_of_peak": useful / best["reference"] / peak, "peak_memory_bytes": mem,
        "best_batched": batched,
    }
    if batched:
        res.update({"batched_speedup": best["reference"] / best[batched], "batched_vs_fast": best["fast"] / best[batched],
                    "batched_useful_fraction_of_peak": useful / best[batched] / peak})
    return res


def report(res: dict) -> str:
    gb, steps = 2 ** 30, res["steps_per_s"]
    lines = [
        f"[exp07train] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['n_samples']} "
        f"examples x {res['epochs']} epochs = {res['micro_steps']} micro-steps (optimizer step every {res['grad_accum']}), "
        f"cutoff {res['cutoff']} of {res['n_layers']} layers; best of {res['repeats']} interleaved repeats",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s",
    ]
    for k, v in steps.items():
        vs = "" if k == "reference" else (f", {res['speedup_vs_reference'][k]:.2f}x reference, loss diff "
                                          f"{res['max_rel_loss_diff_by_path'][k]:.1e} rel, |prefix diff| "
                                          f"{res['max_abs_prefix_diff_by_path'][k]:.1e}")
        lines.append(f"  {k:>11s}: {v:.2f} micro-steps/s, {res['useful_fraction_of_peak'][k]:.0%} of peak, peak memory "
                     f"{res['peak_memory_bytes'][k] / gb:.2f} GiB{vs}")
    if res.get("best_batched"):
        lines.append(f"  ratio: {res['best_batched']} {res['batched_speedup']:.2f}x the reference, "
                     f"{res['batched_vs_fast']:.2f}x the fast path; fast {res['speedup']:.2f}x the reference")
    f32 = res.get("same_prefix_check_float32", {})
    for k, c in res["same_prefix_check"].items():
        extra = (f"; float32: NLL {f32[k]['nll_rel_diff']:.1e}, gradient {f32[k]['grad_rel_diff']:.1e} (rounding)"
                 if k in f32 else "")
        lines.append(f"  {k} at the same prefix{' in float64' if res.get('same_prefix_check_dtype') == 'float64' else ''}: "
                     f"per-token NLL {c['nll_rel_diff']:.1e} rel, gradient {c['grad_rel_diff']:.1e} rel{extra}")
    lines.append(f"  control (today's path, initial prefix x {res['control_init_scale']:.6f}): loss diff "
                 f"{res['max_rel_loss_diff_by_path']['control']:.1e} rel, |prefix diff| "
                 f"{res['max_abs_prefix_diff_by_path']['control']:.1e}")
    worst = max([max(c.values()) for c in res["same_prefix_check"].values()] or [0.0])
    lines.append(f"  agreement: fast vs reference {res['max_rel_loss_diff']:.1e} rel (limit {res['agreement_limit_rel']:g}), "
                 f"batched at the same prefix {worst:.1e} rel (limit {res.get('same_prefix_limit_rel', res['agreement_limit_rel']):g}): "
                 f"{'OK' if res['agreement_ok'] else 'FAIL'}")
    return "\n".join(lines)
