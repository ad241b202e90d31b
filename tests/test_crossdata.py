"""exp04 helpers: data-set specs, score-free hard subsets, semantic deltas, sign consistency."""
import numpy as np
import pytest

from lib.studies import crossdata
from lib.report import plots
from lib.kv.engine import WorkItem


def test_parse_datasets_specs_and_errors():
    specs = crossdata.parse_datasets("ms_marco, synthetic@7", "a.jsonl,")
    assert [(d.label, d.name, d.source, d.seed) for d in specs] == [
        ("ms_marco", "ms_marco", "a.jsonl", None), ("synthetic@7", "synthetic", None, 7)]
    with pytest.raises(ValueError, match="unknown data set 'msmarco'"):
        crossdata.parse_datasets("msmarco")
    with pytest.raises(ValueError, match="only synthetic takes a seed"):
        crossdata.parse_datasets("squad_v2@3")
    with pytest.raises(ValueError, match="2 entries for 1 data sets"):
        crossdata.parse_datasets("squad_v2", "a,b")
    with pytest.raises(ValueError, match="twice"):
        crossdata.parse_datasets("synthetic@1,synthetic@1")


def test_load_prefixes_ids_and_uses_each_synthetic_seed():
    datas = crossdata.load(crossdata.parse_datasets("synthetic@1,synthetic@2"), 5, seed=0)
    a, b = datas["synthetic@1"].samples, datas["synthetic@2"].samples
    assert all(s.id.startswith("synthetic@1/synth-1-") for s in a) and all(s.id.startswith("synthetic@2/synth-2-") for s in b)
    assert {s.passage for s in a}.isdisjoint({s.passage for s in b})
    assert a[0].meta["dataset_label"] == "synthetic@1"


def _null_data(n=2000, seed=0):
    """Bare NLL = difficulty (partly predictable from x) + noise; the condition has NO effect."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    difficulty = 1.0 + 0.8 * x[:, 0] - 0.4 * x[:, 1]
    bare = difficulty + rng.normal(scale=0.7, size=n)
    cond = difficulty + rng.normal(scale=0.7, size=n)
    return x, bare, cond


def test_heldout_membership_ignores_the_samples_own_scores():
    x, bare, _ = _null_data(200)
    h = crossdata.heldout_hard(x, bare, 0.4, seed=3)
    for k in (0, 1):
        changed = bare.copy()
        changed[h["fold"] == k] = np.random.default_rng(k).normal(size=(h["fold"] == k).sum()) * 100
        h2 = crossdata.heldout_hard(x, changed, 0.4, seed=3)
        # the fold whose scores changed keeps its membership: it was decided by the other fold's fit
        assert np.array_equal(h2["mask"][h["fold"] == k], h["mask"][h["fold"] == k])
    assert abs(h["mask"].mean() - 0.4) < 0.1


def test_naive_selection_shows_regression_to_the_mean_and_heldout_does_not():
    x, bare, cond = _null_data()
    naive = crossdata.naive_hard(bare, 0.4)
    held = crossdata.heldout_hard(x, bare, 0.4, seed=0)
    d_naive = (bare - cond)[naive].mean()
    d_held = (bare - cond)[held["mask"]].mean()
    se = (bare - cond).std() / np.sqrt(held["mask"].sum())
    assert d_naive > 10 * se  # a large spurious "benefit" on the naive hard subset
    assert abs(d_held) < 3 * se  # none on the held-out one
    assert held["oof_spearman_rho"] > 0.5  # and the held-out rule still finds hard samples
    assert (bare[held["mask"]].mean() - bare.mean()) > 0.5


def test_heldout_rejects_bad_fraction_and_sizes():
    with pytest.raises(ValueError, match="fraction"):
        crossdata.heldout_hard(np.zeros((10, 2)), np.zeros(10), 1.0, seed=0)
    with pytest.raises(ValueError, match="feature row"):
        crossdata.heldout_hard(np.zeros((9, 2)), np.zeros(10), 0.4, seed=0)


def _nll(n, shift, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(2, 0.5, n)
    return {"bare": base, "random_tokens": base + 0.1 + rng.normal(0, 0.05, n),
            "oracle_matched": base + shift + rng.normal(0, 0.05, n)}


def test_analyse_structure_and_sign_consistency():
    names = ["bare", "random_tokens", "oracle_matched"]
    nll = {"A": _nll(40, -0.3, 1), "B": _nll(30, -0.2, 2)}
    feats = {k: np.random.default_rng(0).normal(size=(len(v["bare"]), len(crossdata.FEATURES))) for k, v in nll.items()}
    out = crossdata.analyse(nll, feats, names, fraction=0.4, n_boot=100, seed=0)
    assert out["pooled"]["n"] == 70
    for lab in ("A", "B"):
        r = out["datasets"][lab]
        assert [c["cond"] for c in r["all"]["semantic"]] == ["oracle_matched"]
        assert [c["cond"] for c in r["all"]["vs_bare"]] == ["random_tokens", "oracle_matched"]
        assert r["hard_naive"]["n"] == round(0.4 * r["n"])
        assert r["all"]["semantic"][0]["d"] > 0  # oracle is 0.2-0.3 lower than random: semantic delta positive
    sc = out["sign_consistency_all"][0]
    assert sc["cond"] == "oracle_matched" and sc["consistent"] and sc["n_positive"] == 2
    grid = crossdata.d_grid(out, "all")
    assert set(grid) == {"A", "B", "pooled"}
    with pytest.raises(ValueError, match="random_tokens"):
        crossdata.analyse(nll, feats, ["bare", "oracle_matched"])


def test_sign_consistency_mixed_signs():
    rows = crossdata.sign_consistency({"A": [{"cond": "x", "d": 0.2}], "B": [{"cond": "x", "d": -0.1}]},
                                      [{"cond": "x", "d": 0.05}])
    assert rows[0]["n_positive"] == 1 and rows[0]["n_negative"] == 1 and not rows[0]["consistent"]
    assert rows[0]["n_agree_with_pooled"] == 1


def test_feature_table_needs_the_reference_item():
    datas = crossdata.load(crossdata.parse_datasets("synthetic@1"), 2, seed=0)
    s = datas["synthetic@1"].samples
    items = [WorkItem(x.id, "bare", (1, 2, 3), (), False, (4,), (5, 6), {"q_tokens": 4}) for x in s]
    t = crossdata.feature_table(items, s)
    assert t["synthetic@1"].shape == (2, len(crossdata.FEATURES))
    assert np.allclose(t["synthetic@1"][:, 0], np.log(2))
    with pytest.raises(ValueError, match="no 'bare' item"):
        crossdata.feature_table(items[:1], s)


def test_plot_d_grid(tmp_path):
    p = plots.plot_d_grid({"A": {"x": 0.1, "y": -0.2}, "pooled": {"x": 0.05}}, tmp_path / "g.png")
    assert p.stat().st_size > 1000
    with pytest.raises(ValueError, match="non-empty"):
        plots.plot_d_grid({}, tmp_path / "h.png")


def test_load_real_schemas_from_local_files():
    from pathlib import Path

    d = Path(__file__).parent / "data"
    files = ",".join(str(d / f) for f in ("ms_marco_v1.1_sample.jsonl", "squad_v2_sample.jsonl",
                                          "triviaqa_rc.wikipedia_sample.jsonl", "hotpotqa_distractor_sample.jsonl"))
    specs = crossdata.parse_datasets("ms_marco,squad_v2,triviaqa,hotpotqa", files)
    datas = crossdata.load(specs, 2, seed=0)
    assert list(datas) == ["ms_marco", "squad_v2", "triviaqa", "hotpotqa"]
    for lab, data in datas.items():
        assert len(data.samples) == 2 and all(s.id.startswith(f"{lab}/") for s in data.samples)
        assert all(s.meta["dataset_label"] == lab for s in data.samples)


def test_llm_vs_generic_per_data_set_finds_a_known_effect_in_one_set_only():
    rng = np.random.default_rng(1)
    names = ["bare", "random_tokens", "extractor_matched", "llm_extract", "llm_question"]
    nll_by_ds, feats = {}, {}
    for lab, gain in (("a", 0.3), ("b", 0.0)):
        base = rng.normal(3.0, 0.5, 60)
        gen = base - 0.1 + rng.normal(0, 0.05, 60)
        nll_by_ds[lab] = {"bare": base, "random_tokens": base + rng.normal(0, 0.05, 60), "extractor_matched": gen,
                          "llm_extract": gen - gain + rng.normal(0, 0.05, 60), "llm_question": gen + rng.normal(0, 0.05, 60)}
        feats[lab] = rng.normal(size=(60, len(crossdata.FEATURES)))
    out = crossdata.analyse(nll_by_ds, feats, names, n_boot=200)
    rows = {lab: {r["cond"]: r for r in out["datasets"][lab]["all"]["llm_vs_generic"]} for lab in ("a", "b")}
    assert set(rows["a"]) == {"llm_extract", "llm_question"} and rows["a"]["llm_extract"]["ref"] == "extractor_matched"
    assert rows["a"]["llm_extract"]["mean_delta"] == pytest.approx(0.3, abs=0.03) and rows["a"]["llm_extract"]["p_holm"] < 1e-6
    assert abs(rows["b"]["llm_extract"]["mean_delta"]) < 0.03 and rows["b"]["llm_extract"]["p_holm"] > 0.01
    assert "llm_vs_generic" in out["pooled"]["all"]
    without = crossdata.analyse(nll_by_ds, feats, names[:2] + names[3:], n_boot=50)  # no generic: no test
    assert "llm_vs_generic" not in without["datasets"]["a"]["all"]
