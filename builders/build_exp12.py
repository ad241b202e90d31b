"""Build experiments/exp12/exp12_latent_prefix.ipynb: a learned encoder compresses the passage into M prefix vectors."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp12_latent_prefix")

PARAMS = [
    Param("MODEL", str, "meta-llama/Llama-3.1-8B-Instruct", "frozen reader: hub id, local folder, or bundled name (smollm2-135m-instruct, gemma-3-270m)"),
    Param("LOAD_IN_4BIT", bool, False, "bitsandbytes nf4 (CUDA only)"),
    Param("DTYPE", str, "bfloat16", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"),
    Param("DATASET", str, "squad_v1.1", "squad_v1.1 or synthetic"),
    Param("DATA_SOURCE", str, "", "empty: the hub copy (rajpurkar/squad); or a local .jsonl/.json/.parquet in its schema"),
    Param("TRAIN_SPLIT", str, "train", "split for training (synthetic: seed SEED)"),
    Param("EVAL_SPLIT", str, "validation", "split for evaluation (synthetic: seed SEED+1)"),
    Param("N_TRAIN", int, 20000, "training samples (first N eligible rows)"),
    Param("N_EVAL", int, 500, "evaluation samples (first N eligible rows)"),
    Param("MIN_PASSAGE_WORDS", int, 20, "skip passages shorter than this (0: no limit)"),
    Param("MAX_PASSAGE_WORDS", int, 250, "skip passages longer than this (0: no limit)"),
    Param("MAX_CONTEXT_TOKENS", int, 512, "cut passages to this many tokens for every condition (0: no cut)"),
    Param("M_LIST", str, "4,8,16,32", "comma-separated latent lengths M (the token budget uses the same M)"),
    Param("D_Z", int, 256, "latent width d_z of the cross-attention pooler"),
    Param("N_HEADS", int, 8, "attention heads of the pooler"),
    Param("N_ENC_LAYERS", int, 2, "cross-attention + MLP blocks of the pooler"),
    Param("ADAPTER_HIDDEN", int, 2048, "hidden width of the adapter MLP (d_z to d_model)"),
    Param("ENC_LAYER", int, 0, "encoder input: 0 for frozen token embeddings, k for the frozen LM's hidden states after layer k"),
    Param("FIRST_WEIGHT", float, 2.0, "CE weight of answer position 0 (others weigh 1)"),
    Param("KD_WEIGHT", float, 0.5, "weight of KL(text teacher || latent student) at the answer positions (0: no teacher pass)"),
    Param("KD_TEMP", float, 1.0, "KD temperature"),
    Param("LR", float, 3e-4, "AdamW learning rate"),
    Param("WEIGHT_DECAY", float, 0.01, "AdamW weight decay"),
    Param("WARMUP_STEPS", int, 100, "linear warm-up steps (constant afterwards)"),
    Param("BATCH_SIZE", int, 16, "training examples per optimizer step"),
    Param("EPOCHS", int, 1, "passes over the training samples (seeded order per epoch)"),
    Param("CLIP", float, 1.0, "gradient-norm clip"),
    Param("CHECKPOINT_EVERY", int, 100, "optimizer steps between checkpoints (a kill loses at most this much)"),
    Param("MAX_NEW_TOKENS", int, 16, "greedy decoding length cap (fixed; never the gold length)"),
    Param("EVAL_BATCH", int, 32, "evaluation examples per forward"),
    Param("BYTES_PER_VALUE", int, 2, "bytes per latent value when counting compression in bytes (2: fp16)"),
    Param("SEED", int, 42, "seed for initialization, data order and synthetic data"),
    Param("OUT_DIR", str, "results/exp12", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {"MODEL": "smollm2-135m-instruct", "DTYPE": "auto", "DATASET": "synthetic", "N_TRAIN": 16, "N_EVAL": 6,
         "MAX_PASSAGE_WORDS": 90, "M_LIST": "2,4", "D_Z": 64, "N_HEADS": 4, "N_ENC_LAYERS": 1, "ADAPTER_HIDDEN": 128,
         "WARMUP_STEPS": 2, "BATCH_SIZE": 4, "CHECKPOINT_EVERY": 2, "MAX_NEW_TOKENS": 6, "EVAL_BATCH": 6}

CELLS = [
    stamp("builders/build_exp12.py", "Exp 12: latent-prefix compression", """
        Can a learned encoder compress a passage into M vectors that a frozen LM reads as a prefix, well
        enough to answer questions about it? The latent encodes the PASSAGE; the QUESTION stays as text.
        Layout, shared by training, first-token metrics and generation: `[BOS][prefix][question anchor] ->
        answer + EOS` (right padding expressed only by the attention mask; EOS supervised). The encoder
        pools the passage's frozen token embeddings (or frozen hidden states, `ENC_LAYER`) with M learned
        queries into d_z, an adapter (LayerNorm, MLP) maps to d_model, and each example is RMS-calibrated to
        the LM's embedding scale; only encoder and adapter train (CE over answer tokens, position 0
        up-weighted, plus KD to the LM reading the full text, at the same positions). Conditions: `text`
        (whole passage), `replay` (its embeddings as a soft prefix; must equal text), `latent`, `budget`
        (first M passage tokens + question), `latent_other` (another sample's latent), `latent_zero`.
        Metrics: greedy EM/F1 (fixed `MAX_NEW_TOKENS`), answer NLL/token, FirstTok@1/@5, distinct first
        tokens, compression in tokens and bytes.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    common.MODEL_AND_DATA[0],
    common.MODEL_AND_DATA[1],
    md("## Data\nTraining and evaluation samples are disjoint (checked). Passages over `MAX_CONTEXT_TOKENS` are cut for every condition."),
    code("""
        from lib.studies import latent as lat
        from lib.studies.latent import evaluation as ev

        m_list = [int(x) for x in str(M_LIST).split(",") if x.strip()]  # papermill passes "-p M_LIST 16" as an int
        if not m_list or min(m_list) < 1:
            raise ValueError(f"M_LIST {M_LIST!r} must list positive ints, e.g. '4,8,16,32'")
        lim = dict(min_passage_words=MIN_PASSAGE_WORDS or None, max_passage_words=MAX_PASSAGE_WORDS or None)
        train_data, eval_data = ev.load_splits(DATASET, N_TRAIN, N_EVAL, train_split=TRAIN_SPLIT, eval_split=EVAL_SPLIT,
                                               seed=SEED, source=DATA_SOURCE or None, **lim)
        train_items = lat.make_items(lm.tokenizer, train_data.samples, max_context_tokens=MAX_CONTEXT_TOKENS)
        eval_items = lat.make_items(lm.tokenizer, eval_data.samples, max_context_tokens=MAX_CONTEXT_TOKENS)
        data_info = {part: d.info()
                     for part, d in (("train", train_data), ("eval", eval_data))}
        print(data_info)
        it = eval_items[0]
        print("text prompt :", repr(lm.tokenizer.decode([lm.arch.bos_id, *it.context_ids, *it.anchor_ids])[-160:]))
        print("latent      : [BOS] + [M vectors] +", repr(lm.tokenizer.decode(it.anchor_ids)))
        print("target      :", repr(lm.tokenizer.decode(it.answer_ids)), "(answer + EOS)")
    """),
    md("## Training\nOne compressor per M. Resumable: a rerun continues from the last checkpoint (or loads the finished one)."),
    code("""
        from lib.lab.ckpt import move_aside

        trained = {}
        for m in m_list:
            cfg = lat.LatentConfig(m=m, d_z=D_Z, n_heads=N_HEADS, n_layers=N_ENC_LAYERS, adapter_hidden=ADAPTER_HIDDEN,
                                   enc_layer=ENC_LAYER, first_weight=FIRST_WEIGHT, kd_weight=KD_WEIGHT, kd_temp=KD_TEMP,
                                   lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP_STEPS, batch_size=BATCH_SIZE,
                                   epochs=EPOCHS, clip=CLIP, seed=SEED, checkpoint_every=CHECKPOINT_EVERY)
            ckpt = ROOT / OUT_DIR / f"latent_m{m}.ckpt.pt"
            if FRESH:
                move_aside(ckpt)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            r = lat.train(lm, train_items, cfg, ckpt, progress=PROGRESS)
            trained[m] = r
            h = r.history
            tail = h[-10:]
            print(f"M={m:3d}: {len(h)} steps (resumed from {r.resumed_from_step}); loss {h[0]['loss']:.3f} -> "
                  f"{sum(x['loss'] for x in tail) / len(tail):.3f}, first-token acc (last 10) "
                  f"{sum(x['first_acc'] for x in tail) / len(tail):.3f}")
    """),
    md("## Evaluation\nEach M's compressor is reloaded from its checkpoint file (the file holds everything evaluation needs)."),
    code("""
        import time

        t0 = time.time()
        rows = ev.evaluate(lm, eval_items, ["text", "replay"], m=0, max_new_tokens=MAX_NEW_TOKENS, batch_size=EVAL_BATCH,
                           progress=PROGRESS)
        for m in m_list:
            comp = lat.load(ROOT / OUT_DIR / f"latent_m{m}.ckpt.pt", device=lm.device).comp
            rows += ev.evaluate(lm, eval_items, list(lat.PER_M), comp=comp, m=m, max_new_tokens=MAX_NEW_TOKENS,
                                batch_size=EVAL_BATCH, progress=PROGRESS)
        print(f"{len(rows)} rows in {time.time() - t0:.0f} s")
        d_model = lm.model.get_input_embeddings().weight.shape[1]
        summary = ev.summarize(rows, d_model=d_model, bytes_per_value=BYTES_PER_VALUE)
        show.table(summary, keys=("condition", "m"), columns=["em", "f1", "nll_per_token", "first_tok_at1", "first_tok_at5",
                                                             "distinct_first_tokens", "compression_tokens", "compression_bytes"])
    """),
    md("## Replay sanity check and example predictions"),
    code("""
        by = {(r["sample_id"], r["condition"], r["m"]): r for r in rows}
        gap = max(abs(by[(i.sample_id, "replay", 0)]["nll_sum"] - by[(i.sample_id, "text", 0)]["nll_sum"]) for i in eval_items)
        same = sum(by[(i.sample_id, "replay", 0)]["pred"] == by[(i.sample_id, "text", 0)]["pred"] for i in eval_items)
        print(f"replay vs text: max |NLL sum gap| {gap:.2e}; identical predictions {same}/{len(eval_items)}")
        for i in eval_items[:5]:
            print(f"- gold {i.answers[0]!r}: text {by[(i.sample_id, 'text', 0)]['pred']!r}; "
                  + "; ".join(f"M={m} latent {by[(i.sample_id, 'latent', m)]['pred']!r} budget {by[(i.sample_id, 'budget', m)]['pred']!r}"
                              for m in m_list))
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp12 {MODEL} {DATASET} train={len(train_items)} eval={len(eval_items)}"
        (ROOT / OUT_DIR).mkdir(parents=True, exist_ok=True)
        figs = [ev.plot_curves(summary, ROOT / OUT_DIR / "curves.png", title=title),
                plots.plot_training_curves({f"M={m}": r.history for m, r in trained.items()},
                                           ROOT / OUT_DIR / "training_curves.png", title=title)]
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        out = write_results_json(
            ROOT / OUT_DIR, config=CONFIG, summary={"by_condition": summary,
                                                    "replay_vs_text_max_nll_gap": gap},
            provenance=provenance(seeds={"seed": SEED}),
            extra={"data": data_info, "arch": lm.arch.to_dict(), "figures": [p.name for p in figs],
                   "checkpoints": [f"latent_m{m}.ckpt.pt" for m in m_list],
                   "training": {str(m): {"history": r.history, "meta": r.meta} for m, r in trained.items()}})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
