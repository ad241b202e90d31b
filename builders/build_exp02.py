"""Build experiments/exp02/exp02_surrogate_priming.ipynb: static surrogate prefixes vs bare."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp02_surrogate_priming")
CONDITIONS = "bare,oracle,oracle_full,extractor,universal,static_fact,adversarial,adv_instruct"

PARAMS = [
    *common.model_params("google/gemma-3-12b-it", "bfloat16", "ms_marco", 400),
    Param("CONDITIONS", str, CONDITIONS, "comma-separated condition names (lib/studies/conditions.py); the first is the reference"),
    *common.RUNTIME,
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp02", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "N_SAMPLES": 40}

CELLS = [
    stamp("builders/build_exp02.py", "Exp 02: surrogate priming", """
        Does a document cache primed with a surrogate prefix (dropped, document re-positioned) help a
        later query? Conditions: `bare` (reference), `oracle` (the real query, dropped),
        `oracle_full` (the query kept in the cache), and static framings: `extractor`, `universal`,
        `static_fact`, an off-topic `adversarial` text and an anti-instruction `adv_instruct`. Per
        condition: d vs bare with CI, win rate, p (Holm across conditions); per-sample ranks; the
        hardness gradient over quintiles of bare NLL, with its regression-to-the-mean null.
        Positive d means the condition has the LOWER answer NLL. Defaults: Gemma 3 12B-IT, bf16,
        MS MARCO v1.1, N=400, seed 42; `SMOKE=True` runs the bundled SmolLM2 on synthetic QA.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.MODEL_AND_DATA,
    md("## Conditions"),
    common.conditions_cell("""
        items = conditions.build_items(lm, samples, conds, seed=SEED, n_distractors=N_DISTRACTORS)
    """),
    common.SHOW_PREFIXES,
    *common.RUN,
    *common.SUMMARY,
    md("## Figures"),
    code("""
        figs = analysis.figures(summary, nll, ROOT / OUT_DIR, title=f"exp02 {MODEL} {DATASET} N={len(ids)}")
        show.figures(figs)
    """),
    *common.SAVE,
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
