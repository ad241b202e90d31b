"""Build experiments/exp09/exp09_encdec_enrichment.ipynb: encoder-decoder enrichment with the prefix hidden."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp09_encdec_enrichment")

PARAMS = [
    Param("MODEL", str, "google/flan-t5-xl", "hub id or folder of an encoder-decoder (flan-t5-base/large/xl, facebook/bart-large, a T5Gemma), or random-t5-tiny / random-bart-tiny"),
    Param("DTYPE", str, "auto", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16"),
    *[p for p in common.model_params("", "auto", "ms_marco", 500) if p.name not in ("MODEL", "LOAD_IN_4BIT", "DTYPE")],
    Param("ENC_CONDITIONS", str, "bare,oracle,random,kw5,kw10,template,first_sentence", "encoder-side conditions (bare first); each prefix is hidden from the decoder"),
    Param("LENGTH_CONTROL", bool, True, "add bare__rq and oracle__rq (Q random decoder tokens): the 2x3 length-vs-semantics design"),
    Param("ATTN_PROBE", bool, True, "record the cross- vs self-attention output share at answer positions"),
    *[p for p in common.RUNTIME if p.name != "MEM_BUDGET_GB"],
    Param("OUT_DIR", str, "results/exp09", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {"MODEL": "random-t5-tiny", "DATASET": "synthetic", "N_SAMPLES": 16}

CELLS = [
    stamp("builders/build_exp09.py", "Exp 09: encoder-decoder enrichment", """
        A bidirectional encoder reads `[prefix + document]`; the decoder's cross-attention is masked at
        the prefix positions (equal to deleting them), so only what the prefix left in the document's
        encoder states can help. Encoder conditions: `bare`, `oracle` (the query), `random` (Q random
        tokens), `kw5`, `kw10`, a fixed `template`, the `first_sentence`; each scored with the query in the
        decoder input (`__q`) and without (`__nq`). The 2x3 control {bare, oracle} x {no query, Q random
        decoder tokens, query} splits the decoder-query effect into a length part and a semantic part.
        An attention probe reports the share of cross- vs self-attention output at answer positions.
        Positive d means a LOWER answer NLL. Default model: Flan-T5-XL (T5Gemma 2 4B-4B when available);
        `SMOKE=True` uses a RANDOM-INIT tiny T5 over the bundled tokenizer: plumbing only, no science.
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

        summary.update(encdec.analyse(nll, rows, enc_conds, n_boot=N_BOOT, seed=SEED, atol=noise_atol(em.model.dtype),
                                      primary_test=PRIMARY_TEST))
        summary.update(primary_test=PRIMARY_TEST, noise_atol=noise_atol(em.model.dtype))
        for m, comps in summary["enc_effects"].items():
            show.table(comps, title=f"decoder {'with' if m == 'q' else 'without'} the query (vs bare__{m})")
        if "length_control" in summary:
            lc = summary["length_control"]
            show.table([{"component": r.get("component", "total"), **r} for r in lc["components"] + lc["total"]],
                       keys=("component",), title="2x3 control")
        print("cross-attention output share at answer positions:", {k: round(v, 3) for k, v in summary["cross_attn_share"].items()})
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

        out = write_results_json(ROOT / OUT_DIR, config=store.config, summary=summary, provenance=provenance(seeds={"seed": SEED}),
                                 extra={"data": data_info, "random_init": em.random_init, "figures": [p.name for p in figs]})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
