"""The benchmark's pieces: designs, FLOP counting, and the reference loop's agreement with the engine.

Speed itself is never asserted here: it comes from `python -m lib.tools.bench` (a ratio measured in one process).
"""
from types import SimpleNamespace

import pytest
import torch

from lib.tools import bench
from lib.kv.engine import Engine


def test_forward_flops_counts_visible_keys_and_window():
    arch = SimpleNamespace(layer_types=("full_attention", "sliding_attention"), sliding_window=4, n_heads=2,
                           head_dim=8, hidden_size=16, vocab_size=10)
    lm = SimpleNamespace(arch=arch, model=object())
    from lib.tools import flops

    flops._LINEAR_CACHE[id(lm.model)] = 1000
    got = bench.forward_flops(lm, n_new=3, n_cache=2, n_logits=1)
    full_keys = 3 + 4 + 5  # each new token sees the cache and the new tokens up to itself
    slide_keys = 3 + 4 + 4  # capped at the window
    assert got == 2 * 1000 * 3 + 4 * 2 * 8 * (full_keys + slide_keys) + 2 * 16 * 10 * 1


@pytest.mark.slow
def test_matched13_design_is_token_matched(smollm2):
    items = bench.design_items(smollm2, "matched13", 3)
    by = {}
    for it in items:
        by.setdefault(it.sample_id, []).append(it)
    for sid, its in by.items():
        assert len(its) == 13 and len({it.encoding for it in its}) == 13
        q = {len(it.prefix_ids) for it in its if it.condition != "bare"}
        oracle = next(it for it in its if it.condition == "oracle")
        assert q == {len(oracle.prefix_ids)}  # every prefixed condition uses exactly Q tokens
        assert len({it.doc_ids for it in its}) == 1 and len({it.answer_ids for it in its}) == 1
    with pytest.raises(ValueError, match="unknown design"):
        bench.design_items(smollm2, "exp99", 2)


@pytest.mark.slow
@pytest.mark.parametrize("design", ["exp01"])  # matched13's 13-encoding design cost 54 s of CI here: `python -m
# lib.tools.bench --design matched13` prints its own agreement; test_matched13_design_is_token_matched checks its items
def test_reference_loop_agrees_with_engine(smollm2, design):
    items = bench.design_items(smollm2, design, 2)
    ref = bench.reference_loop(smollm2, items)
    rows = Engine(smollm2).score_items(items)
    assert max(float((r - torch.tensor(row["token_nlls"])).abs().max()) for r, row in zip(ref, rows)) <= 1e-4
    assert bench.useful_flops(smollm2, items) > 0


@pytest.mark.slow
def test_many8_design_and_paths_agree(smollm2):
    """many8: 4 conditions x K candidates per sample, gold first; the shared-cache engine equals one cache per item."""
    from lib.tools import bench_memory

    items = bench_memory.design_items(smollm2, 3, n_candidates=3)
    assert len(items) == 3 * 4 * 3
    by = {}
    for it in items:
        by.setdefault(it.sample_id, []).append(it)
    for its in by.values():
        assert len({(it.encoding, it.keep_prefix) for it in its}) == 4 and len({it.doc_ids for it in its}) == 1
        gold = [it.answer_ids for it in its if it.row["gold"]]
        assert len(set(gold)) == 1 and len({it.answer_ids for it in its}) == 3
    ref = bench_memory.per_item_scores(smollm2, items)
    got, stats = bench_memory.engine_scores(smollm2, items)
    assert stats["shaped_caches"] == 12 and stats["phase_b_items"] == len(items)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, got)) <= 1e-4
    with pytest.raises(ValueError, match="n_candidates"):
        bench_memory.design_items(smollm2, 2, n_candidates=3)


def test_exp07train_bench_agrees_and_reports(monkeypatch):
    """The training benchmark's two paths train the same prefix (tiny Gemma 3; no timing is asserted)."""
    import numpy as np

    from lib.studies.soft import Example
    from lib.tools import bench_train
    from tiny import arch_of, build

    m = build("gemma3")
    lm = SimpleNamespace(model=m, arch=arch_of(m), name="tiny")
    rng = np.random.default_rng(0)
    exs = [Example(f"s{i}", tuple(int(x) for x in rng.integers(3, 120, 12)), (4, 5, 6), (7, 8)) for i in range(3)]
    monkeypatch.setattr("lib.tools.flops.matmul_peak", lambda device, dtype: 1e9)
    monkeypatch.setattr(bench_train, "useful_flops", lambda lm, exs, cutoff, epochs: 1e6)  # needs a full ArchInfo
    res = bench_train.bench_train(lm, epochs=2, cutoff=3, repeats=1, exs=exs, examples_per_forward=(2, 4))
    assert set(res["steps_per_s"]) == {"reference", "fast", "batched_2", "batched_4"}
    assert res["agreement_ok"] and res["micro_steps"] == 6 and res["cutoff"] == 3
    assert res["max_abs_prefix_diff"] == 0.0 and res["max_rel_loss_diff_by_path"]["batched_4"] < 1e-5
    # the control starts from another prefix: its final prefix differs (its losses may round to the same
    # values on a tiny model: measured 0.0 on one CPU, > 0 on another)
    assert res["max_abs_prefix_diff_by_path"]["control"] > 0
    assert res["same_prefix_check_dtype"] == "float64" and m.dtype == torch.float32  # checked in float64, restored
    assert all(0 <= v <= 1e-9 for c in res["same_prefix_check"].values() for v in c.values())
    assert all(0 <= v <= 1e-4 for c in res["same_prefix_check_float32"].values() for v in c.values())
    assert res["best_batched"] in ("batched_2", "batched_4") and set(res["peak_memory_bytes"]) == set(res["steps_per_s"])
    text = bench_train.report(res)
    assert "ratio" in text and "batched_4" in text
    with pytest.raises(ValueError, match="examples_per_forward"):
        bench_train.bench_train(lm, epochs=1, cutoff=3, repeats=1, exs=exs, examples_per_forward=(1,))


@pytest.mark.slow
def test_generation_bench_compares_both_paths_on_the_same_prompts(smollm2):
    from lib.tools import bench_gen

    res = bench_gen.bench_gen(smollm2, n=2, batch=2, fast_batch=4, prefill_batch=3, max_new_tokens=6)
    assert res["prompts"] == 2 * len(bench_gen.KINDS) and res["texts_identical"] is True
    w = res["work"]  # the reference runs every row 6 steps (5 decode forwards); the batched path at most that
    assert w["reference"]["decode_row_steps"] == res["prompts"] * 5 >= w["fast"]["decode_row_steps"] > 0
    assert w["fast"]["prefill_tokens"] > 0 and w["reference"]["prefill_tokens"] > 0
    assert set(res["prompts_per_s"]) == {"reference", "fast"} and res["ratio"] > 0
    assert "forward" not in vars(smollm2.model.base_model) and "forward" not in vars(smollm2.model)  # the spy is removed
    import inspect

    from tests import tiny

    m = tiny.build("llama")
    bench_gen._counting(m)  # generate() reads forward's signature to pass logits_to_keep=1: the outer one is untouched
    assert "logits_to_keep" in inspect.signature(m.forward).parameters and "forward" not in vars(m)
    assert "forward" in vars(m.base_model)
    assert "ratio" in bench_gen.report(res)


@pytest.mark.slow
def test_exp08_bench_runs_both_chunkings_and_they_agree(smollm2):
    from lib.tools import bench_reach

    res = bench_reach.bench_reach(smollm2, n=2, restarts=2, steps=2, seq_len=4, repeats=1)
    assert res["agreement_ok"] and res["max_rel_final_mse_diff"] <= 1e-4
    assert set(res["prompt_steps_per_s"]) == {"per_target", "batched"} and res["useful_flops"] > 0
    assert "ratio" in bench_reach.report(res)


@pytest.mark.slow
def test_exp12_bench_times_per_example_and_batched_training_and_they_agree(smollm2):
    from lib.tools import bench_wire

    res = bench_wire.bench_wire([smollm2], n=2, batch_size=2, repeats=1)
    assert res["agreement_ok"] and res["grad_rel_diff"] <= 1e-9 and res["loss_rel_diff"] <= 1e-9  # float64
    assert 0 < res["grad_rel_diff_float32"] < 1e-2  # float32 rounding: measured, not zero, small
    assert smollm2.model.dtype == torch.float32  # the float64 check put the model back
    assert set(res["examples_per_s"]) == {"per_example", "batched"} and res["steps"] == 1
    assert res["useful_flops"] > 0 and 0 < res["batched_fraction_of_peak"] < 1
    assert "ratio" in bench_wire.report(res)


@pytest.mark.slow
@pytest.mark.parametrize("design", ["exp11", "exp07eval"])
def test_phase_a_bench_times_both_paths_and_they_agree(smollm2, design):
    from lib.tools import bench_phase_a

    res = bench_phase_a.bench_phase_a(smollm2, design, n=2, phase_a_batch=2, repeats=1)
    assert res["nll_agreement_ok"] and res["max_abs_nll_diff"] <= 1e-4
    assert set(res["rows_per_s"]) == {"reference", "batched"} and res["useful_flops"] > 0 and res["speedup"] > 0
    assert res["rows"] == 2 * (8 if design == "exp11" else 4)
    assert "ratio" in bench_phase_a.report(res)
    with pytest.raises(ValueError, match="unknown design"):
        bench_phase_a.bench_phase_a(smollm2, "exp99", n=1)


@pytest.mark.slow
def test_exp06_bench_times_per_candidate_and_shared_prompts_and_they_agree(smollm2, monkeypatch):
    from lib.studies import contamination
    from lib.tools import bench_phase_a

    monkeypatch.setattr(contamination, "condition_names", lambda cutoffs: ["bare", "primed", "values_early_2"])  # cheap
    res = bench_phase_a.bench_phase_a(smollm2, "exp06", n=2, repeats=1)
    assert res["nll_agreement_ok"] and res["max_abs_nll_diff"] <= 1e-4 and res["rows"] == 2 * 3
    assert res["path_labels"]["batched"] == "query once per cache" and res["useful_flops"] > 0
    assert "query once per cache" in bench_phase_a.report(res)


def test_in_float64_keeps_the_norms_in_float64_and_restores_the_model():
    """A model cast to float64 still computes transformers' RMSNorm at float32; ``in_float64`` keeps it in float64
    (an exact float64 norm agrees to 1e-15, the float32 one does not) and puts dtype and norm back after."""
    from transformers.models.gemma3 import modeling_gemma3
    from transformers.models.llama import modeling_llama

    from lib.tools.float64 import in_float64
    from tiny import build

    for kind, cls in (("llama", modeling_llama.LlamaRMSNorm), ("gemma3", modeling_gemma3.Gemma3RMSNorm)):
        m = build(kind)
        norm = next(x for x in m.modules() if isinstance(x, cls))
        with torch.no_grad():
            norm.weight.normal_()
        x = torch.randn(3, norm.weight.shape[0], dtype=torch.float64) * 10
        scale = norm.weight.double() + (1.0 if kind == "gemma3" else 0.0)
        exact = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * scale
        before = cls.forward
        with in_float64([m]):
            assert next(m.parameters()).dtype == torch.float64
            torch.testing.assert_close(norm(x).detach(), exact, rtol=1e-13, atol=1e-13)
        assert cls.forward is before and next(m.parameters()).dtype == torch.float32
        m.double()
        assert float((norm(x).detach() - exact).abs().max() / exact.abs().max()) > 1e-12  # transformers' own norm rounds at float32
