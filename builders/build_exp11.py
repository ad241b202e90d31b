"""Build experiments/exp11/exp11_prefix_lm.ipynb: causal vs bidirectional prefix attention in a decoder-only model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp11_prefix_lm")

PARAMS = [
    *common.model_params("google/gemma-3-12b-it", "bfloat16", "ms_marco", 400),
    Param("CONDITIONS", str, "bare,oracle,random,surr_doc", "prefix conditions (bare first): oracle query, Q random tokens, top-10 document keywords"),
    Param("MODES", str, "causal,bidirectional", "Phase A attention over [prefix + doc]: causal and/or bidirectional"),
    Param("KEEP_PREFIX", bool, True, "keep the prefix entries in the cache for Phase B (False: drop them, re-position the document)"),
    *[p for p in common.RUNTIME if p.name != "MEM_BUDGET_GB"],
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp11", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "N_SAMPLES": 16}

CELLS = [
    stamp("builders/build_exp11.py", "Exp 11: prefix LM (causal vs bidirectional prefix attention)", """
        Phase A encodes `[BOS, prefix, document]` either causally (the model's own mask) or as a prefix
        LM: the block `[prefix + document]` attends bidirectionally (BOS sees only itself; sliding-window
        layers keep a symmetric window; masks in `lib/studies/prefixlm.py`). Phase B scores `[query prompt,
        answer]` against the cache, which keeps the prefix entries by default. Conditions: `bare`,
        `oracle` (the query), `random` (Q random tokens), `surr_doc` (the document's top-10 keywords).
        Per mode: d vs that mode's bare, the structural fraction (random vs oracle); per condition:
        bidirectional vs causal. Positive d means a LOWER answer NLL.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.MODEL_AND_DATA,
    md("## Conditions"),
    code("""
        from lib.studies import prefixlm

        conds = [c.strip() for c in CONDITIONS.split(",") if c.strip()]
        modes = [m.strip() for m in MODES.split(",") if m.strip()]
        bad = [m for m in modes if m not in prefixlm.MODES]
        assert not bad, f"unknown MODES {bad}; choose from {prefixlm.MODES}"
        items = prefixlm.build_items(lm, samples, conds, seed=SEED, n_distractors=N_DISTRACTORS)
        names = [f"{c}__{m}" for c in conds for m in modes]
        for it in items[:len(conds)]:
            print(f"{it.condition:10s} {len(it.prefix_ids):3d} prefix tokens  {lm.tokenizer.decode(list(it.prefix_ids))[:70]!r}")
    """),
    md("## Run\nResumable: rerunning with the same parameters scores only what is missing."),
    common.run_cell("""
        from lib.studies import priming
        from lib.lab.runs import RunStore

        store = RunStore(ROOT / OUT_DIR / "_store", {**priming.store_config(CONFIG, lm, conditions=()), "names": names}, fresh=FRESH)
        rows = prefixlm.run(lm, items, store, modes, keep_prefix=KEEP_PREFIX, wave=CHUNK, batch_size=BATCH_SIZE, progress=PROGRESS)
        ids = [s.id for s in samples]
    """),
    md("## Effects"),
    code("""
        from lib.report.tables import nll_table

        nll = nll_table(rows, names, ids)
        summary = {"n_samples": len(ids), "mean_nll": {n: float(v.mean()) for n, v in nll.items()}}
        from lib.kv.noise import noise_atol

        summary.update(prefixlm.analyse(nll, conds, modes, n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST))
        summary.update(primary_test=PRIMARY_TEST, noise_atol=noise_atol(lm.dtype))
        for m, comps in summary["vs_bare"].items():
            show.table(comps, title=f"{m}: vs bare__{m}")
        for m, sf in summary["structural_fraction"].items():
            print(f"structural fraction ({m}): {sf['fraction_of_d']:.2f} of d, {sf['fraction_of_mean_benefit']:.2f} of the mean benefit")
        if summary.get("bidirectional_vs_causal"):
            show.table(summary["bidirectional_vs_causal"], title="bidirectional vs causal")
        summary.update(prefixlm.discrimination(summary, rows, ids, names, n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype),
                                               primary_test=PRIMARY_TEST))
        show.discrimination(summary)
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp11 {MODEL} {DATASET} N={len(ids)}"
        figs = [plots.plot_effects([r for comps in summary["vs_bare"].values() for r in comps], ROOT / OUT_DIR / "effects.png", title=title),
                plots.plot_mean_nll(nll, ROOT / OUT_DIR / "mean_nll.png", title=title)]
        if "bidirectional_vs_causal" in summary:
            figs.append(plots.plot_effects(summary["bidirectional_vs_causal"], ROOT / OUT_DIR / "bidirectional_vs_causal.png", title=title))
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        out = write_results_json(ROOT / OUT_DIR, config=store.config, summary=summary, provenance=provenance(seeds={"seed": SEED}),
                                 extra={"data": data_info, "arch": lm.arch.to_dict(), "figures": [p.name for p in figs]})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
