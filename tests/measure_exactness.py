"""Print the exactness figures of the kernels on both bundled models (not a test; run by hand).

    python tests/measure_exactness.py

Rotation: max |rotate(k, +37) - k(offset 37)| / max |k(offset 37)| per layer type, 700-token input.
Two-phase vs single pass: max abs NLL difference, bare cache, 120- and 600-token documents.
"""
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from lib.kv.encode import encode, tokenize  # noqa: E402
from lib.kv.models import load_model  # noqa: E402
from lib.kv.rope import rotate_keys  # noqa: E402
from lib.kv.scoring import score, score_single_pass  # noqa: E402
from test_real_models import _keys, _text  # noqa: E402

for name in ("smollm2-135m-instruct", "gemma-3-270m"):
    lm = load_model(name, dtype="float32", device="cpu")
    ids = [lm.arch.bos_id] + _text(700, lm.tokenizer)
    k0, k37 = _keys(lm, ids, 0), _keys(lm, ids, 37)
    worst: dict[str, float] = {}
    for i, rope in enumerate(lm.arch.rope):
        err = float((rotate_keys(k0[i], 37, rope) - k37[i]).abs().max() / k37[i].abs().max())
        worst[rope.layer_type] = max(worst.get(rope.layer_type, 0.0), err)
    prompt = tokenize(lm.tokenizer, "\n\nQuestion: Which river flows through the town?\nAnswer:")
    ans = tokenize(lm.tokenizer, " The Shainas River")
    diffs = {}
    for n in (120, 600):
        doc = _text(n, lm.tokenizer, seed=1)
        two = score(lm.model, [encode(lm.model, lm.arch, doc)], [prompt], [ans])[0]
        diffs[n] = float((two - score_single_pass(lm.model, lm.arch, doc, prompt, ans)).abs().max())
    print(f"{name}: rotation rel err by layer type {', '.join(f'{k}={v:.1e}' for k, v in worst.items())}; "
          f"two-phase vs single-pass max |dNLL| {', '.join(f'{k} tok={v:.1e}' for k, v in diffs.items())}")
