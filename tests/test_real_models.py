"""The cache kernels against exact oracles on the three bundled real models (float32, CPU; bfloat16 / nf4 on a GPU
through ``lib.tools.gpu_check``, tolerances in ``tests/real_env.py``)."""
import pytest
import torch
from transformers import DynamicCache

from lib.studies import priming
from lib.data import Sample, synthetic_qa
from lib.kv.encode import encode, encode_full, encode_full_batch, fit_document, shape, tokenize
from lib.kv.rope import rotate_keys
from lib.kv.scoring import score, score_single_pass
from real_env import TOL

pytestmark = pytest.mark.slow
MODELS = ("smollm2", "gemma3", "qwen2")


@pytest.fixture(scope="module", params=MODELS)
def lm(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module", params=MODELS[:2])
def lm_window(request):
    """SmolLM2 and Gemma only. Qwen (the third bundled model) runs the core oracles in CI (RoPE shift,
    two-phase == single pass, batched == unbatched, BOS policy); the window and context-length
    tests check nothing for a model without a window, and the pipeline properties below are
    model-independent and already pinned on two models. All of them passed on Qwen when it was
    bundled (2026-12-01 log); CI time is the reason for the split."""
    return request.getfixturevalue(request.param)


def _text(n_tokens: int, tokenizer, seed: int = 0) -> list[int]:
    """About ``n_tokens`` ids of plain English from the synthetic generator's passages."""
    ids: list[int] = []
    for s in synthetic_qa(60, seed):
        ids += tokenize(tokenizer, s.passage + " ")
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise AssertionError("not enough text")


@torch.no_grad()
def _keys(lm, ids, offset):
    past = DynamicCache()
    t = torch.tensor([ids], device=lm.model.device)
    lm.model.base_model(input_ids=t, attention_mask=torch.ones_like(t), position_ids=offset + torch.arange(len(ids), device=t.device)[None],
                        past_key_values=past, use_cache=True)
    return [layer.keys for layer in past.layers]


def test_rotated_keys_match_shifted_run_every_layer(lm):
    """700 tokens (longer than Gemma's 512 window): rotate by +k == run at offset k, per layer."""
    ids = [lm.arch.bos_id] + _text(700, lm.tokenizer)
    k0, k37 = _keys(lm, ids, 0), _keys(lm, ids, 37)
    assert len(k0) == lm.arch.n_layers and all(k.shape[2] == len(ids) for k in k0)
    worst = {}
    for i, rope in enumerate(lm.arch.rope):
        err = float((rotate_keys(k0[i], 37, rope) - k37[i]).abs().max() / k37[i].abs().max())
        worst[rope.layer_type] = max(worst.get(rope.layer_type, 0.0), err)
        assert err <= TOL, (i, rope.layer_type, err)
    assert set(worst) == set(lm.arch.layer_types)  # local and global layers both checked on Gemma


def test_bare_two_phase_equals_single_pass(lm):
    _two_phase_vs_single_pass(lm, 120)


def test_bare_two_phase_equals_single_pass_past_the_window(lm_window):
    _two_phase_vs_single_pass(lm_window, 600)  # 600 > Gemma 3 270M's sliding window of 512


def _two_phase_vs_single_pass(lm, doc_len):
    doc = _text(doc_len, lm.tokenizer, seed=1)
    prompt = tokenize(lm.tokenizer, "\n\nQuestion: Which river flows through the town?\nAnswer:")
    ans = tokenize(lm.tokenizer, " The Shainas River")
    two = score(lm.model, [encode(lm.model, lm.arch, doc)], [prompt], [ans])[0]
    one = score_single_pass(lm.model, lm.arch, doc, prompt, ans)
    assert (two - one).abs().max() <= TOL


def test_kept_prefix_two_phase_equals_single_pass(lm_window):
    lm = lm_window
    doc, pre = _text(150, lm.tokenizer, seed=2), tokenize(lm.tokenizer, "What is the key fact?\n")
    prompt, ans = tokenize(lm.tokenizer, "\n\nAnswer:"), tokenize(lm.tokenizer, " a river")
    two = score(lm.model, [encode(lm.model, lm.arch, doc, pre, keep_prefix=True)], [prompt], [ans])[0]
    assert (two - score_single_pass(lm.model, lm.arch, doc, prompt, ans, prefix_ids=pre)).abs().max() <= TOL


def test_truncated_cache_over_the_window_scores_and_keeps_layer0(lm_window):
    lm = lm_window
    """A primed document longer than the sliding window: no index error; layer 0 equals bare."""
    doc, pre = _text(560, lm.tokenizer, seed=3), tokenize(lm.tokenizer, "Extract the facts.\n")
    bare, primed = encode(lm.model, lm.arch, doc), encode(lm.model, lm.arch, doc, pre)
    assert primed.length == bare.length == len(doc) + (lm.arch.bos_id is not None)
    assert float((primed.keys[0] - bare.keys[0]).abs().max() / bare.keys[0].abs().max()) <= TOL
    nll = score(lm.model, [primed], [tokenize(lm.tokenizer, "\n\nAnswer:")], [tokenize(lm.tokenizer, " yes")])[0]
    assert torch.isfinite(nll).all()


def test_scoring_never_changes_the_cache(lm_window):
    lm = lm_window
    c = encode(lm.model, lm.arch, _text(80, lm.tokenizer, seed=4), tokenize(lm.tokenizer, "a prefix\n"))
    snap = [(k.clone(), v.clone()) for k, v in zip(c.keys, c.values)]
    args = ([tokenize(lm.tokenizer, "\n\nAnswer:")], [tokenize(lm.tokenizer, " the bakery on the main street")])
    first, second = score(lm.model, [c], *args)[0], score(lm.model, [c], *args)[0]
    assert torch.equal(first, second)
    assert all(torch.equal(k0, k) and torch.equal(v0, v) for (k0, v0), k, v in zip(snap, c.keys, c.values))


def test_future_answer_token_never_changes_past_nll(lm_window):
    lm = lm_window
    c = encode(lm.model, lm.arch, _text(60, lm.tokenizer, seed=5))
    prompt = tokenize(lm.tokenizer, "\n\nAnswer:")
    ans = tokenize(lm.tokenizer, " the post arrives twice a week")
    base = score(lm.model, [c], [prompt], [ans])[0]
    for t in range(len(ans) - 1):
        edited = list(ans)
        edited[t + 1] = tokenize(lm.tokenizer, " zebra")[0]
        assert (score(lm.model, [c], [prompt], [edited])[0][: t + 1] - base[: t + 1]).abs().max() <= TOL / 100  # 1e-6 in float32


def test_batched_equals_unbatched(lm):
    items = []
    for j, (dl, q) in enumerate([(40, "Who?"), (130, "Which river flows there?"), (75, "When did it open?")]):
        pre = tokenize(lm.tokenizer, q + "\n") if j != 1 else None
        items.append((encode(lm.model, lm.arch, _text(dl, lm.tokenizer, seed=10 + j), pre),
                      tokenize(lm.tokenizer, f"\n\nQuestion: {q}\nAnswer:"), tokenize(lm.tokenizer, " answer number %d" % j)))
    caches, prompts, answers = map(list, zip(*items))
    batched = score(lm.model, caches, prompts, answers, batch_size=3)
    for (c, p, a), got in zip(items, batched):
        assert (got - score(lm.model, [c], [p], [a])[0]).abs().max() <= TOL


def test_right_padded_phase_a_batch_equals_each_document_alone(lm_window):
    """``encode_full_batch`` (exp07's batched training): documents of 560 (past Gemma's window of 512), 90
    and 25 tokens in one forward, a shared prefix; every layer's real entries equal the document's own run."""
    lm = lm_window
    pre = tokenize(lm.tokenizer, "Extract the facts.\n")
    docs = [_text(n, lm.tokenizer, seed=20 + n) for n in (560, 90, 25)]
    full, encs = encode_full_batch(lm.model, lm.arch, docs, pre)
    for b, d in enumerate(docs):
        one, enc = encode_full(lm.model, lm.arch, d, pre)
        assert encs[b] == enc
        n = len(enc.input_ids)
        for got, ref in zip((*full.keys, *full.values), (*one.keys, *one.values)):
            assert float((got[b : b + 1, :, :n] - ref).abs().max() / ref.abs().max()) <= TOL, b


def test_exp01_conditions_share_tokens_and_cache_lengths(lm_window):
    lm = lm_window
    samples = synthetic_qa(3, 7)
    item = priming.prepare(lm.tokenizer, lm.arch, samples[0], samples[1].query, samples[1].id)
    rows = priming.score_prepared(lm, [item])
    assert [r["condition"] for r in rows] == [c.name for c in priming.EXP01_CONDITIONS]
    assert len({r["n_doc_tokens"] for r in rows}) == 1 and len({r["n_answer_tokens"] for r in rows}) == 1
    by = {r["condition"]: r for r in rows}
    assert by["A_bare"]["cache_len"] == by["D_trunc_oracle"]["cache_len"] == by["E_trunc_random"]["cache_len"]
    assert by["B_full_oracle"]["cache_len"] == by["A_bare"]["cache_len"] + len(item.prefix_ids["query"])
    # B and C share the cache; the full oracle cache scored with the query prompt equals single pass
    one = score_single_pass(lm.model, lm.arch, item.doc_ids, item.prompt_ids["query"], item.answer_ids,
                            prefix_ids=item.prefix_ids["query"])
    assert abs(float(one.mean()) - by["C_full_repeat"]["nll"]) <= TOL
    assert all(r["nll"] > 0 for r in rows)


def test_document_longer_than_context_is_truncated_and_flagged(lm_window):
    lm = lm_window
    long_doc = " ".join(s.passage for s in synthetic_qa(400, 8))
    s = Sample("long", "Which river?", long_doc, "Shainas River")
    assert len(tokenize(lm.tokenizer, long_doc)) > lm.arch.max_positions
    item = priming.prepare(lm.tokenizer, lm.arch, s, "Other?", "o")
    assert item.flags["doc_truncated"]
    need = (lm.arch.bos_id is not None) + len(item.prefix_ids["query"]) + len(item.doc_ids) + len(item.prompt_ids["query"]) + len(item.answer_ids)
    assert need <= lm.arch.max_positions
    with pytest.raises(ValueError, match="exceeds"):
        encode_full(lm.model, lm.arch, tokenize(lm.tokenizer, long_doc))


def test_bos_policy(lm):
    if lm.name == "gemma-3-270m":
        assert lm.arch.bos_source == "tokenizer" and lm.arch.bos_id == lm.tokenizer.bos_token_id
    else:
        assert lm.arch.bos_source == "bos_token" and lm.arch.bos_id == lm.tokenizer.bos_token_id
        assert lm.tokenizer("hi")["input_ids"][0] != lm.arch.bos_id  # the tokenizer adds none itself
    full, enc = encode_full(lm.model, lm.arch, tokenize(lm.tokenizer, "A short text."))
    assert enc.input_ids[0] == lm.arch.bos_id and enc.n_anchor == 1
    assert shape(full, enc, lm.arch).length == full.length
