"""Build experiments/exp09/exp09_encdec_enrichment.ipynb: encoder-decoder enrichment with the prefix hidden."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp09_encdec_enrichment")

PARAMS = [
    Param("MODEL", str, "google/t5gemma-2-4b-4b", "hub id or folder of an encoder-decoder (the seed's T5Gemma 2 4B-4B; google/flan-t5-base/large/xl, facebook/bart-large), or random-t5-tiny / random-bart-tiny"),
    Param("DTYPE", str, "auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16"),
    *[p for p in common.model_params("", "auto", "ms_marco", 500) if p.name not in ("MODEL", "LOAD_IN_4BIT", "DTYPE", "ANCHOR")],
    Param("ENC_CONDITIONS", str, "bare,oracle,random,kw5,kw10,template,first_sentence,wrongdoc_sentence,shuffled_sentence,shuffled_wrongdoc",
          "encoder-side conditions (bare first; the last four: the truncation-wound 2x2); each prefix is hidden from the decoder"),
    Param("LENGTH_CONTROL", bool, True, "add bare__rq and oracle__rq (Q random decoder tokens): the 2x3 design and its length x encoder interactions"),
    Param("ANSWER_SPLIT_WORDS", int, 5, "factoid split: answers of at most this many words are short (the seed's 5), longer ones long"),
    Param("ATTN_PROBE", bool, True, "attention at answer positions: weight shares (eager attention) and the cross/self output-norm share"),
    *[p for p in common.RUNTIME if p.name != "MEM_BUDGET_GB"],
    Param("OUT_DIR", str, "results/exp09", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {"MODEL": "random-t5-tiny", "DATASET": "synthetic", "N_SAMPLES": 16, "ANSWER_SPLIT_WORDS": 2}  # synthetic answers: 1-4 words

CELLS = [
    stamp("builders/build_exp09.py", "Exp 09: encoder-decoder enrichment", """
        A bidirectional encoder reads `[prefix + document]`; the decoder's cross-attention is masked at
        the prefix positions (equal to deleting them), so only what the prefix left in the document's
        encoder states can help. Encoder conditions: `bare`, `oracle` (the query), `random` (Q random
        tokens), `kw5`, `kw10`, a fixed `template`, the `first_sentence`; each scored with the query in the
        decoder input (`__q`) and without (`__nq`). Sections, after the seed's Exps 01, 05-08:
        - truncation wound (Exp 05): coherence x overlap, 2x2 of `first_sentence`, `wrongdoc_sentence`
          (another article's), and their token-shuffled twins; the per-sample interaction with CI and tests;
        - 2x3 control {bare, oracle} x {no query, Q random decoder tokens, query} (Exps 07-08): length and
          semantic parts of the decoder-query effect, and their length x encoder interactions;
        - factoid split (Exp 06): effects within short (<= `ANSWER_SPLIT_WORDS`) and long answers, the
          structural fraction per answer-length bin;
        - attention probe (Exp 07): share of attention WEIGHT on the decoder query and on the encoder prefix
          (0 when hidden), the cross- vs self-attention budget (merged attention, T5Gemma 2), and the
          cross/self output-norm share (separate attention: T5, BART, T5Gemma).
        Positive d means a LOWER answer NLL. Default model: the seed's T5Gemma 2 4B-4B (Flan-T5 and BART are
        options). `SMOKE=True` uses a RANDOM-INIT tiny T5 over the bundled tokenizer on synthetic QA:
        plumbing only, no science (results.json says `random_init` in `provenance.run_kind`).
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    md("## Model"),
    code("""
        from lib.studies import encdec

        em = encdec.load(MODEL, dtype=DTYPE)
        print(em.name, em.family, em.device, "RANDOM-INIT (numbers mean nothing about language)" if em.random_init else "pretrained")
    """),
    *common.MODEL_AND_DATA[2:],
    md("## Conditions"),
    code("""
        enc_conds = [c.strip() for c in ENC_CONDITIONS.split(",") if c.strip()]
        items = encdec.build_items(em, samples, enc_conditions=enc_conds, seed=SEED, length_control=LENGTH_CONTROL)
        names = encdec.condition_names(enc_conds, LENGTH_CONTROL)
        first = [it for it in items if it.sample_id == samples[0].id]
        for it in first:
            print(f"{it.condition:22s} prefix {len(it.prefix_ids):3d} tok (hidden={it.hide_prefix})  decoder prompt {len(it.dec_prompt_ids)} tok")
    """),
    md("## Run\nResumable: rerunning with the same parameters scores only what is missing."),
    common.run_cell("""
        from lib.lab.runs import RunStore

        store = RunStore(ROOT / OUT_DIR / "_store", encdec.store_config(CONFIG, em), fresh=FRESH)
        rows = encdec.run(em, items, store, wave=CHUNK, batch_size=BATCH_SIZE, attn_probe=ATTN_PROBE, progress=PROGRESS)
        ids = [s.id for s in samples]
    """),
    md("## Effects"),
    code("""
        from lib.report import analysis
        from lib.report.tables import nll_table

        nll = nll_table(rows, names, ids)
        summary = {"n_samples": len(ids), "mean_nll": {n: float(v.mean()) for n, v in nll.items()}}
        from lib.kv.noise import noise_atol

        from lib.studies.encdec import designs

        summary.update(encdec.analyse(nll, rows, enc_conds, n_boot=N_BOOT, seed=SEED, atol=noise_atol(em.model.dtype),
                                      primary_test=PRIMARY_TEST, answer_words=designs.answer_words(samples), ids=ids,
                                      split_words=ANSWER_SPLIT_WORDS))
        summary.update(primary_test=PRIMARY_TEST, noise_atol=noise_atol(em.model.dtype))
        for m, comps in summary["enc_effects"].items():
            show.table(comps, title=f"decoder {'with' if m == 'q' else 'without'} the query (vs bare__{m})")
        if "length_control" in summary:
            lc = summary["length_control"]
            show.table([{"component": r.get("component", "total"), **r} for r in lc["components"] + lc["total"]],
                       keys=("component",), title="2x3 control")
    """),
    md("## Length x encoder interaction\n`(bare__x - bare__y) - (oracle__x - oracle__y)` per sample: positive means the decoder's "
       "query (or its length, or its meaning) helps more when the encoder saw no query (redundancy)."),
    code("""
        if "length_control" in summary:
            show.table(summary["length_control"]["interactions"], keys=("label",), columns=["interaction", "interaction_ci_low",
                       "interaction_ci_high", "pct_of_first", "d", "ci_low", "ci_high", "p_holm", "p_holm_wilcoxon"])
    """),
    md("## Truncation wound: coherence x overlap\nEach cell vs bare, then `(wrongdoc - first) - (shuffled_wrongdoc - shuffled)` "
       "per sample: negative means overlap hurts more when the prefix is coherent."),
    code("""
        for m, tw in summary.get("truncation_wound", {}).items():
            show.table(tw["cells"], title=f"decoder {'with' if m == 'q' else 'without'} the query: cells vs bare__{m}")
            show.table([tw["interaction"]], keys=("label",), columns=["interaction", "interaction_ci_low", "interaction_ci_high",
                       "d", "ci_low", "ci_high", "p_t", "p_wilcoxon"])
    """),
    md("## Factoid split by answer length"),
    code("""
        for m, fs in summary["factoid_split"].items():
            for name, sub in fs["subsets"].items():
                print(f"decoder {m}: {name} answers ({sub['words']} words): n={sub['n']}", sub.get("skipped", ""))
                if "effects" in sub:
                    show.table(sub["effects"])
            cols = [c for c in ("n", "d_structural", "d_full", "fraction_of_d", "fraction_of_mean_benefit") if any(c in b for b in fs["bins"])]
            show.table(fs["bins"], keys=("bin",), columns=cols,
                       title=f"structural fraction (random vs oracle) per answer-length bin, decoder {m}")
    """),
    md("## Attention probe"),
    code("""
        probe_rows = [{"condition": c, "cross_attn_share (norms)": summary["cross_attn_share"].get(c),
                       **{k: v.get(c) for k, v in summary["attention_weights"].items()}} for c in names]
        show.table(probe_rows, keys=("condition",), columns=[k for k in probe_rows[0] if k != "condition"])
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp09 {MODEL} {DATASET} N={len(ids)}"
        figs = [plots.plot_effects(summary["enc_effects"]["q"], ROOT / OUT_DIR / "effects_query_in_decoder.png", title=title + " (query in decoder)"),
                plots.plot_effects(summary["enc_effects"]["nq"], ROOT / OUT_DIR / "effects_no_query.png", title=title + " (no query)"),
                plots.plot_mean_nll(nll, ROOT / OUT_DIR / "mean_nll.png", title=title)]
        if "length_control" in summary:
            figs.append(plots.plot_effects(summary["length_control"]["components"], ROOT / OUT_DIR / "length_control.png",
                                           title="2x3 control: length (nq->rq) and semantic (rq->q) parts"))
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        out = write_results_json(ROOT / OUT_DIR, config={**store.config, "dtype": str(em.model.dtype)}, summary=summary, provenance=provenance(seeds={"seed": SEED}),
                                 extra={"data": data_info, "random_init": em.random_init, "figures": [p.name for p in figs]})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
