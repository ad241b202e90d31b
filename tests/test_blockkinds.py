"""RUN-BLOCKs for exp08, exp12 and the benchmark: numbers come from the run's files, statistics are right
on data with a known answer."""
import csv
import json

import numpy as np
import pytest

from lib.report import blockkinds, logblocks


def _exp12_run(tmp_path, shift: float, n: int = 30):
    run = tmp_path / "results" / "exp12_x"
    run.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        base = 3.0 + rng.normal()
        for cond, nll in (("latent", base), ("latent_other", base + shift), ("latent_zero", base + 2.0 + 0.1 * rng.normal()),
                          ("budget", base + 1.0 + 0.1 * rng.normal())):
            rows.append({"sample_id": f"s{i}", "condition": cond, "m": 4, "nll_sum": nll * 5, "n_tokens": 5})
        rows.append({"sample_id": f"s{i}", "condition": "text", "m": 0, "nll_sum": 5.0, "n_tokens": 5})
    with open(run / "per_item.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = [{"condition": c, "m": m, "n": n, "em": 0.0, "f1": 0.1, "nll_per_token": 3.0, "first_tok_at1": 0.2,
           "first_tok_at5": 0.4, "distinct_first_tokens": 3, "compression_tokens": 24.0, "compression_bytes": 0.1}
          for c, m in (("text", 0), ("latent", 4), ("latent_other", 4), ("latent_zero", 4), ("budget", 4))]
    (run / "results.json").write_text(json.dumps({
        "config": {"MODEL": "m", "DTYPE": "float32", "M_LIST": "4"}, "provenance": {"commit": "abc", "dirty": False},
        "data": {"eval": {"name": "squad_v1.1", "n_samples": n}, "train": {"name": "squad_v1.1", "n_samples": 100}},
        "summary": {"by_condition": by, "replay_vs_text_max_nll_gap": 0.0}, "per_item_csv": "per_item.csv",
        "training": {"4": {"history": [{"loss": 5.0}] * 12}}}))
    return "results/exp12_x"


def test_exp12_block_tests_own_latent_against_other_sample_latent(tmp_path):
    text = logblocks.render(_exp12_run(tmp_path, shift=0.5), tmp_path)
    assert "real data" in text and "| latent | 4 | 30 |" in text
    row = next(l for l in text.splitlines() if l.startswith("| latent vs latent_other |"))
    assert row.startswith("| latent vs latent_other | +0.5000 [+0.5000, +0.5000]") and row.endswith("| better |")
    assert "M=4 5.000 (12 steps)" in text
    null = logblocks.render(_exp12_run(tmp_path / "b", shift=0.0), tmp_path / "b")
    assert next(l for l in null.splitlines() if l.startswith("| latent vs latent_other |")).endswith("| null |")


def test_exp12_wire_block_has_one_table_and_comparison_per_model_and_the_joint_line(tmp_path):
    """A LatentWire run (several models in one per_item.csv, joint rows without NLL): per-model comparisons
    see only that model's rows."""
    run = tmp_path / "results" / "exp12_w"
    run.mkdir(parents=True)
    rows, shifts = [], {"a": 0.5, "b": -0.5}
    for model, shift in shifts.items():
        for i in range(20):
            for cond, nll in (("latent", 3.0 + 0.01 * i), ("latent_other", 3.0 + 0.01 * i + shift),
                              ("latent_zero", 3.0), ("budget", 3.0)):
                rows.append({"model": model, "sample_id": f"s{i}", "condition": cond, "m": 4, "nll_sum": nll, "n_tokens": 1})
    rows += [{"model": "joint", "sample_id": f"s{i}", "condition": "latent_joint", "m": 4, "nll_sum": "", "n_tokens": ""}
             for i in range(20)]
    with open(run / "per_item.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by = [{"condition": "latent", "m": 4, "n": 20, "f1": 0.1}]
    verdict = {"m": 4, "checks": {"first_tok_at1": True, "f1": False, "f1_ratio_to_text": False}}
    (run / "results.json").write_text(json.dumps({
        "config": {"MODELS": "a,b", "DTYPE": "float32", "M_LIST": "4", "ENCODER": "bytes"},
        "provenance": {"commit": "abc", "dirty": False}, "data": {"eval": {"name": "synthetic", "n_samples": 20}},
        "summary": {"by_model": {"a": by, "b": by}, "verdicts": {"a": [verdict], "b": [verdict]},
                    "joint": [{"m": 4, "n": 20, "em": 0.0, "f1": 0.2, "oracle_f1": 0.3, "agreement": 0.5}]},
        "per_item_csv": "per_item.csv"}))
    text = logblocks.render("results/exp12_w", tmp_path)
    assert "models a,b" in text and "ENCODER bytes" in text and "**a**" in text and "**b**" in text
    assert text.count("| latent | 4 | 20 |") == 2
    assert text.count("Seed acceptance criteria at M=4: first_tok_at1 met, f1 not met, f1_ratio_to_text not met.") == 2
    assert "Joint rescoring, M=4 (n 20): EM 0.000, F1 0.200, oracle F1 0.300, agreement 0.500." in text
    other = [line for line in text.splitlines() if line.startswith("| latent vs latent_other |")]
    assert len(other) == 2 and other[0].startswith("| latent vs latent_other | +0.5000") and other[1].startswith(
        "| latent vs latent_other | -0.5000")


def test_exp12_missing_samples_are_an_error():
    by_m = {4: {"latent": {"a": 1.0, "b": 2.0}, "latent_other": {"a": 1.0}}}
    with pytest.raises(ValueError, match="latent_other.*'b'"):
        blockkinds.latent_comparisons(by_m)


def _part(folder, key, rel, n=4):
    folder.mkdir(parents=True)
    s = {"n_targets": n, "restarts": 2, "steps": 20, "share_reached": 0.25,
         "initial_mse": {"median": 4.0}, "final_mse": {"median": 4.0 * rel},
         "relative_mse": {"median": rel, "q25": rel / 2, "q75": rel * 2}, "cosine_by_position": {"mean": [0.5, 0.7]}}
    (folder / "metrics.json").write_text(json.dumps({"part": key, "summary": s}))


def test_exp08_block_reads_every_part(tmp_path):
    run = tmp_path / "results" / "exp08_x"
    _part(run / "part1_real", "1", 0.1)
    _part(run / "part2b_raw", "2b", 0.5)
    (run / "results.json").write_text(json.dumps({
        "config": {"MODEL": "m", "TEXT": "wiki", "STEPS": 10, "MAX_STEPS": 20}, "provenance": {"commit": "abc"},
        "steps_run": 20, "headline": {}, "by_label": {"3": {"0.5": {"n": 2, "median_relative_mse": 0.3}}},
        "interpretation": [{"observation": "Exp 1 all converge to ~0", "measured": "x", "holds": False}]}))
    text = logblocks.render("results/exp08_x", tmp_path)
    lines = text.splitlines()
    assert "| 1 real | 4 | 2 | 20 | 4.000 | 0.400 | 0.100 (0.050-0.200) | 1/4 | 0.600 |" in lines
    assert any(l.startswith("| 2b raw Gaussian | 4 |") for l in lines)
    assert "real text" in text and "0.5: 0.300 (2)" in text and "| Exp 1 all converge to ~0 | x | no |" in lines
    empty = tmp_path / "results" / "exp08_empty"
    empty.mkdir()
    (empty / "results.json").write_text((run / "results.json").read_text())
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        logblocks.render("results/exp08_empty", tmp_path)


def test_bench_block_shows_ratio_and_agreement(tmp_path):
    path = tmp_path / "results" / "bench" / "d.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "design": "exp01", "model": "m", "n_samples": 4, "n_pairs": 20, "pairs_per_s": {"reference": 2.0, "engine": 7.0},
        "speedup": 3.5, "max_abs_nll_diff": 2e-5, "nll_agreement_ok": False, "matmul_peak_flops": 2e11,
        "engine_useful_flops_per_s": 1.5e11, "engine_useful_fraction_of_peak": 0.75,
        "peak_memory_bytes": {"reference": 2 ** 30, "engine": 2 ** 31}}))
    text = logblocks.render("results/bench/d.json", tmp_path)
    assert "| 2.00 | 7.00 | 3.50x | 2.0e-05 | FAILED | 200.0 GFLOP/s | 150.0 GFLOP/s | 75% | 1.00 / 2.00 GiB |" in text


def test_training_bench_block(tmp_path):
    path = tmp_path / "results" / "bench" / "t.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "design": "exp07train", "model": "m", "dtype": "f32", "device": "cpu", "threads": 2, "n_samples": 8, "epochs": 2,
        "micro_steps": 16, "cutoff": 8, "n_layers": 18, "repeats": 2, "steps_per_s": {"reference": 0.8, "fast": 1.2},
        "speedup": 1.5, "max_rel_loss_diff": 0.0, "max_abs_prefix_diff": 0.0, "agreement_ok": True,
        "matmul_peak_flops": 1e11, "fast_useful_flops_per_s": 5e10, "fast_useful_fraction_of_peak": 0.5,
        "reference_useful_fraction_of_peak": 0.33}))
    text = logblocks.render("results/bench/t.json", tmp_path)
    assert "| 0.80 | 1.20 | 1.50x | 0.0e+00 | 0.0e+00 | ok | 100.0 GFLOP/s | 50.0 GFLOP/s | 50% (33%) |" in text
    assert "Batched" not in text  # a run without the batched path
    r = json.loads(path.read_text())
    r.update(best_batched="batched_4", steps_per_s={**r["steps_per_s"], "batched_4": 2.0}, batched_speedup=2.5,
             batched_vs_fast=1.67, batched_useful_fraction_of_peak=0.6,
             max_rel_loss_diff_by_path={"batched_4": 3e-4, "control": 4e-4},
             same_prefix_check={"batched_4": {"nll_rel_diff": 1e-7, "grad_rel_diff": 2e-6}})
    path.write_text(json.dumps(r))
    text = logblocks.render("results/bench/t.json", tmp_path)
    assert ("Batched (`batched_4`, examples per forward): 2.00 steps/s, 2.50x the reference, 1.67x the fast path, 60% of "
            "peak; at the same prefix: NLL 1.0e-07, gradient 2.0e-06 relative; trajectory: max relative loss diff 3.0e-04 "
            "(control, initial prefix x (1 + 1e-6): 4.0e-04).") in text
    r.update(same_prefix_check_dtype="float64", same_prefix_check={"batched_4": {"nll_rel_diff": 1e-15, "grad_rel_diff": 2e-12}},
             same_prefix_check_float32={"batched_4": {"nll_rel_diff": 1e-7, "grad_rel_diff": 2e-4}})
    path.write_text(json.dumps(r))
    text = logblocks.render("results/bench/t.json", tmp_path)
    assert ("at the same prefix in float64: NLL 1.0e-15, gradient 2.0e-12 relative (float32: NLL 1.0e-07, gradient 2.0e-04, "
            "rounding); trajectory") in text


def test_generation_and_exp08_bench_blocks(tmp_path):
    import json

    from lib.report import logblocks

    gen = {"design": "gen", "model": "m", "data": "squad_v1.1", "n_samples": 4, "kinds": ["a", "b"], "prompts": 8, "batch": 4,
           "max_new_tokens": 32, "repeats": 1, "prompts_per_s": {"reference": 1.0, "fast": 2.5}, "ratio": 2.5,
           "generated_tokens_incl_padding": {"reference": 256, "fast": 90}, "texts_identical": True, "provenance": {}}
    reach = {"design": "exp08", "model": "m", "dtype": "torch.float32", "device": "cpu", "threads": 2, "n_targets": 8,
             "restarts": 5, "steps": 5, "seq_len": 20, "repeats": 2, "prompt_steps_per_s": {"per_target": 10.0, "batched": 30.0},
             "speedup": 3.0, "max_rel_final_mse_diff": 2e-7, "agreement_ok": True, "matmul_peak_flops": 1e11,
             "batched_fraction_of_peak": 0.55, "per_target_fraction_of_peak": 0.2, "provenance": {}}
    for name, r in (("gen_m.json", gen), ("exp08_m.json", reach)):
        (tmp_path / name).write_text(json.dumps(r))
    g = logblocks.render("gen_m.json", tmp_path)
    assert "| 1.00 | 2.50 | 2.50x | 256 -> 90 | yes |" in g  # a file from before the batched path
    new = {k: v for k, v in gen.items() if k != "generated_tokens_incl_padding"}
    new.update(fast_batch=32, work={"reference": {"prefill_tokens": 900, "decode_row_steps": 248},
                                    "fast": {"prefill_tokens": 700, "decode_row_steps": 60}})
    (tmp_path / "gen_m.json").write_text(json.dumps(new))
    g = logblocks.render("gen_m.json", tmp_path)
    assert "batched prompts/s (batch 32)" in g and "| 1.00 | 2.50 | 2.50x | 900 -> 700 | 248 -> 60 | yes |" in g
    new.update(fast_batch=128, prefill_batch=8)
    (tmp_path / "gen_m.json").write_text(json.dumps(new))
    assert "batched prompts/s (decode batch 128, prefill 8 per forward)" in logblocks.render("gen_m.json", tmp_path)
    e = logblocks.render("exp08_m.json", tmp_path)
    assert "| 10.0 | 30.0 | 3.00x | 2.0e-07 | ok | 100.0 GFLOP/s | 55% (20%) |" in e


def test_exp12_training_bench_block(tmp_path):
    import json

    from lib.report import logblocks

    r = {"design": "exp12train", "model": "a,b", "dtype": "torch.float32", "device": "cpu", "threads": 2,
         "dataset": "squad_v1.1", "n_examples": 16, "batch_size": 8, "steps": 2, "m": 16, "repeats": 2,
         "examples_per_s": {"per_example": 0.5, "batched": 1.25}, "speedup": 2.5, "loss_rel_diff": 0.0,
         "grad_rel_diff": 3e-16, "grad_rel_diff_float32": 6e-4, "agreement_ok": True, "matmul_peak_flops": 2e11,
         "batched_fraction_of_peak": 0.42, "per_example_fraction_of_peak": 0.17, "provenance": {}}
    (tmp_path / "exp12train_a+b.json").write_text(json.dumps(r))
    text = logblocks.render("exp12train_a+b.json", tmp_path)
    assert "exp12 training (two-model wire); models a,b" in text
    assert "| 0.50 | 1.25 | 2.50x | 0.0e+00 / 3.0e-16 | ok | 6.0e-04 | 200.0 GFLOP/s | 42% (17%) |" in text


def test_phase_a_bench_block(tmp_path):
    import json

    from lib.report import logblocks

    r = {"design": "exp11", "model": "m", "dtype": "torch.float32", "device": "cpu", "threads": 2, "data": "squad_v1.1",
         "n_samples": 4, "rows": 32, "n_distractors": 4, "phase_a_batch": 8, "repeats": 2,
         "rows_per_s": {"reference": 4.0, "batched": 6.5}, "speedup": 1.625, "max_abs_nll_diff": 3e-7, "nll_agreement_ok": True,
         "matmul_peak_flops": 1e11, "batched_fraction_of_peak": 0.41, "reference_fraction_of_peak": 0.25, "provenance": {}}
    (tmp_path / "exp11_m.json").write_text(json.dumps(r))
    text = logblocks.render("exp11_m.json", tmp_path)
    assert "exp11 prefix-LM scoring" in text and "| 4.00 | 6.50 | 1.62x | 3.0e-07 | ok | 100.0 GFLOP/s | 41% (25%) |" in text
    (tmp_path / "e7.json").write_text(json.dumps({**r, "design": "exp07eval", "nll_agreement_ok": False}))
    assert "exp07 evaluation" in logblocks.render("e7.json", tmp_path) and "| FAILED |" in logblocks.render("e7.json", tmp_path)
    (tmp_path / "e6.json").write_text(json.dumps({**r, "design": "exp06", "path_labels": {
        "reference": "query per candidate", "batched": "query once per cache", "short": "shared"}}))
    e6 = logblocks.render("e6.json", tmp_path)
    assert "exp06 hybrid-cache scoring" in e6
    assert "| query per candidate rows/s | query once per cache rows/s | ratio |" in e6 and "shared of peak (query per candidate) |" in e6


def test_exp08_block_names_the_text_file(tmp_path):
    """A real-text exp08 run says which file its texts came from (package, sha256) and hashes the texts used; an
    older run without that record says so rather than printing nothing."""
    run = tmp_path / "results" / "exp08_x"
    _part(run / "part1_real", "1", 0.1)
    base = {"config": {"MODEL": "m", "TEXT": "wiki"}, "provenance": {"commit": "abc"}, "steps_run": 20,
            "summary": {"headline": {}, "interpretation": []}}
    data = {"name": "wiki", "n_texts": 293, "content_sha256": "cd" * 32,
            "provenance": {"registry": "pypi", "package": "gensim==4.4.0", "sha256": "ab" * 32}}
    (run / "results.json").write_text(json.dumps({**base, "data": data}))
    first = logblocks.render("results/exp08_x", tmp_path).splitlines()[0]
    assert "text wiki (gensim==4.4.0, file sha256 abababababab, 293 texts sha256 cdcdcdcdcdcd); real text" in first
    (run / "results.json").write_text(json.dumps(base))
    assert "text wiki (source not recorded); real text" in logblocks.render("results/exp08_x", tmp_path).splitlines()[0]


def test_sinks_block_names_the_model_anchor_and_per_layer_masses():
    from lib.report import blockkinds, logblocks  # noqa: F401

    layers = [{"layer": i, "anchor": 0.01, "first_doc": 0.1, "other_doc_mean": 0.005, "prompt": 0.4,
               "value_change_first_doc": 2.0, "value_change_other_doc": 0.3} for i in range(2)]
    r = {"design": "sinks", "config": {"MODEL": "q", "dtype": "torch.float32", "bos_source": "bos_token", "PREFIX": "static_fact"},
         "data": {"name": "squad_v1.1", "provenance": {"sha256": "a" * 64}, "content_sha256": "b" * 64},
         "provenance": {"commit": "c" * 40, "date": "2026-12-03T00:00"}, "command": "python -m lib.tools.sinks --model q",
         "summary": {"n_samples": 32, "layers": layers, "mean_first_doc_over_other": 20.0, "layers_first_doc_above_anchor": 2,
                     "mean_value_change_first_doc": 2.0, "mean_value_change_other_doc": 0.3}}
    assert blockkinds.kind(r) == "sinks"
    text = "\n".join(blockkinds.sinks("results/diagnostics/sinks_q.json", r))
    assert "anchor: bos_token" in text and "N=32" in text and "file sha256 aaaaaaaaaaaa" in text
    assert "| 1 | 0.010 | 0.100 | 0.0050 | 0.400 | 20.0 | 2.00 | 0.30 |" in text
    assert "20.0x an average other document token's attention" in text and "in 2 of 2 layers" in text


def test_probe_block_old_layout_and_best_of_restarts_layout():
    old = {"what": "w", "seconds": 5.0, "provenance": {"commit": "abc", "date": "2026-11-23"},
           "relative_mse_at_step": {"90": [0.5, 0.25], "10": [0.9, 0.8]},
           "summary": {"threshold": {"reach_frac": 0.01}, "targets": [{"reached": False}, {"reached": True}]}}
    lines = blockkinds.probe("r.json", old)
    assert blockkinds.kind(old) == "probe"
    assert lines[2] == "| step | target 0 | target 1 |" and lines[4] == "| 10 | 0.900 | 0.800 |" and lines[5] == "| 90 | 0.500 | 0.250 |"
    assert lines[-1] == "Reached (relative MSE <= 0.01) by the last step: 1 of 2."
    new = dict(old, relative_mse_at_step={"10": [0.9] * 6, "90": [0.5] * 6},  # 2 targets x 3 restarts
               best_relative_mse_at_step={"10": [0.7, 0.6], "90": [0.02, 0.005]}, reached_at_step={"10": 0, "90": 1},
               summary={**old["summary"], "restarts": 3},
               data={"name": "wiki", "n_texts": 1000, "content_sha256": "127ddc08374a" + "0" * 52,
                     "provenance": {"package": "gensim==4.4.0", "sha256": "a53f4648dec4" + "0" * 52}})
    lines = blockkinds.probe("r.json", new)
    assert lines[2].startswith("Best of 3 restarts per target: MSE")
    lines_lr = blockkinds.probe("r.json", {**new, "provenance": {**new["provenance"], "args": {"lr": 0.003}}})
    assert lines_lr[2].startswith("Best of 3 restarts per target, Adam lr 0.003: MSE")
    assert "| step | target 0 | target 1 | reached |" in lines and "| 90 | 0.020 | 0.005 | 1/2 |" in lines
    assert "Data: wiki (gensim==4.4.0, file sha256 a53f4648dec4, 1000 texts sha256 127ddc08374a)." in lines
