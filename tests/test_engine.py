"""The engine equals unbatched single-item scoring, plans the least Phase A work, survives OOM."""
import pytest
import torch

from lib.kv import engine as eng
from lib.kv.encode import encode
from lib.kv.engine import Engine, WorkItem
from lib.kv.scoring import score
from tiny import KINDS, TinyLM, build, random_ids

TOL = 1e-4


def _items(ids_fn, n_samples=4):
    """Every condition kind: bare, kept prefix (two prompts), truncated oracle, truncated other."""
    items = []
    for s in range(n_samples):
        doc, query, other = ids_fn(10 + 9 * s, 100 + s), ids_fn(3 + s, 200 + s), ids_fn(4, 300 + s)
        prompt_q, prompt_nq, ans = ids_fn(5 + s % 2, 400 + s), ids_fn(2, 500), ids_fn(1 + s, 600 + s)
        sid = f"s{s}"
        items += [
            WorkItem(sid, "bare", doc, (), False, prompt_q, ans),
            WorkItem(sid, "full", doc, query, True, prompt_nq, ans),
            WorkItem(sid, "full_repeat", doc, query, True, prompt_q, ans),
            WorkItem(sid, "trunc", doc, query, False, prompt_q, ans),
            WorkItem(sid, "trunc_other", doc, other, False, prompt_q, ans),
        ]
    return items


def _reference(model, arch, it):
    c = encode(model, arch, list(it.doc_ids), list(it.prefix_ids) or None, keep_prefix=it.keep_prefix)
    return score(model, [c], [list(it.prompt_ids)], [list(it.answer_ids)], batch_size=1)[0]


def _check(lm, items, tol=TOL, **kw):
    e = Engine(lm, **kw)
    rows = e.score_items(items)
    assert [(r["sample_id"], r["condition"]) for r in rows] == [(i.sample_id, i.condition) for i in items]
    for it, r in zip(items, rows):
        ref = _reference(lm.model, lm.arch, it)
        assert len(r["token_nlls"]) == len(it.answer_ids)
        assert max(abs(a - float(b)) for a, b in zip(r["token_nlls"], ref)) <= tol, (it.sample_id, it.condition)
    return e, rows


@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_unbatched_tiny(kind):
    m = build(kind)
    lm = TinyLM(m)
    items = _items(random_ids)
    e, rows = _check(lm, items, mem_budget_gb=0.001, max_batch=3)  # a tiny budget forces several batches
    # Phase A once per distinct encoding: bare, query, other per sample
    assert e.stats.phase_a_encodings == 3 * 4
    assert e.stats.phase_a_forwards > 1 and e.stats.phase_b_forwards > 1
    by = {(r["sample_id"], r["condition"]): r for r in rows}
    assert by[("s0", "bare")]["cache_len"] == by[("s0", "trunc")]["cache_len"] == by[("s0", "trunc_other")]["cache_len"]


def test_oom_halves_the_batch_and_retries(monkeypatch):
    m = build("llama")
    lm = TinyLM(m)
    real_a, real_b = Engine._encode_batch_once, eng.scoring.score

    def flaky_a(self, idx, built, out):
        if len(idx) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_a(self, idx, built, out)

    def flaky_b(model, caches, *a, **k):
        if len(caches) > 2:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return real_b(model, caches, *a, **k)

    monkeypatch.setattr(Engine, "_encode_batch_once", flaky_a)
    monkeypatch.setattr(eng.scoring, "score", flaky_b)
    e, _ = _check(lm, _items(random_ids, 3))
    assert e.stats.oom_retries > 0 and e.stats.phase_a_forwards == e.stats.phase_a_encodings


def test_other_errors_are_not_retried(monkeypatch):
    m = build("llama")
    lm = TinyLM(m)

    def broken(self, idx, built, out):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Engine, "_encode_batch_once", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Engine(lm).score_items(_items(random_ids, 2))


def test_work_item_validation():
    with pytest.raises(ValueError, match="empty answer"):
        WorkItem("s", "c", (5,), (), False, (1,), ())
    with pytest.raises(ValueError, match="keep_prefix without a prefix"):
        WorkItem("s", "c", (5,), (), True, (1,), (2,))


def test_batches_respect_budget_and_order():
    b = eng._batches([5, 50, 20, 49, 3], budget=100, max_batch=8)
    assert b[0] == [1, 3] and sorted(i for g in b for i in g) == [0, 1, 2, 3, 4]
    assert all(len(g) * max([5, 50, 20, 49, 3][i] for i in g) <= 100 for g in b)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_engine_equals_unbatched_real(request, name):
    lm = request.getfixturevalue(name)
    from lib.kv.encode import tokenize
    from lib.data import synthetic_qa

    def ids_fn(n, seed):
        text = " ".join(s.passage for s in synthetic_qa(3, seed))
        return tuple(tokenize(lm.tokenizer, text)[:n])

    from real_env import TOL as real_tol

    _check(lm, _items(ids_fn), real_tol, mem_budget_gb=0.05, max_batch=4)
