"""Benchmark of many continuations per cache: shared shaped caches against one cache per item.

    python -m lib.tools.bench --design many8 --model gemma-3-270m --n 12 --memory-n 120

Design ``many8`` (the contrastive-margin layout): on ``n`` synthetic samples (``lib.data.synthetic_qa``:
fictional passages, so nothing measured here is a finding), 4 conditions (``bare`` and three
truncated prefixes: the sample's own query, another sample's query, a fixed instruction) x 8
answer candidates per (sample, condition): the gold answer and the answers of 7 other samples
(seeded). Every condition prompts with the query. That is 32 work items and 4 distinct caches per
sample.

Three paths score the same items in ONE process, interleaved:
- ``engine``: ``Engine.score_items`` (one shaped cache per distinct (encoding, keep_prefix), shared by
  its continuations; the prompt runs once per (shaped cache, prompt) and each candidate feeds only
  the last prompt token and its answer; streamed in groups bounded by ``mem_budget_gb``);
- ``unshared``: the same engine with ``share_prompt=False``: every candidate re-runs the whole
  prompt on the shared cache (the reference for prompt sharing);
- ``per_item``: the engine as it was before shared caches: every distinct encoding encoded (rows
  kept as views of the padded batch), then ONE shaped cache per work item, all alive at once,
  then Phase B over all items (the same batching rule).
Printed and written to ``results/bench/many8_<model>.json``: continuations/s of each, the ratios
engine / per_item and engine / unshared (``prompt_sharing_speedup``), the largest difference between them of an item's NLL (limit: 1e-4 nats, as the exp01 bench, or the noise rule ``lib.kv.noise.noise_atol`` of the model's dtype when larger) and of a token's
NLL (batch composition differs between the paths; in float32 each path is ~1e-5 from batch-1 scoring), and peak memory of each above the loaded model, measured in a
fresh process after a one-item warm-up (``lib.lab.peakmem.PeakMemory``: CUDA max allocated, or sampled
RSS on CPU; the warm-up's own resident buffers are reported apart). The engine's
peak is also measured at ``--memory-n`` samples (the per-item path's memory grows with the item
count, so it is measured at ``n`` only) and compared with ``mem_budget_gb`` plus a stated
overhead (``OVERHEAD_GB``: allocator slack and estimate error of the per-token budget).
"""
from __future__ import annotations

import gc
import json
import random
import time

import torch

from lib.kv import encode as enc_mod
from lib.studies import priming
from lib.kv import scoring
from lib.kv.noise import noise_atol
from lib.data import synthetic_qa
from lib.kv.engine import Engine, WorkItem, _batches
from lib.lab.peakmem import PeakMemory, _sync

N_CANDIDATES = 8
STATIC_PREFIX = "What are the key facts I need to know?"
OVERHEAD_GB = 0.5


def design_items(lm, n: int, seed: int = 42, n_candidates: int = N_CANDIDATES) -> list[WorkItem]:
    """``n`` samples x 4 conditions x ``n_candidates`` answers (gold first, then other samples' answers)."""
    if n_candidates < 1 or n < n_candidates:
        raise ValueError(f"need n >= n_candidates >= 1 (candidates come from other samples), got n={n}, "
                         f"n_candidates={n_candidates}")
    samples = synthetic_qa(n, seed)
    by_id = {s.id: s for s in samples}
    other = priming.other_assignment(samples, seed)
    static = tuple(enc_mod.tokenize(lm.tokenizer, STATIC_PREFIX + priming.PREFIX_SEP))
    rng = random.Random(seed)
    items = []
    for s in samples:
        p = priming.prepare(lm.tokenizer, lm.arch, s, by_id[other[s.id]].query, other[s.id])
        prompt = tuple(p.prompt_ids["query"])
        q_text = priming.PROMPT_QUERY.format(query=s.query)
        others = rng.sample([o for o in samples if o.id != s.id], n_candidates - 1)
        answers = [tuple(p.answer_ids)] + [tuple(priming._answer_ids(lm.tokenizer, q_text, list(prompt), o.answer)[0])
                                           for o in others]
        conditions = {"bare": (), "trunc_oracle": tuple(p.prefix_ids["query"]),
                      "trunc_other": tuple(p.prefix_ids["other_query"]), "trunc_static": static}
        for name, prefix in conditions.items():
            for k, ans in enumerate(answers):
                items.append(WorkItem(s.id, f"{name}/c{k}", tuple(p.doc_ids), prefix, False, prompt, ans,
                                      {"candidate": k, "gold": k == 0}))
    return items


def per_item_scores(lm, items: list[WorkItem], mem_budget_gb: float = 2.0) -> list[torch.Tensor]:
    """The pre-sharing engine: one shaped cache per item, all alive at once, rows viewing padded batches."""
    e = Engine(lm, mem_budget_gb=mem_budget_gb)
    keys = list(dict.fromkeys(it.encoding for it in items))
    built = e._built(keys)
    full: list = [None] * len(keys)
    for idx in _batches([len(b.input_ids) for b in built], e.budget, e.max_batch):
        e._encode_batch(idx, built, lambda i, row: full.__setitem__(i, row))  # views, as before
    where = {k: i for i, k in enumerate(keys)}
    caches = [enc_mod.shape(full[where[it.encoding]], built[where[it.encoding]], lm.arch, keep_prefix=it.keep_prefix)
              for it in items]
    new_len = [len(it.prompt_ids) + len(it.answer_ids) for it in items]
    total = [c.length + n for c, n in zip(caches, new_len)]
    out: list = [None] * len(items)
    for idx in _batches(new_len, e.budget, e.max_batch, cost=total, min_tokens=256):
        got = scoring.score(lm.model, [caches[i] for i in idx], [list(items[i].prompt_ids) for i in idx],
                            [list(items[i].answer_ids) for i in idx], batch_size=len(idx))
        for i, t in zip(idx, got):
            out[i] = t
    return out


def engine_scores(lm, items: list[WorkItem], mem_budget_gb: float = 2.0, share_prompt: bool = True
                  ) -> tuple[list[torch.Tensor], dict]:
    e = Engine(lm, mem_budget_gb=mem_budget_gb, share_prompt=share_prompt)
    rows = e.score_items(items)
    return [torch.tensor(r["token_nlls"]) for r in rows], dict(e.stats.__dict__)


def _probe(lm, which: str, n: int, mem_budget_gb: float) -> tuple[int, int]:
    """(warm-up bytes, peak bytes above the warmed model) of one path on ``n`` samples.

    The warm-up scores one item first: the first forward and the first LM-head call allocate
    buffers that stay resident (about 1 GiB on Gemma 3 270M, float32 CPU); they belong to the
    loaded model, not to the item count, and are reported apart.
    """
    items = design_items(lm, n)
    device = next(lm.model.parameters()).device
    gc.collect()
    with PeakMemory(device) as warm:
        engine_scores(lm, items[:1], mem_budget_gb)
    gc.collect()
    with PeakMemory(device) as pm:
        if which == "engine":
            engine_scores(lm, items, mem_budget_gb)
        else:
            per_item_scores(lm, items, mem_budget_gb)
    return warm.bytes, pm.bytes


def memory_probe(model: str, dtype, which: str, n: int, mem_budget_gb: float) -> dict:
    """{"warmup_bytes", "peak_bytes"} of one path above the loaded model, in a fresh process (see ``_probe``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS: RSS tracks live memory
    cmd = [sys.executable, "-m", "lib.tools.bench_memory", which, model, str(n), str(mem_budget_gb), dtype or ""]
    res = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench(lm, n: int, repeats: int = 2, mem_budget_gb: float = 2.0, memory_n: int | None = None,
          memory: bool = True) -> dict:
    items = design_items(lm, n)
    device = next(lm.model.parameters()).device
    paths = ("per_item", "unshared", "engine")
    times = {p: [] for p in paths}
    results, stats = {}, {}
    for r in range(repeats):
        for which in (paths if r % 2 == 0 else paths[::-1]):
            gc.collect()
            _sync(device)
            t = time.perf_counter()
            if which == "per_item":
                results[which] = per_item_scores(lm, items, mem_budget_gb)
            else:
                results[which], stats[which] = engine_scores(lm, items, mem_budget_gb, share_prompt=which == "engine")
            _sync(device)
            times[which].append(time.perf_counter() - t)

    def diffs(a_path, b_path):  # (largest token NLL difference, largest item NLL difference)
        pairs = list(zip(results[a_path], results[b_path]))
        return (max(float((a - b).abs().max()) for a, b in pairs), max(abs(float(a.mean()) - float(b.mean())) for a, b in pairs))

    diff, diff_nll = diffs("per_item", "engine")
    share_diff, share_diff_nll = diffs("unshared", "engine")
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(next(lm.model.parameters()).dtype)
    mem = None
    if memory:
        mem = {"per_item": memory_probe(lm.name, dtype, "per_item", n, mem_budget_gb),
               "engine": memory_probe(lm.name, dtype, "engine", n, mem_budget_gb)}
        if memory_n and memory_n != n:
            mem["engine_at_memory_n"] = memory_probe(lm.name, dtype, "engine", memory_n, mem_budget_gb)
    t_ref, t_eng, t_unshared = min(times["per_item"]), min(times["engine"]), min(times["unshared"])
    # on each item's mean NLL: the exp01 bench's limit (1e-4 nats in float32) or the dtype's noise rule, whichever is
    # larger. The float32 noise rule (1e-5) is the batch-composition noise of one path; two paths that sum in another
    # order (prompt shared or not) differ by up to ~1.1e-5 on items near 12 nats (measured, relative error ~5e-6).
    limit = max(1e-4, noise_atol(getattr(lm, "dtype", None) or next(lm.model.parameters()).dtype))
    return {
        "design": "many8", "model": lm.name, "dtype": str(next(lm.model.parameters()).dtype),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "n_samples": n, "n_items": len(items),
        "distinct_caches": len({(it.encoding, it.keep_prefix) for it in items}), "repeats": repeats,
        "times_s": times, "items_per_s": {"per_item": len(items) / t_ref, "engine": len(items) / t_eng},
        "speedup": t_ref / t_eng, "max_abs_token_nll_diff": diff, "max_abs_nll_diff": diff_nll,
        "nll_limit": limit, "nll_agreement_ok": diff_nll <= limit and share_diff_nll <= limit,
        # prompt sharing: the engine against itself with share_prompt=False (every candidate re-runs the prompt)
        "unshared_items_per_s": len(items) / t_unshared, "prompt_sharing_speedup": t_unshared / t_eng,
        "prompt_sharing_max_abs_nll_diff": share_diff_nll, "prompt_sharing_max_abs_token_nll_diff": share_diff,
        "peak_memory_bytes": mem, "memory_n": memory_n or n, "mem_budget_gb": mem_budget_gb,
        "overhead_gb": OVERHEAD_GB, "engine_stats": stats["engine"], "unshared_engine_stats": stats["unshared"],
    }


def report(res: dict) -> str:
    gb = 2**30
    lines = [
        f"[many8] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['n_samples']} "
        f"synthetic samples x 4 conditions x {N_CANDIDATES} candidates = {res['n_items']} items, "
        f"{res['distinct_caches']} distinct shaped caches",
        f"  items/s: one cache per item {res['items_per_s']['per_item']:.2f}, shared caches {res['items_per_s']['engine']:.2f}, "
        f"ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  agreement: max |d item NLL| = {res['max_abs_nll_diff']:.2e} nats "
        f"({'OK' if res['max_abs_nll_diff'] <= res['nll_limit'] else 'FAIL'}, limit {res['nll_limit']:g}); max |d token NLL| = "
        f"{res['max_abs_token_nll_diff']:.2e}",
        f"  prompt sharing (prompt once per cache and prompt, then each candidate's last prompt token + answer): "
        f"items/s unshared {res['unshared_items_per_s']:.2f}, shared {res['items_per_s']['engine']:.2f}, ratio "
        f"{res['prompt_sharing_speedup']:.2f}x; Phase B tokens {res['unshared_engine_stats']['phase_b_tokens']} -> "
        f"{res['engine_stats']['phase_b_tokens']}; max |d item NLL| = {res['prompt_sharing_max_abs_nll_diff']:.2e} "
        f"({'OK' if res['prompt_sharing_max_abs_nll_diff'] <= res['nll_limit'] else 'FAIL'}), max |d token NLL| = "
        f"{res['prompt_sharing_max_abs_token_nll_diff']:.2e}",
    ]
    mem = res["peak_memory_bytes"]
    if mem is None:
        lines.append("  peak memory: not measured (--no-memory)")
    else:
        lines.append(f"  peak memory above the loaded, warmed model (fresh process each; warm-up "
                     f"{mem['engine']['warmup_bytes'] / gb:.2f} GiB apart), n={res['n_samples']}: one cache per item "
                     f"{mem['per_item']['peak_bytes'] / gb:.2f} GiB, shared caches {mem['engine']['peak_bytes'] / gb:.2f} GiB")
        if "engine_at_memory_n" in mem:
            bound, got = res["mem_budget_gb"] + res["overhead_gb"], mem["engine_at_memory_n"]["peak_bytes"]
            lines.append(f"  shared caches at n={res['memory_n']} ({res['memory_n'] * 4 * N_CANDIDATES} items): "
                         f"{got / gb:.2f} GiB; bound mem_budget_gb {res['mem_budget_gb']:g} + "
                         f"overhead {res['overhead_gb']:g} = {bound:g} GiB: {'OK' if got <= bound * gb else 'EXCEEDED'}")
    return "\n".join(lines)


def _probe_main(argv) -> int:
    from lib.kv.models import load_model

    which, model, n, budget, dtype = argv
    if which not in ("engine", "per_item"):
        raise ValueError(f"unknown path {which!r}; choices: ('engine', 'per_item')")
    lm = load_model(model, dtype=dtype or None)
    warm, peak = _probe(lm, which, int(n), float(budget))
    print(json.dumps({"warmup_bytes": warm, "peak_bytes": peak}))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_probe_main(sys.argv[1:]))
