"""Benchmark: the engine against a faithful reference of the seeds' loop, in ONE process.

    python -m lib.tools.bench                      # both designs on the bundled SmolLM2 (CPU: about 4 min)
    python -m lib.tools.bench --design exp01 --model gemma-3-270m --n 8
    python -m lib.tools.bench --design many8 --model gemma-3-270m --n 12 --memory-n 120   # lib/tools/bench_memory.py
    python -m lib.tools.bench --design exp07train --model gemma-3-270m --n 8             # lib/tools/bench_train.py
    python -m lib.tools.bench --design gen --model gemma-3-270m --n 16                   # lib/tools/bench_gen.py
    python -m lib.tools.bench --design exp08 --n 16                                       # lib/tools/bench_reach.py
    python -m lib.tools.bench --design exp11 --n 16                                       # lib/tools/bench_phase_a.py
    python -m lib.tools.bench --design exp07eval --model gemma-3-270m --n 16             # lib/tools/bench_phase_a.py
    python -m lib.tools.bench --design exp06 --n 4                                        # lib/tools/bench_phase_a.py
    python -m lib.tools.bench --design exp12train --n 16      # lib/tools/bench_wire.py (SmolLM2 + Qwen2.5-0.5B)
    python -m lib.tools.bench --design exp01 --load-in-4bit --no-memory       # CUDA: bitsandbytes nf4

The reference loop does what the seed notebooks did, with this repo's correct kernels (so its
NLLs are comparable): per sample and per condition one Phase A forward of the full LM (logits
over every document token), ``copy.deepcopy`` of the cache before scoring, a full-logits Phase B
forward at batch 1, and ``gc.collect()`` (plus ``empty_cache`` on CUDA) after every condition.
The engine (``lib.kv.engine``) runs the same work items. The two are interleaved (repeat r runs the
reference first when r is even, the engine first when odd) on the same samples.

Printed and written to ``results/bench/<design>_<model>.json``:
- pairs/s of both and the ratio; the per-item NLL agreement (max |dNLL|, must be <= 1e-4 nats);
- the machine's dense matmul peak, timed in the same run (best of several square matmuls in the
  model's dtype on its device);
- the engine's achieved FLOP/s (executed work, padding included) and its useful FLOP/s as a
  fraction of that peak. Useful FLOPs = the minimal forward work of the design: every distinct
  Phase A encoding once (real tokens only), every Phase B item's prompt + answer tokens, and LM
  head logits only at answer positions. A forward of T new tokens over a cache of L entries costs
  2 * (decoder linear weights) * T + 4 * heads * head_dim * (visible keys summed over queries, the
  sliding window respected) per layer;
- peak memory of both, each measured in a fresh process after the model is loaded: CUDA max
  allocated, or on CPU the peak resident set size above the loaded level (sampled every 2 ms,
  with MALLOC_MMAP_THRESHOLD_ fixed so freed tensors leave the RSS). The reference's probe uses 2
  samples (its memory does not grow with N); the engine's uses all of them.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.studies import priming
from lib.data import synthetic_qa
from lib.kv.engine import Engine, WorkItem
from lib.lab.peakmem import PeakMemory, _rss, _sync  # noqa: F401  (bench.PeakMemory, bench._sync)
from lib.tools.flops import forward_flops, linear_weights, lm_linear, matmul_peak  # noqa: F401  (bench.*)

DESIGNS = ("exp01", "matched13")
MATCHED_TEXTS = {  # fixed framings, tiled or cut to Q tokens (bench-only stand-ins for issue 4's library)
    "extractor_matched": "Extract all key data points, facts, entities and specific attributes from the following text.",
    "adversarial_matched": "The recipe calls for two cups of flour, a pinch of salt and three ripe bananas.",
    "static_fact_matched": "What are the key facts I need to know?",
    "universal_matched": "Read the following passage carefully so that you can answer a question about it later.",
}


# ---- designs -------------------------------------------------------------------------------
def _fit(ids: list[int], q: int) -> tuple[int, ...]:
    """Tile or cut ``ids`` to exactly ``q`` tokens."""
    if not ids:
        raise ValueError("cannot tile an empty id list")
    return tuple((ids * (q // len(ids) + 1))[:q])


def design_items(lm, design: str, n: int, seed: int = 42) -> list[WorkItem]:
    """Work items of a design on ``n`` synthetic samples."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choices: {DESIGNS}")
    samples = synthetic_qa(n, seed)
    other = priming.other_assignment(samples, seed)
    by_id = {s.id: s for s in samples}
    prepared = [priming.prepare(lm.tokenizer, lm.arch, s, by_id[other[s.id]].query, other[s.id]) for s in samples]
    if design == "exp01":
        return priming.work_items(prepared)
    tok = lambda t: enc_mod.tokenize(lm.tokenizer, t)  # noqa: E731
    fixed = {k: tok(v + priming.PREFIX_SEP) for k, v in MATCHED_TEXTS.items()}
    g = torch.Generator().manual_seed(seed)
    items = []
    for s, p in zip(samples, prepared):
        query = p.prefix_ids["query"]
        q = len(query)
        perm = torch.randperm(q, generator=g).tolist()
        prefixes = {
            "oracle": tuple(query),
            "random_tokens": tuple(torch.randint(1000, lm.arch.vocab_size - 1, (q,), generator=g).tolist()),
            "repeat_token": _fit(tok(" the"), q),
            "scrambled_oracle": tuple(query[i] for i in perm),
            "unrelated_query": _fit(p.prefix_ids["other_query"], q),
            "doc_head": _fit(p.doc_ids, q),
            "doc_tail": _fit(p.doc_ids[-q:], q),
            "answer_free_question": _fit(tok("What does the passage say?\n"), q),
            **{k: _fit(v, q) for k, v in fixed.items()},
        }
        items.append(WorkItem(s.id, "bare", tuple(p.doc_ids), (), False, tuple(p.prompt_ids["query"]), tuple(p.answer_ids)))
        for name, pre in prefixes.items():
            items.append(WorkItem(s.id, name, tuple(p.doc_ids), pre, False, tuple(p.prompt_ids["query"]), tuple(p.answer_ids)))
    return items


# ---- the reference loop ----------------------------------------------------------------------
def reference_loop(lm, items: list[WorkItem]) -> list[torch.Tensor]:
    """The seeds' loop: batch 1, one Phase A per condition, deep copy, full logits, gc after each."""
    model, arch, out = lm.model, lm.arch, []
    dev = next(model.parameters()).device
    for it in items:
        with torch.no_grad():
            enc = enc_mod.build_inputs(arch, list(it.doc_ids), list(it.prefix_ids))
            ids = torch.tensor([enc.input_ids], device=dev)
            past = DynamicCache()
            model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=past, use_cache=True)  # full logits
            full = kv.from_model_cache(past, torch.arange(ids.shape[1], device=dev)[None])
            dc = enc_mod.shape(full, enc, arch, keep_prefix=it.keep_prefix)
            cache = copy.deepcopy(kv.to_dynamic(dc))
            new = torch.tensor([list(it.prompt_ids) + list(it.answer_ids)], device=dev)
            mask = torch.ones(1, dc.length + new.shape[1], dtype=torch.long, device=dev)
            pos = dc.length + torch.arange(new.shape[1], device=dev)[None]
            logits = model(input_ids=new, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
            p, a = len(it.prompt_ids), len(it.answer_ids)
            nll = torch.nn.functional.cross_entropy(logits[0, p - 1 : p - 1 + a].float(), new[0, p:], reduction="none")
            out.append(nll.cpu())
        del past, full, dc, cache, logits
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ---- FLOPs, peak, memory -----------------------------------------------------------------------
def useful_flops(lm, items: list[WorkItem]) -> float:
    total, seen = 0.0, set()
    anchor = 0 if lm.arch.bos_id is None else 1
    for it in items:
        if it.encoding not in seen:
            seen.add(it.encoding)
            total += forward_flops(lm, anchor + len(it.prefix_ids) + len(it.doc_ids), 0, 0)
        cache_len = anchor + len(it.doc_ids) + (len(it.prefix_ids) if it.keep_prefix else 0)
        total += forward_flops(lm, len(it.prompt_ids) + len(it.answer_ids), cache_len, len(it.answer_ids))
    return total


def executed_flops(lm, engine_stats, items: list[WorkItem]) -> float:
    """Useful FLOPs scaled up by the Phase A padding the engine actually ran (an upper estimate)."""
    pad = engine_stats.phase_a_padded_tokens / max(1, engine_stats.phase_a_tokens)
    return useful_flops(lm, items) * pad


# ---- the benchmark -----------------------------------------------------------------------------
def _nll_limit(lm) -> float:
    """1e-4 nats in float32; batched and unbatched 16-bit forwards differ by far more, so 5e-2 there."""
    return 1e-4 if next(lm.model.parameters()).dtype == torch.float32 else 5e-2


def memory_probe(model: str, dtype, design: str, n: int, which: str, mem_budget_gb: float, seed: int = 42) -> int:
    """Peak memory of one method, measured in a fresh process (see ``_probe_main``)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS: RSS tracks live memory
    cmd = [sys.executable, "-m", "lib.tools.bench", "--probe", which, "--model", model, "--design", design, "--n", str(n),
           "--mem-budget-gb", str(mem_budget_gb)] + (["--dtype", dtype] if dtype else [])
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed: {res.stderr[-2000:]}")
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def _probe_main(args) -> int:
    from lib.kv.models import load_model

    lm = load_model(args.model, dtype=args.dtype)
    items = design_items(lm, args.design, args.n)
    device = next(lm.model.parameters()).device
    gc.collect()
    with PeakMemory(device) as pm:
        if args.probe == "reference":
            reference_loop(lm, items)
        else:
            Engine(lm, mem_budget_gb=args.mem_budget_gb).score_items(items)
    print(json.dumps({"peak_bytes": pm.bytes}))
    return 0


def bench(lm, design: str, n: int, repeats: int = 2, mem_budget_gb: float = 2.0, seed: int = 42,
          memory: bool = True) -> dict:
    items = design_items(lm, design, n, seed)
    device = next(lm.model.parameters()).device
    peak = matmul_peak(device, next(lm.model.parameters()).dtype)
    times = {"reference": [], "engine": []}
    results = {}
    engine_stats = None
    for r in range(repeats):
        order = ("reference", "engine") if r % 2 == 0 else ("engine", "reference")
        for which in order:
            gc.collect()
            _sync(device)
            t = time.perf_counter()
            if which == "reference":
                nlls = reference_loop(lm, items)
            else:
                eng = Engine(lm, mem_budget_gb=mem_budget_gb)
                nlls = [torch.tensor(row["token_nlls"]) for row in eng.score_items(items)]
                engine_stats = eng.stats
            _sync(device)
            times[which].append(time.perf_counter() - t)
            results[which] = nlls
    # memory: the reference's peak does not grow with N (batch 1), so 2 samples suffice; the engine gets all items
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(next(lm.model.parameters()).dtype)
    mem = {"reference": memory_probe(lm.name, dtype, design, min(n, 2), "reference", mem_budget_gb, seed),
           "engine": memory_probe(lm.name, dtype, design, n, "engine", mem_budget_gb, seed)} if memory else None
    diff = max(float((a - b).abs().max()) for a, b in zip(results["reference"], results["engine"]))
    t_ref, t_eng = min(times["reference"]), min(times["engine"])
    useful = useful_flops(lm, items)
    n_pairs = len(items)
    return {
        "design": design,
        "model": lm.name,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": str(next(lm.model.parameters()).dtype),
        "threads": torch.get_num_threads(),
        "n_samples": n,
        "n_pairs": n_pairs,
        "n_conditions": len({it.condition for it in items}),
        "distinct_encodings": len({it.encoding for it in items}),
        "repeats": repeats,
        "times_s": times,
        "pairs_per_s": {"reference": n_pairs / t_ref, "engine": n_pairs / t_eng},
        "speedup": t_ref / t_eng,
        "max_abs_nll_diff": diff,
        "nll_limit": _nll_limit(lm),
        "nll_agreement_ok": diff <= _nll_limit(lm),
        "matmul_peak_flops": peak,
        "useful_flops": useful,
        "engine_useful_flops_per_s": useful / t_eng,
        "engine_useful_fraction_of_peak": useful / t_eng / peak,
        "engine_executed_flops_per_s": executed_flops(lm, engine_stats, items) / t_eng,
        "reference_useful_fraction_of_peak": useful / t_ref / peak,
        "peak_memory_bytes": mem,
        "engine_stats": engine_stats.__dict__,
        "mem_budget_gb": mem_budget_gb,
    }


def report(res: dict) -> str:
    gb = 2**30
    return "\n".join([
        f"[{res['design']}] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): "
        f"{res['n_samples']} samples x {res['n_conditions']} conditions = {res['n_pairs']} pairs, "
        f"{res['distinct_encodings']} distinct Phase A encodings",
        f"  pairs/s: reference {res['pairs_per_s']['reference']:.2f}, engine {res['pairs_per_s']['engine']:.2f}, "
        f"ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  per-item NLL agreement: max |dNLL| = {res['max_abs_nll_diff']:.2e} nats "
        f"({'OK' if res['nll_agreement_ok'] else 'FAIL'}, limit {res['nll_limit']:g} for {res['dtype']})",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; engine useful "
        f"{res['engine_useful_flops_per_s'] / 1e9:.1f} GFLOP/s = {res['engine_useful_fraction_of_peak']:.0%} of peak "
        f"(executed, Phase A padding included, est. {res['engine_executed_flops_per_s'] / 1e9:.1f} GFLOP/s; reference useful "
        f"{res['reference_useful_fraction_of_peak']:.0%} of peak)",
        (f"  peak memory above the loaded model (fresh process each): reference "
         f"{res['peak_memory_bytes']['reference'] / gb:.2f} GiB, engine {res['peak_memory_bytes']['engine'] / gb:.2f} GiB"
         if res["peak_memory_bytes"] else "  peak memory: not measured (--no-memory)"),
    ])


def main(argv=None) -> int:
    from lib.kv.models import load_model
    from lib.data.jsonio import write_json_atomic
    from lib.lab.records import provenance

    ap = argparse.ArgumentParser(prog="python -m lib.tools.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--design", default="both", choices=DESIGNS + ("both", "many8", "exp07train", "gen", "exp08", "exp11", "exp07eval", "exp06", "exp12train"),
                    help="many8: lib/tools/bench_memory.py; exp07train: lib/tools/bench_train.py; gen: lib/tools/bench_gen.py; "
                         "exp08: lib/tools/bench_reach.py; exp11, exp07eval, exp06: lib/tools/bench_phase_a.py; "
                         "exp12train: lib/tools/bench_wire.py")
    ap.add_argument("--models", default="smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct",
                    help="exp12train: the frozen LMs that read the latent, comma-separated")
    ap.add_argument("--cutoff", type=int, default=None, help="exp07train: value cutoff (default: the seed's 16/34 ratio)")
    ap.add_argument("--examples-per-forward", type=int, nargs="+", default=[2, 4],
                    help="exp07train: the batched path's examples per forward, one timed path each")
    ap.add_argument("--n", type=int, default=None, help="samples (default: 10 for exp01, 4 for matched13)")
    ap.add_argument("--fast-batch", type=int, default=128, help="gen: rows the batched path decodes together")
    ap.add_argument("--prefill-batch", type=int, default=8, help="gen: rows per prefill forward of the batched path")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mem-budget-gb", type=float, default=2.0)
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--load-in-4bit", action="store_true", help="bitsandbytes nf4 (CUDA only; needs --no-memory)")
    ap.add_argument("--memory-n", type=int, default=None, help="many8: samples for the engine's extra memory probe")
    ap.add_argument("--probe", choices=("reference", "engine"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        return _probe_main(args)
    from lib.lab import codestate

    codestate.mark_start()  # the code state when the benchmark began, beside the one at its end
    if args.load_in_4bit and not args.no_memory:
        ap.error("--load-in-4bit needs --no-memory (the memory probes load the model in its dtype)")
    out = Path(args.out)
    if args.design == "exp12train":
        from lib.tools import bench_wire

        lms = [load_model(m.strip(), dtype=args.dtype, load_in_4bit=args.load_in_4bit) for m in args.models.split(",")]
        res = bench_wire.bench_wire(lms, args.n or 16, repeats=args.repeats)
        print(bench_wire.report(res), flush=True)
        res["load_in_4bit"] = args.load_in_4bit
        res["provenance"] = provenance(seeds={"seed": 0})
        write_json_atomic(out / f"exp12train_{'+'.join(lm.name for lm in lms)}.json", res)
        return 0 if res["agreement_ok"] else 1
    lm = load_model(args.model, dtype=args.dtype, load_in_4bit=args.load_in_4bit)
    ok = True
    for design in (DESIGNS if args.design == "both" else (args.design,)):
        n = args.n or {"exp01": 10, "matched13": 4, "many8": 12, "exp07train": 8, "gen": 16, "exp08": 16, "exp11": 16, "exp07eval": 16, "exp06": 4}[design]
        if design in ("exp11", "exp07eval", "exp06"):
            from lib.tools import bench_phase_a

            res = bench_phase_a.bench_phase_a(lm, design, n, repeats=args.repeats)
            print(bench_phase_a.report(res), flush=True)
        elif design == "exp08":
            from lib.tools import bench_reach

            res = bench_reach.bench_reach(lm, n, repeats=args.repeats)
            print(bench_reach.report(res), flush=True)
        elif design == "gen":
            from lib.tools import bench_gen

            res = bench_gen.bench_gen(lm, n, repeats=args.repeats, fast_batch=args.fast_batch, prefill_batch=args.prefill_batch)
            print(bench_gen.report(res), flush=True)
        elif design == "exp07train":
            from lib.tools import bench_train

            bench_train.live_rss()
            res = bench_train.bench_train(lm, n, cutoff=args.cutoff, repeats=args.repeats,
                                          examples_per_forward=tuple(args.examples_per_forward))
            print(bench_train.report(res), flush=True)
            res["nll_agreement_ok"] = res["agreement_ok"]
        elif design == "many8":
            from lib.tools import bench_memory

            res = bench_memory.bench(lm, n, args.repeats, args.mem_budget_gb, args.memory_n, memory=not args.no_memory)
            print(bench_memory.report(res), flush=True)
        else:
            res = bench(lm, design, n, args.repeats, args.mem_budget_gb, memory=not args.no_memory)
            print(report(res), flush=True)
        res["load_in_4bit"] = args.load_in_4bit
        res["provenance"] = provenance(seeds={"seed": 42})
        write_json_atomic(out / f"{design}_{args.model.replace('/', '_')}.json", res)
        ok &= res["nll_agreement_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
