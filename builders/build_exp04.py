"""Build experiments/exp04/exp04_hard_examples_cross_dataset.ipynb: semantic deltas on hard samples, 4 data sets."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import build_exp03  # noqa: E402
import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp04_hard_examples_cross_dataset")

PARAMS = [
    *[p for p in common.model_params("google/gemma-3-12b-it", "bfloat16", "", 0)
      if p.name not in ("DATASET", "DATA_SOURCE", "N_SAMPLES")],
    Param("DATASETS", str, "ms_marco,squad_v2,triviaqa,hotpotqa", "comma-separated data sets; synthetic@SEED is an offline stand-in"),
    Param("DATA_SOURCES", str, "", "empty: hub copies; or one comma-separated local file per data set (an empty entry: hub)"),
    Param("N_PER_DATASET", int, 400, "samples per data set (first N eligible rows)"),
    Param("HARD_FRACTION", float, 0.4, "share of each data set called hard (held-out rule and naive top share)"),
    Param("CONDITIONS", str, build_exp03.CONDITIONS, "comma-separated condition names; must include bare (first) and random_tokens"),
    Param("GEN_MAX_NEW_TOKENS", int, 32, "greedy tokens per model-generated surrogate (first line kept)"),
    Param("GEN_BATCH", int, 128, "prompts decoded together (every kind, sorted by length; prefilled 8 per forward)"),
    *common.RUNTIME,
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp04", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {"MODEL": "smollm2-135m-instruct", "DTYPE": "auto", "DATASETS": "synthetic@1,synthetic@2", "N_PER_DATASET": 16}

CELLS = [
    stamp("builders/build_exp04.py", "Exp 04: hard examples across data sets", """
        The 13 token-matched conditions of exp03 on several QA data sets (MS MARCO, SQuAD 2.0, TriviaQA,
        HotpotQA). Primary metric: the *semantic delta* NLL(random_tokens) - NLL(condition), i.e. what a
        prefix's content adds beyond a random prefix of the same length (positive: content helps).
        "Hard" samples are chosen without looking at the scores under test: a ridge model fitted on one
        half of a data set predicts bare NLL from score-free features (token counts, query/document
        overlap, answer-in-document) and picks the predicted-hardest share of the OTHER half (two-fold
        cross-fitting; method in `lib/studies/crossdata.py`). The earlier method (top share by the sample's own
        bare NLL) is reported alongside as `hard_naive`; its d vs bare is inflated by regression to the
        mean. Per data set and pooled; sign consistency of each condition across data sets.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    md("## Model"),
    common.MODEL_AND_DATA[1],
    md("## Data\nSample ids are prefixed with the data-set label so one store holds every set."),
    code("""
        from lib.studies import crossdata

        specs = crossdata.parse_datasets(DATASETS, DATA_SOURCES)
        datas = crossdata.load(specs, N_PER_DATASET, seed=SEED, split=SPLIT or None,
                               min_passage_words=MIN_PASSAGE_WORDS or None, max_passage_words=MAX_PASSAGE_WORDS or None)
        samples = [s for d in datas.values() for s in d.samples]
        data_info = {lab: d.info()
                     for lab, d in datas.items()}
        for lab, d in datas.items():
            print(f"{lab:14s} {len(d.samples)} samples from {d.name}/{d.split}; rows skipped: {d.skip_counts()}")
    """),
    md("## Model-generated surrogates\nGenerated once per (model, kind, sample) and cached in `OUT_DIR/generated.json`."),
    common.conditions_cell("""
        assert names[0] == "bare" and crossdata.SEMANTIC_REF in names, f"CONDITIONS must start with bare and include random_tokens: {names}"
        cache = surrogates.GeneratedCache(ROOT / OUT_DIR / "generated.json")
        generated = surrogates.generate(lm, samples, conditions.generated_kinds(conds), cache,
                                        max_new_tokens=GEN_MAX_NEW_TOKENS, batch_size=GEN_BATCH)
    """, also_import="from lib.data import surrogates"),
    md("## Conditions\nBuilt per data set, so `unrelated_query` and keyword statistics stay within a set."),
    code("""
        items = [it for d in datas.values() for it in conditions.build_items(lm, d.samples, conds, seed=SEED, n_distractors=N_DISTRACTORS, generated=generated)]
        for it in items:
            it.row["dataset"] = it.sample_id.split("/", 1)[0]
        sep = len(lm.tokenizer("\\n", add_special_tokens=False)["input_ids"])
        q_ok = all(len(it.prefix_ids) == it.row["q_tokens"] + sep for it in items if conditions.REGISTRY[it.condition].matched)
        print("every token-matched condition has exactly Q prefix tokens (+ separator):", q_ok)
        assert q_ok
    """),
    common.SHOW_PREFIXES,
    *common.RUN,
    *common.SUMMARY,
    md("## Hard subsets, semantic deltas, sign consistency"),
    code("""
        import numpy as np

        feats = crossdata.feature_table(items, samples)
        nll_by_ds = {lab: nll_table(rows, names, [s.id for s in d.samples]) for lab, d in datas.items()}
        from lib.kv.noise import noise_atol

        cross = crossdata.analyse(nll_by_ds, feats, names, fraction=HARD_FRACTION, n_boot=N_BOOT, seed=SEED,
                                  atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)
        summary["crossdata"] = cross
        for lab, r in cross["datasets"].items():
            sel = r["heldout_selection"]
            print(f"{lab}: n={r['n']}, held-out hard n={sel['n_hard']} (out-of-fold rho of predicted vs bare NLL "
                  f"{sel['oof_spearman_rho']:+.2f}; overlap with naive {sel['overlap_with_naive']:.0%})")
        for subset in ("all", "hard_heldout", "hard_naive"):
            show.table(cross["pooled"][subset]["semantic"], title=f"pooled, {subset}: semantic delta (vs random_tokens)")
            show.table(cross["pooled"][subset]["vs_bare"], title=f"pooled, {subset}: vs bare")
        llm = [{"dataset": lab, **row} for lab, r in [*cross["datasets"].items(), ("pooled", cross["pooled"])]
               for row in r["all"].get("llm_vs_generic", [])]
        if llm:
            show.table(llm, keys=("dataset", "label"), title="model-written surrogates vs extractor_matched, per data set (all samples)")
        print("\\nsign consistency of the semantic delta across data sets (held-out hard subsets):")
        for x in cross["sign_consistency_hard_heldout"]:
            print(f"  {x['cond']:20s} +{x['n_positive']} / -{x['n_negative']}  consistent={x['consistent']}  pooled d={x['pooled_d']:+.3f}")
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp04 {MODEL} {DATASETS} N={len(ids)}"
        figs = analysis.figures(summary, nll, ROOT / OUT_DIR, title=title)
        figs.append(plots.plot_d_grid(crossdata.d_grid(cross, "hard_heldout"), ROOT / OUT_DIR / "semantic_delta_heldout_hard.png",
                                      title="semantic delta d (vs random_tokens), held-out hard subsets", ylabel="data set"))
        figs.append(plots.plot_d_grid(crossdata.d_grid(cross, "all"), ROOT / OUT_DIR / "semantic_delta_all.png",
                                      title="semantic delta d (vs random_tokens), all samples", ylabel="data set"))
        figs.append(plots.plot_effects(cross["pooled"]["hard_heldout"]["semantic"], ROOT / OUT_DIR / "semantic_delta_pooled.png",
                                       title="pooled semantic delta, held-out hard subset"))
        show.figures(figs)
    """),
    *common.SAVE,
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
