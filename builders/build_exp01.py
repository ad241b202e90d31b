"""Build experiments/exp01/exp01_back_to_basics.ipynb: five cache conditions, back to basics."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp01_back_to_basics")

PARAMS = [
    Param("MODEL", str, "mistralai/Mistral-7B-Instruct-v0.2", "hub id, local folder, or bundled name (smollm2-135m-instruct, gemma-3-270m)"),
    Param("LOAD_IN_4BIT", bool, True, "bitsandbytes nf4 (CUDA only)"),
    Param("DTYPE", str, "auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"),
    common.ANCHOR,
    Param("DATASET", str, "ms_marco_seed", "hub: ms_marco_seed (the seed's selection: train, passages[0], answers[0], "
          "2-30-word answers), ms_marco (the selected passage, well-formed answers, validation), squad_v2, triviaqa, hotpotqa; "
          "offline registry: squad_v1.1, squad_shifts_nyt, coqa, drop, ...; synthetic (pipeline check)"),
    Param("DATA_SOURCE", str, "", "empty: the hub copy (hub sets) or the verified registry copy; or a local file in the set's schema"),
    Param("SPLIT", str, "", "empty: the loader's default split"),
    Param("N_SAMPLES", int, 200, "samples to score (first N eligible rows)"),
    Param("MIN_PASSAGE_WORDS", int, 20, "skip passages shorter than this (0: no limit)"),
    Param("MAX_PASSAGE_WORDS", int, 150, "skip passages longer than this (0: no limit)"),
    Param("SEED", int, 42, "seed for the random-query assignment, distractors, synthetic data and bootstrap"),
    Param("N_DISTRACTORS", int, 4, "other samples' answers (same kind, other articles) scored on the same cache: contrastive margin, rank, top-1 (0: off)"),
    Param("VALUE_DRIFT_N", int, 64, "samples for the value-vector analysis (bare vs truncated-oracle values at the first, "
          "middle and last layer; 0: off)"),
    Param("BATCH_SIZE", int, 32, "Phase B items per forward (at most)"),
    Param("CHUNK", int, 8, "samples per engine wave and store append (resume granularity)"),
    Param("MEM_BUDGET_GB", float, 2.0, "memory the engine may use for one batch (sets Phase A/B batch sizes)"),
    Param("N_BOOT", int, 2000, "bootstrap resamples for the CI of d"),
    Param("PRIMARY_TEST", str, "t", "paired test that decides claims (t or wilcoxon); tables show both"),
    Param("OUT_DIR", str, "results/exp01", "results folder, relative to the repo root"),
    Param("FRESH", bool, False, "move an existing store aside and start over"),
    Param("PROGRESS", bool, True, "show a progress bar"),
    Param("SMOKE", bool, False, "small offline run: bundled SmolLM2 on synthetic QA (a knob given with -p keeps its value)"),
]
SMOKE = {"MODEL": "smollm2-135m-instruct", "LOAD_IN_4BIT": False, "DATASET": "squad_v1.1", "N_SAMPLES": 48, "VALUE_DRIFT_N": 8}

CELLS = [
    stamp("builders/build_exp01.py", "Exp 01: back to basics (five cache conditions)", """
        Where does the benefit of a query-primed document cache go? Five conditions per sample:
        **A** bare `[doc]`; **B** full oracle `[query + doc]` scored without repeating the query;
        **C** the same cache with the query repeated; **D** truncated oracle (query entries dropped,
        document keys re-positioned); **E** truncated random (another sample's query). Paired
        comparisons B-A, C-A, D-A, D-E, D-B. Positive d means the second-named condition has the
        LOWER answer NLL. Defaults are the seed setting (Mistral-7B-Instruct-v0.2, 4-bit, MS MARCO,
        N=200); `SMOKE=True` runs the bundled SmolLM2 on 48 real SQuAD v1.1 dev questions drawn across
        articles (offline, after `python -m lib.data prepare`). `DATASET=synthetic` is a pipeline
        check only: its passages and keywords contain the answer.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.model_and_data(detail=True),
    md("## Sanity check: a one-fact document\nNLL of ` Paris` for *What is the capital of France?* under the five conditions."),
    code("""
        from lib.studies import priming

        sanity = priming.sanity_example(lm)
        for name, value in sanity.items():
            print(f"{name:16s} NLL = {value:.4f}")
    """),
    md("## Cache-shape check\nA's and D's caches must have the same length by construction (the seed notebook's were 121 vs 120)."),
    code("""
        cache_lengths = priming.cache_lengths(lm, samples[0], samples[1].query)
        print(cache_lengths)
    """),
    md("## Run\nResumable: rerunning with the same parameters scores only what is missing; different parameters are refused."),
    code("""
        from lib.lab.runs import RunStore

        store = RunStore(ROOT / OUT_DIR / "_store", priming.store_config(CONFIG, lm), fresh=FRESH)
        print(f"{len(store)} rows already stored")
        rows = priming.run(lm, samples, store, seed=SEED, chunk=CHUNK, batch_size=BATCH_SIZE,
                           mem_budget_gb=MEM_BUDGET_GB, progress=PROGRESS, n_distractors=N_DISTRACTORS)
        ids = [s.id for s in samples]
        wanted = set(ids)
        rows = [r for r in rows if r["sample_id"] in wanted]
        print(f"{len(rows)} rows for {len(ids)} samples")
    """),
    md("## Analysis"),
    code("""
        from lib.kv.noise import noise_atol

        summary = priming.analyse(rows, ids, n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)
        show.table([{"condition": k, "mean_nll": v, "sd_nll": summary["sd_nll"][k]} for k, v in summary["mean_nll"].items()],
                   columns=["condition", "mean_nll", "sd_nll"], title="mean answer NLL per condition")
        show.table(summary["comparisons"], title="paired comparisons (delta = first - second named; positive: second is lower)")
        print("\\n".join(summary["diagnosis"]))
        show.discrimination(summary)
    """),
    md("## Value vectors (the seed's Cell 15)\nHow far the truncated-oracle cache's document values are from the bare cache's, "
       "entry by entry (the seed compared entries one position apart). Layer 0 must agree: a value there depends only on its token."),
    code("""
        from lib.studies import valuedrift

        if VALUE_DRIFT_N:
            summary["value_drift"] = valuedrift.summarize(valuedrift.drift_samples(lm, samples, VALUE_DRIFT_N), n_boot=N_BOOT, seed=SEED)
            show.table(summary["value_drift"], keys=("layer", "n"), columns=["cosine", "cosine_ci", "l2", "rel_l2", "rel_l2_ci"],
                       title="document values, truncated oracle vs bare")
    """),
    md("## Figures"),
    code("""
        from lib.report.tables import nll_table

        nll = nll_table(rows, list(summary["mean_nll"]), ids)
        figs = priming.figures(summary, nll, ROOT / OUT_DIR, title=f"exp01 {MODEL} {DATASET} N={len(ids)}")
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        flags = {k: sum(bool(r[k]) for r in rows if r["condition"] == "A_bare")
                 for k in ("doc_truncated", "prefix_boundary_drift", "answer_boundary_drift")}
        out = write_results_json(
            ROOT / OUT_DIR, config=store.config,
            summary=summary, provenance=provenance(seeds={"seed": SEED}),
            extra={"data": data_info,
                   "flags": flags, "arch": lm.arch.to_dict(), "sanity": sanity, "cache_lengths": cache_lengths,
                   "figures": [p.name for p in figs], "runtime": {k: CONFIG[k] for k in priming.RUNTIME_KNOBS if k in CONFIG}})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out, flags)
    """),
    md("## Cleanup"),
    code("""
        del lm
        import gc
        gc.collect()
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
