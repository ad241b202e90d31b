"""Build experiments/exp12/exp12_latent_prefix.ipynb: LatentWire, one shared latent read by several frozen LMs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp12_latent_prefix")

PARAMS = [
    Param("MODELS", str, "meta-llama/Llama-3.1-8B-Instruct,Qwen/Qwen2.5-7B-Instruct",
          "comma-separated frozen readers (the seed's pair); one name is the single-model case"),
    Param("LOAD_IN_4BIT", bool, False, "bitsandbytes nf4 (CUDA only; the seed ran without)"),
    Param("DTYPE", str, "bfloat16", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"),
    Param("ANCHORS", str, "", "position-0 anchor per model, comma-separated in MODELS order (an empty entry: that model's "
          "BOS policy; e.g. ',<|im_start|>'); empty: every model's policy"),
    Param("DATASET", str, "squad_v1.1", "squad_v1.1 (the seed's) or synthetic"),
    Param("DATA_SOURCE", str, "", "empty: the hub copy (rajpurkar/squad); or a local .jsonl/.json/.parquet in its schema"),
    Param("TRAIN_SPLIT", str, "train", "split for training (synthetic: seed SEED); articles (in both splits): disjoint "
          "articles of the offline SQuAD v1.1 dev copy"),
    Param("EVAL_SPLIT", str, "validation", "split for evaluation (synthetic: seed SEED+1); articles: see TRAIN_SPLIT"),
    Param("N_TRAIN", int, 87599, "training samples, first N eligible rows (seed: 87599, all of SQuAD train)"),
    Param("N_EVAL", int, 200, "evaluation samples, first N eligible rows (seed: 200)"),
    Param("MIN_PASSAGE_WORDS", int, 0, "skip passages shorter than this (0: no limit, as the seed)"),
    Param("MAX_PASSAGE_WORDS", int, 0, "skip passages longer than this (0: no limit, as the seed)"),
    Param("MAX_CONTEXT_TOKENS", int, 0, "cut passages to this many tokens of each model for every condition (0: no cut)"),
    Param("LATENT_INPUT", str, "prompt", "what the latent holds: prompt (passage and question; the seed's) or passage (question stays text)"),
    Param("ENCODER", str, "bytes", "bytes (UTF-8 bytes, learned byte embeddings, tokenizer-free; the seed's) or tokens (frozen embeddings of one model)"),
    Param("ENCODER_MODEL", str, "", "tokens encoder: the model whose tokenizer and embeddings feed it (empty: the first of MODELS)"),
    Param("ENC_LAYER", int, 0, "tokens encoder: 0 for frozen token embeddings, k for that model's hidden states after layer k"),
    Param("BYTE_MAX", int, 2048, "bytes encoder: input cap in bytes, longer texts cut and flagged (seed: 2048)"),
    Param("M_LIST", str, "32", "comma-separated latent lengths M, one wire each; budgets use the same M (seed: 32)"),
    Param("D_Z", int, 256, "latent width d_z (seed: 256)"),
    Param("N_HEADS", int, 8, "attention heads of the pooler (our choice)"),
    Param("N_ENC_LAYERS", int, 2, "cross-attention and MLP blocks of the pooler (our choice)"),
    Param("ADAPTER_MULT", int, 4, "adapter hidden width as a multiple of each model's d_model (seed: 4); 0 uses ADAPTER_HIDDEN"),
    Param("ADAPTER_HIDDEN", int, 2048, "adapter hidden width when ADAPTER_MULT is 0"),
    Param("K_TOKENS", int, 4, "CE and KD over the first K answer tokens, 0 for all (seed: K 4)"),
    Param("FIRST_WEIGHT", float, 9.0, "weight of answer position 0 in the K-token CE mean; seed lambda_first 1 with lambda_kce 0.5 over K 4 gives 9"),
    Param("KD_WEIGHT", float, 0.5, "weight of KL(text teacher || latent student) over the first K positions (seed: 0.5)"),
    Param("KD_TEMP", float, 1.0, "KD temperature (our choice)"),
    Param("LR", float, 5e-5, "AdamW learning rate (seed: 5e-5)"),
    Param("WEIGHT_DECAY", float, 1e-4, "AdamW weight decay (seed: about 1e-4)"),
    Param("WARMUP_STEPS", int, 100, "linear warm-up steps, constant afterwards (our choice)"),
    Param("BATCH_SIZE", int, 64, "examples per optimizer step, every model on the same ones (seed: 64)"),
    Param("EPOCHS", int, 24, "passes over the training samples, seeded order per epoch (seed: 24)"),
    Param("MICRO_BATCH", int, 0, "examples per model forward within a step: memory only, same numbers to float rounding (0: the whole batch)"),
    Param("CLIP", float, 1.0, "gradient-norm clip (seed: 1.0)"),
    Param("CHECKPOINT_EVERY", int, 100, "optimizer steps between checkpoints (a kill loses at most this much)"),
    Param("MAX_NEW_TOKENS", int, 12, "greedy decoding length cap, fixed, never the gold length (seed: 12)"),
    Param("EVAL_CHUNK", int, 32, "evaluation examples per forward and per stored chunk (resume granularity)"),
    Param("JOINT", bool, True, "joint rescoring across the models (needs two or more)"),
    Param("BYTES_PER_VALUE", int, 2, "bytes per latent value when counting compression in bytes (2: fp16)"),
    Param("SEED", int, 42, "seed for initialization, data order and synthetic data (seed: 42)"),
    Param("OUT_DIR", str, "results/exp12", "results folder, relative to the repo root"),
    *common.TAIL[:2],
    Param("SMOKE", bool, False, "small offline run: bundled SmolLM2 and Qwen2.5-Coder-0.5B (two tokenizers) on synthetic QA"),
]
SMOKE = {"MODELS": "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct", "DTYPE": "auto", "DATASET": "synthetic",
         "N_TRAIN": 8, "N_EVAL": 4, "MAX_PASSAGE_WORDS": 90, "M_LIST": "4", "D_Z": 32, "N_HEADS": 4, "N_ENC_LAYERS": 1,
         "ADAPTER_MULT": 0, "ADAPTER_HIDDEN": 64, "WARMUP_STEPS": 1, "BATCH_SIZE": 4, "EPOCHS": 1, "LR": 1e-3,
         "CHECKPOINT_EVERY": 1, "MAX_NEW_TOKENS": 4, "EVAL_CHUNK": 4}

CELLS = [
    stamp("builders/build_exp12.py", "Exp 12: LatentWire, one shared latent read by several frozen LMs", """
        Can ONE learned latent Z (M x d_z) carry a prompt well enough that frozen LMs with different tokenizers
        (the seed: Llama-3.1-8B and Qwen2.5-7B) each answer from it? A shared encoder reads the input as UTF-8
        bytes (tokenizer-free, `BYTE_MAX` cap, cuts flagged) or as one model's frozen token embeddings
        (`ENCODER`); M learned queries pool it into Z. One adapter per model (LayerNorm, MLP) maps Z to that
        model's width, RMS-calibrated per example to its embedding scale. `LATENT_INPUT=prompt`: Z holds
        passage and question and each model reads `[BOS][latent][answer cue]`; `passage`: the question stays
        text after the latent. Layout, per model, shared by training, first-token metrics and generation:
        `[BOS][prefix][anchor] -> answer + EOS` (each model's own tokens and BOS policy). Loss per model: CE
        over the first K answer tokens with position 0 up-weighted, plus KD over the same positions from the
        same model reading the full text; each step averages the models' losses on the same examples; only
        encoder and adapters train. Conditions per model at equal M: `text`, `replay` (sanity), `latent`,
        `budget` (the whole prompt cut to its first M tokens of that model, then the cue), `budget_slot`
        (the first M tokens of what the latent holds, where the latent sits), `latent_other`, `latent_zero`;
        joint: each model's latent answer rescored by the summed per-token NLL under every model.
        Metrics: EM, F1, FirstTok@1, answer NLL/token; the seed's acceptance criteria per model.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    md("## Models"),
    code("""
        from lib.kv.models import load_model
        from lib.studies.latent import wire_model as WM

        names = WM.parse_models(MODELS)
        anchors = WM.parse_anchors(ANCHORS, names)
        lms = [load_model(n, dtype=None if DTYPE == "auto" else DTYPE, load_in_4bit=LOAD_IN_4BIT, anchor=a) for n, a in zip(names, anchors)]
        for n, lm in zip(names, lms):
            print(n, lm.source, lm.device, lm.dtype, "| BOS policy", lm.arch.bos_source, "id", lm.arch.bos_id)
        source = WM.source_index(ENCODER_MODEL, names)
        print("encoder:", ENCODER, f"(token source: {names[source]})" if ENCODER == "tokens" else f"(BYTE_MAX {BYTE_MAX})")
    """),
    md("## Data\nTraining and evaluation samples are disjoint (checked). Each model tokenizes the same examples itself."),
    code("""
        from lib.studies.latent import evaluation as ev

        m_list = [int(x) for x in str(M_LIST).split(",") if x.strip()]  # papermill passes "-p M_LIST 16" as an int
        if not m_list or min(m_list) < 1:
            raise ValueError(f"M_LIST {M_LIST!r} must list positive ints, e.g. '16,32'")
        lim = dict(min_passage_words=MIN_PASSAGE_WORDS or None, max_passage_words=MAX_PASSAGE_WORDS or None)
        train_data, eval_data = ev.load_splits(DATASET, N_TRAIN, N_EVAL, train_split=TRAIN_SPLIT, eval_split=EVAL_SPLIT,
                                               seed=SEED, source=DATA_SOURCE or None, **lim)
        mk = lambda lm, d: WM.make_wire_items(lm.tokenizer, d.samples, LATENT_INPUT, max_context_tokens=MAX_CONTEXT_TOKENS)
        train_items, eval_items = [mk(lm, train_data) for lm in lms], [mk(lm, eval_data) for lm in lms]
        data_info = {part: d.info() for part, d in (("train", train_data), ("eval", eval_data))}
        print(data_info)
        cuts = {part: {"bytes_over_BYTE_MAX": sum(WM.byte_inputs([i], BYTE_MAX)[2][0] for i in its[0]),
                       **{f"context_cut_{n}": sum(i.context_cut for i in x) for n, x in zip(names, its)}}
                for part, its in (("train", train_items), ("eval", eval_items))}
        print("truncations:", cuts)
        for n, lm, its in zip(names, lms, eval_items):
            it = its[0]
            print(f"--- {n}: text prompt", repr(lm.tokenizer.decode([*it.context_ids, *it.anchor_ids])[-120:]))
            print("    latent: [BOS] + [M vectors] +", repr(lm.tokenizer.decode(it.anchor_ids)), "| target", repr(lm.tokenizer.decode(it.answer_ids)))
    """),
    md("## Training\nOne wire (shared encoder and every adapter) per M. Resumable: a rerun continues from the last checkpoint."),
    code("""
        from lib.lab.ckpt import move_aside
        from lib.studies.latent import wire as W

        trained = {}
        for m in m_list:
            cfg = W.WireConfig(m=m, d_z=D_Z, n_heads=N_HEADS, n_layers=N_ENC_LAYERS, adapter_hidden=ADAPTER_HIDDEN,
                               adapter_mult=ADAPTER_MULT, enc_layer=ENC_LAYER, encoder=ENCODER, latent_input=LATENT_INPUT,
                               byte_max=BYTE_MAX, k_tokens=K_TOKENS, encoder_source=source, first_weight=FIRST_WEIGHT,
                               kd_weight=KD_WEIGHT, kd_temp=KD_TEMP, lr=LR, weight_decay=WEIGHT_DECAY,
                               warmup_steps=WARMUP_STEPS, batch_size=BATCH_SIZE, epochs=EPOCHS, clip=CLIP, seed=SEED,
                               checkpoint_every=CHECKPOINT_EVERY)
            ckpt = ROOT / OUT_DIR / f"wire_m{m}.ckpt.pt"
            if FRESH:
                move_aside(ckpt)
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            r = W.train(lms, train_items, cfg, ckpt, progress=PROGRESS, micro_batch=MICRO_BATCH)
            trained[m] = r
            tail = r.history[-10:]
            print(f"M={m:3d}: {len(r.history)} steps (resumed from {r.resumed_from_step}); loss {r.history[0]['loss']:.3f} -> "
                  f"{sum(x['loss'] for x in tail) / len(tail):.3f}, first-token acc (last 10, mean over models) "
                  f"{sum(x['first_acc'] for x in tail) / len(tail):.3f}")
    """),
    md("## Evaluation\nResumable: one stored row per (model, condition, M, chunk) in `OUT_DIR/_eval`; each M's wire is reloaded from its checkpoint."),
    code("""
        import time
        from lib.studies.latent import wire_eval as WE

        store = WE.open_store(ROOT / OUT_DIR / "_eval", WE.store_config(CONFIG, {str(m): r.meta for m, r in trained.items()}),
                              fresh=FRESH)
        t0 = time.time()
        kw = dict(chunk=EVAL_CHUNK, max_new_tokens=MAX_NEW_TOKENS, progress=PROGRESS)
        WE.evaluate(lms, names, eval_items, ["text", "replay"], store, m=0, **kw)
        for m in m_list:
            tw = W.load(ROOT / OUT_DIR / f"wire_m{m}.ckpt.pt", device=lms[0].device)
            WE.evaluate(lms, names, eval_items, list(WE.PER_M), store, tw=tw, m=m, joint=JOINT, **kw)
        print(f"{len(store)} stored chunks in {time.time() - t0:.0f} s")
        summaries = {n: ev.summarize(WE.rows(store, n), d_model=lm.model.get_input_embeddings().weight.shape[1],
                                     bytes_per_value=BYTES_PER_VALUE) for n, lm in zip(names, lms)}
        cols = ["em", "f1", "nll_per_token", "first_tok_at1", "first_tok_at5", "distinct_first_tokens", "compression_tokens"]
        for n in names:
            show.table(summaries[n], keys=("condition", "m"), columns=cols, title=n)
        joint = WE.summarize_joint(WE.rows(store, WE.JOINT), names)
        if joint:
            show.table(joint, keys=("condition", "m"), columns=[k for k in joint[0] if k not in ("condition", "m")],
                       title="joint rescoring")
    """),
    md("## Verdicts\nThe seed's acceptance criteria per model (`wire_eval.CRITERIA`, with the log lines they come from)."),
    code("""
        verdicts = {n: WE.verdicts(summaries[n]) for n in names}
        print("criteria:", WE.CRITERIA_SOURCE)
        for n in names:
            print("\\n".join(WE.verdict_lines(n, verdicts[n])))
        if SMOKE or DATASET == "synthetic":
            print("pipeline check only: synthetic data and small models; these verdicts say nothing about LatentWire")
        by = {(r["model"], r["sample_id"], r["condition"], r["m"]): r for r in WE.rows(store)}
        gap = max(abs(by[(n, i.sample_id, "replay", 0)]["nll_sum"] - by[(n, i.sample_id, "text", 0)]["nll_sum"])
                  for n, its in zip(names, eval_items) for i in its)
        print(f"replay vs text: max |NLL sum gap| {gap:.2e} (a soft replay of the prompt's embeddings must equal text)")
        for i in eval_items[0][:3]:
            print(f"- gold {i.answers[0]!r}: " + "; ".join(
                f"{n} text {by[(n, i.sample_id, 'text', 0)]['pred']!r} latent {by[(n, i.sample_id, 'latent', m)]['pred']!r}"
                for n in names for m in m_list[-1:]))
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        (ROOT / OUT_DIR).mkdir(parents=True, exist_ok=True)
        conds = ("text", "replay") + WE.PER_M
        figs = [ev.plot_curves(summaries[n], ROOT / OUT_DIR / f"curves_{j}.png", conditions=conds,
                               title=f"exp12 {n} {DATASET} train={len(train_items[0])} eval={len(eval_items[0])}")
                for j, n in enumerate(names)]
        figs.append(plots.plot_training_curves({f"M={m}": r.history for m, r in trained.items()},
                                               ROOT / OUT_DIR / "training_curves.png", title=f"exp12 wire {','.join(names)}"))
        show.figures(figs)
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        out = write_results_json(
            ROOT / OUT_DIR, config=CONFIG,
            summary={"by_model": summaries, "joint": joint, "verdicts": verdicts, "criteria": WE.CRITERIA, "criteria_source": WE.CRITERIA_SOURCE,
                     "replay_vs_text_max_nll_gap": gap, "pipeline_check_only": bool(SMOKE or DATASET == "synthetic")},
            provenance=provenance(seeds={"seed": SEED}),
            extra={"data": data_info, "truncations": cuts, "models": names, "arch": {n: lm.arch.to_dict() for n, lm in zip(names, lms)},
                   "figures": [p.name for p in figs], "checkpoints": [f"wire_m{m}.ckpt.pt" for m in m_list],
                   "training": {str(m): {"history": r.history, "meta": r.meta} for m, r in trained.items()}})
        write_per_item_csv(ROOT / OUT_DIR, [{k: v for k, v in r.items()} for r in WE.rows(store)])
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
