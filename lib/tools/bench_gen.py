"""Model-written surrogates (exp03/exp04): the reference generation path against the fast one, in one
process on the same prompts.

    python -m lib.tools.bench --design gen --model gemma-3-270m --n 16

Reference: every row runs to ``max_new_tokens`` or EOS (``surrogates.generate(stop_at_line=False)``).
Fast: a row stops once its first line -- the only text kept -- is complete (the default). Both
generate the five kinds exp03 uses for the same real SQuAD v1.1 dev samples (the registry copy; the
synthetic generator when it is absent) in batches of ``batch``; the agreement is whether every
kept text is identical. Reported: prompts/s of each path, their ratio, and the tokens generated.
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


def bench_gen(lm, n: int = 16, batch: int = 8, max_new_tokens: int = 32, repeats: int = 1, seed: int = 42) -> dict:
    from lib.data import surrogates

    samples, data = _samples(n, seed)
    real, counted = lm.model.generate, []

    def spy(*a, **k):
        out = real(*a, **k)
        counted.append(int(out.shape[0]) * (int(out.shape[1]) - int(k["input_ids"].shape[1])))
        return out

    lm.model.generate = spy
    times, texts, tokens = {"reference": [], "fast": []}, {}, {}
    try:
        for _ in range(repeats):
            for name, stop in (("reference", False), ("fast", True)):
                counted.clear()
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    texts[name] = surrogates.generate(lm, samples, KINDS, surrogates.GeneratedCache(Path(d) / "g.json"),
                                                      max_new_tokens=max_new_tokens, batch_size=batch, stop_at_line=stop)
                    times[name].append(time.perf_counter() - t0)
                tokens[name] = sum(counted)
    finally:
        del lm.model.generate  # back to the class method
    prompts = len(samples) * len(KINDS)
    best = {k: min(v) for k, v in times.items()}
    return {"design": "gen", "model": lm.name, "data": data, "n_samples": len(samples), "kinds": list(KINDS),
            "prompts": prompts, "batch": batch, "max_new_tokens": max_new_tokens, "repeats": repeats,
            "seconds": best, "prompts_per_s": {k: prompts / v for k, v in best.items()},
            "ratio": best["reference"] / best["fast"], "generated_tokens_incl_padding": tokens,
            "texts_identical": texts["reference"] == texts["fast"], "nll_agreement_ok": texts["reference"] == texts["fast"]}


def report(res: dict) -> str:
    return (f"[gen] {res['model']}: {res['prompts']} prompts ({res['n_samples']} {res['data']} samples x {len(res['kinds'])} kinds, "
            f"batch {res['batch']}, max {res['max_new_tokens']} new tokens): reference {res['prompts_per_s']['reference']:.2f} "
            f"prompts/s, first-line stop {res['prompts_per_s']['fast']:.2f} prompts/s, ratio {res['ratio']:.2f}x; tokens generated "
            f"(with padding) {res['generated_tokens_incl_padding']['reference']} -> {res['generated_tokens_incl_padding']['fast']}; "
            f"texts identical: {res['texts_identical']}")
