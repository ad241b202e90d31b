"""KV-cache kernels against exact oracles on tiny random configs of each architecture."""
import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from lib.kv import cache as kv
from lib.kv.encode import build_inputs, encode, fit_document
from lib.kv.rope import layer_ropes, rotate_keys
from lib.kv.scoring import lm_logits, score, score_single_pass
from tiny import KINDS, VOCAB, arch_of, build

TOL = 1e-4


@pytest.fixture(scope="module", params=KINDS)
def tiny(request):
    m = build(request.param)
    return request.param, m, arch_of(m)


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n,), generator=g).tolist()


@torch.no_grad()
def _keys_at_offset(model, ids, offset):
    past = DynamicCache()
    t = torch.tensor([ids])
    model.base_model(input_ids=t, attention_mask=torch.ones_like(t), position_ids=offset + torch.arange(len(ids))[None],
                     past_key_values=past, use_cache=True)
    return [layer.keys for layer in past.layers], [layer.values for layer in past.layers]


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_rotate_roundtrip_is_identity(tiny):
    _, m, arch = tiny
    k = torch.randn(2, 2, 7, arch.rope[0].head_dim)
    for r in arch.rope:
        back = rotate_keys(rotate_keys(k, 37, r), -37, r)
        assert _rel_err(back, k) < 1e-6


def test_rotated_keys_match_shifted_run(tiny):
    """Keys rotated by +k equal the keys of a run at position offset k, on every layer."""
    _, m, arch = tiny
    ids = [1] + _ids(40, 1)
    k0, _ = _keys_at_offset(m, ids, 0)
    for shift in (5, 123):
        ks, _ = _keys_at_offset(m, ids, shift)
        for i, r in enumerate(arch.rope):
            assert _rel_err(rotate_keys(k0[i], shift, r), ks[i]) < TOL, (i, shift)


def test_rotation_does_not_mutate_input(tiny):
    _, m, arch = tiny
    k = torch.randn(1, 2, 5, arch.rope[0].head_dim)
    before = k.clone()
    rotate_keys(k, 9, arch.rope[0])
    assert torch.equal(k, before)


def test_dropped_prefix_layer0_matches_bare(tiny):
    """After dropping a prefix and re-positioning, layer-0 keys/values equal the bare run's."""
    _, m, arch = tiny
    doc, prefix = _ids(20, 2), _ids(7, 3)
    bare = encode(m, arch, doc)
    primed = encode(m, arch, doc, prefix)
    assert primed.length == bare.length == 1 + len(doc)
    assert primed.is_contiguous and bare.is_contiguous
    assert _rel_err(primed.keys[0], bare.keys[0]) < TOL
    assert _rel_err(primed.values[0], bare.values[0]) < TOL


@pytest.mark.parametrize("doc_len", [9, 30])  # 30 > the tiny sliding windows (12)
def test_bare_two_phase_equals_single_pass(tiny, doc_len):
    _, m, arch = tiny
    doc, prompt, ans = _ids(doc_len, 4), _ids(5, 5), _ids(4, 6)
    two = score(m, [encode(m, arch, doc)], [prompt], [ans])[0]
    one = score_single_pass(m, arch, doc, prompt, ans)
    assert (two - one).abs().max() < TOL


def test_kept_prefix_equals_single_pass_with_prefix(tiny):
    _, m, arch = tiny
    doc, prefix, prompt, ans = _ids(25, 7), _ids(6, 8), _ids(4, 9), _ids(3, 10)
    c = encode(m, arch, doc, prefix, keep_prefix=True)
    assert c.length == 1 + len(prefix) + len(doc)
    two = score(m, [c], [prompt], [ans])[0]
    one = score_single_pass(m, arch, doc, prompt, ans, prefix_ids=prefix)
    assert (two - one).abs().max() < TOL


def test_scoring_never_changes_the_cache(tiny):
    _, m, arch = tiny
    c = encode(m, arch, _ids(15, 11), _ids(5, 12))
    snap = [(k.clone(), v.clone(), k.data_ptr()) for k, v in zip(c.keys, c.values)]
    first = score(m, [c], [_ids(3, 13)], [_ids(4, 14)])[0]
    second = score(m, [c], [_ids(3, 13)], [_ids(4, 14)])[0]
    assert torch.equal(first, second)
    for (k0, v0, ptr), k, v in zip(snap, c.keys, c.values):
        assert torch.equal(k0, k) and torch.equal(v0, v) and ptr == k.data_ptr()
    assert c.length == 1 + 15


def test_future_answer_token_never_changes_past_nll(tiny):
    _, m, arch = tiny
    c = encode(m, arch, _ids(12, 15))
    prompt, ans = _ids(3, 16), _ids(6, 17)
    base = score(m, [c], [prompt], [ans])[0]
    for t in range(len(ans) - 1):
        edited = list(ans)
        edited[t + 1] = (edited[t + 1] + 7) % VOCAB
        new = score(m, [c], [prompt], [edited])[0]
        assert (new[: t + 1] - base[: t + 1]).abs().max() < 1e-6
        assert (new[t + 1] - base[t + 1]).abs() > 1e-6  # the edited token itself does change


def test_batched_equals_unbatched(tiny):
    _, m, arch = tiny
    items = []
    for j, (dl, pl, al) in enumerate([(8, 3, 2), (30, 5, 6), (17, 4, 1), (3, 2, 4)]):
        pre = _ids(4, 100 + j) if j % 2 else None
        items.append((encode(m, arch, _ids(dl, 20 + j), pre), _ids(pl, 40 + j), _ids(al, 60 + j)))
    caches, prompts, answers = map(list, zip(*items))
    batched = score(m, caches, prompts, answers, batch_size=4)
    for (c, p, a), got in zip(items, batched):
        alone = score(m, [c], [p], [a], batch_size=1)[0]
        assert got.shape == (len(a),)
        assert (got - alone).abs().max() < TOL


def test_single_token_answer_has_real_nll(tiny):
    _, m, arch = tiny
    doc, prompt, ans = _ids(10, 21), _ids(3, 22), _ids(1, 23)
    nll = score(m, [encode(m, arch, doc)], [prompt], [ans])[0]
    assert nll.shape == (1,) and float(nll[0]) > 0.01
    assert (nll - score_single_pass(m, arch, doc, prompt, ans)).abs().max() < TOL


def test_soft_prefix_of_token_embeddings_equals_text_prefix(tiny):
    _, m, arch = tiny
    doc, prefix = _ids(14, 24), _ids(5, 25)
    emb = m.get_input_embeddings()(torch.tensor(prefix)).detach()
    a = encode(m, arch, doc, prefix)
    b = encode(m, arch, doc, prefix_embeds=emb)
    for ka, kb, va, vb in zip(a.keys, b.keys, a.values, b.values):
        assert _rel_err(kb, ka) < 1e-5 and _rel_err(vb, va) < 1e-5


def test_lm_logits_equal_model_logits(tiny):
    _, m, _ = tiny
    ids = torch.tensor([_ids(9, 26)])
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = lm_logits(m, m.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state)
    assert (got - ref).abs().max() < 1e-5


def test_soft_prefix_gradients_reach_only_the_prefix():
    m = build("gemma3").requires_grad_(False)  # a frozen model, as soft-prompt training uses it
    arch = arch_of(m)
    soft = (0.02 * torch.randn(4, m.config.hidden_size)).requires_grad_()
    c = encode(m, arch, _ids(10, 38), prefix_embeds=soft)
    c.values[2].sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())
    assert not encode(m, arch, _ids(10, 38), _ids(4, 39)).values[2].requires_grad


def test_lookahead_guard(tiny):
    _, m, arch = tiny
    doc, prefix = _ids(10, 27), _ids(4, 28)
    gapped = encode(m, arch, doc, prefix, compact=False)
    assert gapped.length == 11 and int(gapped.next_position[0]) == 1 + 4 + 10
    with pytest.raises(ValueError, match="look-ahead"):
        score(m, [gapped], [_ids(3, 29)], [_ids(2, 30)])
    # explicitly allowed: the un-repositioned cache is scored at its true next position
    nll = score(m, [gapped], [_ids(3, 29)], [_ids(2, 30)], allow_position_gap=True)[0]
    assert torch.isfinite(nll).all()


def test_splice_takes_values_only_at_chosen_layers(tiny):
    _, m, arch = tiny
    doc = _ids(12, 31)
    bare, primed = encode(m, arch, doc), encode(m, arch, doc, _ids(5, 32))
    n = bare.n_layers
    hyb = kv.splice(bare, primed, range(n // 2), values=True)
    for i in range(n):
        assert hyb.keys[i] is bare.keys[i]
        assert hyb.values[i] is (primed.values[i] if i < n // 2 else bare.values[i])
    full = kv.splice(bare, primed, range(n), keys=True, values=True)
    assert all(full.keys[i] is primed.keys[i] for i in range(n))
    with pytest.raises(ValueError, match="out of range"):
        kv.splice(bare, primed, [n])


def test_input_errors(tiny):
    _, m, arch = tiny
    c = encode(m, arch, _ids(5, 33))
    with pytest.raises(ValueError, match="empty answer"):
        score(m, [c], [[5]], [[]])
    with pytest.raises(ValueError, match="empty prompt"):
        score(m, [c], [[]], [[5]])
    with pytest.raises(ValueError, match="empty document"):
        encode(m, arch, [])


def test_fit_document_flags_truncation(tiny):
    _, _, arch = tiny
    ids, cut = fit_document(list(range(600)), arch, reserve=40)
    assert cut and len(ids) == arch.max_positions - 1 - 40
    ids, cut = fit_document(list(range(20)), arch, reserve=40)
    assert not cut and len(ids) == 20
    with pytest.raises(ValueError, match="exceeds"):
        encode(build("llama"), arch, list(range(3, 3 + 600)))


def test_no_bos_policy_keeps_first_doc_token_at_zero():
    m = build("llama")
    arch = arch_of(m, bos_id=None)
    doc, prefix = _ids(10, 34), _ids(3, 35)
    assert build_inputs(arch, doc, prefix).n_anchor == 0
    c = encode(m, arch, doc, prefix)
    assert c.length == len(doc) and c.is_contiguous
    two = score(m, [encode(m, arch, doc)], [_ids(2, 36)], [_ids(2, 37)])[0]
    assert (two - score_single_pass(m, arch, doc, _ids(2, 36), _ids(2, 37))).abs().max() < TOL


def test_sequence_dependent_rope_is_refused():
    m = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                     rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=2.0)))
    with pytest.raises(ValueError, match="dynamic"):
        layer_ropes(m)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_for_cache_stops_after_the_last_cache_write(kind):
    """Every cache build stops right after the last layer writes its keys and values: the cache equals a
    plain full forward's (the oracle: no stop), and that layer's MLP and the final norm never run."""
    from lib.kv.encode import decoder_layers, forward_for_cache

    m = build(kind)
    ids = torch.tensor([[1] + list(range(10, 30))])
    layers = decoder_layers(m)
    calls = []
    hooks = [layers[-1].mlp.register_forward_hook(lambda *_: calls.append("mlp")),
             layers[0].mlp.register_forward_hook(lambda *_: calls.append("mlp0"))]
    try:
        with torch.no_grad():
            ref = DynamicCache()
            m.base_model(input_ids=ids, past_key_values=ref, use_cache=True)
            assert calls == ["mlp0", "mlp"]
            calls.clear()
            past = DynamicCache()
            forward_for_cache(m, past, lambda: m.base_model(input_ids=ids, past_key_values=past, use_cache=True))
    finally:
        for h in hooks:
            h.remove()
    assert calls == ["mlp0"]  # the last layer's MLP never ran
    assert "update" not in vars(past)  # the cache's own method again
    assert len(past.layers) == len(ref.layers) == len(layers)
    for a, b in zip(past.layers, ref.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_forward_for_cache_restores_the_cache_on_error_and_checks_the_layer_count():
    from lib.kv.encode import forward_for_cache

    m = build("llama")
    past = DynamicCache()

    def boom():
        raise KeyError("inside the forward")

    with pytest.raises(KeyError, match="inside the forward"):
        forward_for_cache(m, past, boom)
    assert "update" not in vars(past)
    with pytest.raises(RuntimeError, match="cached layers"):
        forward_for_cache(m, past, lambda: None)  # a forward that never writes the cache
    with pytest.raises(ValueError, match="n_layers"):
        forward_for_cache(m, past, lambda: None, n_layers=0)
