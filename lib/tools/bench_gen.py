"""Model-written surrogates (exp03/exp04): the reference generation path against the batched one, in
one process on the same prompts.

    python -m lib.tools.bench --design gen --model gemma-3-270m --n 16

Reference: ``surrogates.generate(reference=True)``, ``model.generate`` per kind in batches of
``batch`` (8, the builders' earlier default), every row run to ``max_new_tokens`` or EOS. Batched:
the default path (``lib.kv.greedy``): every kind's prompts together, sorted by length, decoded in
batches of ``fast_batch`` (128) rows prefilled ``prefill_batch`` (8) per forward, a row leaving the
batch once its first line (the only text kept) is complete. ``--fast-batch`` / ``--prefill-batch``
set them (32 / 32 is the path before 2026-12-06: one prefill forward per decode batch of 32). Both
generate the five kinds exp03 uses for the same real SQuAD v1.1 dev samples (the registry copy; the
synthetic generator when it is absent); the agreement is whether every kept text is identical.
Reported: prompts/s of each path, their ratio, the prompt tokens each prefill runs (padding
included) and the decode row-steps each runs (one row for one new token).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

KINDS = ("llm_extract", "llm_question", "llm_summarize", "paraphrase", "same_topic")


def _samples(n: int, seed: int):
    from lib.data import load_samples

    try:
        return load_samples("squad_v1.1", n, seed=seed).samples, "squad_v1.1"
    except (FileNotFoundError, ValueError):
        return load_samples("synthetic", n, seed=seed).samples, "synthetic"


def _counting(model):
    """Wrap the decoder's ``forward`` (``model.base_model``, which ``model.generate`` reaches through
    ``model.forward`` and ``lib.kv.greedy`` calls directly): counts prefill tokens (padding included)
    and decode row-steps."""
    import functools

    model = model.base_model
    real, counts = model.forward, {"prefill_tokens": 0, "decode_row_steps": 0}

    @functools.wraps(real)  # keeps forward's signature (generate() reads the outer model's, left untouched)
    def spy(*a, **k):
        ids = k["input_ids"]
        past = k.get("past_key_values")
        key = "decode_row_steps" if past is not None and past.get_seq_length() > 0 else "prefill_tokens"
        counts[key] += int(ids.shape[0]) * int(ids.shape[1])
        return real(*a, **k)

    model.forward = spy
    return counts


def bench_gen(lm, n: int = 16, batch: int = 8, fast_batch: int = 128, max_new_tokens: int = 32, repeats: int = 1,
              seed: int = 42, prefill_batch: int = 8) -> dict:
    from lib.data import surrogates

    samples, data = _samples(n, seed)
    times, texts, work = {"reference": [], "fast": []}, {}, {}
    try:
        for _ in range(repeats):
            for name in ("reference", "fast"):
                counts = _counting(lm.model)
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    texts[name] = surrogates.generate(lm, samples, KINDS, surrogates.GeneratedCache(Path(d) / "g.json"),
                                                      max_new_tokens=max_new_tokens, reference=name == "reference",
                                                      batch_size=batch if name == "reference" else fast_batch,
                                                      prefill_batch=prefill_batch)
                    times[name].append(time.perf_counter() - t0)
                del lm.model.base_model.forward  # back to the class method
                work[name] = counts
    finally:
        vars(lm.model.base_model).pop("forward", None)
    prompts = len(samples) * len(KINDS)
    best = {k: min(v) for k, v in times.items()}
    same = texts["reference"] == texts["fast"]
    return {"design": "gen", "model": lm.name, "data": data, "n_samples": len(samples), "kinds": list(KINDS),
            "prompts": prompts, "batch": batch, "fast_batch": fast_batch, "prefill_batch": prefill_batch,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats, "seconds": best, "prompts_per_s": {k: prompts / v for k, v in best.items()},
            "ratio": best["reference"] / best["fast"], "work": work, "texts_identical": same, "nll_agreement_ok": same}


def report(res: dict) -> str:
    w = res["work"]
    return (f"[gen] {res['model']}: {res['prompts']} prompts ({res['n_samples']} {res['data']} samples x {len(res['kinds'])} kinds, "
            f"max {res['max_new_tokens']} new tokens): reference (batch {res['batch']}) {res['prompts_per_s']['reference']:.2f} "
            f"prompts/s, batched (decode batch {res['fast_batch']}, prefill {res.get('prefill_batch', res['fast_batch'])} per forward) {res['prompts_per_s']['fast']:.2f} prompts/s, ratio {res['ratio']:.2f}x; "
            f"prefill tokens {w['reference']['prefill_tokens']} -> {w['fast']['prefill_tokens']}, decode row-steps "
            f"{w['reference']['decode_row_steps']} -> {w['fast']['decode_row_steps']}; texts identical: {res['texts_identical']}")
