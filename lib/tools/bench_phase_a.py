"""exp07 evaluation and exp11 scoring: Phase A one item per forward (the reference) against
``phase_a_batch`` right-padded items per forward, in one process on the same samples; exp06: the query
re-run per answer candidate (the reference) against once per hybrid cache (``_exp06``).

    python -m lib.tools.bench --design exp11 --model smollm2-135m-instruct --n 16
    python -m lib.tools.bench --design exp07eval --model gemma-3-270m --n 16
    python -m lib.tools.bench --design exp06 --model smollm2-135m-instruct --n 4

exp11: ``prefixlm.score_items`` of the design's four conditions x two attention modes.
exp07eval: ``soft.evaluate`` with the static prefix and two soft prefixes (the token embeddings of
the static prefix, and a random one of the same length) at the seed's cutoff ratio 16/34.
Both paths score K=4 distractors per item (as the real runs do). Samples: real SQuAD v1.1 dev (the
registry copy; the synthetic generator when it is absent). Agreement: the largest |dNLL| over every
row's gold and distractor NLLs (limit 1e-4 nats). Useful FLOPs: every Phase A forward once (real
tokens only; exp07's primed forwards through the cutoff layers only, the fraction cutoff/layers of
a full forward) and every Phase B candidate's prompt + answer over its cache, logits at the answer
positions; the bidirectional mode's extra attention is not counted (the causal count, a lower bound).
"""
from __future__ import annotations

import torch

STATIC = "Extract the key facts from the following text."


def _exp11(lm, samples, seed):
    from lib.studies import prefixlm
    from lib.tools.flops import forward_flops

    items = prefixlm.build_items(lm, samples, tuple(prefixlm.CONDITIONS), seed=seed, n_distractors=4)
    flops = 0.0
    for it in items:
        n_cache = 1 + len(it.prefix_ids) + len(it.doc_ids)  # the anchor, the prefix (kept) and the document
        for _ in prefixlm.MODES:
            flops += forward_flops(lm, n_cache, 0, 0)
            for a in (it.answer_ids, *it.distractor_ids):
                flops += forward_flops(lm, len(it.prompt_ids) + len(a), n_cache, len(a))

    def work(phase_a_batch):
        return prefixlm.score_items(lm, items, phase_a_batch=phase_a_batch)
    return work, flops, len(items) * len(prefixlm.MODES), {}


def _exp07eval(lm, samples, seed):
    from lib.kv.encode import tokenize
    from lib.studies import soft
    from lib.tools.flops import forward_flops

    static = tokenize(lm.tokenizer, STATIC)
    from lib.tools.bench_train import SEED_CUTOFF_RATIO

    cutoff = max(1, round(lm.arch.n_layers * SEED_CUTOFF_RATIO))
    exs = soft.examples(lm, samples, len(static), n_distractors=4, seed=seed)
    emb = lm.model.get_input_embeddings()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        prefixes = {"tokens": emb(torch.tensor(static)).detach().float(),
                    "random": torch.randn(len(static), emb.weight.shape[1], generator=g) * 0.02}
    frac = cutoff / lm.arch.n_layers
    flops = 0.0
    for e in exs:
        n = 1 + len(e.doc_ids)
        flops += forward_flops(lm, n, 0, 0) + (1 + len(prefixes)) * frac * forward_flops(lm, n + len(static), 0, 0)
        flops += (2 + len(prefixes)) * sum(forward_flops(lm, len(e.prompt_ids) + len(a), n, len(a))
                                           for a in (e.answer_ids, *e.distractor_ids))

    def work(phase_a_batch):
        return soft.evaluate(lm, exs, cutoff, static_ids=static, soft=prefixes, phase_a_batch=phase_a_batch)
    return work, flops, len(exs) * (2 + len(prefixes)), {"cutoff": cutoff, "n_layers": lm.arch.n_layers}


def _exp06(lm, samples, seed):
    """exp06's real-run design: every cutoff (2 x (n_layers - 1) hybrids + bare, primed, values_only, keys_only),
    prefix static_fact, 4 distractors. The paths differ in Phase B only: each candidate re-runs the query
    (``share_prompt=False``, the reference) vs the query once per hybrid cache (``share_prompt=True``).
    Useful FLOPs: the bare and primed encodings once each, and per hybrid cache the query once and each
    candidate's last query token + answer over it, logits at the answer positions."""
    from lib.kv.engine import Engine
    from lib.studies import contamination as C
    from lib.studies import priming
    from lib.tools.flops import forward_flops

    names = C.condition_names(list(range(1, lm.arch.n_layers)))
    prefix = C.prefix_ids(lm.tokenizer, "static_fact")
    dis = priming.distractor_pairs(samples, 4, seed)
    engine = Engine(lm)
    preps = [priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id, dis.get(s.id, ())) for s in samples]
    flops = 0.0
    for pr in preps:
        n = 1 + len(pr.doc_ids)
        q = pr.prompt_ids["query"]
        flops += forward_flops(lm, n, 0, 0) + forward_flops(lm, n + len(prefix), 0, 0)
        per_cache = forward_flops(lm, len(q) - 1, n, 0) + sum(forward_flops(lm, 1 + len(a), n + len(q) - 1, len(a))
                                                               for a in (pr.answer_ids, *pr.distractor_ids))
        flops += len(names) * per_cache

    def work(param):
        return C.score_samples(engine, samples, names, prefix, distractors=dis, share_prompt=param != 1)
    return work, flops, len(samples) * len(names), {"n_conditions": len(names), "n_layers": lm.arch.n_layers,
                                                     "path_labels": {"reference": "query per candidate",
                                                                     "batched": "query once per cache", "short": "shared"}}


DESIGNS = {"exp11": _exp11, "exp07eval": _exp07eval, "exp06": _exp06}


def bench_phase_a(lm, design: str, n: int = 16, phase_a_batch: int = 8, repeats: int = 2, seed: int = 42) -> dict:
    from lib.tools.bench_gen import _samples
    from lib.tools.flops import matmul_peak, time_interleaved

    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choices: {sorted(DESIGNS)}")
    samples, data = _samples(n, seed)
    work, flops, n_rows, extra = DESIGNS[design](lm, samples, seed)
    device = lm.model.get_input_embeddings().weight.device
    dtype = lm.model.get_input_embeddings().weight.dtype
    peak = matmul_peak(device, dtype)
    paths = {"reference": 1, "batched": phase_a_batch}
    work(phase_a_batch)  # warm-up (allocator, kernels): not timed
    times, rows = time_interleaved(paths, work, repeats, device)
    diff = 0.0
    for a, b in zip(rows["reference"], rows["batched"]):
        if (a["sample_id"], a["condition"]) != (b["sample_id"], b["condition"]):
            raise AssertionError(f"row order differs: {a['sample_id']}/{a['condition']} vs {b['sample_id']}/{b['condition']}")
        diff = max(diff, abs(a["nll"] - b["nll"]), *(abs(x - y) for x, y in zip(a.get("distractor_nlls", []), b.get("distractor_nlls", []))))
    best = {k: min(v) for k, v in times.items()}
    counts = [len(r.get("distractor_nlls", ())) for r in rows["batched"]]  # as drawn: a sample may get fewer than 4
    return {"design": design, "model": lm.name, "dtype": str(dtype), "device": str(device), "threads": torch.get_num_threads(),
            "data": data, "n_samples": len(samples), "rows": n_rows, "n_distractors": round(sum(counts) / max(len(counts), 1), 2),
            "phase_a_batch": phase_a_batch,
            "repeats": repeats, "times_s": times, "rows_per_s": {k: n_rows / v for k, v in best.items()},
            "speedup": best["reference"] / best["batched"], "max_abs_nll_diff": diff, "agreement_limit_nats": 1e-4,
            "nll_agreement_ok": diff <= 1e-4, "matmul_peak_flops": peak, "useful_flops": flops,
            "batched_fraction_of_peak": flops / best["batched"] / peak, "reference_fraction_of_peak": flops / best["reference"] / peak,
            **extra}


def labels(res: dict) -> tuple[str, str]:
    """The two paths' names: exp06 compares prompt sharing, the others Phase A batching."""
    lab = res.get("path_labels")
    if lab:
        return lab["reference"], lab["batched"]
    return "one item per Phase A forward", f"{res['phase_a_batch']} per forward"


def report(res: dict) -> str:
    ref, bat = labels(res)
    return "\n".join([
        f"[{res['design']}] {res['model']} on {res['device']} ({res['dtype']}, {res['threads']} threads): {res['rows']} rows "
        f"({res['n_samples']} {res['data']} samples, {res['n_distractors']:g} distractors each on average)",
        f"  rows/s: {ref} {res['rows_per_s']['reference']:.2f}, {bat} "
        f"{res['rows_per_s']['batched']:.2f}, ratio {res['speedup']:.2f}x (best of {res['repeats']} interleaved repeats)",
        f"  agreement: max |dNLL| {res['max_abs_nll_diff']:.1e} nats ({'OK' if res['nll_agreement_ok'] else 'FAIL'}, "
        f"limit {res['agreement_limit_nats']:g})",
        f"  matmul peak (timed now): {res['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; batched useful "
        f"{res['useful_flops'] / min(res['times_s']['batched']) / 1e9:.1f} GFLOP/s = {res['batched_fraction_of_peak']:.0%} of peak "
        f"(reference {res['reference_fraction_of_peak']:.0%})"])
