"""exp06 hybrids: identities between conditions, batched == unbatched, bare == single pass, primed == engine."""
import numpy as np
import torch
import pytest

from lib.studies import contamination as C
from lib.kv.engine import Engine, WorkItem
from lib.studies.priming import Prepared
from lib.kv.scoring import score_single_pass
from tiny import VOCAB, TinyLM, arch_of, build

TOL = 1e-4


def _preps(n=3):
    rng = np.random.default_rng(0)
    ids = lambda k: [int(x) for x in rng.integers(3, VOCAB, k)]  # noqa: E731
    return [Prepared(f"s{i}", ids(9 + 5 * i), {}, {"query": ids(4 + i)}, ids(1 + i), "", {"doc_truncated": False})
            for i in range(n)]


def _by(rows):
    return {(r["sample_id"], r["condition"]): np.array(r["token_nlls"]) for r in rows}


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_hybrid_identities_and_oracles_tiny(kind):
    m = build(kind)
    lm = TinyLM(m)
    n = lm.arch.n_layers
    names = C.condition_names(list(range(1, n))) + ["values_early_0", f"values_early_{n}", "values_late_0"]
    prefix = [5, 6, 7, 8, 9]
    preps = _preps()
    rows = C.score_prepared(Engine(lm), preps, names, prefix, batch_size=64)
    one = C.score_prepared(Engine(lm), preps, names, prefix, batch_size=1)
    by, by1 = _by(rows), _by(one)
    for k in by:  # batching across hybrids changes nothing
        assert np.abs(by[k] - by1[k]).max() <= TOL, k
    eng_rows = Engine(lm).score_items([WorkItem(p.sample_id, "trunc", tuple(p.doc_ids), tuple(prefix), False,
                                                tuple(p.prompt_ids["query"]), tuple(p.answer_ids)) for p in preps])
    for p, er in zip(preps, eng_rows):
        s = p.sample_id
        single = score_single_pass(m, lm.arch, p.doc_ids, p.prompt_ids["query"], p.answer_ids).numpy()
        assert np.abs(by[(s, "bare")] - single).max() <= TOL  # bare == one forward pass
        assert np.abs(by[(s, "primed")] - np.array(er["token_nlls"])).max() <= TOL  # primed == the engine's truncated prefix
        assert np.array_equal(by[(s, "values_early_0")], by[(s, "bare")])
        assert np.array_equal(by[(s, f"values_early_{n}")], by[(s, "values_only")])
        assert np.array_equal(by[(s, "values_late_0")], by[(s, "values_only")])
        assert not np.array_equal(by[(s, "values_only")], by[(s, "bare")])  # the prefix does reach the values
        assert not np.array_equal(by[(s, "keys_only")], by[(s, "bare")])


def test_hybrid_composition_tiny():
    """keys_only's keys + values_only's values rebuild the primed cache exactly; early + late split the layers."""
    from lib.kv import cache as kv
    from lib.kv.encode import encode

    m = build("llama")
    arch = arch_of(m)
    doc, prefix = list(range(10, 30)), [5, 6, 7]
    bare, primed = encode(m, arch, doc), encode(m, arch, doc, prefix)
    k, v = C.hybrid("keys_only", bare, primed), C.hybrid("values_only", bare, primed)
    both = kv.splice(k, v, range(arch.n_layers), values=True)
    assert all(a is b for a, b in zip(both.keys, primed.keys)) and all(a is b for a, b in zip(both.values, primed.values))
    e, l_ = C.hybrid("values_early_2", bare, primed), C.hybrid("values_late_2", bare, primed)
    for i in range(arch.n_layers):
        assert (e.values[i] is primed.values[i]) == (i < 2) and (l_.values[i] is primed.values[i]) == (i >= 2)
        assert e.keys[i] is bare.keys[i] and l_.keys[i] is bare.keys[i]


def test_parse_and_errors():
    assert C.parse_cutoffs("all", 4) == [1, 2, 3]
    assert C.parse_cutoffs("3, 1", 6) == [1, 3]
    for bad in ("0", "6", "x", ""):
        with pytest.raises(ValueError, match="cutoff|no cutoff"):
            C.parse_cutoffs(bad, 6)
    m = build("llama")
    arch = arch_of(m)
    from lib.kv.encode import encode

    bare = encode(m, arch, [10, 11, 12])
    with pytest.raises(ValueError, match="unknown hybrid condition 'values_mid_2'"):
        C.hybrid("values_mid_2", bare, bare)
    with pytest.raises(ValueError, match="unknown hybrid"):
        C.hybrid(f"values_early_{arch.n_layers + 1}", bare, bare)


def test_best_cutoff_finds_the_planted_optimum_and_reports_an_honest_split_half():
    rng = np.random.default_rng(0)
    n, cutoffs = 300, [1, 2, 3, 4, 5]
    bare = rng.normal(2, 0.5, n)
    effect = {1: 0.0, 2: 0.05, 3: 0.15, 4: 0.05, 5: 0.0}
    nll = {"bare": bare, **{f"values_early_{c}": bare - effect[c] + rng.normal(0, 0.2, n) for c in cutoffs}}
    r = C.best_cutoff(nll, cutoffs, n_boot=200, seed=0)
    assert r["cutoff"] == 3 and r["cutoff_ci"][0] <= 3 <= r["cutoff_ci"][1]
    assert r["d_ci"][0] < r["d"] < r["d_ci"][1] and r["split_half_d"] > 0.3
    assert abs(sum(r["cutoff_share"].values()) - 1) < 1e-9
    # with no effect anywhere, the chosen cutoff looks good on its own samples but not on the other half
    null = {"bare": bare, **{f"values_early_{c}": bare + rng.normal(0, 0.2, n) for c in cutoffs}}
    z = C.best_cutoff(null, cutoffs, n_boot=200, seed=0)
    assert z["split_half_d"] < z["d"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen2"])
def test_first_token_hybrids_real_models(request, name):
    """On the bundled models (real anchors: Gemma's tokenizer BOS, SmolLM2's prepended BOS, Qwen's eos
    anchor): the two position hybrids partition values_only's entries exactly, and the anchor's values are
    the same in the bare and the primed cache (position 0 sees only itself)."""
    from lib.kv import cache as kv
    from lib.kv.encode import encode, tokenize
    from lib.data import synthetic_qa

    lm = request.getfixturevalue(name)
    s = synthetic_qa(1, 3)[0]
    doc, prefix = tokenize(lm.tokenizer, s.passage), C.prefix_ids(lm.tokenizer, "static_fact")
    with torch.no_grad():
        bare, primed = encode(lm.model, lm.arch, doc), encode(lm.model, lm.arch, doc, prefix)
    a = 0 if lm.arch.bos_id is None else 1
    assert a == 1
    first = C.hybrid("values_first_token", bare, primed, n_anchor=a)
    both = kv.splice(C.hybrid("values_except_first", bare, primed, n_anchor=a), first, range(lm.arch.n_layers), entries=[a])
    pboth = kv.splice(C.hybrid("primed_except_first", bare, primed, n_anchor=a),
                      C.hybrid("primed_first_token", bare, primed, n_anchor=a), range(lm.arch.n_layers), keys=True, entries=[a])
    for i in range(lm.arch.n_layers):
        assert torch.equal(both.values[i], primed.values[i])
        assert torch.equal(pboth.keys[i], primed.keys[i]) and torch.equal(pboth.values[i], primed.values[i])
        assert torch.allclose(bare.values[i][:, :, 0], primed.values[i][:, :, 0], atol=1e-4, rtol=1e-4)
    assert max(float((primed.values[i][:, :, a] - bare.values[i][:, :, a]).abs().max()) for i in range(lm.arch.n_layers)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_hybrids_real_models(request, name):
    from lib.studies import conditions
    from lib.data import synthetic_qa

    lm = request.getfixturevalue(name)
    samples = synthetic_qa(2, 11)
    n = lm.arch.n_layers
    names = ["bare", "primed", "values_only", "keys_only", f"values_early_{n}", "values_late_0", "values_early_0"]
    prefix = C.prefix_ids(lm.tokenizer, "static_fact")
    eng = Engine(lm)
    by = _by(C.score_samples(eng, samples, names, prefix))
    items = conditions.build_items(lm, samples, conditions.get(["bare", "static_fact"]))
    ref = _by(Engine(lm).score_items(items))
    for s in samples:
        assert np.abs(by[(s.id, "bare")] - ref[(s.id, "bare")]).max() <= TOL
        assert np.abs(by[(s.id, "primed")] - ref[(s.id, "static_fact")]).max() <= TOL
        assert np.array_equal(by[(s.id, f"values_early_{n}")], by[(s.id, "values_only")])
        assert np.array_equal(by[(s.id, "values_late_0")], by[(s.id, "values_only")])
        assert np.array_equal(by[(s.id, "values_early_0")], by[(s.id, "bare")])
    # prompt sharing on the real model: gold and distractor NLLs as when each candidate re-runs the query
    a, b = samples
    dis = {a.id: [(b.id, b.answer), ("x", "the year 1850")], b.id: [(a.id, a.answer), ("x", "the year 1850")]}
    shared = C.score_samples(Engine(lm), samples, names, prefix, distractors=dis)
    plain = C.score_samples(Engine(lm), samples, names, prefix, distractors=dis, share_prompt=False)
    for x, y in zip(shared, plain, strict=True):
        assert len(x["distractor_nlls"]) == 2
        assert np.abs(np.array(x["token_nlls"]) - np.array(y["token_nlls"])).max() <= TOL
        assert np.abs(np.array(x["distractor_nlls"]) - np.array(y["distractor_nlls"])).max() <= TOL
        assert np.abs(np.array(x["token_nlls"]) - by[(x["sample_id"], x["condition"])]).max() <= TOL


def test_layer0_values_do_not_depend_on_the_prefix_tiny():
    """values_early_1 swaps only layer-0 values, which are projections of each token's own embedding."""
    from lib.kv.encode import encode

    for kind in ("llama", "gemma3"):
        m = build(kind)
        arch = arch_of(m)
        doc = list(range(10, 40))
        bare, primed = encode(m, arch, doc), encode(m, arch, doc, [5, 6, 7, 8])
        assert torch.allclose(bare.values[0], primed.values[0], atol=1e-6)
        assert not torch.allclose(bare.values[1], primed.values[1], atol=1e-4)


def test_best_cutoff_ignores_a_cutoff_that_equals_bare_up_to_float_noise():
    """values_early_1 == bare up to 1e-8 (layer-0 values never depend on the prefix). Its raw deltas have an
    arbitrary d (a mean of 1e-8 over an sd of 1e-9); under the one noise rule they are 0, so it cannot win,
    and the reported d must lie inside its own CI (the bug: "d +0.30 [0.00, 0.00]")."""
    rng = np.random.default_rng(5)
    n, cutoffs = 200, [1, 2, 3]
    bare = rng.normal(2, 0.5, n)
    nll = {"bare": bare,
           "values_early_1": bare - (1e-8 + 1e-9 * rng.random(n)),  # float noise with a positive mean
           "values_early_2": bare - 0.05 + rng.normal(0, 0.2, n),   # a real, small effect (d ~ 0.25)
           "values_early_3": bare + rng.normal(0, 0.2, n)}
    r = C.best_cutoff(nll, cutoffs, n_boot=200, seed=0)
    assert r["cutoff"] == 2
    assert r["d_ci"][0] <= r["d"] <= r["d_ci"][1]
    assert r["cutoff_share"]["1"] == 0.0
    assert all(s["chosen_on_half"] != 1 for s in r["split_half"])
    # absolute size beside d (item 4): mean delta in nats and as % of the bare NLL, with CIs
    assert r["mean_delta_ci"][0] <= r["mean_delta"] <= r["mean_delta_ci"][1]
    assert r["pct_of_ref"] == pytest.approx(100 * r["mean_delta"] / bare.mean())
    # a coarser dtype tolerance widens the rule: a 1e-3-nat difference is noise in bfloat16
    coarse = {**nll, "values_early_1": bare - 1e-3}
    assert C.best_cutoff(coarse, cutoffs, n_boot=50, seed=0, atol=2e-3)["cutoff_share"]["1"] == 0.0


def test_score_prepared_chunks_by_the_engine_budget():
    """A budget that fits one sample's caches at a time gives the same rows, in the same order."""
    m = build("gemma3")
    lm = TinyLM(m)
    names, prefix, preps = ["bare", "primed", "values_only"], [5, 6, 7], _preps(4)
    small = Engine(lm, mem_budget_gb=3.7e-4)  # cache half ~200 kB: chunks [s0, s1], [s2], [s3] (50-120 kB each)
    rows = C.score_prepared(small, preps, names, prefix, batch_size=8)
    big = C.score_prepared(Engine(lm), preps, names, prefix, batch_size=8)
    assert small.stats.phase_a_forwards >= 3
    assert [(r["sample_id"], r["condition"]) for r in rows] == [(r["sample_id"], r["condition"]) for r in big]
    for r, b in zip(rows, big):
        assert np.abs(np.array(r["token_nlls"]) - np.array(b["token_nlls"])).max() <= TOL


def test_distractors_on_hybrid_caches_equal_scoring_them_as_the_answer():
    """Oracle: a distractor's NLL on a hybrid cache equals the NLL of the same tokens scored as the
    answer of the same sample; the gold NLL does not change when distractors ride along."""
    from dataclasses import replace

    from lib.kv import margin

    m = build("gemma3")
    lm = TinyLM(m)
    names, prefix, preps = ["bare", "primed", "values_early_2"], [5, 6, 7], _preps(3)
    extra = [[7, 8], [9], [10, 11, 12]]
    with_d = [replace(p, distractor_ids=[extra[i], p.answer_ids[:1] + [4]], distractor_samples=["x", "y"])
              for i, p in enumerate(preps)]
    rows = C.score_prepared(Engine(lm), with_d, names, prefix, batch_size=4)
    plain = _by(C.score_prepared(Engine(lm), preps, names, prefix, batch_size=4))
    for r in rows:
        p = with_d[int(r["sample_id"][1:])]
        assert np.abs(np.array(r["token_nlls"]) - plain[(r["sample_id"], r["condition"])]).max() <= TOL
        for dids, got in zip(p.distractor_ids, r["distractor_nlls"]):
            alone = C.score_prepared(Engine(lm), [replace(p, answer_ids=dids, distractor_ids=[])], [r["condition"]], prefix)
            assert abs(got - alone[0]["nll"]) <= TOL
        assert r["margin"] == pytest.approx(margin.candidate_stats(r["nll"], r["distractor_nlls"], 1e-5)["margin"], abs=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_shared_prompts_equal_rerunning_the_prompt_per_answer(kind):
    """Prompt sharing on hybrid caches (the query runs once per cache, each candidate feeds its last token + answer)
    gives the NLLs of re-running the whole prompt per candidate, gold and distractors, every hybrid kind; the tiny
    Gemma 3's sliding window (12) is crossed by the longer documents. q/k weights are scaled so a position off by
    one changes the NLLs."""
    from dataclasses import replace

    m = build(kind)
    with torch.no_grad():
        for name, w in m.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w.mul_(8)
    lm = TinyLM(m)
    n = lm.arch.n_layers
    names = ["bare", "primed", "values_only", "keys_only", "values_early_1", f"values_late_{n - 1}"]
    preps = [replace(p, distractor_ids=[[7, 8], p.answer_ids[:1] + [4], [9, 10, 11]], distractor_samples=["x", "y", "z"])
             for p in _preps(4)]
    shared_eng = Engine(lm)
    shared = C.score_prepared(shared_eng, preps, names, [5, 6, 7], batch_size=8)
    plain = C.score_prepared(Engine(lm), preps, names, [5, 6, 7], batch_size=8, share_prompt=False)
    assert shared_eng.stats.prompt_extensions == len(preps) * len(names)
    for a, b in zip(shared, plain, strict=True):
        assert (a["sample_id"], a["condition"]) == (b["sample_id"], b["condition"])
        assert np.abs(np.array(a["token_nlls"]) - np.array(b["token_nlls"])).max() <= 1e-5
        assert np.abs(np.array(a["distractor_nlls"]) - np.array(b["distractor_nlls"])).max() <= 1e-5


@pytest.mark.parametrize("kind, bos", [("llama", 1), ("qwen2", 1), ("llama", None)])
def test_first_token_hybrids_split_values_only_exactly_tiny(kind, bos):
    """values_first_token (primed values of the first document entry only) and values_except_first (every other
    document entry) partition values_only's spliced entries: composed, they are values_only bit for bit; each
    differs from bare only at its own entries; the anchor (position 0) is never touched."""
    from lib.kv import cache as kv
    from lib.kv.encode import encode

    m = build(kind)
    arch = arch_of(m, bos_id=bos)
    doc, prefix = list(range(10, 30)), [5, 6, 7]
    bare, primed = encode(m, arch, doc), encode(m, arch, doc, prefix)
    a = 0 if arch.bos_id is None else 1
    assert bare.length == len(doc) + a
    first = C.hybrid("values_first_token", bare, primed, n_anchor=a)
    rest = C.hybrid("values_except_first", bare, primed, n_anchor=a)
    only = C.hybrid("values_only", bare, primed)
    both = kv.splice(rest, first, range(arch.n_layers), entries=[a])
    for i in range(arch.n_layers):
        assert torch.equal(both.values[i], only.values[i])
        assert first.keys[i] is bare.keys[i] and rest.keys[i] is bare.keys[i]
        assert torch.equal(first.values[i][:, :, a], primed.values[i][:, :, a])
        keep = [j for j in range(bare.length) if j != a]
        assert torch.equal(first.values[i][:, :, keep], bare.values[i][:, :, keep])
        assert torch.equal(rest.values[i][:, :, a], bare.values[i][:, :, a])
        assert torch.equal(rest.values[i][:, :, :a], bare.values[i][:, :, :a])  # the anchor entry is never spliced
        assert torch.equal(rest.values[i][:, :, a + 1:], primed.values[i][:, :, a + 1:])
    assert not torch.equal(first.values[2], bare.values[2]) and not torch.equal(rest.values[2], bare.values[2])
    # the same split of full priming: keys and values of the first entry / of the others
    pf = C.hybrid("primed_first_token", bare, primed, n_anchor=a)
    pr = C.hybrid("primed_except_first", bare, primed, n_anchor=a)
    whole = kv.splice(pr, pf, range(arch.n_layers), keys=True, entries=[a])
    for i in range(arch.n_layers):
        assert torch.equal(whole.keys[i], primed.keys[i]) and torch.equal(whole.values[i], primed.values[i])
        assert torch.equal(pf.keys[i][:, :, a], primed.keys[i][:, :, a]) and torch.equal(pr.keys[i][:, :, a], bare.keys[i][:, :, a])
        assert torch.equal(pf.values[i][:, :, a + 1:], bare.values[i][:, :, a + 1:])
        assert torch.equal(pr.keys[i][:, :, a + 1:], primed.keys[i][:, :, a + 1:])


def test_splice_entries_errors_and_identities():
    from lib.kv import cache as kv
    from lib.kv.encode import encode

    m = build("llama")
    arch = arch_of(m)
    bare, primed = encode(m, arch, list(range(10, 20))), encode(m, arch, list(range(10, 20)), [5, 6])
    full = kv.splice(bare, primed, range(arch.n_layers), entries=range(bare.length))
    assert all(torch.equal(x, y) for x, y in zip(full.values, primed.values))
    none = kv.splice(bare, primed, range(arch.n_layers), entries=[])
    assert all(torch.equal(x, y) for x, y in zip(none.values, bare.values))
    with pytest.raises(ValueError, match=r"entry indices \[11\] out of range \[0, 11\)"):
        kv.splice(bare, primed, [0], entries=[11])
    with pytest.raises(ValueError, match="n_anchor"):
        C.hybrid("values_first_token", bare, primed, n_anchor=2)


def test_cutoffs_none_gives_only_the_fixed_hybrids():
    assert C.parse_cutoffs("none", 6) == []
    assert C.condition_names([]) == list(C.FIXED)
    assert set(C.POSITION_SPLIT) == {"values_first_token", "values_except_first", "primed_first_token", "primed_except_first"}
    assert set(C.POSITION_SPLIT) < set(C.FIXED)


def test_first_token_share_recovers_a_planted_share():
    """Simulated: values_only's delta = 0.3 nats, of which the first token carries 0.24 (share 0.8); the share's
    bootstrap CI covers 0.8 and excludes 0.5; with the part's effect absent the CI covers 0."""
    rng = np.random.default_rng(3)
    n = 400
    bare = rng.normal(2.5, 0.6, n)
    nll = {"bare": bare, "values_only": bare + 0.3 + rng.normal(0, 0.15, n),
           "values_first_token": bare + 0.24 + rng.normal(0, 0.15, n)}
    r = C.first_token_share(nll, n_boot=500, seed=0)
    assert r["part"] == "values_first_token" and r["whole"] == "values_only"
    assert r["mean_delta_part"] == pytest.approx(-0.24, abs=0.03) and r["mean_delta_whole"] == pytest.approx(-0.3, abs=0.03)
    assert r["share_ci"][0] < 0.8 < r["share_ci"][1] and r["share_ci"][0] > 0.5
    assert r["share"] == pytest.approx(r["mean_delta_part"] / r["mean_delta_whole"])
    null = {**nll, "values_first_token": bare + rng.normal(0, 0.15, n)}
    z = C.first_token_share(null, n_boot=500, seed=0)
    assert z["share_ci"][0] < 0 < z["share_ci"][1]
    assert C.first_token_share({"bare": bare, "values_only": bare}) is None  # the runs before the position hybrids


@pytest.mark.parametrize("bos", [1, None])
def test_position_split_reads_the_anchor_length_from_the_cache(bos):
    """Without ``n_anchor`` the split takes the anchor length from the caches' meta (0 for a model with no
    anchor, so the first document token is entry 0, not entry 1); a disagreeing n_anchor or a cache without
    the field is an error, not a silent split at the wrong entry."""
    from lib.kv import cache as kv
    from lib.kv.encode import encode

    m = build("llama")
    arch = arch_of(m, bos_id=bos)
    bare, primed = encode(m, arch, list(range(10, 22))), encode(m, arch, list(range(10, 22)), [5, 6, 7])
    a = 0 if bos is None else 1
    first = C.hybrid("values_first_token", bare, primed)
    for i in range(arch.n_layers):
        assert torch.equal(first.values[i][:, :, a], primed.values[i][:, :, a])
        keep = [j for j in range(bare.length) if j != a]
        assert torch.equal(first.values[i][:, :, keep], bare.values[i][:, :, keep])
    with pytest.raises(ValueError, match=f"n_anchor={1 - a} disagrees with the caches' n_anchor={a}"):
        C.hybrid("values_except_first", bare, primed, n_anchor=1 - a)
    sb, sp = (kv.DocCache(c.keys, c.values, c.positions, {}) for c in (bare, primed))
    with pytest.raises(ValueError, match="records no n_anchor"):
        C.hybrid("primed_first_token", sb, sp)
    assert torch.equal(C.hybrid("primed_first_token", sb, sp, n_anchor=a).keys[0], C.hybrid("primed_first_token", bare, primed).keys[0])
    assert torch.equal(C.hybrid("primed_first_token", sb, primed).keys[0], C.hybrid("primed_first_token", bare, primed).keys[0])
