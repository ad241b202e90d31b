"""lib.kv.greedy against model.generate (greedy, left padding): the oracle is the same prompts decoded
by transformers one at a time, so batching, length sorting and rows leaving the batch change nothing."""
from __future__ import annotations

import pytest
import torch

from lib.kv import greedy
from tests import tiny

EOS = 7


def _reference(model, prompt: list[int], max_new: int) -> list[int]:
    """model.generate on one unpadded prompt, cut after its first EOS."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False, pad_token_id=0)
    new = out[0, len(prompt):].tolist()
    return new[: new.index(EOS) + 1] if EOS in new else new


def _model(kind: str):
    """A tiny random model whose attention is sharp enough that positions and masks move its argmax
    (at the default init every row attends almost uniformly and a position error can go unseen)."""
    model = tiny.build(kind)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
    model.generation_config.eos_token_id = EOS
    return model


def _prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 30, (n,), generator=g).tolist()  # past the tiny sliding window of 12
    return [torch.randint(8, tiny.VOCAB, (k,), generator=g).tolist() for k in lens]


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3", "qwen2"])
def test_greedy_equals_generate_one_prompt_at_a_time(kind):
    model = _model(kind)
    prompts = _prompts(11, 1)
    seen = []
    out = greedy.generate(model, prompts, max_new_tokens=9, pad_token_id=0, batch_size=4,
                          on_batch=lambda idx, rows: seen.extend(idx))
    assert sorted(seen) == list(range(len(prompts)))  # every prompt reported once, in batches
    assert out == [_reference(model, p, 9) for p in prompts]


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3"])
@pytest.mark.parametrize("batch_size,prefill_batch", [(11, 3), (5, 2), (11, 1)])
def test_prefill_sub_batches_joined_into_one_decode_batch_change_nothing(kind, batch_size, prefill_batch):
    """Prefill in sub-batches of other widths (left pads added when the caches are joined), decoded
    together: the same tokens as model.generate one prompt at a time (prompts past the sliding window)."""
    model = _model(kind)
    prompts = _prompts(11, 3)
    assert len({len(p) for p in prompts}) > 3
    out = greedy.generate(model, prompts, max_new_tokens=9, pad_token_id=0, batch_size=batch_size,
                          prefill_batch=prefill_batch)
    assert out == [_reference(model, p, 9) for p in prompts]


def test_rows_leave_the_batch_when_stop_says_so():
    """A row stopped early keeps exactly the reference's first tokens; the others run on unchanged."""
    model = _model("gemma3")
    prompts = _prompts(6, 2)
    full = [_reference(model, p, 10) for p in prompts]
    stop = lambda new: len(new) >= 3 and new[0] % 2 == 0  # noqa: E731 - rows with an even first token stop after 3
    out = greedy.generate(model, prompts, max_new_tokens=10, pad_token_id=0, batch_size=6, stop=stop)
    want = [f[:3] if f[0] % 2 == 0 and EOS not in f[:2] else f for f in full]
    assert out == want and any(len(o) == 3 for o in out) and any(len(o) > 3 for o in out)


def test_bad_input_and_logits_processors_are_refused():
    model = tiny.build("llama")
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty"):
        greedy.generate(model, [[9, 10], []], max_new_tokens=2, pad_token_id=0)
    with pytest.raises(ValueError, match="prefill_batch must be an int >= 1"):
        greedy.generate(model, [[9]], max_new_tokens=2, pad_token_id=0, prefill_batch=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        greedy.generate(model, [[9]], max_new_tokens=0, pad_token_id=0)
    model.generation_config.repetition_penalty = 1.3
    with pytest.raises(ValueError, match="repetition_penalty"):
        greedy.generate(model, [[9]], max_new_tokens=2, pad_token_id=0)
