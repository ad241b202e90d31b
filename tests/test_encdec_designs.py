"""exp09's designs: the paired interaction statistic (simulated data with a known answer), the truncation
wound, length x encoder, the factoid split, and the attention-weight shares (hand-checkable cases and
tiny random models)."""
import numpy as np
import pytest
import torch

from lib.data.core import Sample
from lib.report.stats_interaction import interaction, interactions
from lib.studies import encdec
from lib.studies.encdec import designs, probe


def _sim(n, cells, noise=0.3, seed=0):
    """Per-sample NLLs: a shared base per sample + each cell's mean shift + independent noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(3.0, 1.0, n)
    return {k: base + shift + rng.normal(0.0, noise, n) for k, shift in cells.items()}


# ----------------------------------------------------------------------------- interaction statistic
def test_interaction_is_the_per_sample_double_difference_with_known_answer():
    # effects: a->b helps by 0.5, c->d by 0.1: the interaction is 0.4 nats
    nll = _sim(400, {"a": 0.0, "b": -0.5, "c": 0.2, "d": 0.1})
    r = interaction(nll, "a", "b", "c", "d", n_boot=500)
    exact = np.mean((nll["a"] - nll["b"]) - (nll["c"] - nll["d"]))
    assert r["interaction"] == pytest.approx(exact, abs=1e-12)
    assert r["first_effect"] == pytest.approx(np.mean(nll["a"] - nll["b"]), abs=1e-12)
    assert r["interaction_ci_low"] < 0.4 < r["interaction_ci_high"]
    assert r["d"] > 0 and r["ci_low"] > 0 and r["p_t"] < 1e-6 and r["p_wilcoxon"] < 1e-6
    assert r["pct_of_first"] == pytest.approx(100 * exact / r["first_effect"])
    flipped = interaction(nll, "c", "d", "a", "b", n_boot=500)
    assert flipped["interaction"] == pytest.approx(-exact, abs=1e-12)


def test_additive_effects_give_an_interaction_near_zero():
    nll = _sim(400, {"a": 0.0, "b": -0.3, "c": 0.5, "d": 0.2}, seed=1)  # both effects 0.3: no interaction
    r = interaction(nll, "a", "b", "c", "d", n_boot=500)
    assert r["interaction_ci_low"] < 0 < r["interaction_ci_high"] and r["p_t"] > 0.01 and abs(r["d"]) < 0.2


def test_identical_effects_are_exactly_zero_and_holm_covers_all_rows():
    nll = _sim(30, {"a": 0.0, "b": -0.3})
    nll["c"], nll["d"] = nll["a"] + 1.0, nll["b"] + 1.0  # the same effect, shifted: float-level differences only
    rows = interactions(nll, {"same": ("a", "b", "c", "d"), "self-vs-flip": ("a", "b", "b", "a")}, n_boot=200)
    assert rows[0]["interaction"] == 0.0 and rows[0]["d"] == 0.0  # within noise_atol: exactly 0
    assert rows[1]["interaction"] == pytest.approx(2 * np.mean(nll["a"] - nll["b"]))
    assert all(r["p_holm"] >= r["p_t"] for r in rows if not np.isnan(r["p_t"]))
    assert [r["label"] for r in rows] == ["same", "self-vs-flip"] and rows[1]["primary_test"] == "t"


def test_interaction_input_errors():
    nll = _sim(10, {"a": 0, "b": 0, "c": 0, "d": 0})
    with pytest.raises(ValueError, match="unknown condition 'e'"):
        interaction(nll, "a", "b", "c", "e")
    with pytest.raises(ValueError, match="two different non-empty effects"):
        interaction(nll, "a", "a", "c", "d")
    with pytest.raises(ValueError, match="four condition names"):
        interactions(nll, {"x": ("a", "b", "c")})
    with pytest.raises(ValueError, match="no interaction contrasts"):
        interactions(nll, {})


# ----------------------------------------------------------------------------- designs
def test_truncation_wound_recovers_a_known_coherence_x_overlap_interaction():
    # only the coherent + overlapping cell hurts (+0.6 nats): the interaction is -0.6 nats
    shifts = {"bare__q": 0.0, "first_sentence__q": 0.6, "wrongdoc_sentence__q": 0.0, "shuffled_sentence__q": 0.0,
              "shuffled_wrongdoc__q": 0.0}
    out = designs.truncation_wound(_sim(300, shifts, seed=2), "q", n_boot=300)
    assert [c["cond"] for c in out["cells"]] == [f"{c}__q" for c in designs.WOUND]
    it = out["interaction"]
    assert it["contrast"] == "(wrongdoc_sentence__q - first_sentence__q) - (shuffled_wrongdoc__q - shuffled_sentence__q)"
    assert it["interaction_ci_low"] < -0.6 < it["interaction_ci_high"] and it["d"] < 0 and it["p_holm"] < 1e-6


def test_length_interaction_splits_redundancy_into_length_and_semantic_parts():
    # bare encoder: nq->rq helps 0.3 (length), rq->q 0.2; oracle encoder: length 0, semantic 0.2
    shifts = {"bare__nq": 0.0, "bare__rq": -0.3, "bare__q": -0.5, "oracle__nq": -1.0, "oracle__rq": -1.0, "oracle__q": -1.2}
    rows = {r["label"]: r for r in designs.length_interaction(_sim(400, shifts, noise=0.2, seed=3), n_boot=300)}
    assert set(rows) == {"total (nq -> q)", "length (nq -> rq)", "semantic (rq -> q)"}
    for label, truth in (("total (nq -> q)", 0.3), ("length (nq -> rq)", 0.3), ("semantic (rq -> q)", 0.0)):
        assert rows[label]["interaction_ci_low"] < truth < rows[label]["interaction_ci_high"], label
    assert rows["length (nq -> rq)"]["p_holm"] < 1e-6 and rows["semantic (rq -> q)"]["p_t"] > 0.001


def test_factoid_split_finds_the_effect_only_in_long_answers():
    n = 200
    words = {f"s{i}": (2 if i % 2 else 9) for i in range(n)}
    ids = list(words)
    rng = np.random.default_rng(4)
    base = rng.normal(3, 1, n)
    long_ = np.array([words[i] > 5 for i in ids])
    nll = {"bare__q": base + rng.normal(0, 0.2, n), "oracle__q": base - 0.5 * long_ + rng.normal(0, 0.2, n),
           "random__q": base - 0.25 * long_ + rng.normal(0, 0.2, n)}
    out = designs.factoid_split(nll, ids, words, ["bare", "oracle", "random"], n_boot=300)
    short, long = out["subsets"]["short"], out["subsets"]["long"]
    assert short["n"] == long["n"] == 100 and short["words"] == "<= 5"
    o_short, o_long = short["effects"][0], long["effects"][0]
    assert o_short["cond"] == o_long["cond"] == "oracle__q"
    assert o_short["mean_delta_ci_low"] < 0 < o_short["mean_delta_ci_high"]
    assert o_long["mean_delta_ci_low"] < 0.5 < o_long["mean_delta_ci_high"] and o_long["p_holm"] < 1e-6
    bins = {b["bin"]: b for b in out["bins"]}
    assert bins["1-2"]["n"] == 100 and bins["6-10"]["n"] == 100 and bins["21+"]["n"] == 0
    assert bins["6-10"]["fraction_of_mean_benefit"] == pytest.approx(0.5, abs=0.1) and "d_full" not in bins["21+"]
    with pytest.raises(ValueError, match="threshold must be a positive number of words"):
        designs.factoid_split(nll, ids, words, ["bare", "oracle"], threshold=0)
    out = designs.factoid_split(nll, ids, {**words, "s1": 30}, ["bare", "oracle"], threshold=20, n_boot=50)
    assert out["subsets"]["long"]["n"] == 1 and "needs at least 2" in out["subsets"]["long"]["skipped"]


def test_wound_prefixes_shuffle_the_same_tokens_and_take_another_article():
    samples = [Sample(f"s{i}", "q?", f"Passage {i}.", "a", meta={"article": f"art{i // 2}"}) for i in range(6)]
    first = {s.id: tuple(range(10 * k, 10 * k + 6)) for k, s in enumerate(samples)}
    cells = designs.wound_prefixes(samples, first, seed=7)
    owner = {v: k for k, v in first.items()}
    for s in samples:
        c = cells[s.id]
        assert sorted(c["shuffled_sentence"]) == sorted(first[s.id]) and c["shuffled_sentence"] != first[s.id]
        other = owner[c["wrongdoc_sentence"]]
        assert samples[int(other[1:])].meta["article"] != s.meta["article"]
        assert sorted(c["shuffled_wrongdoc"]) == sorted(first[other]) and c["shuffled_wrongdoc"] != first[other]
    assert designs.wound_prefixes(samples, first, seed=7) == cells  # seeded
    assert designs.shuffled((5, 5, 5), "k") == (5, 5, 5)


# ----------------------------------------------------------------------------- attention-weight shares
def test_weight_shares_on_a_hand_built_case():
    # 1 layer, 1 head, 3 decoder positions, 4 encoder positions; answer at decoder position 2
    s = torch.zeros(1, 1, 3, 3)
    s[0, 0, 2] = torch.tensor([0.2, 0.3, 0.5])  # start, prompt token, answer-side token
    c = torch.zeros(1, 1, 3, 4)
    c[0, 0, 2] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = probe.weight_shares([s], [c], 0, [2], 1, [1, 2], merged=False)
    assert out == pytest.approx({"self_query_share": 0.3, "cross_prefix_share": 0.5})
    half_s, half_c = s / 2, c / 2  # merged attention: self and cross weights share one softmax
    out = probe.weight_shares([half_s], [half_c], 0, [2], 1, [1, 2], merged=True)
    assert out == pytest.approx({"self_query_share": 0.3, "cross_prefix_share": 0.5, "cross_weight_share": 0.5,
                                 "query_weight_share": 0.15})
    assert probe.weight_shares([s], [c], 0, [2], 0, [], merged=False) == {"self_query_share": 0.0, "cross_prefix_share": 0.0}


@pytest.mark.parametrize("family", ["t5", "t5gemma2"])
def test_hidden_prefix_gets_exactly_zero_cross_weight_and_weights_sum_to_one(family):
    from tests.test_encdec import _ids, _tiny

    em = _tiny(family)
    prefix, doc, q, a = _ids(4, 1), _ids(9, 2), _ids(3, 3), _ids(3, 4)
    items = [encdec.Item("s", c, prefix, doc, c == "hidden", q if c != "nq" else (), a) for c in ("hidden", "visible", "nq")]
    rows = {r["condition"]: r for r in encdec.score_items(em, items, attn_probe=True)}
    assert rows["hidden"]["cross_prefix_share"] == 0.0 and 0 < rows["visible"]["cross_prefix_share"] < 1
    assert rows["nq"]["self_query_share"] == 0.0 and 0 < rows["hidden"]["self_query_share"] < 1
    (h, seg), = encdec.encode_many(em, [(prefix, doc)])
    with torch.no_grad():
        from transformers.modeling_outputs import BaseModelOutput

        res = em.model(encoder_outputs=BaseModelOutput(last_hidden_state=h[None]), attention_mask=torch.ones(1, len(seg), dtype=torch.long),
                       decoder_input_ids=torch.tensor([[em.start_id, *q, *a[:-1]]]), output_attentions=True)
    total = sum(x.sum(-1) for x in (res.decoder_attentions[0], res.cross_attentions[0]))
    assert torch.allclose(total, torch.full_like(total, 1.0 if family == "t5gemma2" else 2.0), atol=1e-5)


def test_probe_refuses_non_eager_attention():
    from tests.test_encdec import _tiny

    em = _tiny("t5")
    em.model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="eager attention"):
        encdec.score_items(em, [encdec.Item("s", "c", (), (5, 6, 7), False, (8,), (9,))], attn_probe=True)
