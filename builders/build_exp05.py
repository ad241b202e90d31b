"""Build experiments/exp05/exp05_prefix_length_content.ipynb: prefix length x content, decomposed."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # builders/; common puts the repo root on the path

import common  # noqa: E402
from lib.lab.notebook import Param, code, md, parameters, setup, stamp  # noqa: E402

OUT = common.notebook_path("exp05_prefix_length_content")
CONTENTS = ("random,repeat,oracle,scrambled,extractor,scrambled_extractor,first_sentence,scrambled_first_sentence,"
            "kw5,kw10,kw20,kw5_other,kw10_other,kw20_other")

PARAMS = [
    *common.model_params("google/gemma-3-12b-it", "bfloat16", "ms_marco", 400),
    Param("LENGTHS", str, "8,16,32,64,128,256", "comma-separated prefix lengths L in tokens (every content tiled or cut to L)"),
    Param("CONTENTS", str, CONTENTS, "comma-separated contents (lib/studies/prefixlen.py CONTENTS); must include random"),
    Param("HARDNESS_LENGTH", int, 0, "L whose conditions get the hardness heatmap (0: the middle of LENGTHS)"),
    *common.RUNTIME,
    common.DISTRACTORS,
    Param("OUT_DIR", str, "results/exp05", "results folder, relative to the repo root"),
    *common.TAIL,
]
SMOKE = {**common.SMOKE, "N_SAMPLES": 12, "LENGTHS": "8,32"}

CELLS = [
    stamp("builders/build_exp05.py", "Exp 05: prefix length and content", """
        How does a discarded prefix's effect on the document cache depend on its length and content?
        Every content is tiled or cut to exactly L tokens, L in {8, 16, 32, 64, 128, 256}: random
        tokens, a repeated token, the query (ordered and scrambled), the generic extractor framing
        (ordered and scrambled), the document's first sentence (ordered and scrambled) and its top-k
        TF-IDF keywords (k = 5, 10, 20: at a fixed L, fewer keywords means each repeats more). Each
        ordered content's effect vs bare is split into structure (random tokens of the same length),
        vocabulary (scrambled minus random) and meaning (ordered minus scrambled); the three add up to
        the total. Positive d / reduction means a LOWER answer NLL than bare.
    """),
    parameters(PARAMS),
    setup(PARAMS, SMOKE),
    *common.MODEL_AND_DATA,
    md("## Conditions\n`<content>_L<L>`; each has exactly L text tokens (+ the separator)."),
    code("""
        from lib.studies import conditions, prefixlen

        lengths, contents = prefixlen.parse_lengths(LENGTHS), prefixlen.parse_contents(CONTENTS)
        conds = prefixlen.grid(contents, lengths)
        names = [c.name for c in conds]
        items = conditions.build_items(lm, samples, conds, seed=SEED, n_distractors=N_DISTRACTORS)
        sep = len(lm.tokenizer("\\n", add_special_tokens=False)["input_ids"])
        by_cond = {c.name: c for c in conds}
        ok = all(len(it.prefix_ids) == by_cond[it.condition].length + sep for it in items if it.condition != "bare")
        print(f"{len(conds)} conditions x {len(samples)} samples; every prefix has exactly L tokens (+ separator): {ok}")
        assert ok
        print("documents cut to fit the longest prefix:", sum(it.row["doc_truncated"] for it in items if it.condition == "bare"))
    """),
    code("""
        first = samples[0].id
        for it in items:
            if it.sample_id == first and it.condition.endswith(f"_L{lengths[0]}"):
                print(f"{it.condition:32s} {lm.tokenizer.decode(list(it.prefix_ids))!r}")
    """),
    *common.RUN,
    md("## Effects against bare, length curves, decomposition, keyword density"),
    common.summary_cell("""
        curv = prefixlen.curves(summary["comparisons"], contents, lengths)
        decomp = prefixlen.decompose(nll, contents, lengths, n_boot=N_BOOT, seed=SEED, atol=atol)
        dens = prefixlen.density(nll, contents, lengths, n_boot=N_BOOT, seed=SEED, atol=atol, primary_test=PRIMARY_TEST)
        leaked = prefixlen.keyword_answer_leaks(samples, contents)
        leak = prefixlen.leak_split(nll, ids, leaked, lengths, n_boot=N_BOOT, seed=SEED, atol=atol)
        summary.update(length_curves=curv, decomposition=decomp, keyword_density=dens,
                       keyword_answer_leak={"leaked_ids": leaked, "split": leak})
        print(f"mean delta vs bare, nats (% of bare NLL {summary['mean_nll']['bare']:.4f}) | d, by L: {lengths}")
        for c, pts in curv.items():
            print(f"{c:26s}" + "".join(f"  {p['mean_delta']:+.4f} ({p['pct_of_ref']:+.2f}%) | {p['d']:+.3f}" for p in pts))
        print()
        for r in decomp:
            parts = {k: r[k]["mean"] for k in ("structure", "vocabulary", "meaning", "content_effect") if k in r}
            print(f"{r['content']:16s} L={r['length']:<4d} total {r['total']['mean']:+.4f} = "
                  + " + ".join(f"{k} {v:+.4f}" for k, v in parts.items()))
        show.table(summary["comparisons"], title="every condition vs bare")
        show.discrimination(summary)
        show.table(dens, title="keyword density (kw20 vs kw5 at each L)")
        print("keyword gain where the keywords hold an answer word (leaked) and where not (clean), nats vs bare:")
        for r in leak:
            part = {k: f"{r[k]['mean']:+.4f} [{r[k]['mean_ci'][0]:+.4f}, {r[k]['mean_ci'][1]:+.4f}]" if r[k] else "n<2"
                    for k in ("leaked", "clean")}
            print(f"  {r['cond']:12s} leaked (n={r['n_leaked']}) {part['leaked']}  clean (n={r['n_clean']}) {part['clean']}")
    """),
    md("## Figures"),
    code("""
        from lib.report import plots

        title = f"exp05 {MODEL} {DATASET} N={len(ids)}"
        hl = HARDNESS_LENGTH or lengths[len(lengths) // 2]
        assert hl in lengths, f"HARDNESS_LENGTH={hl} is not one of LENGTHS {lengths}"
        figs = [plots.plot_length_curves(curv, ROOT / OUT_DIR / "length_curves.png", title=title,
                                         dashed=set(prefixlen.SCRAMBLED_OF.values())),
                plots.plot_decomposition(decomp, ROOT / OUT_DIR / "decomposition.png", title=title),
                plots.plot_mean_nll({n: nll[n] for n in names if n == "bare" or n.endswith(f"_L{hl}")},
                                    ROOT / OUT_DIR / f"mean_nll_L{hl}.png", title=title)]
        hard = [h for h in summary["hardness"] if h["cond"].endswith(f"_L{hl}")]
        if hard:
            figs.append(plots.plot_hardness_heatmap(hard, ROOT / OUT_DIR / f"hardness_heatmap_L{hl}.png", title=f"{title}, L={hl}"))
        show.figures(figs)
    """),
    *common.SAVE,
]

if __name__ == "__main__":
    common.write(CELLS, OUT)
