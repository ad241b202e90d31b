"""Build experiments/exp07/exp07_soft_surrogates.ipynb: soft prefixes trained through the hybrid cache."""
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp07_soft_surrogates")

PARAMS = [
    *[replace(p, default=True) if p.name == "LOAD_IN_4BIT" else replace(p, default=300) if p.name == "MAX_PASSAGE_WORDS" else p
      for p in common.model_params("google/gemma-3-4b-it", "bfloat16", "ms_marco", 0) if p.name not in ("N_SAMPLES", "SPLIT")],
    Param("QUERY_PROMPT", str, "\nQuery: {query}\nAnswer:", "query template scored after the document (the seed's; the other "
          "experiments use lib.studies.priming.PROMPT_QUERY)"),
    Param("TRAIN_SPLIT", str, "train", "split for training (ignored by synthetic, which uses seed SEED); articles (in both "
          "splits): disjoint articles of a one-split registry set such as squad_v1.1"),
    Param("EVAL_SPLIT", str, "validation", "split for evaluation (synthetic: seed SEED+1); articles: see TRAIN_SPLIT"),
    Param("N_TRAIN", int, 2000, "training samples"),
    Param("N_EVAL", int, 300, "evaluation samples"),
    Param("PREFIX", str, "static_fact", "the discrete surrogate: its token count sets the soft prefix length; also an init"),
    Param("CUTOFF", int, 16, "primed values at layers < CUTOFF, bare values above (keys always bare)"),
    Param("LR", float, 0.1, "AdamW learning rate"),
    Param("WEIGHT_DECAY", float, 0.01, "AdamW weight decay"),
    Param("WARMUP_STEPS", int, 50, "linear warm-up, in optimizer steps (constant afterwards)"),
    Param("GRAD_ACCUM", int, 4, "micro-steps (one example each) per optimizer step"),
    Param("TRAIN_BATCH", int, 4, "training examples per forward, within one optimizer step (speed only; 1 runs one at a time)"),
    Param("CLIP", float, 1.0, "gradient-norm clip"),
    Param("EPOCHS", int, 3, "passes over the training samples (seeded order per epoch)"),
    Param("INIT_STD", float, 0.02, "std of the random initialization N(0, INIT_STD)"),
    Param("CHECKPOINT_EVERY", int, 10, "optimizer steps between checkpoints (a kill loses at most this much)"),
    Param("NEAREST_K", int, 5, "vocabulary neighbours listed per learned prefix vector"),
    Param("SEED", int, 42, "seed for initialization, data order, synthetic data and bootstrap"),
    Param("BATCH_SIZE", int, 16, "Phase B items per forward in evaluation"),
    common.DISTRACTORS,
    Param("CHUNK", int, 8, "evaluation samples per store append (resume granularity)"),
    Param("N_BOOT", int, 2000, "bootstrap resamples for the CI of d"),
    Param("PRIMARY_TEST", str, "t", "paired test that decides claims (t or wilcoxon); tables show both"),
    Param("OUT_DIR", str, "results/exp07", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "LOAD_IN_4BIT": False, "MAX_PASSAGE_WORDS": 150, "N_TRAIN": 16, "N_EVAL": 16, "EPOCHS": 1, "WARMUP_STEPS": 2,
         "CUTOFF": 15, "CHECKPOINT_EVERY": 2}

CELLS = [
    stamp("builders/build_exp07.py", "Exp 07: soft surrogates through the hybrid cache", """
        Can a learned continuous prefix beat a hand-written one? A soft prefix (as many vectors as the
        `static_fact` prefix has tokens) is trained with the model frozen to minimize the answer NLL
        scored through the hybrid cache: bare keys everywhere, values from the soft-primed run at layers
        < CUTOFF, bare values above (exp06's `values_early`). Two initializations: random N(0, 0.02) and
        the `static_fact` token embeddings. AdamW, linear warm-up, gradient accumulation and clipping;
        checkpoints hold everything needed to resume exactly. Evaluation on held-out samples: `bare`,
        `vel_static` (the token prefix through the same hybrid), `vel_soft_random`, `vel_soft_fact`:
        d vs bare, pairwise comparisons, hardness quintiles, training curves, and the nearest vocabulary
        tokens of each learned vector. Positive d means a LOWER answer NLL than bare. `N_DISTRACTORS` other
        samples' answers are scored on every evaluation cache: d(margin) beside d(nll) (`lib.kv.margin`).
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    common.MODEL_AND_DATA[0],
    common.MODEL_AND_DATA[1],
    md("## Data\nTraining and evaluation samples are disjoint (checked)."),
    code("""
        from lib.studies import soft

        train_data, eval_data = soft.load_splits(DATASET, N_TRAIN, N_EVAL, train_split=TRAIN_SPLIT, eval_split=EVAL_SPLIT,
                                                 seed=SEED, source=DATA_SOURCE or None,
                                                 min_passage_words=MIN_PASSAGE_WORDS or None, max_passage_words=MAX_PASSAGE_WORDS or None)
        data_info = {part: d.info()
                     for part, d in (("train", train_data), ("eval", eval_data))}
        print(data_info)
    """),
    md("## Prefix length\nThe soft prefix has exactly as many vectors as the discrete prefix has tokens (text + separator)."),
    code("""
        from lib.studies import contamination

        static_ids = contamination.prefix_ids(lm.tokenizer, PREFIX)
        prefix_len = len(static_ids)
        print(f"{PREFIX!r} -> {prefix_len} tokens {lm.tokenizer.convert_ids_to_tokens(static_ids)}; cutoff {CUTOFF} of {lm.arch.n_layers} layers")
        train_exs = soft.examples(lm, train_data.samples, prefix_len, prompt_query=QUERY_PROMPT)
        eval_exs = soft.examples(lm, eval_data.samples, prefix_len, prompt_query=QUERY_PROMPT, n_distractors=N_DISTRACTORS, seed=SEED)
    """),
    md("## Training\nResumable: a rerun continues from the last checkpoint (or returns the finished prefix)."),
    code("""
        from lib.lab.ckpt import move_aside

        base = dict(prefix_len=prefix_len, cutoff=CUTOFF, lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP_STEPS,
                    grad_accum=GRAD_ACCUM, clip=CLIP, epochs=EPOCHS, init_std=INIT_STD, seed=SEED, checkpoint_every=CHECKPOINT_EVERY)
        inits = {"random": soft.TrainConfig(**base, init="random"),
                 "fact": soft.TrainConfig(**base, init="tokens", init_ids=tuple(static_ids))}
        trained = {}
        for name, cfg in inits.items():
            ckpt = ROOT / OUT_DIR / f"train_{name}.ckpt.pt"
            if FRESH:
                move_aside(ckpt)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            trained[name] = soft.train(lm, train_exs, cfg, ckpt, progress=PROGRESS, examples_per_forward=TRAIN_BATCH)
            assert trained[name].prefix.shape[0] == prefix_len, (trained[name].prefix.shape, prefix_len)
            h = trained[name].history
            print(f"{name:7s} {len(h)} optimizer steps (resumed from micro-step {trained[name].resumed_from_step}); "
                  f"loss {h[0]['loss']:.4f} -> {sum(x['loss'] for x in h[-10:]) / len(h[-10:]):.4f} (mean of the last 10 steps)")
    """),
    md("## Evaluation"),
    common.run_cell("""
        from lib.studies import priming
        from lib.lab.runs import RunStore

        prefixes = {k: r.prefix for k, r in trained.items()}
        names = ["bare", "vel_static", *[f"vel_soft_{k}" for k in prefixes]]
        store_cfg = {**priming.store_config(CONFIG, lm, conditions=()), "prompt_query": QUERY_PROMPT, "static_ids": static_ids,
                     "prefix_sha": {k: soft.tensor_hash(v) for k, v in prefixes.items()}}
        store = RunStore(ROOT / OUT_DIR / "_store", store_cfg, fresh=FRESH)
        rows = soft.run_eval(lm, eval_exs, store, CUTOFF, static_ids=static_ids, soft=prefixes, wave=CHUNK,
                             batch_size=BATCH_SIZE, progress=PROGRESS)
        ids = [e.sample_id for e in eval_exs]
    """),
    md("## Statistics"),
    common.summary_cell("""
        pairs = [("vel_static", "vel_soft_fact"), ("vel_static", "vel_soft_random"), ("vel_soft_random", "vel_soft_fact")]
        summary["pairwise"] = stats.compare_conditions(nll, None, pairs=pairs, n_boot=N_BOOT, seed=SEED, atol=atol,
                                                      primary_test=PRIMARY_TEST)
        summary["training"] = {k: {"history": r.history, "config": r.config["config"]} for k, r in trained.items()}
        summary["nearest_tokens"] = {k: soft.nearest_tokens(lm, v, NEAREST_K) for k, v in prefixes.items()}
        summary["nearest_tokens"]["static_tokens"] = lm.tokenizer.convert_ids_to_tokens(static_ids)
        show.table(summary["comparisons"], title="each condition vs bare")
        show.table(summary["pairwise"], title="pairwise")
        show.discrimination(summary)
        show.table(summary["hardness"], keys=("bin", "cond"), columns=["d", "excess_delta"], title="hardness (excess over a uniform effect + regression to the mean)")
    """, report="analysis, stats"),
    md("## The seed's success criteria\nJudged on the 95% CI of d vs bare: met (CI above the threshold), not met (below), "
       "undecided (spans it). The seed's reference values come from other runs on Gemma 3 4B-IT with MS MARCO: context, not a test."),
    code("""
        summary["success_criteria"] = soft.success_verdicts(summary["comparisons"])
        summary["seed_reference"] = list(soft.SEED_REFERENCE)
        show.table(summary["success_criteria"], keys=("criterion", "cond", "threshold"), columns=["d", "ci_low", "ci_high", "verdict"],
                   title="success criteria (seed exp25)")
        show.table(summary["seed_reference"], keys=("source", "condition"), columns=["d"], title="seed reference values")
    """),
    md("## What the learned vectors are near\nCosine to every input embedding; position i of the prefix vs the static token at i."),
    code("""
        for k in prefixes:
            print(f"--- {k}")
            for i, nb in enumerate(summary["nearest_tokens"][k]):
                print(f"  {i:2d} (static {summary['nearest_tokens']['static_tokens'][i]!r:>12s}): "
                      + ", ".join(f"{t!r} {c:.2f}" for t, c in nb))
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp07 {MODEL} {DATASET} train={len(train_exs)} eval={len(ids)} cutoff={CUTOFF}"
        figs = [plots.plot_training_curves({k: r.history for k, r in trained.items()}, ROOT / OUT_DIR / "training_curves.png", title=title),
                plots.plot_soft_eval(summary["comparisons"], nll, summary["hardness"], "bare", ROOT / OUT_DIR / "evaluation.png",
                                     title=title, pair=("vel_static", "vel_soft_fact"),
                                     reference_d={"seed Exp 21 values_early": 0.227, "seed primary target": 0.25}),
                plots.plot_delta_hist({f"{c} vs bare": nll["bare"] - nll[c] for c in names[1:]}, ROOT / OUT_DIR / "delta_hist.png",
                                      title=title)]
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        import torch
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        torch.save({k: v.cpu() for k, v in prefixes.items()}, ROOT / OUT_DIR / "soft_prefixes.pt")
        out = write_results_json(
            ROOT / OUT_DIR, config=store.config, summary=summary, provenance=provenance(seeds={"seed": SEED}),
            extra={"data": data_info, "arch": lm.arch.to_dict(), "prefix_len": prefix_len,
                   "figures": [p.name for p in figs], "prefix_file": "soft_prefixes.pt"})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
