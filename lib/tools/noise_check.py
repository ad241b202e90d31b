"""Measure float noise between batch compositions (the tolerances in ``lib/kv/noise.py``; exp01's
conditions on synthetic samples). Needs a model:

    python -m lib.tools.noise_check --model smollm2-135m-instruct --dtypes float32,bfloat16
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from lib.data import synthetic_qa
from lib.kv.engine import Engine
from lib.kv.models import load_model
from lib.kv.noise import dtype_name
from lib.studies import conditions


def batch_noise(lm, samples, condition_names=("bare", "static_fact")) -> dict:
    """Largest |per-sample mean NLL| difference between scoring each item alone (batch 1, Phase A and B)
    and in padded batches with the other items: the float noise of one dtype on one machine."""
    items = conditions.build_items(lm, samples, conditions.get(list(condition_names)))
    alone = Engine(lm, max_batch=1, phase_b_batch=1).score_items(items)
    batched = Engine(lm, max_batch=64, phase_b_batch=64).score_items(items)
    diff = np.array([abs(a["nll"] - b["nll"]) for a, b in zip(alone, batched)])
    return {"dtype": dtype_name(lm.dtype), "n_items": len(items), "max_abs_diff": float(diff.max()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)), "median_abs_diff": float(np.median(diff))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="measure batch-composition float noise of per-sample NLLs per dtype")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args(argv)
    for dt in a.dtypes.split(","):
        lm = load_model(a.model, dtype=dt, device="cpu", attn_implementation="sdpa")
        print(json.dumps({"model": a.model, **batch_noise(lm, synthetic_qa(a.n, 0))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
