"""The engine shares shaped caches, scores identical work once, and keeps memory bounded by its budget.

Oracles: each continuation scored on its own (``encode`` + ``score`` at batch 1); for 16-bit runs,
bitwise equality of items that denote the same work.
"""
import weakref

import pytest
import torch

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.kv import engine as eng
from lib.kv.engine import Engine, WorkItem
from tiny import TinyLM, arch_of, build, random_ids

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
    """Many items under a tiny budget: several groups, live shaped caches never exceed the budget,
    each cache is freed once its continuations are scored, and every NLL equals the unbatched one."""
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
    real_score = eng.scoring.score

    def score(model, caches, *a, **k):
        for c in caches:
            if not any(r() is c for r in seen):
                seen.append(weakref.ref(c))
        calls["live"].append(sum(sum(t.numel() * t.element_size() for t in r().keys + r().values)
                                 for r in seen if r() is not None))
        return real_score(model, caches, *a, **k)

    monkeypatch.setattr(eng.scoring, "score", score)
    e = Engine(lm, mem_budget_gb=0.0005, max_batch=8)  # ~175 cached tokens: a sample or two per group
    rows = e.score_items(items)
    monkeypatch.undo()
    assert e.stats.groups > 1
    assert max(calls["live"]) <= e.cache_budget_bytes
    assert e.stats.peak_live_cache_bytes <= e.cache_budget_bytes
    assert all(r() is None for r in seen)  # nothing outlives score_items
    assert len(seen) == 18 == e.stats.shaped_caches
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
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], _reference(lm, it))) <= 1e-4, it.condition
