"""Build experiments/exp08/exp08_reachability.ipynb: soft-prompt reachability of final-layer residuals."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp08_reachability")

PARAMS = [
    Param("MODEL", str, "EleutherAI/pythia-160m", "hub id, local folder, or bundled name (smollm2-135m-instruct, gemma-3-270m)"),
    Param("DTYPE", str, "float32", "model dtype: float32, bfloat16, float16 (soft prompts are optimized in float32)"),
    Param("TEXT", str, "wikitext", "wikitext (wikitext-2-raw-v1 train via datasets), wiki or brown (offline registry prose), synthetic (pipeline check) or a .txt path"),
    Param("N_TEXTS", int, 4000, "texts read (lines of wikitext / passages / file lines)"),
    Param("WINDOWS_PER_TEXT", int, 1, "non-overlapping SEQ_LEN-token windows taken from the start of each text"),
    Param("SEQ_LEN", int, 20, "soft prompt and target length in tokens"),
    Param("RESIDUAL", str, "hidden_states", "target: hidden_states (hidden_states[-1]) or pre_norm (input of the final norm)"),
    Param("N_FIT", int, 1000, "real sequences for the per-position Gaussians, norms and dimension stds"),
    Param("N_REAL", int, 100, "part 1: real targets (parts 3 and 4 draw from them)"),
    Param("N_RANDOM", int, 100, "parts 2a and 2b: random targets each"),
    Param("N_PAIRS", int, 20, "part 3: pairs of real targets"),
    Param("ALPHAS", str, "-0.5,0,0.25,0.5,0.75,1,1.5,2", "part 3: each target is alpha * A + (1 - alpha) * B"),
    Param("N_DIM_TARGETS", int, 50, "part 4: real targets corrupted"),
    Param("FRACTIONS", str, "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", "part 4: fractions of dimensions replaced"),
    Param("RESTARTS", int, 5, "restarts per target in parts 1-3 (best of)"),
    Param("DIM_RESTARTS", int, 3, "restarts per (target, fraction) in part 4"),
    Param("STEPS", int, 2000, "Adam steps; part 1's curves decide whether every part runs MAX_STEPS instead"),
    Param("MAX_STEPS", int, 5000, "steps when part 1's curves still fall at STEPS (rule: EXTEND_WINDOW, EXTEND_TOL)"),
    Param("EXTEND_WINDOW", float, 0.1, "fraction of the last steps over which the fall is measured"),
    Param("EXTEND_TOL", float, 0.01, "extend when the median relative fall over that window exceeds this"),
    Param("LR", float, 0.01, "Adam learning rate"),
    Param("INIT_STD", float, 1.0, "soft prompts start as N(0, INIT_STD^2) per entry"),
    Param("REACH_FRAC", float, 0.01, "reached: best final MSE at most REACH_FRAC x the initial MSE of the target"),
    Param("CHUNK", int, 500, "soft prompts per forward: a chunk holds CHUNK // restarts whole targets and is the unit stored when finished"),
    Param("CHECKPOINT_EVERY", int, 200, "Adam steps between checkpoints of the chunk in flight (a kill loses at most this many steps of one chunk)"),
    Param("CURVE_EVERY", int, 10, "keep every k-th loss in metrics.json (figures use the same points)"),
    Param("SEED", int, 0, "seed for pairs, random targets, replaced dimensions and initial prompts"),
    Param("OUT_DIR", str, "results/exp08", "results folder, relative to the repo root"),
    Param("PROGRESS", bool, True, "show a progress bar"),
    Param("FRESH", bool, False, "move an existing store aside and start over"),
    Param("SMOKE", bool, False, "small offline run: bundled SmolLM2 on synthetic passages (a knob given with -p keeps its value)"),
]
SMOKE = {"MODEL": "smollm2-135m-instruct", "TEXT": "synthetic", "N_TEXTS": 200, "WINDOWS_PER_TEXT": 4, "N_FIT": 300,
         "N_REAL": 4, "N_RANDOM": 4, "N_PAIRS": 1, "N_DIM_TARGETS": 1, "RESTARTS": 2, "DIM_RESTARTS": 2,
         "STEPS": 10, "MAX_STEPS": 20, "CURVE_EVERY": 1, "CHECKPOINT_EVERY": 5,
         "OUT_DIR": "results/exp08_smoke"}

CELLS = [
    stamp("builders/build_exp08.py", "Exp 08: soft-prompt reachability of final-layer residuals", """
        Can a SEQ_LEN-token soft prompt, optimized with Adam, make the model's final-layer residual
        match a target? Part 1: residuals of real text (calibration). Part 2a: random targets drawn
        per position from N(mu_i, Sigma_i) fitted on N_FIT real sequences; 2b: isotropic Gaussian,
        each position scaled to the typical real norm. Part 3: alpha*A + (1-alpha)*B for pairs of
        real targets. Part 4: a fraction f of dimensions (the same at every position) replaced by
        N(0, sigma_dim) draws. Restarts and targets are optimized as one batch of soft prompts.
        Part 1's curves decide (by a recorded rule) whether all parts run STEPS or MAX_STEPS.
        "Reached" means best final MSE <= REACH_FRAC x initial MSE. Each part writes
        `metrics.json`, `loss_curves.png`, `final_mse_histogram.png`, `cosine_by_position.png` in
        its own folder; `summary.png`, `experiment3_pair_curves.png` (relative MSE vs alpha, one
        line per pair), `experiment4_transition.png` and `results.json` (with the interpretation
        table) go to OUT_DIR. Resumable: every chunk of targets is checkpointed every
        CHECKPOINT_EVERY steps and kept when finished in `OUT_DIR/_store` (git-ignored), so a
        rerun after a kill continues where it stopped, with the same numbers; other knobs for
        the same OUT_DIR are refused (a new OUT_DIR, or FRESH).
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    md("## Model\nParameters frozen; the residual is read through `inputs_embeds=` and `output_hidden_states=True`."),
    code("""
        import time

        import torch
        from tqdm.auto import tqdm

        from lib.studies import reachability as R
        from lib.studies.reachability import plots as RP
        from lib.studies.reachability import report as RR
        from lib.kv.models import load_model
        from lib.lab.records import provenance, write_per_item_csv, write_results_json
        from lib.studies.reachability import store as RS

        lm = load_model(MODEL, dtype=DTYPE)
        reader = R.ResidualReader(lm.model, RESIDUAL)
        print(lm.source, lm.device, lm.dtype, "d_model =", reader.d_model)
    """),
    md("## Real sequences\nThe first N_REAL windows are part 1's targets; the next N_FIT give the statistics for parts 2 and 4."),
    code("""
        texts, DATA = R.load_texts_recorded(TEXT, N_TEXTS, seed=SEED)  # DATA: source, file sha256, texts' hash
        ids, window_stats = R.token_windows(lm.tokenizer, texts, SEQ_LEN, N_REAL + N_FIT, per_text=WINDOWS_PER_TEXT)
        norm_check = reader.norm_check(ids[:8])
        real = reader.of_ids(ids[:N_REAL])
        stats = R.RealStats.fit(reader.of_ids(ids[N_REAL:]))
        print("windows:", window_stats)
        print("norm check:", norm_check)
        print("typical norm by position:", [round(x, 1) for x in stats.norms.tolist()])
        print(repr(lm.tokenizer.decode(ids[0])))
    """),
    md("## Shared settings, store and writer\nThe store refuses other knobs for this OUT_DIR (the error names them); part 1's step decision is stored with it."),
    code("""
        store = RS.ChunkStore(ROOT / OUT_DIR / "_store", RS.store_config(CONFIG, lm), every=CHECKPOINT_EVERY, fresh=FRESH)
        print(store)
        RULE = R.ExtendRule(EXTEND_WINDOW, EXTEND_TOL)
        OPT = dict(lr=LR, init_std=INIT_STD, chunk=CHUNK, reach_frac=REACH_FRAC)
        SHARED = {"model": MODEL, "source": lm.source, "text": TEXT, "windows": window_stats, "norm_check": norm_check,
                  "n_fit": stats.n, "clipped_eigenvalue": stats.clipped_eigen, "typical_norms": stats.norms.tolist()}
        parts, timings, resumed = {}, {}, {}

        def run_part(key, folder, targets, restarts, steps, labels=None, groups=None, seed_offset=0, **kw):
            t0 = time.time()
            with tqdm(total=targets.shape[0] * restarts * steps, desc=f"part {key} prompt-steps", disable=not PROGRESS) as bar:
                def tick(k):  # an extension to MAX_STEPS grows the total
                    bar.total = max(bar.total, bar.n + k)
                    bar.update(k)
                fit = R.optimize(reader, targets, restarts=restarts, steps=steps, seed=SEED + seed_offset, **OPT, **kw,
                                 progress=tick, store=store, part=key)
            s = RR.summarize(fit, reach_frac=REACH_FRAC, labels=labels, groups=groups, curve_every=CURVE_EVERY)
            timings[key], resumed[key] = time.time() - t0, {"chunks": fit.chunks, "resumed_chunks": fit.resumed_chunks}
            RP.write_part(ROOT / OUT_DIR / folder, s, part=key, config=CONFIG, provenance=provenance(seeds={"seed": SEED}),
                          extra={"shared": SHARED, "seconds": timings[key], "store": resumed[key]}, title=f"exp08 part {key}: {MODEL}")
            parts[key] = s
            print(f"part {key}: {s['n_targets']} targets x {restarts} restarts, {fit.steps} steps, {timings[key]:.0f} s "
                  f"({fit.resumed_chunks} of {fit.chunks} chunks from the store); "
                  f"reached {s['share_reached']:.2f}; median final MSE {s['final_mse']['median']:.4g}, "
                  f"median relative MSE {s['relative_mse']['median']:.4g}")
            return fit
    """),
    md("## Part 1: real targets (calibration; decides the step count)"),
    code("""
        fit1 = run_part("1", "part1_real", real, RESTARTS, STEPS, max_steps=MAX_STEPS, rule=RULE)
        STEPS_ALL = fit1.steps
        print("extension decision:", fit1.extension)
    """),
    md("## Part 2: random targets\n2a: per-position Gaussian fitted on real residuals; 2b: isotropic, scaled to the typical real norm per position."),
    code("""
        fit2a = run_part("2a", "part2a_matched", R.matched_gaussian(stats, N_RANDOM, SEED + 1), RESTARTS, STEPS_ALL, seed_offset=2)
        fit2b = run_part("2b", "part2b_raw", R.raw_gaussian(stats, N_RANDOM, SEED + 2), RESTARTS, STEPS_ALL, seed_offset=3)
    """),
    md("## Part 3: interpolation and extrapolation between real targets"),
    code("""
        alphas = R.parse_floats(ALPHAS, "ALPHAS")
        ia, ib = R.choose_pairs(N_REAL, N_PAIRS, SEED + 3)
        fit3 = run_part("3", "part3_interpolation", R.interpolate(real[ia], real[ib], alphas), RESTARTS, STEPS_ALL,
                 labels=alphas * N_PAIRS, groups=[k for k in range(N_PAIRS) for _ in alphas], seed_offset=4)
        print({k: round(v["median_relative_mse"], 5) for k, v in RR.by_label(parts["3"]).items()})
        per_pair = [{"pair": g["group"], "a": ia[g["group"]], "b": ib[g["group"]], "alpha": g["label"],
                     "relative_mse": g["relative_mse"], "final_mse": g["final_mse"], "reached": g["reached"]}
                    for g in parts["3"]["by_group"]]
        for row in per_pair:
            print(f"pair {row['pair']} (A {row['a']}, B {row['b']}):", {a: f"{v:.3g}" for a, v in zip(row["alpha"], row["relative_mse"])})
    """),
    md("## Part 4: dimension replacement"),
    code("""
        fractions = R.parse_floats(FRACTIONS, "FRACTIONS")
        if N_DIM_TARGETS > N_REAL:
            raise ValueError(f"N_DIM_TARGETS={N_DIM_TARGETS} exceeds N_REAL={N_REAL}")
        targets4, replaced = R.replace_dims(real[:N_DIM_TARGETS], fractions, stats.dim_std, SEED + 5)
        fit4 = run_part("4", "part4_dimensions", targets4, DIM_RESTARTS, STEPS_ALL, labels=fractions * N_DIM_TARGETS, seed_offset=5)
        print({k: round(v["median_relative_mse"], 5) for k, v in RR.by_label(parts["4"]).items()})
    """),
    md("## Summary figures"),
    code("""
        figs = [RP.summary_boxes(RR.condition_groups(parts), ROOT / OUT_DIR / "summary.png", title=f"exp08 {MODEL}: final MSE by condition"),
                RP.group_curves(parts["3"], ROOT / OUT_DIR / "experiment3_pair_curves.png", title=f"exp08 {MODEL}: reachability curve per pair"),
                RP.transition(parts["4"], ROOT / OUT_DIR / "experiment4_transition.png", title=f"exp08 {MODEL}: dimension replacement")]
        show.figures(figs)
    """),
    md("## Interpretation\nThe design's table, each row tested against the measured medians (criteria in `lib/studies/reachability/report.py`)."),
    code("""
        from IPython.display import Markdown, display

        table = RR.interpret(parts)
        display(Markdown(RR.interpretation_markdown(table)))
        summary = {"n_samples": sum(v["n_targets"] for v in parts.values()),  # targets, all parts (the index's N)
                   "n_targets": {k: v["n_targets"] for k, v in parts.items()}, "interpretation": table,
                   "headline": {k: {"share_reached": v["share_reached"], "median_final_mse": v["final_mse"]["median"],
                                    "median_relative_mse": v["relative_mse"]["median"]} for k, v in parts.items()},
                   "by_label": {"3": RR.by_label(parts["3"]), "4": RR.by_label(parts["4"])}, "per_pair": per_pair}
        out = write_results_json(ROOT / OUT_DIR, config=CONFIG, summary=summary, provenance=provenance(seeds={"seed": SEED}),
                                 extra={"data": DATA, "shared": SHARED, "steps_run": STEPS_ALL, "extension": fit1.extension,
                                        "seconds": timings, "store": resumed, "figures": [f.name for f in figs]})
        write_per_item_csv(ROOT / OUT_DIR, RR.per_target_rows(parts))
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
