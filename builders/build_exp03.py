"""Build experiments/exp03/exp03_token_matched_probing.ipynb: 13 token-matched conditions."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp03_token_matched_probing")
CONDITIONS = ("bare,random_tokens,repeat_token,scrambled_oracle,unrelated_query,same_topic,paraphrase,oracle_matched,"
              "extractor_matched,adversarial_matched,llm_extract,llm_question,llm_summarize")

PARAMS = [
    *common.model_params("google/gemma-3-12b-it", "bfloat16", "ms_marco", 400),
    Param("CONDITIONS", str, CONDITIONS, "comma-separated condition names (lib/studies/conditions.py); the first is the reference"),
    Param("GEN_MAX_NEW_TOKENS", int, 32, "greedy tokens per model-generated surrogate (first line kept)"),
    Param("GEN_BATCH", int, 128, "prompts decoded together (every kind, sorted by length; prefilled 8 per forward)"),
    *common.RUNTIME,
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp03", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "N_SAMPLES": 24}

CELLS = [
    stamp("builders/build_exp03.py", "Exp 03: token-matched semantic probing", """
        Every prefixed condition uses exactly Q prefix tokens (Q = the query's token count for that
        sample, the source tiled or cut to Q), so prefix length, position offset and cache length are
        equal across conditions and only content differs. Conditions, from content-free to the real
        query: `random_tokens` < `repeat_token` < `scrambled_oracle` < `unrelated_query` <
        `same_topic` < `paraphrase` < `oracle_matched`; generic framings `extractor_matched`,
        `adversarial_matched`; document surrogates written by the loaded model (`llm_extract`,
        `llm_question`, `llm_summarize`; cached in `OUT_DIR/generated.json`). Analyses: the semantic
        gradient (Spearman rho of benefit vs relevance order, per sample and pooled), the structural
        fraction (random vs oracle), model-written surrogates vs the generic extractor (paired, Holm),
        hardness interaction and ranks. Positive d / benefit means a LOWER answer NLL than bare.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.MODEL_AND_DATA,
    md("## Model-generated surrogates\nGenerated once per (model, kind, sample) and cached; a rerun reuses them."),
    common.conditions_cell("""
        cache = surrogates.GeneratedCache(ROOT / OUT_DIR / "generated.json")
        generated = surrogates.generate(lm, samples, conditions.generated_kinds(conds), cache,
                                        max_new_tokens=GEN_MAX_NEW_TOKENS, batch_size=GEN_BATCH, progress=PROGRESS)
        for kind, texts in generated.items():
            print(f"{kind:14s} {texts[samples[0].id]!r}")
    """, also_import="from lib.data import surrogates"),
    md("## Conditions"),
    code("""
        items = conditions.build_items(lm, samples, conds, seed=SEED, n_distractors=N_DISTRACTORS, generated=generated)
        q_ok = all(len(it.prefix_ids) == it.row["q_tokens"] + len(lm.tokenizer("\\n", add_special_tokens=False)["input_ids"])
                   for it in items if it.condition != names[0])
        print("every prefixed condition has exactly Q prefix tokens (+ separator):", q_ok)
        assert q_ok
    """),
    common.SHOW_PREFIXES,
    *common.RUN,
    *common.SUMMARY,
    md("## Semantic gradient, structural fraction, model-written vs generic, word order"),
    code("""
        from lib.report import stats

        gradient = analysis.semantic_gradient(nll, ref=names[0], seed=SEED)
        structural = analysis.structural_fraction(nll, ref=names[0])
        llm_vs_generic = stats.compare_conditions(
            nll, None, pairs=conditions.llm_vs_generic_pairs(nll),
            n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)
        order = analysis.word_order(nll, rows, ids, n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)
        summary.update(semantic_gradient=gradient, structural_fraction=structural, llm_vs_generic=llm_vs_generic, **order)
        print(f"pooled rho {gradient['pooled_rho']:+.3f} {[round(x, 3) for x in gradient['pooled_rho_ci']]} (sample-level p="
              f"{gradient['pooled_p_samples']:.3g}); per-sample mean rho "
              f"{gradient['per_sample_mean_rho']:+.3f}, {gradient['per_sample_share_positive']:.0%} positive, Wilcoxon p={gradient['per_sample_wilcoxon_p']:.3g}")
        print("mean benefit by relevance:", {k: round(v, 4) for k, v in gradient["mean_benefit"].items()})
        print(f"structural fraction: {structural['fraction_of_mean_benefit']:.2f} of the mean benefit, {structural['fraction_of_d']:.2f} of d")
        show.table(llm_vs_generic, title="model-written surrogates vs extractor_matched")
        if order:
            show.table(order["word_order"] + order.get("word_order_margin", []), title="word order: scrambled vs ordered oracle (same tokens)")
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        figs = analysis.figures(summary, nll, ROOT / OUT_DIR, title=f"exp03 {MODEL} {DATASET} N={len(ids)}")
        by = {r["cond"]: r for r in summary["comparisons"]}
        figs.append(plots.plot_effects([by[c] for c in gradient["order"]], ROOT / OUT_DIR / "semantic_gradient.png",
                                       title="d vs bare in relevance order (top: least relevant)"))
        figs.append(plots.plot_effects(llm_vs_generic, ROOT / OUT_DIR / "llm_vs_generic.png",
                                       title="model-written surrogates vs extractor_matched"))
        show.figures(figs)
    """),
    *common.SAVE,
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
