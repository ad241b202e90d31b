"""The findings table: seed headlines beside real-data runs only, verdicts by both tests, the committed log current."""
import json
from pathlib import Path

import pytest

from lib.report import findings, index

ROOT = Path(__file__).resolve().parents[1]


def _cmp(ref, cond, mean_delta, p_t, p_w, d):
    return {"label": f"{cond} vs {ref}", "ref": ref, "cond": cond, "n": 50, "mean_delta": mean_delta, "pct_of_ref": 10 * mean_delta,
            "pct_ci_low": 0.0, "pct_ci_high": 1.0, "d": d, "ci_low": d - 0.1, "ci_high": d + 0.1, "p_holm": p_t,
            "p_holm_wilcoxon": p_w, "rank_biserial": 0.5 if mean_delta > 0 else -0.5, "primary_test": "t"}


def _run(root, name, model, dataset, comparisons, *, smoke=False, crossdata=None, margins=()):
    f = root / name
    f.mkdir(parents=True)
    summary = {"primary_test": "t", "comparisons": comparisons}
    if crossdata:
        summary["crossdata"] = crossdata
    if margins:
        summary["discrimination"] = {"comparisons": list(margins)}
    cfg = {"MODEL": model, ("DATASETS" if crossdata else "DATASET"): dataset}
    (f / "results.json").write_text(json.dumps({"config": cfg, "summary": summary,
                                                "provenance": {"run_kind": {"smoke": smoke, "random_init": False}}}))


def test_only_real_runs_count_and_verdicts_use_both_tests(tmp_path):
    d_vs_a = ("A_bare", "D_trunc_oracle")
    _run(tmp_path, "exp01_real_a", "smollm2-135m-instruct", "squad_v1.1", [_cmp(*d_vs_a, 0.2, 1e-6, 1e-6, 0.5)],
         margins=[{**_cmp(*d_vs_a, 0.1, 0.01, 0.01, 0.3)}])
    _run(tmp_path, "exp01_real_b", "qwen2.5-coder-0.5b-instruct", "squad_v1.1",
         [_cmp(*d_vs_a, -0.01, 0.4, 0.5, -0.02), _cmp("E_trunc_random", "D_trunc_oracle", 0.0, 0.3, 0.6, 0.0)])
    _run(tmp_path, "exp01_real_c", "gemma-3-270m", "squad_v1.1", [_cmp(*d_vs_a, -0.1, 0.2, 0.001, -0.2)])  # only Wilcoxon rejects
    _run(tmp_path, "exp01_synth", "gemma-3-270m", "synthetic", [_cmp(*d_vs_a, 0.3, 1e-9, 1e-9, 1.0)])
    _run(tmp_path, "exp01_smoke", "gemma-3-270m", "squad_v1.1", [_cmp(*d_vs_a, 0.3, 1e-9, 1e-9, 1.0)], smoke=True)
    pooled = {"pooled": {"hard_heldout": {"semantic": [_cmp("random_tokens", "extractor_matched", 0.05, 0.01, 0.02, 0.3)]}}}
    _run(tmp_path, "exp04_real", "gemma-3-270m", "squad_v1.1,coqa", [], crossdata=pooled)
    found = {f["headline"].key: f for f in findings.measure(index.collect(tmp_path))}

    seed001 = found["exp21_trunc_oracle"]["lab"]  # the seed: null
    assert [m["run"] for m in seed001] == ["exp01_real_a", "exp01_real_b", "exp01_real_c"]  # synthetic and SMOKE left out
    assert [(m["verdict"], m["agrees"]) for m in seed001] == [("better", "no"), ("null", "yes"), ("test-dependent", "undecided")]
    assert seed001[0]["row"]["d_margin"] == pytest.approx(0.3)
    banked = found["correction_content_banked"]["lab"]  # the seed's direction depends on the model: Qwen null
    assert [(m["model"], m["verdict"], m["agrees"]) for m in banked] == [("qwen2.5-coder-0.5b-instruct", "null", "yes")]
    hard = found["v4_hard_extractor"]["lab"]
    assert [(m["run"], m["verdict"], m["agrees"]) for m in hard] == [("exp04_real", "better", "yes")]

    table = findings.render(list(found.values()))
    assert "d(margin) +0.30" in table and "+0.200 nats" in table
    margin_row = {**_cmp("bare", "extractor", 0.7, 1e-9, 1e-9, 0.48), "metric": "margin", "d_nll": -0.38, "rank_better": 0.038,
                  "rank_worse": 0.054, "p_rank_wilcoxon": 0.243}
    assert findings._effect(margin_row).endswith("d(nll) -0.38; gold rank better / worse in 3.8% / 5.4% of samples (Wilcoxon p 0.24)")
    assert "cannot be measured offline: no pretrained encoder-decoder" in table  # exp09's headline says why
    assert "no real-data run yet; would be measured by exp07" in table
    assert "exp01_synth" not in table and "exp01_smoke" not in table


def test_update_plan_needs_markers(tmp_path):
    plan = tmp_path / "plan.md"
    plan.write_text("no markers here\n")
    with pytest.raises(ValueError, match="FINDINGS:START"):
        findings.update_plan([], plan)
    plan.write_text(f"head\n{findings.START}\nold\n{findings.END}\ntail\n")
    findings.update_plan([], plan)
    text = plan.read_text()
    assert "old" not in text and text.startswith("head\n") and text.endswith(f"{findings.END}\ntail\n")
    assert text.count("| ") > len(findings.HEADLINES)  # one row per headline even without runs


def test_committed_findings_table_is_current():
    text = (ROOT / "EXPERIMENT_PLAN.md").read_text()
    body = text.split(findings.START, 1)[1].split(findings.END, 1)[0]
    assert body == "\n" + findings.render(findings.measure(index.collect())) + "\n", "the findings table is stale: run `make index`"


def test_committed_findings_file_is_current():
    """results/FINDINGS.md (shown by the overview notebook) carries the same table as the log."""
    text = (ROOT / "results" / "FINDINGS.md").read_text()
    assert text.endswith("\n" + findings.render(findings.measure(index.collect())) + "\n"), "results/FINDINGS.md is stale: run `make index`"


def test_margin_sources_are_judged_on_the_margin_with_their_own_expected_direction(tmp_path):
    """The corrections about discrimination are judged on d(margin), not d(nll): keyword gains are
    entropy (nll better, margin null expected), the extractor's margin is positive on every model."""
    kw = ("bare", "kw10_L32")
    _run(tmp_path, "exp05_real", "smollm2-135m-instruct", "squad_v1.1", [_cmp(*kw, 0.3, 1e-6, 1e-6, 0.6)],
         margins=[{**_cmp(*kw, 0.01, 0.6, 0.7, 0.02), "metric": "margin", "d_nll": 0.6}])
    ex = ("bare", "extractor")
    _run(tmp_path, "exp02_real_a", "smollm2-135m-instruct", "squad_v1.1", [_cmp(*ex, 0.3, 1e-6, 1e-6, 0.5)],
         margins=[{**_cmp(*ex, 0.2, 1e-4, 1e-4, 0.4), "metric": "margin", "d_nll": 0.5}])
    _run(tmp_path, "exp02_real_b", "gemma-3-270m", "squad_v1.1", [_cmp(*ex, 0.3, 1e-6, 1e-6, 0.5)],
         margins=[{**_cmp(*ex, -0.2, 1e-4, 1e-4, -0.4), "metric": "margin", "d_nll": 0.5}])
    _run(tmp_path, "exp02_real_c", "qwen2.5-coder-0.5b-instruct", "squad_v1.1", [_cmp(*ex, 0.3, 1e-6, 1e-6, 0.5)])  # no margins
    found = {f["headline"].key: f for f in findings.measure(index.collect(tmp_path))}

    entropy = found["correction_keywords_entropy"]["lab"]
    assert [(m["what"], m["verdict"], m["agrees"]) for m in entropy] == [
        ("exp05: kw10_L32 vs bare", "better", "yes"), ("exp05: kw10_L32 vs bare (margin)", "null", "yes")]
    margin = found["correction_extractor_margin"]["lab"]
    assert [(m["run"], m["verdict"], m["agrees"]) for m in margin] == [("exp02_real_a", "better", "yes"),
                                                                       ("exp02_real_b", "worse", "no")]
    table = findings.render(list(found.values()))
    row = next(line for line in table.splitlines() if "exp02_real_b" in line and "extractor vs bare (margin)" in line)
    assert "margin -0.200 nats" in row and "d(margin) -0.40 [-0.50, -0.30]" in row and "d(nll) +0.50" in row


def test_exp11_rows_are_found_in_its_per_mode_tables(tmp_path):
    f = tmp_path / "exp11_real"
    f.mkdir()
    summary = {"primary_test": "t", "vs_bare": {"causal": [_cmp("bare__causal", "random__causal", 0.1, 1e-3, 1e-3, 0.2)],
                                                "bidirectional": [_cmp("bare__bidirectional", "oracle__bidirectional", 0.2, 1e-4, 1e-4, 0.4)]},
               "bidirectional_vs_causal": [_cmp("bare__causal", "bare__bidirectional", -0.1, 1e-3, 1e-3, -0.2)]}
    (f / "results.json").write_text(json.dumps({"config": {"MODEL": "smollm2-135m-instruct", "DATASET": "squad_v1.1"},
                                                "summary": summary, "provenance": {"run_kind": {"smoke": False}}}))
    found = {h["headline"].key: h for h in findings.measure(index.collect(tmp_path))}
    assert [(m["what"], m["verdict"], m["agrees"]) for m in found["v4_prefixlm_bidirectional_hurts"]["lab"]] == [
        ("exp11: bare__bidirectional vs bare__causal", "worse", "yes")]
    assert [(m["verdict"], m["agrees"]) for m in found["v4_prefixlm_causal_random"]["lab"]] == [("better", "yes")]
    assert [(m["verdict"], m["agrees"]) for m in found["v4_prefixlm_bidir_oracle_null"]["lab"]] == [("better", "no")]


def _write(root, name, results):
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(results))


def _exp08(share1, medians):
    """An exp08 results.json: part 1's share reached and part 4's median relative MSE per fraction."""
    by4 = {str(f): {"n": 1, "median_relative_mse": v, "median_final_mse": v, "share_reached": 0.0} for f, v in medians.items()}
    return {"config": {"MODEL": "smollm2-135m-instruct", "TEXT": "wiki"}, "steps_run": 2000,
            "provenance": {"run_kind": {"smoke": False, "random_init": False}},
            "summary": {"n_samples": 9, "n_targets": {"1": 4, "4": 5}, "by_label": {"4": by4},
                        "headline": {"1": {"share_reached": share1, "median_final_mse": 0.001, "median_relative_mse": 0.002}}}}


def test_reachability_headline_reads_part4_only_when_part1_converged(tmp_path):
    """exp08's row: a sharp rise between f=0.2 and 0.3 (one step carries it all) agrees with the design's
    ~30% once part 1 reached every real target; with part 1 unconverged the same curve is undecided;
    a synthetic-text run never counts."""
    sharp = {0: 1e-3, 0.1: 1e-3, 0.2: 1e-3, 0.3: 1e-1, 0.5: 1e-1, 1: 1e-1}   # +2 decades, all between 0.2 and 0.3
    _write(tmp_path, "exp08_conv", _exp08(1.0, sharp))
    _write(tmp_path, "exp08_unconv", _exp08(0.5, sharp))
    gradual = {0: 1e-3, 0.25: 10 ** -2.5, 0.5: 1e-2, 0.75: 10 ** -1.5, 1: 1e-1}  # +0.5 decades a step
    _write(tmp_path, "exp08_grad", _exp08(1.0, gradual))
    synth = _exp08(1.0, sharp)
    synth["config"]["TEXT"] = "synthetic"
    _write(tmp_path, "exp08_synth", synth)
    found = {f["headline"].key: f for f in findings.measure(index.collect(tmp_path))}
    lab = {m["run"]: m for m in found["reachability_fraction"]["lab"]}
    assert set(lab) == {"exp08_conv", "exp08_unconv", "exp08_grad"}
    assert (lab["exp08_conv"]["verdict"], lab["exp08_conv"]["agrees"]) == ("sharp at f~0.25", "yes")
    assert (lab["exp08_unconv"]["verdict"], lab["exp08_unconv"]["agrees"]) == ("sharp at f~0.25", "undecided")
    assert (lab["exp08_grad"]["verdict"], lab["exp08_grad"]["agrees"]) == ("gradual", "no")
    table = findings.render([found["reachability_fraction"]])
    assert "part 1 reached 50% of 4 real targets" in table and "not read: part 1 did not converge" in table
    assert "rise +2.00 decades from f=0 to 1, largest step 0.2->0.3 carries 100%" in table


def test_latentwire_headline_has_one_row_per_model_and_m(tmp_path):
    """exp12's row per reader: reached only when the latent's F1 is >= 25% of text F1 AND above the
    token budget at the same M (the seed's log did not reach it)."""
    def rows(text_f1, lat_f1, budget_f1):
        base = {"n": 100, "first_tok_at1": 0.1, "nll_per_token": 2.0}
        return [{**base, "condition": "text", "m": 0, "f1": text_f1}, {**base, "condition": "latent", "m": 16, "f1": lat_f1},
                {**base, "condition": "budget", "m": 16, "f1": budget_f1}]
    _write(tmp_path, "exp12_real", {
        "config": {"MODELS": "a,b", "DATASET": "squad_v1.1"}, "provenance": {"run_kind": {"smoke": False, "random_init": False}},
        "summary": {"by_model": {"a": rows(0.40, 0.12, 0.05), "b": rows(0.40, 0.12, 0.20)},
                    "criteria": {"first_tok_at1": 0.08, "f1": 0.05, "f1_ratio_to_text": 0.25}}})
    found = {f["headline"].key: f for f in findings.measure(index.collect(tmp_path))}
    lab = found["latentwire_vs_text"]["lab"]
    assert [(m["model"], m["verdict"], m["agrees"]) for m in lab] == [("a", "reached", "no"), ("b", "not reached", "yes")]
    assert "latent F1 0.120 (30% of text F1 0.400); budget F1 0.050" in findings.render([found["latentwire_vs_text"]])


def test_latentwire_threshold_is_the_runs_stored_criterion(tmp_path):
    """The share of text F1 comes from the run's own summary.criteria (the notebook's verdicts used it), not a
    second copy: at a stored 0.35, 30% of text F1 is not reached; a run without criteria is refused by name."""
    base = {"n": 100, "first_tok_at1": 0.1, "nll_per_token": 2.0}
    rows = [{**base, "condition": "text", "m": 0, "f1": 0.40}, {**base, "condition": "latent", "m": 16, "f1": 0.12},
            {**base, "condition": "budget", "m": 16, "f1": 0.05}]
    res = {"config": {"MODELS": "a,b", "DATASET": "squad_v1.1"}, "provenance": {"run_kind": {"smoke": False, "random_init": False}},
           "summary": {"by_model": {"a": rows}, "criteria": {"first_tok_at1": 0.08, "f1": 0.05, "f1_ratio_to_text": 0.35}}}
    _write(tmp_path, "exp12_real", res)
    found = {f["headline"].key: f for f in findings.measure(index.collect(tmp_path))}
    assert [m["verdict"] for m in found["latentwire_vs_text"]["lab"]] == ["not reached"]
    del res["summary"]["criteria"]
    _write(tmp_path / "old", "exp12_real", res)
    with pytest.raises(ValueError, match="exp12_real.*summary.criteria"):
        findings.measure(index.collect(tmp_path / "old"))


def test_exp06_headlines_read_values_early_at_the_seeds_depth_ratio(tmp_path):
    """The seed's cutoff 16 of Gemma 3 4B's 34 layers maps to 14 on SmolLM2's 30 (8 on Gemma 3 270M's 18, 11 on
    Qwen2.5-0.5B's 24); the lab row is values_early_<that c> vs bare, read from the run's own cutoff curve."""
    assert [findings.seed_cutoff(n) for n in (34, 30, 18, 24, 2)] == [16, 14, 8, 11, 1]
    with pytest.raises(ValueError, match="n_layers=1"):
        findings.seed_cutoff(1)
    comps = [_cmp("bare", f"values_early_{c}", 0.1 * c, 1e-3 if c == 14 else 0.5, 1e-3 if c == 14 else 0.5, 0.02 * c)
             for c in range(1, 30)] + [_cmp("bare", "values_only", 0.1, 1e-4, 1e-4, 0.3), _cmp("bare", "primed", 0.2, 1e-6, 1e-6, 0.5)]
    _run(tmp_path, "exp06_real", "smollm2-135m-instruct", "squad_v1.1", comps)
    f = tmp_path / "exp06_real" / "results.json"
    r = json.loads(f.read_text())
    r["summary"]["cutoff_curve"] = {"early": [{"cutoff": c} for c in range(1, 30)], "late": []}
    r["arch"] = {"n_layers": 30}
    f.write_text(json.dumps(r))
    found = {h["headline"].key: h for h in findings.measure(index.collect(tmp_path))}
    early = found["exp25_values_early"]["lab"]
    assert [(m["what"], m["verdict"], m["agrees"]) for m in early] == [("exp06: values_early_14 vs bare", "better", "yes")]
    assert early[0]["row"]["mean_delta"] == pytest.approx(1.4)
    assert [(m["verdict"], m["agrees"]) for m in found["exp25_values_only"]["lab"]] == [("better", "no")]
    assert [(m["verdict"], m["agrees"]) for m in found["exp25_full_priming_fails"]["lab"]] == [("better", "no")]
    assert findings.agrees("worse", "not better") and findings.agrees("null", "not better")
    assert not findings.agrees("better", "not better") and not findings.agrees("worse", "null")
    # CUTOFFS a subset (4,8,14): the layer count comes from the recorded arch, not from the largest cutoff (+1 = 15)
    r["summary"]["cutoff_curve"] = {"early": [{"cutoff": c} for c in (4, 8, 14)], "late": []}
    r["summary"]["comparisons"] = [x for x in comps if x["cond"] in ("values_early_4", "values_early_8", "values_early_14")]
    f.write_text(json.dumps(r))
    early = next(h for h in findings.measure(index.collect(tmp_path)) if h["headline"].key == "exp25_values_early")["lab"]
    assert [m["what"] for m in early] == ["exp06: values_early_14 vs bare"]
    del r["arch"]
    f.write_text(json.dumps(r))
    with pytest.raises(ValueError, match="exp06_real.*arch.n_layers"):
        findings.measure(index.collect(tmp_path))
