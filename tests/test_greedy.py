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


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gemma3_softcap", "neox"])
def test_head_taken_in_vocabulary_chunks_changes_nothing(kind, monkeypatch):
    """The greedy token from the head in chunks of 5 token ids (the tiny vocabulary split unevenly,
    soft-capping applied per chunk); neox is not a plain-head type and goes through its own forward."""
    model = _model(kind) if kind != "neox" else tiny.build(kind)
    model.generation_config.eos_token_id = EOS
    monkeypatch.setattr(greedy, "HEAD_CHUNK", 5)
    assert greedy._plain_head(model) == (kind != "neox")
    prompts = _prompts(7, 4)
    out = greedy.generate(model, prompts, max_new_tokens=6, pad_token_id=0, batch_size=7, prefill_batch=3)
    assert out == [_reference(model, p, 6) for p in prompts]


@pytest.mark.parametrize("screen", [True, False])
def test_head_breaks_ties_toward_the_lowest_id(monkeypatch, screen):
    model = tiny.build("llama")
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight[40] = head.weight[3]  # tokens 40 and 77 tie token 3 whatever the hidden state
        head.weight[77] = head.weight[3]
    h = head.weight[3][None].detach().clone() * 50  # token 3's own direction: the 3/40/77 tie is the maximum
    monkeypatch.setattr(greedy, "HEAD_CHUNK", 16)
    g = greedy._Head(model)
    g.screen = screen
    with torch.no_grad():
        assert int(torch.nn.functional.linear(h, head.weight).argmax(-1)) == 3
        assert g(h).tolist() == [3]


def test_screened_head_equals_the_float32_argmax_and_checks_every_candidate():
    """The bf16 screen keeps every token its bound cannot rule out: on hidden states built to sit near a
    tie (two tokens 1e-5 apart, far below bf16's resolution), the float32 argmax still wins."""
    model = tiny.build("qwen2")  # a head with a bias added below
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        head.bias = torch.nn.Parameter(torch.randn(head.weight.shape[0], generator=g) * 0.1, requires_grad=False)
        head.weight[11] = head.weight[10] * (1 + 1e-5)  # 11 beats 10 by 1e-5 relative along w_10
        head.bias[11] = head.bias[10]
    hs = torch.randn(64, model.config.hidden_size, generator=g) * 4
    hs[:8] = head.weight[10].detach() * 30 + torch.randn(8, model.config.hidden_size, generator=g) * 0.01
    with torch.no_grad():
        want = torch.nn.functional.linear(hs, head.weight, head.bias).argmax(-1)
        screened = greedy._Head(model)
        assert screened.screen
        got = screened(hs)
        screened.screen = False
        assert torch.equal(got, want) and torch.equal(screened(hs), want)
    assert want[:8].tolist() == [11] * 8  # decided by the 1e-5, which bf16 (2^-8) cannot see


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
