"""Prefix-LM masks: causal == the model's own forward; bidirectional == block attention and nothing else."""
import pytest
import torch

from lib.studies import prefixlm
from lib.kv.encode import encode as enc_encode
from lib.kv.scoring import score
from tiny import VOCAB, arch_of, build

KINDS = ("llama", "mistral", "gemma3", "qwen2")


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_causal_mask_reproduces_the_models_own_forward(kind):
    m = build(kind)
    arch = arch_of(m)
    doc, prefix = _ids(20, 1), _ids(5, 2)  # 26 tokens: past the tiny sliding window of 12
    ids = [1] + prefix + doc
    with torch.no_grad():
        own = m.base_model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state[0]
    ours = prefixlm.hidden_states(m, arch, doc, prefix, mode="causal")
    assert torch.allclose(own, ours, atol=1e-5)
    # and Phase B over the prefix-LM cache equals the usual two-phase path
    c1 = prefixlm.encode(m, arch, doc, prefix, mode="causal", keep_prefix=True)
    c2 = enc_encode(m, arch, doc, prefix, keep_prefix=True)
    q, a = _ids(4, 3), _ids(3, 4)
    assert torch.allclose(score(m, [c1], [q], [a])[0], score(m, [c2], [q], [a])[0], atol=1e-5)


def test_bidirectional_mask_structure():
    ok = prefixlm.allowed(1, 5, "bidirectional")
    assert ok[0].tolist() == [True, False, False, False, False, False]  # the anchor sees only itself
    assert ok[1:, :].all()  # block tokens see the anchor and the whole block
    okw = prefixlm.allowed(1, 5, "bidirectional", window=2)
    assert okw[3].tolist() == [False, False, True, True, True, False]
    causal = prefixlm.allowed(1, 5, "causal")
    assert torch.equal(causal, torch.tril(torch.ones(6, 6, dtype=torch.bool)))
    with pytest.raises(ValueError, match="unknown attention mode"):
        prefixlm.allowed(1, 5, "prefix")


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_bidirectional_lets_document_tokens_see_later_tokens_and_nothing_else(kind):
    m = build(kind)
    arch = arch_of(m)
    prefix, doc = _ids(4, 5), _ids(8, 6)
    later = list(doc)
    later[-1] = (later[-1] + 1) % VOCAB or 3  # change the LAST document token
    for mode, first_doc_changes in (("causal", False), ("bidirectional", True)):
        h1 = prefixlm.hidden_states(m, arch, doc, prefix, mode=mode)
        h2 = prefixlm.hidden_states(m, arch, later, prefix, mode=mode)
        assert torch.allclose(h1[0], h2[0], atol=1e-6)  # the anchor never sees the block
        first_doc = 1 + len(prefix)
        assert (not torch.allclose(h1[first_doc], h2[first_doc], atol=1e-6)) == first_doc_changes, mode
        assert (not torch.allclose(h1[1], h2[1], atol=1e-6)) == first_doc_changes, mode  # the first prefix token too
    # Phase B tokens are not part of Phase A: the cache has exactly anchor + prefix + doc entries
    c = prefixlm.encode(m, arch, doc, prefix, mode="bidirectional")
    assert c.length == 1 + len(prefix) + len(doc) and int(c.next_position[0]) == c.length
    d = prefixlm.encode(m, arch, doc, prefix, mode="bidirectional", keep_prefix=False)
    assert d.length == 1 + len(doc) and int(d.next_position[0]) == d.length


def test_gemma3_gets_one_mask_per_layer_type():
    m = build("gemma3")
    mk = prefixlm.masks(m, 1, 20, "bidirectional", torch.float32)
    assert set(mk) == {"full_attention", "sliding_attention"}
    full, sl = mk["full_attention"][0, 0], mk["sliding_attention"][0, 0]
    assert (full[5] == 0).all() and (sl[5, 17:] < 0).all() and (sl[5, :17] == 0).all()  # |5 - 17| >= 12 is cut
    assert torch.is_tensor(prefixlm.masks(build("llama"), 1, 20, "causal", torch.float32))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_causal_mask_real_models(request, name):
    lm = request.getfixturevalue(name)
    from lib.data import synthetic_qa
    from lib.kv.encode import tokenize

    s = synthetic_qa(1, 3)[0]
    doc = tokenize(lm.tokenizer, s.passage) * 5  # ~600 tokens: past Gemma's 512 window
    prefix = tokenize(lm.tokenizer, s.query + "\n")
    ids = [lm.arch.bos_id] + prefix + doc
    with torch.no_grad():
        own = lm.model.base_model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).last_hidden_state[0]
    ours = prefixlm.hidden_states(lm.model, lm.arch, doc, prefix, mode="causal")
    assert (own - ours).abs().max() / own.abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["causal", "bidirectional"])
def test_distractors_score_as_answers_on_the_same_cache(mode):
    """Oracle: each distractor NLL equals scoring that distractor as the answer, alone, on the same
    prefix-LM cache; the gold row is unchanged by adding distractors; margin and rank follow."""
    from lib.kv.engine import WorkItem
    from tiny import TinyLM

    lm = TinyLM(build("gemma3"))
    it = WorkItem("s0", "oracle", tuple(_ids(20, 1)), tuple(_ids(4, 2)), True, tuple(_ids(3, 3)), tuple(_ids(2, 4)),
                  distractor_ids=(tuple(_ids(3, 5)), tuple(_ids(1, 6))))
    plain = WorkItem("s0", "oracle", it.doc_ids, it.prefix_ids, True, it.prompt_ids, it.answer_ids)
    (row,) = prefixlm.score_items(lm, [it], (mode,), batch_size=2)
    (ref,) = prefixlm.score_items(lm, [plain], (mode,))
    assert row["token_nlls"] == pytest.approx(ref["token_nlls"], abs=1e-5) and "margin" not in ref
    cache = prefixlm.encode(lm.model, lm.arch, list(it.doc_ids), list(it.prefix_ids), mode=mode, keep_prefix=True)
    alone = [float(score(lm.model, [cache], [list(it.prompt_ids)], [list(d)])[0].mean()) for d in it.distractor_ids]
    assert row["distractor_nlls"] == pytest.approx(alone, abs=1e-5)
    assert row["margin"] == pytest.approx(sum(alone) / 2 - row["nll"], abs=1e-5)
    assert row["gold_rank"] == 1 + sum(a <= row["nll"] + 1e-5 for a in alone)


def _rel(got, ref):
    return float((got - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_batched_phase_a_equals_each_item_alone(kind):
    """Oracle: ``encode`` of each (doc, prefix) alone. Rows of different lengths (past the tiny
    sliding window of 12), an empty prefix among them, both modes, prefix kept or dropped."""
    m = build(kind)
    arch = arch_of(m)
    pairs = [(_ids(9, 1), _ids(3, 2)), (_ids(26, 3), []), (_ids(4, 5), _ids(5, 6)), (_ids(17, 7), _ids(1, 8))]
    for mode in prefixlm.MODES:
        for keep in (True, False):
            got = prefixlm.encode_batch(m, arch, pairs, mode=mode, keep_prefix=keep, pad_id=7)
            for (d, p), c in zip(pairs, got):
                ref = prefixlm.encode(m, arch, d, p, mode=mode, keep_prefix=keep)
                assert c.length == ref.length and torch.equal(c.positions, ref.positions) and c.meta == ref.meta
                err = max(_rel(a, b) for a, b in zip((*c.keys, *c.values), (*ref.keys, *ref.values)))
                assert err <= 1e-5, (kind, mode, keep, err)  # float rounding of another batch shape only
                assert c.keys[0].untyped_storage().nbytes() == c.keys[0].numel() * c.keys[0].element_size()  # own storage
    with pytest.raises(ValueError, match="no \\(doc, prefix\\) pairs"):
        prefixlm.encode_batch(m, arch, [])


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_score_items_batched_phase_a_equals_one_at_a_time(kind):
    from lib.kv.engine import WorkItem
    from tiny import TinyLM

    lm = TinyLM(build(kind))
    items = [WorkItem(f"s{i}", c, tuple(_ids(6 + 5 * i, i)), tuple(_ids(k, 10 + i)), k > 0, tuple(_ids(3, 20 + i)),
                      tuple(_ids(1 + i % 3, 30 + i)), distractor_ids=(tuple(_ids(2, 40 + i)),))
             for i in range(4) for c, k in (("bare", 0), ("oracle", 3))]
    ref = prefixlm.score_items(lm, items, phase_a_batch=1)
    got = prefixlm.score_items(lm, items, phase_a_batch=3)
    assert [(r["sample_id"], r["condition"]) for r in got] == [(r["sample_id"], r["condition"]) for r in ref]
    for g, r in zip(got, ref):
        assert g["token_nlls"] == pytest.approx(r["token_nlls"], abs=2e-6)
        assert g["distractor_nlls"] == pytest.approx(r["distractor_nlls"], abs=2e-6)
    with pytest.raises(ValueError, match="phase_a_batch must be"):
        prefixlm.score_items(lm, items, phase_a_batch=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_batched_phase_a_real_models(request, name):
    """The bundled models: batched prefix-LM Phase A equals each item alone (one row past Gemma's 512 window)."""
    lm = request.getfixturevalue(name)
    from lib.data import synthetic_qa
    from lib.kv.encode import tokenize

    ss = synthetic_qa(3, 3)
    docs = [tokenize(lm.tokenizer, s.passage) * k for s, k in zip(ss, (5, 1, 2))]
    pairs = [(d, tokenize(lm.tokenizer, s.query + "\n")) for d, s in zip(docs, ss)]
    for mode in prefixlm.MODES:
        got = prefixlm.encode_batch(lm.model, lm.arch, pairs, mode=mode)
        for (d, p), c in zip(pairs, got):
            ref = prefixlm.encode(lm.model, lm.arch, d, p, mode=mode)
            err = max(_rel(a, b) for a, b in zip((*c.keys, *c.values), (*ref.keys, *ref.values)))
            assert err < 1e-4, (name, mode, err)
