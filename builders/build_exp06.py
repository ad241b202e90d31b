"""Build experiments/exp06/exp06_value_contamination.ipynb: hybrid bare/primed caches, layer cutoff sweep."""
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp06_value_contamination")

PARAMS = [
    *[replace(p, default=True) if p.name == "LOAD_IN_4BIT" else p
      for p in common.model_params("google/gemma-3-4b-it", "bfloat16", "ms_marco", 300)],
    Param("PREFIX", str, "static_fact", "the priming prefix: a key of lib.data.surrogates.STATIC or a literal text"),
    Param("CUTOFFS", str, "all", "layer cutoffs c for values_early/values_late: all (1..n_layers-1), none (fixed hybrids only) or e.g. 4,8,12"),
    *common.RUNTIME,
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp06", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "LOAD_IN_4BIT": False, "N_SAMPLES": 24}

CELLS = [
    stamp("builders/build_exp06.py", "Exp 06: layer-selective value contamination", """
        Where in the network does a discarded prefix's influence help? For each sample the document is
        encoded bare and primed (prefix `static_fact` by default, dropped, document re-positioned);
        hybrid caches mix their per-layer keys and values: `values_only` (primed values everywhere,
        bare keys), `keys_only`, `values_early_<c>` (primed values at layers < c), `values_late_<c>`
        (layers >= c), and `primed` (full priming). `values_first_token` / `values_except_first` and
        `primed_first_token` / `primed_except_first` split values_only and primed by position: the first
        document token follows the anchor in the bare run but the prefix in the primed one, a difference
        that is not the prefix's content. Per condition d vs bare with CI and Holm p; the cutoff
        curve; the best cutoff with a bootstrap CI and a split-half estimate that is free of selection
        bias. Positive d means a LOWER answer NLL than bare. Defaults: Gemma 3 4B-IT in 4-bit,
        MS MARCO v1.1, N=300; `SMOKE=True` runs the bundled SmolLM2 on synthetic QA.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.MODEL_AND_DATA,
    md("## Conditions"),
    code("""
        from lib.studies import contamination

        cutoffs = contamination.parse_cutoffs(CUTOFFS, lm.arch.n_layers)
        names = contamination.condition_names(cutoffs)
        prefix = contamination.prefix_ids(lm.tokenizer, PREFIX)
        print(f"{lm.arch.n_layers} layers; cutoffs {cutoffs}; {len(names)} conditions")
        print(f"prefix ({len(prefix)} tokens): {lm.tokenizer.decode(prefix)!r}")
    """),
    md("## Run\nResumable: rerunning with the same parameters scores only what is missing; different parameters are refused."),
    common.run_cell("""
        from lib.studies import priming
        from lib.kv.engine import Engine
        from lib.lab.runs import RunStore

        store_cfg = {**priming.store_config(CONFIG, lm, conditions=()), "hybrids": names, "prefix_ids": prefix}
        store = RunStore(ROOT / OUT_DIR / "_store", store_cfg, fresh=FRESH)
        print(f"{len(store)} rows already stored")
        engine = Engine(lm, mem_budget_gb=MEM_BUDGET_GB, phase_b_batch=BATCH_SIZE)
        rows = contamination.run(engine, samples, store, names, prefix, wave=CHUNK, batch_size=BATCH_SIZE,
                                 progress=PROGRESS, n_distractors=N_DISTRACTORS, seed=SEED)
        ids = [s.id for s in samples]
    """),
    md("## Effects against bare, cutoff curve, best cutoff"),
    common.summary_cell("""
        by = {r["cond"]: r for r in summary["comparisons"]}
        show.table([by[n] for n in contamination.FIXED[1:]], title="fixed hybrids vs bare")
        show.discrimination(summary)
        summary.update(first_token=contamination.first_token_share(nll, n_boot=N_BOOT, seed=SEED, atol=atol),
                       first_token_primed=contamination.first_token_share(nll, part="primed_first_token", whole="primed",
                                                                          n_boot=N_BOOT, seed=SEED, atol=atol))
        for f in (summary["first_token"], summary["first_token_primed"]):
            print(f"first document token: {f['part']} {f['mean_delta_part']:+.4f} of {f['whole']}'s {f['mean_delta_whole']:+.4f} "
                  f"nats, share {f['share']:.2f} {[round(x, 2) for x in f['share_ci']]}")
        curve = contamination.cutoff_curve(summary["comparisons"], cutoffs)
        best = {fam: contamination.best_cutoff(nll, cutoffs, fam, n_boot=N_BOOT, seed=SEED, atol=atol)
                for fam in ("early", "late")} if cutoffs else {}
        summary.update(cutoff_curve=curve if cutoffs else None, best_cutoff=best)
        for fam in ("early", "late") if cutoffs else ():
            show.table(curve[fam], keys=("cutoff",), title=f"primed values at the {fam} layers up to each cutoff, vs bare")
        for fam, b in best.items():
            print(f"best {fam} cutoff {b['cutoff']} (bootstrap 95% range {b['cutoff_ci']}): delta {b['mean_delta']:+.4f} nats "
                  f"{[round(x, 4) for x in b['mean_delta_ci']]} ({b['pct_of_ref']:+.2f}% of bare), d={b['d']:+.3f} {b['d_ci']}; "
                  f"split-half d (chosen on one half, measured on the other) {b['split_half_d']:+.3f}")
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp06 {MODEL} {DATASET} N={len(ids)} prefix={PREFIX}"
        figs = [plots.plot_effects([by[n] for n in contamination.FIXED[1:]], ROOT / OUT_DIR / "effects.png", title=title),
                plots.plot_mean_nll({n: nll[n] for n in contamination.FIXED}, ROOT / OUT_DIR / "mean_nll.png", title=title)]
        if cutoffs:
            figs.append(plots.plot_length_curves({f"values_{fam}": [{**p, "length": p["cutoff"]} for p in pts] for fam, pts in curve.items()},
                                                 ROOT / OUT_DIR / "cutoff_curve.png", title=title, xlabel="layer cutoff c", log_x=False))
        if summary["hardness"]:
            figs.append(plots.plot_hardness_heatmap([h for h in summary["hardness"] if h["cond"] in contamination.FIXED],
                                                    ROOT / OUT_DIR / "hardness_heatmap.png", title=title))
        show.figures(figs)
    """),
    *common.SAVE,
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
