"""exp07's batched training path (``lib.studies.soft.batch``) against the one-example-per-forward path."""
import numpy as np
import pytest
import torch

from lib.kv import encode as enc_mod
from lib.studies import soft
from lib.studies.soft import batch
from tiny import VOCAB, TinyLM, arch_of, build


def _exs(n=4, seed=0):
    """Documents of 8, 11, 14, ... tokens (past the tiny models' window of 12), answers of 1-3 tokens."""
    rng = np.random.default_rng(seed)
    ids = lambda k: tuple(int(x) for x in rng.integers(3, VOCAB, k))  # noqa: E731
    return [soft.Example(f"s{i}", ids(8 + 3 * i), ids(3 + i % 2), ids(1 + i % 3)) for i in range(n)]


def _prefix(m, p=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, m.config.get_text_config().hidden_size, generator=g) * 0.5


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gemma3_mm", "mistral", "neox"])
def test_batched_phase_a_equals_each_document_alone(kind):
    m = build(kind)
    arch = arch_of(m)
    docs = [list(range(10, 10 + k)) for k in (9, 20, 4, 15)]
    for pre in ({"prefix_ids": [5, 6, 7]}, {"prefix_embeds": _prefix(m)}, {}):
        for n_layers in (None, 2):
            full, encs = enc_mod.encode_full_batch(m, arch, docs, n_layers=n_layers, **pre)
            assert full.batch == len(docs) and full.n_layers == (n_layers or arch.n_layers)
            for b, d in enumerate(docs):
                one, enc = enc_mod.encode_full(m, arch, d, n_layers=n_layers, **pre)
                assert encs[b] == enc
                n = len(enc.input_ids)
                for got, ref in zip((*full.keys, *full.values), (*one.keys, *one.values)):
                    err = float((got[b : b + 1, :, :n] - ref).abs().max() / ref.abs().max())
                    assert err <= 1e-5, (kind, pre.keys(), n_layers, b, err)  # measured <= 8e-7
    with pytest.raises(ValueError, match="no documents"):
        enc_mod.encode_full_batch(m, arch, [])


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_batched_hybrid_nll_and_gradient_equal_one_at_a_time(kind):
    m = build(kind)
    lm = TinyLM(m)
    for p in m.parameters():
        p.requires_grad_(False)
    exs, cutoff = _exs(4), 3
    bares = [soft.bare_cache(lm, e) for e in exs]
    prefix = _prefix(m).requires_grad_(True)
    got = batch.hybrid_nll_batch(lm, exs, cutoff, bares, prefix_embeds=prefix)
    sum(t.mean() for t in got).backward()
    g_batch, prefix.grad = prefix.grad.clone(), None
    for e, b, t in zip(exs, bares, got):
        ref = soft.hybrid_nll(lm, e, cutoff, prefix_embeds=prefix, bare=b)
        assert t.shape == ref.shape and torch.allclose(t, ref, rtol=1e-5, atol=1e-6)
        ref.mean().backward()
    assert torch.allclose(g_batch, prefix.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation (no autograd) and token prefixes go through the same path
        by_ids = batch.hybrid_nll_batch(lm, exs, cutoff, bares, prefix_ids=[5, 6, 7])
        for e, b, t in zip(exs, bares, by_ids):
            assert torch.allclose(t, soft.hybrid_nll(lm, e, cutoff, prefix_ids=[5, 6, 7], bare=b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bare caches"):
        batch.hybrid_nll_batch(lm, exs, cutoff, bares[:2], prefix_embeds=prefix)


def test_pads_never_leak_into_real_tokens(monkeypatch):
    """Another pad token id (Phase A's right pads and Phase B's new-token pads) and other contents in
    Phase B's left-padded cache slots leave every loss and gradient bit for bit unchanged."""
    from lib.kv import cache as kv

    m = build("gemma3")
    lm = TinyLM(m)
    for p in m.parameters():
        p.requires_grad_(False)
    exs = _exs(4)
    bares = [soft.bare_cache(lm, e) for e in exs]

    def run(pad_id):
        prefix = _prefix(m).requires_grad_(True)
        nll = batch.hybrid_nll_batch(lm, exs, 3, bares, prefix_embeds=prefix, pad_id=pad_id)
        sum(t.mean() for t in nll).backward()
        return [t.detach() for t in nll], prefix.grad

    ref_nll, ref_grad = run(0)
    real_pad = kv._left_pad_cat

    def garbage_pad(ts, lmax):
        out = real_pad(ts, lmax)
        fill = torch.full_like(out, 1e3)
        for b, t in enumerate(ts):
            fill[b, :, lmax - t.shape[2]:] = 0
        return out + fill  # real slots unchanged (+0), pad slots hold 1e3 instead of 0

    for pad_id, patch in ((VOCAB - 1, False), (0, True)):
        if patch:
            monkeypatch.setattr(kv, "_left_pad_cat", garbage_pad)
        nll, grad = run(pad_id)
        assert all(torch.equal(a, b) for a, b in zip(nll, ref_nll)), (pad_id, patch)
        assert torch.equal(grad, ref_grad), (pad_id, patch)


def _cfg(**kw):
    base = dict(prefix_len=3, cutoff=3, lr=0.05, warmup_steps=2, grad_accum=4, epochs=2, checkpoint_every=1, seed=5)
    return soft.TrainConfig(**{**base, **kw})


def _same_run(got, ref):
    assert [h["micro_step"] for h in got.history] == [h["micro_step"] for h in ref.history]
    assert [h["epoch"] for h in got.history] == [h["epoch"] for h in ref.history]
    assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in ref.history], rel=1e-5)
    # relative to the prefix's scale: Adam divides by sqrt(v), so rounding in a near-zero gradient entry moves
    # that entry by more than its own 1e-5 (measured: max |diff| 4.7e-7 on a prefix of max |x| 0.19)
    assert float((got.prefix - ref.prefix).abs().max()) <= 1e-5 * float(ref.prefix.abs().max())


def test_batched_training_follows_the_one_at_a_time_trajectory():
    m = build("gemma3")
    lm = TinyLM(m)
    exs = _exs(7)  # 7 per epoch, 4 per optimizer step: a step spans the epoch boundary, the last one is short
    cfg = _cfg()
    ref = soft.train(lm, exs, cfg, examples_per_forward=1)
    assert len(ref.history) == 4 and ref.history[-1]["micro_step"] == 14
    for e in (2, 3, 4, 8, None):  # 3: forwards of 3 + 1 per step; 8: capped at the optimizer step's 4; None: the default
        _same_run(soft.train(lm, exs, cfg, examples_per_forward=e), ref)
    _same_run(soft.train(lm, exs, cfg, fast=False, bare_cache_gb=0), ref)  # the reference path, same trajectory
    with pytest.raises(ValueError, match="examples_per_forward"):
        soft.train(lm, exs, cfg, examples_per_forward=0)
    with pytest.raises(ValueError, match="fast path only"):
        soft.train(lm, exs, cfg, fast=False, examples_per_forward=2)


def test_batched_kill_and_resume_gives_the_same_prefix(tmp_path):
    m = build("gemma3")
    lm = TinyLM(m)
    exs, cfg = _exs(5), _cfg(grad_accum=4, checkpoint_every=1)
    ref = soft.train(lm, exs, cfg, tmp_path / "ref.pt", examples_per_forward=2)
    ck = tmp_path / "cut.pt"
    with pytest.raises(soft.Interrupted):
        soft.train(lm, exs, cfg, ck, stop_after=6, examples_per_forward=2)  # killed mid-step: micro-steps 5-6 lost
    out = soft.train(lm, exs, cfg, ck, examples_per_forward=3)  # resumed with another knob: not part of the run
    assert out.resumed_from_step == 4
    _same_run(out, ref)


@pytest.mark.slow
def test_batched_training_on_gemma3_270m(gemma3):
    """The bundled Gemma 3 (sliding + global layers, per-layer RoPE): documents of different lengths,
    two optimizer steps of four examples, one forward per step against one per example."""
    from lib.data import load_samples
    from real_env import EXACT, TOL

    lm = gemma3
    exs = soft.examples(lm, load_samples("synthetic", 8, seed=3).samples, 7)
    assert len({len(e.doc_ids) for e in exs}) > 1
    cfg = soft.TrainConfig(prefix_len=7, cutoff=8, lr=0.1, warmup_steps=1, grad_accum=4, epochs=1, checkpoint_every=10, seed=1)
    ref = soft.train(lm, exs, cfg, examples_per_forward=1)
    got = soft.train(lm, exs, cfg, examples_per_forward=4)
    rel = 1e-5 if EXACT else 5e-2
    assert len(ref.history) == 2
    # the batched path's one-pass LM head sums the 262k-token log-sum-exp in another order: float32 rounding of
    # ~3e-5 nats on a 0.9-nat loss (the one pass is the closer to float64: tests/test_headloss.py), inside TOL
    assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in ref.history], rel=rel, abs=TOL)
    with torch.no_grad():
        bares = [soft.bare_cache(lm, e) for e in exs[:4]]
        nll = batch.hybrid_nll_batch(lm, exs[:4], cfg.cutoff, bares, prefix_embeds=got.prefix)
        for e, b, t in zip(exs[:4], bares, nll):
            one = soft.hybrid_nll(lm, e, cfg.cutoff, prefix_embeds=got.prefix, bare=b)
            assert torch.allclose(t, one, rtol=rel, atol=1e-4 if EXACT else 0.25)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_batched_evaluation_equals_one_example_at_a_time(kind):
    """exp07's evaluation with several examples per Phase A forward (primed forwards stopped at the
    cutoff) against one example at a time with full forwards: same rows, NLLs and distractor NLLs."""
    from dataclasses import replace

    m = build(kind)
    lm = TinyLM(m)
    exs = [replace(e, distractor_ids=((11, 12), (13,)), distractor_samples=("x", "y")) for e in _exs(5)]
    ids, cutoff = [5, 6, 7], 2
    prefixes = {"a": _prefix(m, 4, seed=1), "b": _prefix(m, 2, seed=2)}
    ref = soft.evaluate(lm, exs, cutoff, static_ids=ids, soft=prefixes, phase_a_batch=1)
    got = soft.evaluate(lm, exs, cutoff, static_ids=ids, soft=prefixes, phase_a_batch=3)
    assert [(r["sample_id"], r["condition"]) for r in got] == [(r["sample_id"], r["condition"]) for r in ref]
    assert len(got) == 5 * 4
    for g, r in zip(got, ref):
        assert np.allclose(g["token_nlls"], r["token_nlls"], atol=2e-6), (g["condition"], g["token_nlls"], r["token_nlls"])
        assert np.allclose(g["distractor_nlls"], r["distractor_nlls"], atol=2e-6)
    with pytest.raises(ValueError, match="phase_a_batch must be"):
        soft.evaluate(lm, exs, cutoff, static_ids=ids, soft=prefixes, phase_a_batch=0)


@pytest.mark.slow
def test_batched_evaluation_real_model(gemma3):
    """Gemma 3 270M (sliding-window layers, the exp07 model): batched evaluation equals one at a time."""
    from lib.data import synthetic_qa
    from lib.kv.encode import tokenize

    tok = lambda t: tuple(tokenize(gemma3.tokenizer, t))  # noqa: E731
    exs = [soft.Example(s.id, tok(s.passage) * k, tok(f"\nQuestion: {s.query}\nAnswer:"), tok(" " + s.answer))
           for s, k in zip(synthetic_qa(3, 5), (1, 6, 2))]  # one document past the 512 window
    ids = list(tok("Extract the key facts:"))
    prefixes = {"s": gemma3.model.get_input_embeddings()(torch.tensor(ids)).detach().float()}
    ref = soft.evaluate(gemma3, exs, 8, static_ids=ids, soft=prefixes, phase_a_batch=1)
    got = soft.evaluate(gemma3, exs, 8, static_ids=ids, soft=prefixes, phase_a_batch=3)
    for g, r in zip(got, ref):
        assert (g["sample_id"], g["condition"]) == (r["sample_id"], r["condition"])
        assert abs(g["nll"] - r["nll"]) <= 1e-4 * max(1.0, abs(r["nll"])), (g["condition"], g["nll"], r["nll"])


@pytest.mark.slow
def test_batched_training_gradient_is_exact_in_float64_on_gemma3(monkeypatch):
    """The bundled Gemma 3 270M in float64 (RMSNorm kept in float64): the batched path's NLL and prefix
    gradient equal one example per forward to 1e-9 relative. In float32 the same comparison differs by
    up to about 1.5e-4 relative in the gradient (lib.tools.bench --design exp07train): rounding, not
    the batching, which this exact oracle shows."""
    from transformers.models.gemma3 import modeling_gemma3

    from lib.data import load_samples
    from lib.kv.models import load_model

    monkeypatch.setattr(modeling_gemma3.Gemma3RMSNorm, "forward", lambda self, x: self._norm(x) * (1.0 + self.weight))
    lm = load_model("gemma-3-270m", dtype="float32")
    lm.model.double()
    for p in lm.model.parameters():
        p.requires_grad_(False)
    exs = soft.examples(lm, load_samples("synthetic", 4, seed=42).samples, 8)
    cutoff = 8
    bares = [soft.bare_cache(lm, e) for e in exs]
    g = torch.Generator().manual_seed(0)
    prefix = (torch.randn(8, lm.model.config.get_text_config().hidden_size, generator=g, dtype=torch.float64) * 0.02).requires_grad_(True)
    one = [soft.hybrid_nll(lm, e, cutoff, prefix_embeds=prefix, bare=b) for e, b in zip(exs, bares)]
    sum(t.mean() for t in one).backward()
    g_one, prefix.grad = prefix.grad.clone(), None
    many = batch.hybrid_nll_batch(lm, exs, cutoff, bares, prefix_embeds=prefix)
    sum(t.mean() for t in many).backward()
    for a, b in zip(one, many):
        assert float((a - b).abs().max() / a.abs().max()) <= 1e-9
    assert float((prefix.grad - g_one).abs().max() / g_one.abs().max()) <= 1e-9


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_bare_caches_of_a_step_in_one_forward_equal_one_at_a_time(kind):
    """``BareCaches.get_many``: the missing caches of a step in one batched forward, equal to ``bare_cache`` one
    example at a time (float rounding); kept ones are reused, a repeated example (a step across an epoch
    boundary) is served twice, and nothing is kept at budget 0."""
    lm = TinyLM(build(kind))
    exs = _exs(5)
    assert len({len(e.doc_ids) for e in exs}) > 1
    one = [soft.bare_cache(lm, e) for e in exs]
    kept = soft.BareCaches(lm, 1.0)
    got = kept.get_many([(0, exs[0]), (3, exs[3]), (1, exs[1])])
    for c, i in zip(got, (0, 3, 1)):
        assert c.length == one[i].length
        for a, b in zip((*c.keys, *c.values), (*one[i].keys, *one[i].values)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # rounding: measured <= 2e-6 on entries up to 3.2
        assert torch.equal(c.positions, one[i].positions)
    assert (kept.hits, kept.misses) == (0, 3)
    again = kept.get_many([(3, exs[3]), (4, exs[4])])
    assert again[0] is got[1] and (kept.hits, kept.misses) == (1, 4)
    none = soft.BareCaches(lm, 0)
    twice = none.get_many([(2, exs[2]), (4, exs[4]), (2, exs[2])])
    assert twice[0] is twice[2] and none.kept == {} and none.misses == 3
