"""Where the real-model tests run, and their tolerances.

Default (CI): float32 on CPU. ``lib.tools.gpu_check`` runs the same tests on a GPU by setting
``DKV_TEST_DEVICE=cuda`` and ``DKV_TEST_DTYPE=bfloat16``, plus ``DKV_TEST_QUANT=nf4`` for 4-bit
(bitsandbytes nf4, bfloat16 compute).

Tolerances (``TOL``: per-token NLL of two exact paths, and relative key error; ``NLL_TOL``: an
item's mean NLL, the noise rule ``lib.kv.noise.noise_atol``):
- float32: 1e-4 and 1e-5, the CI values;
- bfloat16 and nf4: 0.25 per token. NOT measured on a GPU: the CPU measurement in
  ``lib.kv.noise.MEASURED`` (SmolLM2, bfloat16, alone vs batched) has a per-item max of 0.147 nats,
  and single tokens spread more than their mean; ``gpu_check``'s JSON reports what a GPU gives.
"""
import os

from lib.kv.noise import noise_atol

DEVICE = os.environ.get("DKV_TEST_DEVICE", "cpu")
DTYPE = os.environ.get("DKV_TEST_DTYPE", "float32")
QUANT = os.environ.get("DKV_TEST_QUANT", "")
if QUANT not in ("", "nf4"):
    raise ValueError(f"DKV_TEST_QUANT={QUANT!r}; expected '' or 'nf4'")
EXACT = DTYPE == "float32" and not QUANT
TOL = 1e-4 if EXACT else 0.25
NLL_TOL = noise_atol(DTYPE)


def load(name: str):
    from lib.kv.models import load_model

    return load_model(name, dtype=DTYPE, device=DEVICE, attn_implementation="sdpa", load_in_4bit=QUANT == "nf4")
