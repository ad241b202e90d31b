"""exp07 soft prefixes: token equivalence, finite-difference gradients, frozen model, kill-and-resume."""
import numpy as np
import pytest
import torch

from lib.studies import contamination, soft
from lib.kv.engine import Engine
from lib.studies.priming import Prepared
from tiny import VOCAB, TinyLM, arch_of, build

TOL = 1e-4


def _exs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = lambda k: tuple(int(x) for x in rng.integers(3, VOCAB, k))  # noqa: E731
    return [soft.Example(f"s{i}", ids(8 + 3 * i), ids(4), ids(1 + i % 3)) for i in range(n)]


def _embed(lm, ids):
    with torch.no_grad():
        return lm.model.get_input_embeddings()(torch.tensor(ids)).float()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_soft_prefix_equal_to_token_embeddings_gives_the_token_prefix_nll(kind):
    m = build(kind)
    lm = TinyLM(m)
    ids, cutoff = [5, 6, 7, 8], 2
    exs = _exs(3)
    preps = [Prepared(e.sample_id, list(e.doc_ids), {}, {"query": list(e.prompt_ids)}, list(e.answer_ids), "", {}) for e in exs]
    ref = {r["sample_id"]: r["token_nlls"] for r in
           contamination.score_prepared(Engine(lm), preps, [f"values_early_{cutoff}"], ids, batch_size=8)}
    for e in exs:
        with torch.no_grad():
            by_ids = soft.hybrid_nll(lm, e, cutoff, prefix_ids=ids)
            by_emb = soft.hybrid_nll(lm, e, cutoff, prefix_embeds=_embed(lm, ids))
        assert torch.allclose(by_ids, by_emb, atol=TOL)
        assert np.abs(by_ids.numpy() - np.array(ref[e.sample_id])).max() <= TOL  # == exp06's values_early_<c>
    rows = soft.evaluate(lm, exs, cutoff, static_ids=ids, soft={"same": _embed(lm, ids)})
    by = {(r["sample_id"], r["condition"]): r["nll"] for r in rows}
    for e in exs:
        assert by[(e.sample_id, "vel_static")] == pytest.approx(by[(e.sample_id, "vel_soft_same")], abs=TOL)


def test_gradient_matches_finite_differences_and_reaches_only_the_prefix(monkeypatch):
    # Llama's RMSNorm computes in float32 even for float64 inputs, which makes central differences at
    # eps=1e-6 meaningless (measured: 30-60% off). Keep the norm in the input dtype so both sides are
    # float64; the path under test (soft forward, drop + re-position, splice, Phase B) is unchanged.
    from transformers.models.llama import modeling_llama

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward",
                        lambda self, x: self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)))
    m = build("llama").double()
    lm = TinyLM(m)
    for p in m.parameters():
        p.requires_grad_(False)
    ex = _exs(1, seed=3)[0]
    bare = soft.bare_cache(lm, ex)
    snapshot = [t.clone() for t in bare.values]
    g = torch.Generator().manual_seed(0)
    prefix = (torch.randn(3, m.config.hidden_size, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    loss = soft.hybrid_nll(lm, ex, 2, prefix_embeds=prefix, bare=bare).mean()
    loss.backward()
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(snapshot, bare.values))  # the bare cache was not edited in place
    eps = 1e-6
    for (i, j) in [(0, 0), (1, 7), (2, 31), (0, 63), (2, 5)]:
        with torch.no_grad():
            up, dn = prefix.detach().clone(), prefix.detach().clone()
            up[i, j] += eps
            dn[i, j] -= eps
            fd = (soft.hybrid_nll(lm, ex, 2, prefix_embeds=up, bare=bare).mean()
                  - soft.hybrid_nll(lm, ex, 2, prefix_embeds=dn, bare=bare).mean()) / (2 * eps)
        assert float(prefix.grad[i, j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9), (i, j)
    assert prefix.grad.abs().sum() > 0


def _cfg(**kw):
    base = dict(prefix_len=3, cutoff=2, lr=0.05, warmup_steps=2, grad_accum=2, epochs=2, checkpoint_every=1, seed=5)
    return soft.TrainConfig(**{**base, **kw})


def test_kill_and_resume_gives_the_same_prefix(tmp_path):
    m = build("llama")
    lm = TinyLM(m)
    exs = _exs(5)
    cfg = _cfg()
    one = dict(examples_per_forward=1)  # one example per forward (batched: tests/test_soft_batch.py)
    ref = soft.train(lm, exs, cfg, tmp_path / "ref.pt", **one)
    ck = tmp_path / "cut.pt"
    with pytest.raises(soft.Interrupted):
        soft.train(lm, exs, cfg, ck, stop_after=3, **one)  # killed mid-accumulation: micro-step 3 is lost
    with pytest.raises(soft.Interrupted):
        soft.train(lm, exs, cfg, ck, stop_after=4, **one)  # resumed, killed again
    out = soft.train(lm, exs, cfg, ck, **one)
    assert out.resumed_from_step == 6
    assert torch.allclose(out.prefix, ref.prefix, atol=1e-6)
    assert [h["loss"] for h in out.history] == pytest.approx([h["loss"] for h in ref.history], abs=1e-6)
    # 2 epochs x 5 examples, accumulation 2: 5 optimizer steps (every group is full)
    assert len(ref.history) == 5 and ref.history[-1]["micro_step"] == 10
    with pytest.raises(ValueError, match="another run .*lr"):
        soft.train(lm, exs, _cfg(lr=0.2), ck)


def test_training_lowers_the_loss_on_a_tiny_model():
    m = build("llama")
    lm = TinyLM(m)
    # values at every layer come from the soft run (cutoff = depth): the prefix's only route to the loss
    out = soft.train(lm, _exs(1), _cfg(cutoff=4, lr=0.5, epochs=60, grad_accum=1, warmup_steps=1, init_std=0.5, clip=10.0))
    first, last = out.history[0]["loss"], np.mean([h["loss"] for h in out.history[-5:]])
    assert last < first - 0.3, (first, last)  # measured 4.81 -> 4.26
    assert all(h["grad_norm"] >= 0 and h["prefix_norm"] > 0 for h in out.history)


def test_short_last_group_and_config_validation():
    m = build("llama")
    lm = TinyLM(m)
    out = soft.train(lm, _exs(3), _cfg(epochs=1, grad_accum=2))
    assert [h["micro_step"] for h in out.history] == [2, 3]
    with pytest.raises(ValueError, match="prefix_len"):
        soft.TrainConfig(prefix_len=0, cutoff=1)
    with pytest.raises(ValueError, match="init_ids"):
        soft.TrainConfig(prefix_len=3, cutoff=1, init="tokens", init_ids=(1, 2))
    with pytest.raises(ValueError, match="cutoff 9 exceeds"):
        soft.train(lm, _exs(1), _cfg(cutoff=9))
    with pytest.raises(ValueError, match="cutoff 0"):
        soft.hybrid(soft.bare_cache(lm, _exs(1)[0]), soft.bare_cache(lm, _exs(1)[0]), 0)


def test_cutoff_one_is_refused_because_layer0_values_ignore_the_prefix():
    m = build("llama")
    with pytest.raises(ValueError, match="layer-0 values"):
        soft.train(TinyLM(m), _exs(1), _cfg(cutoff=1))


def test_success_verdicts_judge_the_ci_not_the_point_estimate():
    rows = [{"cond": "vel_soft_fact", "d": 0.30, "ci_low": 0.26, "ci_high": 0.34},
            {"cond": "vel_soft_random", "d": 0.12, "ci_low": 0.02, "ci_high": 0.22}]
    got = {r["cond"]: r["verdict"] for r in soft.success_verdicts(rows)}
    assert got == {"vel_soft_fact": "met", "vel_soft_random": "undecided"}
    rows[0].update(d=0.2, ci_low=0.15, ci_high=0.24)
    assert soft.success_verdicts(rows)[0]["verdict"] == "not met"
    with pytest.raises(ValueError, match="vel_soft_random"):
        soft.success_verdicts(rows[:1])


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_evaluation_distractors_score_as_answers_on_the_same_cache(kind):
    """Each distractor NLL equals evaluating that distractor as the gold answer on the same hybrid
    cache; adding distractors leaves the gold NLL unchanged; the rows carry margin, rank and top-1."""
    from dataclasses import replace

    from lib.kv import margin

    lm = TinyLM(build(kind))
    ids, cutoff = [5, 6, 7, 8], 2
    plain = _exs(3)
    dis = [(tuple(range(20, 22)), tuple(range(30, 33))), ((40,), (41, 42)), ((9, 9, 9), (11,))]
    exs = [replace(e, distractor_ids=d, distractor_samples=("x", "y")) for e, d in zip(plain, dis)]
    prefixes = {"same": _embed(lm, ids), "other": torch.randn(4, lm.model.config.hidden_size) * 0.02}
    rows = soft.evaluate(lm, exs, cutoff, static_ids=ids, soft=prefixes, batch_size=5)
    base = {(r["sample_id"], r["condition"]): r for r in soft.evaluate(lm, plain, cutoff, static_ids=ids, soft=prefixes)}
    assert len(rows) == 3 * 4
    for r in rows:
        b = base[(r["sample_id"], r["condition"])]
        assert np.allclose(r["token_nlls"], b["token_nlls"], atol=2e-6) and "margin" not in b  # other batch: float noise only
        e = next(x for x in exs if x.sample_id == r["sample_id"])
        alone = [soft.evaluate(lm, [replace(e, answer_ids=d, distractor_ids=())], cutoff, static_ids=ids, soft=prefixes)
                 for d in e.distractor_ids]
        want = [next(x["nll"] for x in a if x["condition"] == r["condition"]) for a in alone]
        assert np.allclose(r["distractor_nlls"], want, atol=2e-6)
        assert r["distractor_samples"] == ["x", "y"]
        want = margin.candidate_stats(r["nll"], want, 1e-5)
        assert (r["gold_rank"], r["top1"]) == (want["gold_rank"], want["top1"]) and r["margin"] == pytest.approx(want["margin"], abs=4e-6)


@pytest.mark.slow
def test_examples_use_the_given_query_template(smollm2):
    from lib.data.core import Sample

    lm = smollm2
    s = Sample(id="a", query="who?", passage="Some passage text here.", answer="Bob")
    seed = soft.examples(lm, [s], 3, prompt_query=soft.SEED_PROMPT)[0]
    default = soft.examples(lm, [s], 3)[0]
    assert list(seed.prompt_ids) == lm.tokenizer("\nQuery: who?\nAnswer:", add_special_tokens=False)["input_ids"]
    assert seed.prompt_ids != default.prompt_ids and seed.doc_ids == default.doc_ids
    with pytest.raises(ValueError, match="query"):
        soft.examples(lm, [s], 3, prompt_query="no field")


@pytest.mark.slow
def test_examples_draw_distractors_tokenized_as_the_gold_answer(smollm2):
    """``n_distractors`` gives each example other articles' answers, tokenized after the same prompt
    exactly as ``priming.prepare`` tokenizes them; 0 gives none."""
    from lib.data.core import Sample
    from lib.studies import priming

    lm = smollm2
    ss = [Sample(id=f"q{i}", query=f"what is item {i}?", passage=f"Item {i} is a thing number {i}.", answer=a,
                 meta={"article": f"a{i % 3}"}) for i, a in enumerate(["Paris", "1912", "Bob Smith", "blue", "42", "Rome"])]
    exs = soft.examples(lm, ss, 3, prompt_query=soft.SEED_PROMPT, n_distractors=2, seed=7)
    pairs = priming.distractor_pairs(ss, 2, 7)
    for s, e in zip(ss, exs):
        p = priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id, pairs[s.id], prompt_query=soft.SEED_PROMPT)
        assert [list(d) for d in e.distractor_ids] == p.distractor_ids and len(e.distractor_ids) == 2
        assert list(e.distractor_samples) == [sid for sid, _ in pairs[s.id]]
        assert all(ss[int(o[1:])].meta["article"] != s.meta["article"] for o in e.distractor_samples)
    plain = soft.examples(lm, ss, 3, prompt_query=soft.SEED_PROMPT)
    assert all(e.distractor_ids == () for e in plain)
    assert [(e.doc_ids, e.answer_ids) for e in plain] == [(e.doc_ids, e.answer_ids) for e in exs]


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gemma3_mm", "neox"])
def test_early_stopped_phase_a_equals_the_full_forward_on_its_layers(kind):
    from lib.kv import encode as enc_mod

    m = build(kind)
    arch = arch_of(m)
    doc, pre = list(range(10, 40)), [5, 6, 7]
    full, _ = enc_mod.encode_full(m, arch, doc, pre)
    for k in (1, 2, arch.n_layers):
        part, _ = enc_mod.encode_full(m, arch, doc, pre, n_layers=k)
        assert part.n_layers == k
        assert all(torch.equal(a, b) for a, b in zip(part.keys, full.keys[:k]))
        assert all(torch.equal(a, b) for a, b in zip(part.values, full.values[:k]))
    with pytest.raises(ValueError, match="n_layers"):
        enc_mod.encode_full(m, arch, doc, pre, n_layers=arch.n_layers + 1)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_fast_hybrid_equals_the_spliced_full_primed_cache(kind):
    m = build(kind)
    lm = TinyLM(m)
    ex = _exs(2)[1]
    bare = soft.bare_cache(lm, ex)
    emb = _embed(lm, [5, 6, 7])
    for cutoff in (1, 3, lm.arch.n_layers):
        slow = soft.hybrid(bare, soft.primed_cache(lm, ex, prefix_embeds=emb), cutoff)
        fast = soft.hybrid_from_values(bare, soft.primed_values(lm, ex, cutoff, prefix_embeds=emb))
        assert all(torch.equal(a, b) for a, b in zip(slow.values, fast.values))
        assert all(torch.equal(a, b) for a, b in zip(slow.keys, fast.keys))
        assert torch.equal(slow.positions, fast.positions)


def test_fast_training_follows_the_reference_trajectory():
    m = build("gemma3")
    lm = TinyLM(m)
    exs = _exs(5)
    cfg = _cfg(cutoff=3, epochs=2)
    ref = soft.train(lm, exs, cfg, fast=False, bare_cache_gb=0)
    got = soft.train(lm, exs, cfg, examples_per_forward=1)  # early-stopped primed forward, bare caches reused across epochs
    assert [h["loss"] for h in got.history] == pytest.approx([h["loss"] for h in ref.history], rel=1e-5)
    assert torch.allclose(got.prefix, ref.prefix, rtol=1e-5, atol=1e-7)
    cached = soft.BareCaches(lm, 1.0)
    a, b = cached.get(0, exs[0]), cached.get(0, exs[0])
    assert a is b and (cached.hits, cached.misses) == (1, 1)
    none = soft.BareCaches(lm, 0)
    assert none.get(0, exs[0]) is not none.get(0, exs[0])


def test_article_splits_share_no_article_and_say_what_they_hold(tmp_path):
    """exp07 on a one-split registry set (SQuAD v1.1 dev): TRAIN_SPLIT = EVAL_SPLIT = "articles"
    trains and evaluates on disjoint articles; too few samples on a side raises."""
    import json

    from test_registry import _squad_doc

    f = tmp_path / "squad.json"
    f.write_text(json.dumps(_squad_doc(n_articles=6, n_pars=2, n_q=3)))  # 6 articles x 6 questions
    tr, ev = soft.load_splits("squad_v1.1", 10, 5, train_split="articles", eval_split="articles", seed=3, source=str(f))
    assert len(tr.samples) == 10 and len(ev.samples) == 5
    assert not {s.meta["article"] for s in tr.samples} & {s.meta["article"] for s in ev.samples}
    assert "train side" in tr.split and "eval side" in ev.split
    with pytest.raises(ValueError, match="articles"):
        soft.load_splits("squad_v1.1", 30, 30, train_split="articles", eval_split="articles", source=str(f))
    with pytest.raises(ValueError, match="both"):
        soft.load_splits("squad_v1.1", 10, 5, train_split="articles", eval_split="", source=str(f))

