"""What the builders share: the repo root on ``sys.path``, notebook paths and writing, and the knobs
and cells of the experiments that load a model and a data set (exp01 onward)."""
import sys
from pathlib import Path
from textwrap import dedent

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nbformat import NotebookNode  # noqa: E402

from lib.lab.notebook import Param, code, md, write_notebook  # noqa: E402


def notebook_path(name: str) -> Path:
    """``experiments/<expNN>/<name>.ipynb``: a notebook's name starts with its folder (``exp02_...``, ``overview``)."""
    return ROOT / "experiments" / name.split("_")[0] / f"{name}.ipynb"


def write(cells: list, out: Path) -> None:
    """Write the notebook and print its path relative to the repo root (each builder's ``__main__``)."""
    print(write_notebook(cells, out).relative_to(ROOT))


RUNTIME = [
    Param("SEED", int, 42, "seed for random/other-sample choices, synthetic data and bootstrap"),
    Param("BATCH_SIZE", int, 32, "Phase B items per forward (at most)"),
    Param("CHUNK", int, 8, "samples per engine wave and store append (resume granularity)"),
    Param("MEM_BUDGET_GB", float, 2.0, "memory the engine may use for one batch (sets Phase A/B batch sizes)"),
    Param("N_BOOT", int, 2000, "bootstrap resamples for the CI of d"),
    Param("PRIMARY_TEST", str, "t", "paired test that decides claims (t or wilcoxon); tables show both"),
]
# contrastive margin (``lib.kv.margin``): the experiments scored through the engine with the query prompt
DISTRACTORS = Param("N_DISTRACTORS", int, 4, "other samples' answers (same kind, other articles) scored on the same "
                    "cache: contrastive margin, rank, top-1 (0: off)")
TAIL = [
    Param("FRESH", bool, False, "move an existing store aside and start over"),
    Param("PROGRESS", bool, True, "show a progress bar"),
    Param("SMOKE", bool, False, "small offline run: bundled SmolLM2 on synthetic QA (a knob given with -p keeps its value)"),
]


ANCHOR = Param("ANCHOR", str, "", "position-0 anchor token instead of the model's BOS policy (one token, e.g. <|im_start|>, "
               "which Qwen2.5 sinks on where it ignores its policy anchor <|endoftext|>); empty: the policy")


def model_params(model: str, dtype: str, dataset: str, n: int) -> list[Param]:
    return [
        Param("MODEL", str, model, "hub id, local folder, or bundled name (smollm2-135m-instruct, gemma-3-270m)"),
        Param("LOAD_IN_4BIT", bool, False, "bitsandbytes nf4 (CUDA only)"),
        Param("DTYPE", str, dtype, "auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16"),
        ANCHOR,
        Param("DATASET", str, dataset, "hub: ms_marco, ms_marco_seed, squad_v2, triviaqa, hotpotqa, neural_bridge; offline registry: squad_v1.1, squad_shifts_nyt, coqa, drop, ...; synthetic (pipeline check)"),
        Param("DATA_SOURCE", str, "", "empty: the hub copy (hub sets) or the verified registry copy; or a local file in the set's schema"),
        Param("SPLIT", str, "", "empty: the loader's default split"),
        Param("N_SAMPLES", int, n, "samples to score (first N eligible rows)"),
        Param("MIN_PASSAGE_WORDS", int, 20, "skip passages shorter than this (0: no limit)"),
        Param("MAX_PASSAGE_WORDS", int, 150, "skip passages longer than this (0: no limit)"),
    ]


SMOKE = {"MODEL": "smollm2-135m-instruct", "DTYPE": "auto", "DATASET": "synthetic"}

LOAD_MODEL = code("""
    from lib.kv.models import load_model

    lm = load_model(MODEL, dtype=None if DTYPE == "auto" else DTYPE, load_in_4bit=LOAD_IN_4BIT, anchor=ANCHOR or None)
    print(lm.source, lm.device, lm.dtype)
    print(lm.arch)
""")


def model_and_data(detail: bool = False) -> list:
    """Model and data cells: ``load_model`` and ``load_samples`` with the ``model_params`` knobs (and SEED).
    ``detail`` (exp01) also prints the data source and the first sample."""
    source, first = (" ({data.source})", "print(samples[0])") if detail else ("", "")
    load_data = code(dedent("""
        from lib.data import load_samples

        data = load_samples(DATASET, N_SAMPLES, split=SPLIT or None, source=DATA_SOURCE or None, seed=SEED,
                            min_passage_words=MIN_PASSAGE_WORDS or None, max_passage_words=MAX_PASSAGE_WORDS or None)
        samples = data.samples
        data_info = data.info()
        print(f"{len(samples)} samples from {data.name}/{data.split}%s; rows skipped: {data.skip_counts()}")
    """) % source + first)
    return [md("## Model"), LOAD_MODEL, md("## Data"), load_data]


MODEL_AND_DATA = model_and_data()

def conditions_cell(rest: str, also_import: str = "") -> NotebookNode:
    """A code cell that parses the CONDITIONS knob into ``conds`` and ``names`` (the first is the
    reference), then runs ``rest``; ``also_import``: import lines after ``conditions``'."""
    head = "from lib.studies import conditions\n" + (also_import + "\n" if also_import else "") + "\n"
    parse = ('conds = conditions.get([c.strip() for c in CONDITIONS.split(",") if c.strip()])\n'
             "names = [c.name for c in conds]\n")
    return code(head + parse + dedent(rest).strip("\n"))


def run_cell(text: str) -> NotebookNode:
    """A code cell: ``text`` scores into a store and leaves ``rows`` and ``ids``; then only the rows of
    ``ids`` are kept (the store may hold more samples) and counted."""
    return code(dedent(text).strip("\n") + '\nrows = [r for r in rows if r["sample_id"] in set(ids)]\n'
                'print(f"{len(rows)} rows for {len(ids)} samples")')


def summary_cell(rest: str, report: str = "analysis") -> NotebookNode:
    """A code cell that tables the NLLs (``nll``) and summarizes every condition against ``bare`` at the
    model's noise tolerance (``atol``, ``summary``), then runs ``rest``; ``report``: the names imported from
    ``lib.report``."""
    head = (f"from lib.report import {report}\nfrom lib.report.tables import nll_table\n\nnll = nll_table(rows, names, ids)\n"
            "from lib.kv.noise import noise_atol\n\natol = noise_atol(lm.dtype)\n"
            'summary = analysis.summarize(rows, ids, names, ref="bare", n_boot=N_BOOT, seed=SEED, atol=atol, '
            "primary_test=PRIMARY_TEST)\n")
    return code(head + dedent(rest).strip("\n"))


SHOW_PREFIXES = code("""
    for c in conds:
        example = next(it for it in items if it.condition == c.name)
        print(f"{c.name:20s} {len(example.prefix_ids):3d} prefix tokens  {lm.tokenizer.decode(list(example.prefix_ids))[:70]!r}")
""")

RUN = [
    md("## Run\nResumable: rerunning with the same parameters scores only what is missing; different parameters are refused."),
    code("""
        from lib.kv.engine import Engine
        from lib.lab.runs import RunStore

        store = RunStore(ROOT / OUT_DIR / "_store", conditions.store_config(CONFIG, lm, conds), fresh=FRESH)
        print(f"{len(store)} rows already stored")
        engine = Engine(lm, mem_budget_gb=MEM_BUDGET_GB, phase_b_batch=BATCH_SIZE)
        rows = engine.run(items, store, wave=CHUNK, progress=PROGRESS)
        ids = [s.id for s in samples]
        wanted = set(ids)
        rows = [r for r in rows if r["sample_id"] in wanted]
        print(f"{len(rows)} rows for {len(ids)} samples")
    """),
]

SUMMARY = [
    md("## Effects against the reference"),
    code("""
        from lib.report import analysis
        from lib.report.tables import nll_table

        nll = nll_table(rows, names, ids)
        from lib.kv.noise import noise_atol

        summary = analysis.summarize(rows, ids, names, ref=names[0], n_boot=N_BOOT, seed=SEED, atol=noise_atol(lm.dtype),
                                     primary_test=PRIMARY_TEST)
        print(f"reference {names[0]} mean NLL {summary['mean_nll'][names[0]]:.4f}; noise tolerance {summary['noise_atol']:g} nats")
        show.table(summary["comparisons"], title=f"each condition vs {names[0]} (positive: the condition has the lower NLL)")
        print("mean rank (1 = lowest NLL):", {k: round(v, 2) for k, v in summary["ranks"]["mean_rank"].items()})
        print("share best:", {k: round(v, 3) for k, v in summary["ranks"]["share_best"].items()})
        show.discrimination(summary)
    """),
    md("## Hardness\nQuintiles of the reference NLL; `excess` is the mean delta minus what a uniform effect of the overall mean size plus regression to the mean gives."),
    code("""
        show.table(summary["hardness"], keys=("bin", "cond"), columns=["d", "mean_delta", "rtm_null_mean_delta", "excess_delta"])
    """),
]

SAVE = [
    md("## Save"),
    code("""
        from lib.lab.records import provenance, write_per_item_csv, write_results_json

        out = write_results_json(
            ROOT / OUT_DIR, config=store.config, summary=summary, provenance=provenance(seeds={"seed": SEED}),
            extra={"data": data_info,
                   "arch": lm.arch.to_dict(), "engine": engine.stats.__dict__, "figures": [p.name for p in figs]})
        write_per_item_csv(ROOT / OUT_DIR, rows)
        print(out)
    """),
]
