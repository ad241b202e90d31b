"""Contrastive margin: invariant to a shift of every candidate's NLL, distractors from other
articles, and the engine's distractor NLLs equal scoring each distractor as the answer."""
import numpy as np
import pytest

from lib.kv import margin
from lib.report import discrimination
from lib.data import Sample


def _rows(gold: dict, dis: dict) -> list[dict]:
    rows = []
    for cond, g in gold.items():
        for i, (gv, dv) in enumerate(zip(g, dis[cond])):
            rows.append({"sample_id": f"s{i}", "condition": cond, "nll": float(gv), "distractor_nlls": list(map(float, dv)),
                         **margin.candidate_stats(float(gv), dv, 1e-5)})
    return rows


def test_uniform_shift_of_every_candidate_gives_zero_margin_effect():
    """A condition that moves every candidate's NLL by the same per-sample amount (pure entropy) lowers
    the gold NLL (d(nll) > 0) but leaves the margin exactly unchanged: d(margin) = 0, gap = d(nll)."""
    rng = np.random.default_rng(0)
    n, k = 200, 4
    g = rng.gamma(2.0, 1.0, n)
    d = g[:, None] + rng.normal(0.5, 1.0, (n, k))
    shift = rng.normal(0.3, 0.2, n)  # per sample, same for every candidate
    rows = _rows({"ref": g, "cond": g - shift}, {"ref": d, "cond": d - shift[:, None]})
    ids = [f"s{i}" for i in range(n)]
    from lib.report import stats
    nll_comps = stats.compare_conditions({"ref": g, "cond": g - shift}, "ref")
    out = discrimination.discrimination(rows, ids, ["ref", "cond"], ref="ref", nll_comparisons=nll_comps, n_boot=200)
    c = out["comparisons"][0]
    assert nll_comps[0]["d"] > 1.0
    assert c["d"] == 0.0 and c["mean_delta"] == 0.0 and c["ci_low"] == 0.0 and c["ci_high"] == 0.0
    assert c["entropy_gap"] == nll_comps[0]["d"]
    assert out["mean_gold_rank"]["ref"] == out["mean_gold_rank"]["cond"]
    assert out["n_distractors"] == [k]


def test_a_condition_that_helps_only_the_gold_answer_raises_the_margin():
    rng = np.random.default_rng(1)
    n, k = 100, 3
    g = rng.gamma(2.0, 1.0, n)
    d = g[:, None] + rng.normal(0.2, 1.0, (n, k))
    rows = _rows({"ref": g, "cond": g - 0.5}, {"ref": d, "cond": d})
    out = discrimination.discrimination(rows, [f"s{i}" for i in range(n)], ["ref", "cond"], ref="ref", n_boot=200)
    c = out["comparisons"][0]
    assert c["d"] > 1.0 and c["mean_delta"] == pytest.approx(0.5)  # positive: the condition discriminates better
    assert c["mean_cond"] - c["mean_ref"] == pytest.approx(0.5)  # the margins themselves, not their negation
    assert out["top1"]["cond"] >= out["top1"]["ref"]


def test_candidate_stats_rank_counts_ties_against_the_gold_answer():
    assert margin.candidate_stats(1.0, [2.0, 3.0], 1e-5) == {"margin": 1.5, "gold_rank": 1, "top1": True}
    assert margin.candidate_stats(1.0, [0.5, 3.0], 1e-5)["gold_rank"] == 2
    assert margin.candidate_stats(1.0, [1.0 + 1e-7, 3.0], 1e-5)["gold_rank"] == 2  # a float-noise tie is not a win
    with pytest.raises(ValueError, match="at least one distractor"):
        margin.candidate_stats(1.0, [], 1e-5)


@pytest.mark.parametrize("answer,kind", [("1066", "number"), ("three years", "number"), ("March 3", "number"),
                                         ("Denver Broncos", "name"), ("University of Chicago", "name"),
                                         ("a steam engine", "other"), ("green", "other")])
def test_answer_kind(answer, kind):
    assert margin.answer_kind(answer) == kind


def _samples():
    answers = ["1990", "Paris", "a red apple", "1200 km", "Marie Curie", "steam", "42", "London", "blue whale",
               "Isaac Newton", "seven", "copper wire"]
    return [Sample(f"q{i}", f"question {i}?", f"passage {i}.", a, meta={"article": f"art{i % 4}"})
            for i, a in enumerate(answers)]


def test_distractors_come_from_other_articles_differ_and_match_kind_first():
    samples = _samples()
    by = {s.id: s for s in samples}
    got = margin.assign_distractors(samples, 3, seed=7)
    for s in samples:
        ds = got[s.id]
        assert len(ds) == 3 == len(set(ds)) and s.id not in ds
        assert all(by[o].meta["article"] != s.meta["article"] for o in ds)
        answers = [by[o].answer.lower() for o in ds]
        assert s.answer.lower() not in answers and len(set(answers)) == 3
        if s.answer == "1990":  # exactly three numbers in other articles: all three distractors are numbers
            assert all(margin.answer_kind(by[o].answer) == margin.answer_kind(s.answer) for o in ds)
        if s.answer == "Paris":  # two names in other articles (Isaac Newton shares its article): both, then one more
            assert sum(margin.answer_kind(by[o].answer) == "name" for o in ds) == 2
    # seeded, and independent of the order the samples come in
    assert margin.assign_distractors(list(reversed(samples)), 3, seed=7) == got
    assert margin.assign_distractors(samples, 3, seed=8) != got
    assert margin.assign_distractors(samples, 0, seed=7) == {s.id: [] for s in samples}


def test_a_small_pool_gives_fewer_distractors_with_a_warning_and_none_raises():
    few = _samples()[:3]  # three articles, three distinct answers: two distractors each at most
    with pytest.warns(UserWarning, match="fewer than 3"):
        got = margin.assign_distractors(few, 3, seed=0)
    assert all(len(v) == 2 for v in got.values())
    same = [Sample(f"q{i}", "q?", "p.", "Paris", meta={"article": f"a{i}"}) for i in range(3)]
    with pytest.raises(ValueError, match="N_DISTRACTORS"):
        margin.assign_distractors(same, 2, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        margin.assign_distractors(_samples(), -1, seed=0)


def test_missing_margin_raises():
    with pytest.raises(ValueError, match="no 'margin'"):
        discrimination.table([{"sample_id": "s0", "condition": "a", "nll": 1.0}], ["a"], ["s0"])


def test_engine_distractor_nlls_equal_scoring_each_distractor_as_the_answer():
    """Oracle: every distractor NLL equals an unbatched single-item scoring of that distractor as the
    answer on the same cache; the gold NLL is unchanged by adding distractors."""
    from test_engine import _items, _reference

    from dataclasses import replace

    from lib.kv.engine import Engine
    from tiny import TinyLM, build, random_ids

    m = build("gemma3")
    lm = TinyLM(m)
    base = _items(random_ids, n_samples=3)
    items = [replace(it, distractor_ids=(random_ids(2, 900 + i), random_ids(4, 950 + i), it.answer_ids[:1] + (5,)))
             for i, it in enumerate(base)]
    rows = Engine(lm, mem_budget_gb=0.001, max_batch=3).score_items(items)
    plain = Engine(lm).score_items(base)
    for it, r, p in zip(items, rows, plain):
        assert abs(r["nll"] - p["nll"]) <= 1e-5
        for dids, got in zip(it.distractor_ids, r["distractor_nlls"]):
            ref = float(_reference(m, lm.arch, replace(it, answer_ids=dids)).mean())
            assert abs(got - ref) <= 1e-4, (it.sample_id, it.condition)
        want = margin.candidate_stats(r["nll"], r["distractor_nlls"], 1e-5)
        assert r["margin"] == pytest.approx(want["margin"], abs=1e-5) and r["gold_rank"] == want["gold_rank"]


def test_a_scaled_margin_without_any_rank_change_is_shown_by_the_rank_readout():
    """Qwen2.5-0.5B on real SQuAD: truncated prefixes raise every candidate's NLL, the distractors' more, so
    d(margin) > 0 while no gold answer changes rank. Simulated: the condition multiplies every NLL by
    1.3 (ranks unchanged): d(margin) is large, the paired rank readout says no sample moved (p = 1).
    A second condition moves the gold answer to first place in 30% of the samples: better 30%, p small."""
    rng = np.random.default_rng(1)
    n, k = 200, 4
    g = rng.gamma(2.0, 1.0, n) + 0.5
    d = g[:, None] + rng.normal(1.0, 1.5, (n, k))
    fixed = d.copy()
    promote = rng.random(n) < 0.3
    gold_fix = np.where(promote, np.minimum(g, d.min(1)) - 0.5, g)  # first place where promoted, else unchanged
    rows = _rows({"ref": g, "scaled": 1.3 * g, "fixed": gold_fix}, {"ref": d, "scaled": 1.3 * d, "fixed": fixed})
    ids = [f"s{i}" for i in range(n)]
    out = discrimination.discrimination(rows, ids, ["ref", "scaled", "fixed"], ref="ref", n_boot=200)
    by = {c["cond"]: c for c in out["comparisons"]}
    s, f = by["scaled"], by["fixed"]
    assert s["d"] > 0.3  # the margin in nats grows with the scale
    assert (s["rank_better"], s["rank_worse"], s["p_rank_wilcoxon"]) == (0.0, 0.0, 1.0)
    assert s["top1_ref"] == s["top1_cond"] and s["gold_rank_ref"] == s["gold_rank_cond"]
    was_first = np.array([r["gold_rank"] == 1 for r in rows if r["condition"] == "ref"])
    assert f["rank_better"] == pytest.approx(np.mean(promote & ~was_first)) and f["rank_worse"] == 0.0
    assert f["p_rank_wilcoxon"] < 1e-6 and f["top1_cond"] > f["top1_ref"]
