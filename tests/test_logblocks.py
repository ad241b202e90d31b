"""Generated number blocks in EXPERIMENT_PLAN.md: written from results.json, and the committed log is current."""
import json
from pathlib import Path

import pytest

from lib.report import logblocks

ROOT = Path(__file__).resolve().parents[1]


def _results(tmp_path, p_holm_wilcoxon):
    run = tmp_path / "results" / "exp01_x"
    run.mkdir(parents=True)
    row = {"label": "D vs A", "ref": "A", "cond": "D", "mean_delta": 0.0123, "mean_delta_ci_low": 0.001,
           "mean_delta_ci_high": 0.02, "pct_of_ref": 0.5, "pct_ci_low": 0.1, "pct_ci_high": 0.9, "d": 0.31,
           "ci_low": 0.1, "ci_high": 0.5, "win_rate": 0.6, "p_holm": 0.2, "p_holm_wilcoxon": p_holm_wilcoxon,
           "rank_biserial": 0.3, "primary_test": "t"}
    (run / "results.json").write_text(json.dumps({
        "config": {"MODEL": "m", "dtype": "torch.float32"}, "provenance": {"commit": "abcdef123456", "dirty": False,
                                                                            "date": "2026-12-01T00:00"},
        "data": {"name": "squad_v1.1", "n_samples": 300, "provenance": {"sha256": "f" * 64}, "content_sha256": "e" * 64},
        "summary": {"primary_test": "t", "mean_nll": {"A": 3.0, "D": 2.9}, "comparisons": [row]}}))
    return "results/exp01_x"


def test_block_is_written_from_the_file_and_names_test_dependence(tmp_path):
    run = _results(tmp_path, p_holm_wilcoxon=0.001)
    text = f"prose\n<!-- RUN-BLOCK {run} -->\nstale 9.99\n<!-- /RUN-BLOCK -->\nmore prose\n"
    out = logblocks.update(text, tmp_path)
    assert "stale" not in out and out.startswith("prose\n") and out.endswith("<!-- /RUN-BLOCK -->\nmore prose\n")
    assert "| D vs A | +0.0123 [+0.0010, +0.0200] | +0.50 [+0.10, +0.90] | +0.310 [+0.100, +0.500] | 0.60 | 0.2 | 0.001 | test-dependent |" in out
    assert "real data" in out and "N=300" in out and "commit abcdef12" in out
    assert logblocks.update(out, tmp_path) == out  # idempotent
    run2 = _results(tmp_path / "b", p_holm_wilcoxon=0.5)
    assert "| null |" in logblocks.update(f"<!-- RUN-BLOCK {run2} -->\n<!-- /RUN-BLOCK -->", tmp_path / "b")


def test_missing_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results/nope"):
        logblocks.update("<!-- RUN-BLOCK results/nope -->\n<!-- /RUN-BLOCK -->", tmp_path)


def test_committed_log_blocks_are_current():
    text = (ROOT / "EXPERIMENT_PLAN.md").read_text()
    assert logblocks.update(text) == text, "EXPERIMENT_PLAN.md is stale: run `make index`"


def test_committed_index_table_is_current():
    from lib.report import index

    text = (ROOT / "EXPERIMENT_PLAN.md").read_text()
    body = text.split(index.START, 1)[1].split(index.END, 1)[0]
    assert body == "\n" + index.table(index.collect()) + "\n", "the results index is stale: run `make index`"


def test_block_shows_margins_and_derived_tables(tmp_path):
    run = _results(tmp_path, p_holm_wilcoxon=0.5)
    path = tmp_path / run / "results.json"
    r = json.loads(path.read_text())
    m = {**r["summary"]["comparisons"][0], "label": "D vs A (margin)", "d": 0.02, "ci_low": -0.1, "ci_high": 0.14,
         "d_nll": 0.31, "entropy_gap": 0.29, "metric": "margin", "rank_better": 0.054, "rank_worse": 0.013,
         "p_rank_wilcoxon": 0.0043, "gold_rank_ref": 2.0, "gold_rank_cond": 1.9, "top1_ref": 0.4, "top1_cond": 0.45}
    r["summary"]["discrimination"] = {"n_distractors": [4], "mean_margin": {"A": 1.25, "D": 1.3},
                                      "mean_gold_rank": {"A": 2.0, "D": 1.9}, "top1": {"A": 0.4, "D": 0.45}, "comparisons": [m]}
    r["summary"]["best_cutoff"] = {"early": {"cutoff": 2, "cutoff_ci": [2, 3], "mean_delta": 0.0011, "mean_delta_ci": [0.0008, 0.0015],
                                             "pct_of_ref": 0.2, "pct_ci": [0.1, 0.3], "d": 0.42, "d_ci": [0.3, 0.5],
                                             "split_half_d": 0.41}}
    path.write_text(json.dumps(r))
    out = logblocks.render(run, tmp_path)
    assert "vs 4 type-matched distractors" in out and "A +1.250 / 2.00 / 0.40" in out
    assert "| D vs A (margin) |" in out and "Entropy gap d(nll) - d(margin): D vs A +0.290." in out
    assert "Wilcoxon p; top-1 rate reference -> condition): D vs A 5.4% / 1.3%, p 0.0043, top-1 0.400 -> 0.450." in out
    assert "Best early cutoff 2 (bootstrap 95% range 2-3): mean delta +0.0011 [+0.0008, +0.0015] nats" in out


def test_identity_calls_multi_set_synthetic_runs_pipeline_checks(tmp_path):
    run = tmp_path / "results" / "exp04_x"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"config": {"MODEL": "m", "DATASETS": "synthetic@1,synthetic@2"},
                                                  "summary": {"comparisons": []}}))
    text = logblocks.render("results/exp04_x", tmp_path)
    assert "pipeline check (synthetic data)" in text and "real data" not in text


def test_exp11_block_shows_each_attention_mode(tmp_path):
    """exp11's summary keeps its comparisons per Phase A attention (vs_bare, bidirectional_vs_causal, a
    structural fraction per mode): the block shows every one of them."""
    run = tmp_path / "results" / "exp11_x"
    run.mkdir(parents=True)

    def row(ref, cond, md):
        return {"label": f"{cond} vs {ref}", "ref": ref, "cond": cond, "mean_delta": md, "mean_delta_ci_low": md - 0.01,
                "mean_delta_ci_high": md + 0.01, "pct_of_ref": 10 * md, "pct_ci_low": 0.0, "pct_ci_high": 1.0, "d": 0.4,
                "ci_low": 0.3, "ci_high": 0.5, "win_rate": 0.6, "p_holm": 1e-4, "p_holm_wilcoxon": 1e-4,
                "rank_biserial": 0.3, "primary_test": "t"}

    sf = {m: {"structural": f"random__{m}", "full": f"oracle__{m}", "mean_benefit_structural": 0.1, "mean_benefit_full": 0.2,
              "fraction_of_mean_benefit": 0.5, "d_structural": 0.2, "d_full": 0.4, "fraction_of_d": 0.5}
          for m in ("causal", "bidirectional")}
    (run / "results.json").write_text(json.dumps({
        "config": {"MODEL": "m"}, "provenance": {"commit": "abcdef123456", "date": "2026-12-02T00:00"},
        "data": {"name": "squad_v1.1", "n_samples": 10, "provenance": {"sha256": "f" * 64}},
        "summary": {"primary_test": "t", "mean_nll": {"bare__causal": 3.0},
                    "vs_bare": {"causal": [row("bare__causal", "oracle__causal", 0.2)],
                                "bidirectional": [row("bare__bidirectional", "oracle__bidirectional", 0.3)]},
                    "bidirectional_vs_causal": [row("bare__causal", "bare__bidirectional", -0.1)],
                    "structural_fraction": sf}}))
    out = logblocks.render("results/exp11_x", tmp_path)
    assert "| oracle__causal vs bare__causal | +0.2000" in out and "| oracle__bidirectional vs bare__bidirectional | +0.3000" in out
    assert "| bare__bidirectional vs bare__causal | -0.1000" in out
    assert "Structural fraction (random__causal vs oracle__causal)" in out
    assert "Structural fraction (random__bidirectional vs oracle__bidirectional)" in out


def test_identity_of_a_train_eval_run_names_both_splits_and_the_file_sha(tmp_path):
    run = tmp_path / "results" / "exp07_x"
    run.mkdir(parents=True)
    side = lambda n, split, c: {"name": "squad_v1.1", "split": split, "n_samples": n, "content_sha256": c * 64,
                                "provenance": {"sha256": "4" * 64}}
    (run / "results.json").write_text(json.dumps({
        "config": {"MODEL": "m", "DATASET": "squad_v1.1"}, "provenance": {"commit": "abcdef123456", "date": "2026-12-02"},
        "data": {"train": side(400, "dev (articles: train side, 35 articles)", "a"),
                 "eval": side(150, "dev (articles: eval side, 13 articles)", "b")},
        "summary": {"primary_test": "t"}}))
    out = logblocks.render("results/exp07_x", tmp_path)
    assert "data squad_v1.1 N=150" in out and "real data" in out
    assert "train N=400 (dev (articles: train side, 35 articles)), eval N=150 (dev (articles: eval side, 13 articles))" in out
    assert "file sha256 444444444444" in out and "samples sha256 train aaaaaaaaaaaa, eval bbbbbbbbbbbb" in out


def test_exp10_block_shows_each_path_and_length():
    """exp10 keeps its comparisons per path and target length (summary.paths): the block shows the actual
    document lengths, one table per length, and labels the random-init encoder-decoder path."""
    body = logblocks.render("results/exp10")
    assert "model smollm2-135m-instruct" in body  # DEC_MODEL names the decoder-only model
    assert "decoder path (bundled:" in body and "padding `unrelated`" in body and "L=0 142, L=256 256, L=600 600" in body
    for L in (0, 256, 600):
        assert f"decoder, target length {L} (mean" in body and f"encdec, target length {L} (mean" in body
    assert "| oracle_len600 vs random_len600 | +0.1054" in body
    assert "encdec path (random-t5-tiny, RANDOM-INIT: plumbing only)" in body


def test_exp09_block_shows_encoder_effects_per_decoder_mode():
    body = logblocks.render("results/exp09")
    assert "pipeline check (RANDOM-INIT model: says nothing about language)" in body.splitlines()[0]
    assert "Encoder prefix vs bare, query in the decoder:" in body and "Encoder prefix vs bare, no query in the decoder:" in body
    assert "| first_sentence__q vs bare__q | -0.0044" in body and "Length control (decoder" in body
    assert body.count("Structural fraction (random__") == 2  # one per decoder mode


@pytest.mark.parametrize("benefits, expected, absent", [
    ((0.1582, 0.2123), "", ("opposite signs", "both hurt")),                 # both help: the ratio reads as is
    ((-0.0176, -0.1235), "both hurt", ("opposite signs",)),                    # both hurt: a fraction of a harm
    ((0.05, -0.12), "opposite signs", ("both hurt",)),                         # the ratio is meaningless
])
def test_structural_fraction_caveat_follows_the_signs(tmp_path, benefits, expected, absent):
    """The caveat under the structural fraction names what the signs of the two benefits say, and only then:
    a caveat about opposite signs printed under two benefits of the same sign misreads the run."""
    run = tmp_path / "results" / "exp03_x"
    run.mkdir(parents=True)
    s, f = benefits
    sf = {"structural": "random_tokens", "full": "oracle_matched", "mean_benefit_structural": s, "mean_benefit_full": f,
          "fraction_of_mean_benefit": s / f, "d_structural": s, "d_full": f, "fraction_of_d": s / f}
    (run / "results.json").write_text(json.dumps({"config": {"MODEL": "m"}, "summary": {"comparisons": [],
                                                                                      "structural_fraction": sf}}))
    line = next(x for x in logblocks.render("results/exp03_x", tmp_path).splitlines() if x.startswith("Structural fraction"))
    assert expected in line
    for a in absent:
        assert a not in line


@pytest.mark.parametrize("part, whole, opposite", [(-2.5, -2.9, False), (0.01, -0.013, True)])
def test_exp06_block_shows_the_first_token_share(tmp_path, part, whole, opposite):
    run = tmp_path / "results" / "exp06_x"
    run.mkdir(parents=True)
    ft = {"part": "values_first_token", "whole": "values_only", "ref": "bare", "n": 128, "mean_delta_part": part,
          "mean_delta_whole": whole, "share": part / whole, "share_ci": [0.7, 0.95], "d_part": -0.8, "d_whole": -0.9}
    ftp = {**ft, "part": "primed_first_token", "whole": "primed", "mean_delta_part": -0.1, "mean_delta_whole": -0.4,
           "share": 0.25}
    (run / "results.json").write_text(json.dumps({"config": {"MODEL": "m"}, "summary": {"comparisons": [], "first_token": ft,
                                                                                      "first_token_primed": ftp}}))
    lines = [x for x in logblocks.render("results/exp06_x", tmp_path).splitlines() if x.startswith("First document token")]
    assert len(lines) == 2 and "(values_first_token: the values of" in lines[0] and "(primed_first_token: the keys and values" in lines[1]
    assert f"{part:+.4f} of values_only's {whole:+.4f} nats, share {part / whole:.2f} [0.70, 0.95]; d -0.800 vs -0.900" in lines[0]
    assert ("opposite signs" in lines[0]) == opposite
    assert "-0.1000 of primed's -0.4000 nats, share 0.25" in lines[1] and "opposite" not in lines[1]
