"""Build experiments/overview/overview.ipynb: every run under results/ side by side (no model)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("overview")

PARAMS = [
    Param("EXPERIMENT", str, "", "show only this experiment (exp01 ... exp12); empty: all"),
    Param("MODEL", str, "", "show only runs whose model contains this text; empty: all"),
    Param("DATA", str, "", "show only runs whose data set contains this text; empty: all"),
    Param("KIND", str, "all", "all, real, or pipeline check (synthetic data or random-init models)"),
    Param("RUN", str, "exp01", "the run folder under results/ whose figures and top comparisons are shown"),
    Param("TOP_K", int, 10, "comparisons shown for that run (largest |d| first)"),
    Param("RESULTS_DIR", str, "results", "where the runs are, relative to the repo root"),
    Param("OUT_DIR", str, "results/overview", "where the cross-model figures go, relative to the repo root"),
]

CELLS = [
    stamp("builders/build_overview.py", "Overview: every run side by side", """
        Reads every `results/**/results.json` (the same rows as `results/INDEX.md`): the index with
        filters, the findings table once `results/FINDINGS.md` exists, one cross-model figure per
        experiment with two or more runs, and for the chosen `RUN` its figures and top comparisons.
        Needs no model; rerun it after new results land. *Pipeline check* runs use synthetic data
        (passages and keywords contain the answer) or random-init models: never findings.
    """),
    parameters(PARAMS),
    setup(PARAMS, {}),
    md("## Index\nFilters: `EXPERIMENT`, `MODEL`, `DATA`, `KIND` (rerun with other values, or `-p` them in papermill)."),
    code("""
        from lib.report import overview

        every = overview.runs(ROOT / RESULTS_DIR)
        rows = overview.select(every, experiment=EXPERIMENT, model=MODEL, data=DATA, kind=KIND)
        print(f"{len(rows)} of {len(every)} runs; by kind:", {k: sum(r["kind"] == k for r in rows) for k in overview.KINDS[1:]})
        show.table(overview.index_rows(rows), columns=overview.INDEX_COLUMNS)
    """),
    md("## Findings"),
    code("""
        from IPython.display import Markdown, display

        text = overview.findings(ROOT / RESULTS_DIR)
        display(Markdown(text) if text else Markdown(f"*No findings table yet (`{RESULTS_DIR}/{overview.FINDINGS}`).*"))
    """),
    md("## Across models and data sets\nd of each primary comparison, one row per run, for every experiment with two or more runs among the selected ones."),
    code("""
        show.figures(overview.cross_model_figures(rows, ROOT / OUT_DIR))
    """),
    md("## One run"),
    code("""
        chosen = overview.find(every, RUN)
        print(f"{chosen['run']}: {chosen['model']} on {chosen['dataset']} (N={chosen['n']}, {chosen['kind']}, commit {chosen['commit']})")
        show.table(overview.top_comparisons(chosen, TOP_K), title=f"top {TOP_K} comparisons by |d|")
        show.figures(overview.run_figures(chosen))
    """),
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
