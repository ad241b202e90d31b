"""Build experiments/exp10/exp10_document_length.ipynb: prefix effects against document length, two paths."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp10_document_length")

PARAMS = [
    Param("PATHS", str, "decoder,encdec", "which paths to run: decoder (two-phase cache) and/or encdec (hidden prefix)"),
    Param("DEC_MODEL", str, "google/gemma-3-12b-it", "decoder-only model: hub id, folder, or bundled name"),
    Param("LOAD_IN_4BIT", bool, False, "bitsandbytes nf4 for the decoder-only model (CUDA only)"),
    Param("DTYPE", str, "bfloat16", "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"),
    common.ANCHOR,
    Param("ENCDEC_MODEL", str, "google/t5gemma-2-4b-4b", "encoder-decoder model: hub id or folder (the seed's T5Gemma 2 4B-4B; google/flan-t5-xl, ...), or random-t5-tiny / random-bart-tiny"),
    *[p for p in common.model_params("", "auto", "ms_marco", 200) if p.name not in ("MODEL", "LOAD_IN_4BIT", "DTYPE", "ANCHOR")],
    common.DISTRACTORS,
    Param("LENGTHS", str, "0,256,512,1024,2048,4096", "document lengths in tokens (0: the natural passage); padded per FILLER"),
    Param("FILLER", str, "unrelated", "what pads a document: unrelated (the seed's: other samples' passages) or article (the "
          "sample's own article read on from its paragraph, unrelated passages only when it runs out; SQuAD-layout sets)"),
    Param("LONG_DATASET", str, "neural_bridge", "naturally long documents on the encoder-decoder path (seed Exp 03): neural_bridge (hub), squad_v1.1_long (offline stand-in), or empty to skip"),
    Param("LONG_SOURCE", str, "", "empty: the hub / registry copy; or a local file in the set's schema"),
    Param("LONG_N", int, 500, "samples with naturally long documents"),
    *common.RUNTIME,
    Param("OUT_DIR", str, "results/exp10", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {"DEC_MODEL": "smollm2-135m-instruct", "DTYPE": "auto", "ENCDEC_MODEL": "random-t5-tiny", "DATASET": "synthetic",
         "N_SAMPLES": 8, "LENGTHS": "0,256,600", "LONG_DATASET": "squad_v1.1_long", "LONG_N": 6}

CELLS = [
    stamp("builders/build_exp10.py", "Exp 10: document-length scaling", """
        Do prefix effects survive long documents? Each document is the sample's own passage followed by
        unrelated passages, cut to ~98 (natural), 256, 512, 1024, 2048 and 4096 tokens. For every length:
        `bare`, `oracle` (the query) and `random` (Q random tokens), on the decoder-only path (prefix
        dropped, document re-positioned; sliding-window layers keep every entry and their mask applies the
        window, so documents longer than the window are exact) and on the encoder-decoder path (prefix
        hidden from cross-attention, query in the decoder). Curves: d of oracle and random vs bare, and
        oracle vs random, against the document length. Positive d means a LOWER answer NLL. On the decoder
        path `N_DISTRACTORS` other samples' answers are scored on every cache: d(margin) beside d(nll).
        Then naturally long documents (seed Exp 03: neural-bridge, ~600 words): `bare`, `oracle`, `random`
        and the document-keyword surrogate `kw10`, hidden prefixes, query in the decoder, vs bare. Offline
        stand-in: `squad_v1.1_long` (SQuAD dev questions, each with a >= 600-word block of its article).
        Default encoder-decoder: the seed's T5Gemma 2 4B-4B. `SMOKE=True`: bundled SmolLM2 and a RANDOM-INIT
        tiny T5 (plumbing only; `random_init` in results.json), lengths up to 600, 6 long SQuAD documents.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    md("## Data"),
    common.MODEL_AND_DATA[3],
    code("""
        from lib.studies.encdec import doclen

        lengths = doclen.parse_lengths(LENGTHS)
        paths = [p.strip() for p in PATHS.split(",") if p.strip()]
        assert paths and all(p in ("decoder", "encdec") for p in paths), f"PATHS={PATHS!r}: choose from decoder, encdec"
        ids = [s.id for s in samples]
        assert FILLER in doclen.FILLERS, f"FILLER={FILLER!r}: choose from {', '.join(doclen.FILLERS)}"
        own = None
        if FILLER == "article":
            from lib.data.realdata import article_paragraphs
            own = doclen.article_fillers(samples, article_paragraphs(DATASET, DATA_SOURCE or None))
        summary = {"n_samples": len(ids), "lengths": lengths, "filler": FILLER, "paths": {}, "primary_test": PRIMARY_TEST}
        all_rows, figs = [], []
    """),
    md("## Decoder-only path"),
    code("""
        from lib.report import analysis, plots
        from lib.report.discrimination import discrimination_summary
        from lib.kv.engine import Engine
        from lib.kv.models import load_model
        from lib.kv.noise import noise_atol
        from lib.report.tables import nll_table
        from lib.studies.priming import store_config
        from lib.lab.runs import RunStore

        if "decoder" in paths:
            lm = load_model(DEC_MODEL, dtype=None if DTYPE == "auto" else DTYPE, load_in_4bit=LOAD_IN_4BIT, anchor=ANCHOR or None)
            print(lm.source, lm.arch.sliding_window, lm.arch.max_positions, "| anchor", lm.arch.bos_source, lm.arch.bos_id)
            items = doclen.decoder_items(lm, samples, lengths, seed=SEED, n_distractors=N_DISTRACTORS, article_fillers=own)
            names = [doclen.name(c, L) for L in lengths for c in doclen.CONDS]
            store = RunStore(ROOT / OUT_DIR / "_store_decoder", {**store_config(CONFIG, lm, conditions=()), "path": "decoder"}, fresh=FRESH)
            engine = Engine(lm, mem_budget_gb=MEM_BUDGET_GB, phase_b_batch=BATCH_SIZE)
            rows = [r for r in engine.run(items, store, wave=CHUNK, progress=PROGRESS) if r["sample_id"] in set(ids)]
            nll = nll_table(rows, names, ids)
            actual = doclen.mean_fill(rows, lengths, "n_doc_tokens")
            cv = doclen.curves(nll, lengths, n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)
            summary["paths"]["decoder"] = {"noise_atol": noise_atol(lm.dtype), "model": lm.source, "dtype": str(lm.dtype), "mean_doc_tokens": actual,
                                           "bos": {"id": lm.arch.bos_id, "source": lm.arch.bos_source},
                                           "mean_article_fillers": doclen.mean_fill(rows, lengths, "article_fillers"), "curves": cv,
                                           "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
                                           **discrimination_summary(rows, ids, names, pairs=doclen.curve_pairs(lengths),
                                                                    nll_comparisons=[r for L in lengths for r in cv[L]], n_boot=N_BOOT,
                                                                    seed=SEED, atol=noise_atol(lm.dtype), primary_test=PRIMARY_TEST)}
            figs.append(plots.plot_length_curves(doclen.curve_points(cv, lengths, actual), ROOT / OUT_DIR / "decoder_length_curves.png",
                                                 title=f"decoder-only {DEC_MODEL}", xlabel="document tokens"))
            all_rows += [{**r, "path": "decoder"} for r in rows]
            show.table([{"L": L, "doc_tokens": actual[L], **r} for L in lengths for r in cv[L]], keys=("L", "doc_tokens"))
            show.discrimination(summary["paths"]["decoder"])
            show.figures(figs[-1:])
            del lm, engine
    """),
    md("## Encoder-decoder path"),
    code("""
        from lib.studies import encdec

        if "encdec" in paths:
            em = encdec.load(ENCDEC_MODEL, dtype=DTYPE)
            print(em.name, em.family, "RANDOM-INIT (plumbing only)" if em.random_init else "pretrained")
            items = doclen.encdec_items(em, samples, lengths, seed=SEED, article_fillers=own)
            names = [doclen.name(c, L) for L in lengths for c in doclen.CONDS]
            store = RunStore(ROOT / OUT_DIR / "_store_encdec", {**encdec.store_config(CONFIG, em), "path": "encdec"}, fresh=FRESH)
            rows = [r for r in encdec.run(em, items, store, wave=CHUNK, batch_size=BATCH_SIZE, attn_probe=False, progress=PROGRESS)
                    if r["sample_id"] in set(ids)]
            nll = nll_table(rows, names, ids)
            actual = doclen.mean_fill(rows, lengths, "n_doc_tokens")
            cv = doclen.curves(nll, lengths, n_boot=N_BOOT, seed=SEED, atol=noise_atol(em.model.dtype), primary_test=PRIMARY_TEST)
            summary["paths"]["encdec"] = {"model": em.name, "random_init": em.random_init, "dtype": str(em.model.dtype), "mean_doc_tokens": actual,
                                          "mean_article_fillers": doclen.mean_fill(rows, lengths, "article_fillers"), "curves": cv,
                                          "mean_nll": {n: float(v.mean()) for n, v in nll.items()}}
            figs.append(plots.plot_length_curves(doclen.curve_points(cv, lengths, actual), ROOT / OUT_DIR / "encdec_length_curves.png",
                                                 title=f"encoder-decoder {ENCDEC_MODEL}", xlabel="document tokens"))
            all_rows += [{**r, "path": "encdec"} for r in rows]
            show.table([{"L": L, "doc_tokens": actual[L], **r} for L in lengths for r in cv[L]], keys=("L", "doc_tokens"))
            show.figures(figs[-1:])
    """),
    md("## Naturally long documents (encoder-decoder)"),
    code("""
        if LONG_DATASET:
            if "em" not in globals():
                em = encdec.load(ENCDEC_MODEL, dtype=DTYPE)
            long_data = load_samples(LONG_DATASET, LONG_N, source=LONG_SOURCE or None, seed=SEED)
            long_samples, long_ids = long_data.samples, [s.id for s in long_data.samples]
            items = doclen.long_items(em, long_samples, seed=SEED)
            names = [f"{c}__q" for c in doclen.LONG_CONDS]
            store = RunStore(ROOT / OUT_DIR / "_store_long", {**encdec.store_config(CONFIG, em), "path": "long"}, fresh=FRESH)
            rows = [r for r in encdec.run(em, items, store, wave=CHUNK, batch_size=BATCH_SIZE, attn_probe=False, progress=PROGRESS)
                    if r["sample_id"] in set(long_ids)]
            nll = nll_table(rows, names, long_ids)
            words = [len(s.passage.split()) for s in long_samples]
            summary["long_documents"] = {"data": long_data.info(), "model": em.name, "random_init": em.random_init,
                                         "mean_passage_words": sum(words) / len(words),
                                         "mean_doc_tokens": sum(r["n_doc_tokens"] for r in rows if r["condition"] == "bare__q") / len(long_ids),
                                         "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
                                         **doclen.long_summary(nll, n_boot=N_BOOT, seed=SEED, atol=noise_atol(em.model.dtype), primary_test=PRIMARY_TEST)}
            all_rows += [{**r, "path": "long"} for r in rows]
            ld = summary["long_documents"]
            print(f"{len(long_ids)} {LONG_DATASET} documents, mean {ld['mean_passage_words']:.0f} words / {ld['mean_doc_tokens']:.0f} tokens")
            show.table(ld["vs_bare"], title="naturally long documents: each condition vs bare__q")
            print("structural fraction (random / oracle):", {k: round(v, 3) for k, v in ld["structural_fraction"].items() if isinstance(v, float)})
    """),
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        dtype = ", ".join(f"{p} {v['dtype']}" for p, v in summary["paths"].items())  # the models are freed after each path
        out = write_results_json(ROOT / OUT_DIR, config={**CONFIG, "dtype": dtype}, summary=summary, provenance=provenance(seeds={"seed": SEED}),
                                 extra={"data": data_info, "figures": [p.name for p in figs]})
        write_per_item_csv(ROOT / OUT_DIR, all_rows)
        print(out)
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
