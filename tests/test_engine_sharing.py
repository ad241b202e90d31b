"""The engine shares shaped caches, scores identical work once, and keeps memory bounded by its budget.

Oracles: each continuation scored on its own (``encode`` + ``score`` at batch 1); for 16-bit runs,
bitwise equality of items that denote the same work.
"""
import weakref

import pytest
import real_env
import torch

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.kv import engine as eng
from lib.kv.engine import Engine, WorkItem
from tiny import KINDS, VOCAB, TinyLM, arch_of, build, random_ids

TOL = 1e-5


def _reference(lm, it):
    c = enc_mod.encode(lm.model, lm.arch, list(it.doc_ids), list(it.prefix_ids) or None, keep_prefix=it.keep_prefix)
    return eng.scoring.score(lm.model, [c], [list(it.prompt_ids)], [list(it.answer_ids)], batch_size=1)[0]


def _spy(monkeypatch):
    """Count shaping calls and record the caches each Phase B call receives (the real functions run)."""
    calls = {"shape": 0, "score": []}
    real_shape, real_score = enc_mod.shape, eng.scoring.score

    def shape(*a, **k):
        calls["shape"] += 1
        return real_shape(*a, **k)

    def score(model, caches, *a, **k):
        calls["score"].append(list(caches))
        return real_score(model, caches, *a, **k)

    monkeypatch.setattr(enc_mod, "shape", shape)
    monkeypatch.setattr(eng.scoring, "score", score)
    return calls


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("phase_b_batch", [None, 5])
def test_64_continuations_build_one_shaped_cache(monkeypatch, kind, phase_b_batch):
    m = build(kind)
    lm = TinyLM(m)
    doc, prefix = random_ids(30, 1), random_ids(6, 2)
    items = [WorkItem("s0", f"cand{j}", doc, prefix, False, random_ids(2 + j % 4, 100 + j), random_ids(1 + j % 5, 200 + j))
             for j in range(64)]
    calls = _spy(monkeypatch)
    e = Engine(lm, phase_b_batch=phase_b_batch)
    rows = e.score_items(items)
    assert calls["shape"] == 1 and e.stats.shaped_caches == 1
    seen = {id(c) for batch in calls["score"] for c in batch}
    assert len(seen) == 1  # every continuation ran against the same cache object
    monkeypatch.undo()
    assert [r["condition"] for r in rows] == [it.condition for it in items]
    for it, r in zip(items, rows):
        ref = _reference(lm, it)
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], ref)) <= TOL, it.condition
        assert r["cache_len"] == 1 + len(doc)


def test_expanded_stack_equals_copied_stack():
    """A cache repeated along the batch is broadcast, not copied, and holds exactly the copied values."""
    m = build("llama")
    arch = arch_of(m)
    c = enc_mod.encode(m, arch, list(random_ids(9, 3)), list(random_ids(4, 4)))
    other = enc_mod.encode(m, arch, list(random_ids(9, 3)), list(random_ids(4, 5)))
    shared, mask = kv.stack_left_padded([c, c, c])
    copied, mask2 = kv.stack_left_padded([c, other, c])
    assert torch.equal(mask, mask2) and torch.equal(shared.positions, copied.positions)
    for k, v, kc in zip(shared.keys, shared.values, copied.keys):
        assert k.stride(0) == 0 and v.stride(0) == 0  # no copy along the batch
        assert torch.equal(k[0], kc[0]) and torch.equal(k[2], kc[2])
    assert all(k.untyped_storage().data_ptr() == ck.untyped_storage().data_ptr() for k, ck in zip(shared.keys, c.keys))


@pytest.mark.parametrize("phase_b_batch", [1, 16])
def test_identical_items_are_scored_once_and_equal_bitwise_bf16(monkeypatch, phase_b_batch):
    m = build("gemma3").to(torch.bfloat16)
    lm = TinyLM(m)
    items = []
    for s in range(3):
        doc, q, other = random_ids(14 + 5 * s, 10 + s), random_ids(3 + s, 20 + s), random_ids(4, 30 + s)
        prompt, ans = random_ids(4, 40 + s), random_ids(2 + s, 50 + s)
        sid = f"s{s}"
        items += [
            WorkItem(sid, "bare", doc, (), False, prompt, ans),
            WorkItem(sid, "trunc", doc, q, False, prompt, ans),
            WorkItem(sid, "full", doc, q, True, prompt, ans),
            WorkItem(sid, "trunc_other", doc, other, False, prompt, ans),
            WorkItem(sid, "bare_dup", doc, (), False, prompt, ans),  # the same cache and continuation as bare
            WorkItem(sid, "trunc_dup", doc, q, False, prompt, ans),
            WorkItem(sid, "bare_alt_answer", doc, (), False, prompt, random_ids(3, 60 + s)),  # same cache, other answer
        ]
    calls = _spy(monkeypatch)
    e = Engine(lm, phase_b_batch=phase_b_batch)
    rows = e.score_items(items)
    by = {(r["sample_id"], r["condition"]): r for r in rows}
    for s in range(3):
        for a, b in (("bare", "bare_dup"), ("trunc", "trunc_dup")):
            ra, rb = by[(f"s{s}", a)], by[(f"s{s}", b)]
            assert ra["token_nlls"] == rb["token_nlls"] and ra["nll"] == rb["nll"]  # bitwise, not a tolerance
    assert e.stats.phase_b_items == 5 * 3 and e.stats.deduplicated_items == 2 * 3
    assert e.stats.shaped_caches == 4 * 3 and calls["shape"] == 4 * 3
    # every continuation of one cache key went through Phase B against one cache object
    objects = {id(c): c for batch in calls["score"] for c in batch}
    assert len(objects) == 4 * 3


def test_memory_is_bounded_and_caches_are_released(monkeypatch):
    """Many items under a tiny budget: several groups, live shaped and prompt-extended caches never
    exceed the budget, each cache is freed once its continuations are scored, and every NLL equals
    the unbatched one."""
    m = build("gemma3")
    lm = TinyLM(m)
    items = []
    for s in range(6):
        doc, q, other = random_ids(20 + 7 * s, 10 + s), random_ids(3 + s, 20 + s), random_ids(5, 30 + s)
        prompt = random_ids(3 + s % 2, 40 + s)
        for name, pre in (("bare", ()), ("trunc", q), ("trunc_other", other)):
            for j in range(4):
                items.append(WorkItem(f"s{s}", f"{name}_c{j}", doc, pre, False, prompt, random_ids(1 + (j + s) % 3, 50 + 10 * s + j)))
    calls = {"live": []}
    seen: list = []
    real_score, real_extend = eng.scoring.score, eng.scoring.extend

    def spied(real):
        def call(model, caches, *a, **k):
            for c in caches:
                if not any(r() is c for r in seen):
                    seen.append(weakref.ref(c))
            calls["live"].append(sum(sum(t.numel() * t.element_size() for t in r().keys + r().values)
                                     for r in seen if r() is not None))
            return real(model, caches, *a, **k)
        return call

    monkeypatch.setattr(eng.scoring, "score", spied(real_score))
    monkeypatch.setattr(eng.scoring, "extend", spied(real_extend))
    e = Engine(lm, mem_budget_gb=0.0005, max_batch=8)  # ~175 cached tokens: a sample or two per group
    rows = e.score_items(items)
    monkeypatch.undo()
    assert e.stats.groups > 1
    assert max(calls["live"]) <= e.cache_budget_bytes
    assert e.stats.peak_live_cache_bytes <= e.cache_budget_bytes
    assert all(r() is None for r in seen)  # nothing outlives score_items
    # 18 shaped caches (to the prompt runs) + 18 extended ones (to Phase B): every (cache, prompt) has 4 answers
    assert len(seen) == 2 * 18 and e.stats.shaped_caches == e.stats.prompt_extensions == 18
    for it, r in zip(items, rows):
        ref = _reference(lm, it)
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], ref)) <= TOL, (it.sample_id, it.condition)


def test_encode_many_does_not_pin_padded_batches():
    m = build("llama")
    lm = TinyLM(m)
    e = Engine(lm)
    out = e.encode_many([(random_ids(30, 1), ()), (random_ids(5, 2), ()), (random_ids(12, 3), random_ids(3, 4))])
    assert e.stats.phase_a_forwards == 1  # one padded batch
    for dc, _ in out:
        for t in dc.keys + dc.values:
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()  # owns exactly its row


def test_budget_too_small_for_one_cache_still_scores_it():
    m = build("llama")
    lm = TinyLM(m)
    it = WorkItem("s", "c", random_ids(40, 1), random_ids(4, 2), False, random_ids(3, 3), random_ids(2, 4))
    e = Engine(lm, mem_budget_gb=1e-7)
    (row,) = e.score_items([it])
    assert max(abs(a - float(b)) for a, b in zip(row["token_nlls"], _reference(lm, it))) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_many_continuations_share_one_cache_real(request, monkeypatch, name):
    lm = request.getfixturevalue(name)
    from lib.data import synthetic_qa

    s = synthetic_qa(17, 7)
    tok = lambda t: tuple(enc_mod.tokenize(lm.tokenizer, t))  # noqa: E731
    doc, prefix, prompt = tok(s[0].passage), tok(s[0].query + "\n"), tok(f"\n\nQuestion: {s[0].query}\nAnswer:")
    items = [WorkItem("s0", f"cand{j}", doc, prefix, False, prompt, tok(" " + s[j].answer)) for j in range(16)]
    calls = _spy(monkeypatch)
    e = Engine(lm, phase_b_batch=8)
    rows = e.score_items(items)
    assert calls["shape"] == 1 and len({id(c) for b in calls["score"] for c in b}) == 1
    monkeypatch.undo()
    for it, r in zip(items, rows):
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], _reference(lm, it))) <= real_env.TOL, it.condition


# ---- Phase B prompt sharing: the prompt runs once per (shaped cache, prompt) -----------------------
def _candidate_items(ids_fn, n_samples=3, k=4):
    """Per sample: bare / truncated / kept-prefix caches x a one-token and a five-token prompt, each
    with a gold answer and k-1 candidates of 1-4 tokens; candidates come both as ``distractor_ids``
    and as separate items (the many8 layout), so one (cache, prompt) collects both."""
    items = []
    for s in range(n_samples):
        doc, q = ids_fn(12 + 7 * s, 10 + s), ids_fn(3 + s, 20 + s)
        prompts = {"p1": ids_fn(1, 30 + s), "p5": ids_fn(5, 40 + s)}  # a one-token prompt has nothing to share
        answers = [ids_fn(1 + (j + s) % 4, 50 + 10 * s + j) for j in range(k)]
        for cname, pre, keep in (("bare", (), False), ("trunc", q, False), ("full", q, True)):
            for pname, prompt in prompts.items():
                items.append(WorkItem(f"s{s}", f"{cname}/{pname}", doc, pre, keep, prompt, answers[0],
                                      distractor_ids=tuple(answers[1:3])))
                items.append(WorkItem(f"s{s}", f"{cname}/{pname}/c3", doc, pre, keep, prompt, answers[3]))
    return items


def _new_tokens(items, shared: bool) -> int:
    """Phase B tokens fed (prompt extensions included): each (cache, prompt) of >= 2 answers runs
    prompt[:-1] once and [last prompt token] + answer per answer when ``shared``."""
    answers: dict = {}
    for it in items:
        key = (it.encoding, it.keep_prefix, it.prompt_ids)
        answers.setdefault(key, set()).update([it.answer_ids, *it.distractor_ids])
    total = 0
    for (_, _, prompt), ans in answers.items():
        if shared and len(prompt) >= 2 and len(ans) >= 2:
            total += len(prompt) - 1 + sum(1 + len(a) for a in ans)
        else:
            total += sum(len(prompt) + len(a) for a in ans)
    return total


def _assert_rows_close(rows, ref_rows, tol, nll_tol=None):
    """Token NLLs within ``tol``; item NLLs (gold and distractors) within ``nll_tol`` (default ``tol``)."""
    nll_tol = tol if nll_tol is None else nll_tol
    for r, q in zip(rows, ref_rows):
        assert (r["sample_id"], r["condition"]) == (q["sample_id"], q["condition"])
        assert max(abs(a - b) for a, b in zip(r["token_nlls"], q["token_nlls"])) <= tol, r["condition"]
        assert abs(r["nll"] - q["nll"]) <= nll_tol, r["condition"]
        assert len(r.get("distractor_nlls", [])) == len(q.get("distractor_nlls", []))
        assert max((abs(a - b) for a, b in zip(r.get("distractor_nlls", []), q.get("distractor_nlls", []))), default=0) <= nll_tol


@pytest.mark.parametrize("kind,phase_b_batch", [(k, 64) for k in KINDS] + [("llama", 1), ("gemma3", 1)])
def test_shared_prompt_equals_unshared_tiny(kind, phase_b_batch):
    """The prompt runs once per (cache, prompt); every NLL equals today's path (prompt re-run per
    candidate) and batch-1 scoring, answers of 1-4 tokens padded together or scored alone."""
    m = build(kind)
    lm = TinyLM(m)
    items = _candidate_items(random_ids)
    shared = Engine(lm, phase_b_batch=phase_b_batch)
    rows = shared.score_items(items)
    plain = Engine(lm, phase_b_batch=phase_b_batch, share_prompt=False)
    ref_rows = plain.score_items(items)
    _assert_rows_close(rows, ref_rows, TOL)
    for it, r in zip(items[:6], rows[:6]):
        ref = _reference(lm, it)
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], ref)) <= TOL, it.condition
    # the prompt ran once per (cache, five-token prompt): 3 samples x 3 caches; the one-token prompt is not shared
    assert shared.stats.prompt_extensions == 9 and plain.stats.prompt_extensions == 0
    assert shared.stats.phase_b_tokens == _new_tokens(items, True) < plain.stats.phase_b_tokens == _new_tokens(items, False)
    assert shared.stats.phase_b_items == plain.stats.phase_b_items == 3 * 3 * 2 * 4


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_extend_equals_full_forward_and_leaves_the_cache_unchanged(kind):
    """``scoring.extend`` (a batch of two caches of different lengths and prompts of different lengths)
    equals Phase A over doc + prompt, owns its tensors, and leaves the input caches as they were."""
    m = build(kind)
    arch = arch_of(m)
    docs, prompts = [random_ids(20, 1), random_ids(9, 3)], [random_ids(6, 2), random_ids(2, 4)]  # 21 + 6 > gemma3's window of 12
    caches = [enc_mod.encode(m, arch, list(d)) for d in docs]
    before = [[t.clone() for t in c.keys + c.values] for c in caches]
    ext = eng.scoring.extend(m, caches, [list(p) for p in prompts])
    for c, b, d, p, x in zip(caches, before, docs, prompts, ext):
        assert c.length == 1 + len(d) and all(torch.equal(s, t) for s, t in zip(b, c.keys + c.values))
        full = enc_mod.encode(m, arch, list(d) + list(p))
        assert x.length == full.length and torch.equal(x.positions, full.positions) and x.is_contiguous
        assert max(float((s - t).abs().max()) for s, t in zip(x.keys + x.values, full.keys + full.values)) <= TOL
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in x.keys + x.values)
    with pytest.raises(ValueError, match="empty"):
        eng.scoring.extend(m, caches[:1], [[]])
    gapped = kv.DocCache(caches[0].keys, caches[0].values, caches[0].positions + 3)
    with pytest.raises(ValueError, match="next position"):
        eng.scoring.extend(m, [gapped], [[5]])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "qwen2"])
def test_shared_prompt_equals_unshared_real(request, name):
    """Real models, real prompts: gold + 3 candidates per (cache, prompt) score the same with the prompt
    run once as with the prompt re-run per candidate (float32 noise, ``lib.kv.noise``)."""
    from lib.data import synthetic_qa

    lm = request.getfixturevalue(name)
    s, *others = synthetic_qa(4, 3)
    tok = lambda t: tuple(enc_mod.tokenize(lm.tokenizer, t))  # noqa: E731
    doc, prompt = tok(s.passage), tok(f"\n\nQuestion: {s.query}\nAnswer:")
    answers = [tok(" " + o.answer) for o in (s, *others)]
    items = [WorkItem(s.id, cname, doc, pre, False, prompt, answers[0], distractor_ids=tuple(answers[1:]))
             for cname, pre in (("bare", ()), ("trunc", tok(s.query + "\n")))]
    shared = Engine(lm, phase_b_batch=8)
    rows = shared.score_items(items)
    ref_rows = Engine(lm, phase_b_batch=8, share_prompt=False).score_items(items)
    assert shared.stats.prompt_extensions == 2 and len({len(a) for a in answers}) > 1
    # item NLLs within the noise rule (1e-5 in float32); single tokens within the kernel tolerance
    _assert_rows_close(rows, ref_rows, real_env.TOL, real_env.NLL_TOL)
    for it, r in zip(items, rows):
        assert abs(r["nll"] - float(_reference(lm, it).mean())) <= real_env.NLL_TOL, it.condition


def test_out_of_memory_while_extending_halves_and_stays_exact(monkeypatch):
    m = build("llama")
    lm = TinyLM(m)
    items = _candidate_items(random_ids, n_samples=2)
    ref_rows = Engine(lm, share_prompt=False).score_items(items)
    real = eng.scoring.extend

    def flaky(model, caches, *a, **k):
        if len(caches) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, caches, *a, **k)

    monkeypatch.setattr(eng.scoring, "extend", flaky)
    e = Engine(lm)
    rows = e.score_items(items)
    assert e.stats.oom_retries > 0 and e.stats.prompt_extensions == 6
    _assert_rows_close(rows, ref_rows, TOL)
