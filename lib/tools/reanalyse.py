"""Re-analyse a committed run from its per_item.csv under the current statistics, without a model.

    python -m lib.tools.reanalyse results/exp02_gemma3_270m [more run folders]

The scores (per-item NLLs) do not change; what the statistics layer derives from them does
(absolute effects with CIs beside d, both Holm tests, the declared primary test, the noise rule,
the hardness null, sample-level p for the semantic gradient, best cutoffs). This rewrites the
summary keys that the experiment's notebook computes from the rows, keeps every other key
(training histories, nearest tokens, ...) as it was, and records ``reanalysis`` in results.json:
date, the code state (``lib.lab.codestate``), the source file and the keys recomputed.

``--keyword-leaks`` (exp05): also split each keyword content's effect by whether the keywords hold
a word of the answer (``prefixlen.keyword_answer_leaks`` / ``leak_split``); a run whose notebook
predates that split gets it by reloading its samples from the recorded data knobs (the data cache
must be there; the reloaded ids must equal the run's).

Supported: exp01 (``priming.analyse``), exp02/exp03/exp05/exp06/exp07 (``analysis.summarize`` plus
the experiment's own derived tables), exp09 (``encdec.analyse``), exp11 (``prefixlm.analyse`` and ``prefixlm.discrimination``). Other
experiments raise: rerun their notebook instead.
"""
from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from lib.report import analysis, stats
from lib.studies import conditions
from lib.lab import codestate
from lib.kv.noise import noise_atol
from lib.report.tables import nll_table
from lib.data.jsonio import write_json_atomic
from lib.lab.records import RESULTS_FILE, read_per_item_csv

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = ("exp01", "exp02", "exp03", "exp05", "exp06", "exp07", "exp09", "exp11")


def _experiment(folder: Path) -> str:
    m = re.search(r"exp\d{2}", str(folder.resolve().relative_to(ROOT) if folder.resolve().is_relative_to(ROOT) else folder))
    if not m:
        raise ValueError(f"{folder}: cannot tell the experiment from the folder name (expected expNN in it)")
    return m.group(0)


def _order(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["sample_id"] for r in rows))


def _run_samples(cfg: dict, ids: list[str]):
    """The run's samples, reloaded with its recorded data knobs (as the notebooks' data cell loads them)."""
    from lib.data import load_samples

    data = load_samples(cfg["DATASET"], int(cfg["N_SAMPLES"]), split=cfg.get("SPLIT") or None,
                        source=cfg.get("DATA_SOURCE") or None, seed=int(cfg.get("SEED", 42)),
                        min_passage_words=cfg.get("MIN_PASSAGE_WORDS") or None,
                        max_passage_words=cfg.get("MAX_PASSAGE_WORDS") or None)
    got = [s.id for s in data.samples]
    if got != ids:
        raise ValueError(f"reloaded samples differ from the run's per_item.csv ({len(got)} vs {len(ids)} ids, "
                         f"first differing at {next((i for i, (a, b) in enumerate(zip(got, ids)) if a != b), min(len(got), len(ids)))})")
    return data.samples


def reanalyse(folder, keyword_leaks: bool = False) -> dict:
    """The new results.json content for the run in ``folder`` (not written)."""
    folder = Path(folder)
    exp = _experiment(folder)
    if exp not in SUPPORTED:
        raise ValueError(f"{folder}: re-analysis from per_item.csv supports {SUPPORTED}, not {exp}; rerun its notebook")
    res = json.loads((folder / RESULTS_FILE).read_text())
    rows = read_per_item_csv(folder / "per_item.csv")
    cfg, old = res.get("config", {}), res.get("summary", {})
    ids = _order(rows)
    names = list(old.get("mean_nll") or dict.fromkeys(r["condition"] for r in rows))
    kw = {"n_boot": int(cfg.get("N_BOOT", 2000)), "seed": int(cfg.get("SEED", 42)),
          "atol": noise_atol(cfg.get("dtype", "float32")), "primary_test": cfg.get("PRIMARY_TEST", "t")}
    if exp in ("exp09", "exp11"):
        nll = nll_table(rows, names, ids)
        new = {"n_samples": len(ids), "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
               "primary_test": kw["primary_test"], "noise_atol": kw["atol"]}
        stat = {k: kw[k] for k in ("n_boot", "seed", "atol", "primary_test")}
        if exp == "exp09":
            from lib.studies import encdec

            enc = [c.strip() for c in cfg["ENC_CONDITIONS"].split(",") if c.strip()]
            new.update(encdec.analyse(nll, rows, enc, **stat))
        else:
            from lib.studies import prefixlm

            conds = [c.strip() for c in cfg["CONDITIONS"].split(",") if c.strip()]
            modes = [m.strip() for m in cfg["MODES"].split(",") if m.strip()]
            new.update(prefixlm.analyse(nll, conds, modes, **stat))
            new.update(prefixlm.discrimination(new, rows, ids, names, **stat))
        recomputed = sorted(new)
        summary = {**old, **new}
    elif exp == "exp01":
        from lib.studies import priming

        conds = priming.select_conditions(names)
        new = priming.analyse(rows, ids, conditions=conds, **kw)
        recomputed = sorted(new)
        summary = {**old, **new}
    else:
        ref = old.get("reference", "bare")
        new = analysis.summarize(rows, ids, names, ref=ref, **kw)
        nll = nll_table(rows, names, ids)
        new.update(_derived(exp, old, nll, names, cfg, kw, new["comparisons"], rows, ids))
        if exp == "exp05" and (keyword_leaks or "keyword_answer_leak" in old):
            from lib.studies import prefixlen

            leak = old.get("keyword_answer_leak")
            contents, lengths = prefixlen.parse_contents(cfg["CONTENTS"]), prefixlen.parse_lengths(cfg["LENGTHS"])
            leaked = leak["leaked_ids"] if leak else prefixlen.keyword_answer_leaks(_run_samples(cfg, ids), contents)
            new["keyword_answer_leak"] = {"leaked_ids": leaked, "split": prefixlen.leak_split(
                nll, ids, leaked, lengths, n_boot=kw["n_boot"], seed=kw["seed"], atol=kw["atol"])}
        recomputed = sorted(new)
        summary = {**old, **new}
    res["summary"] = summary
    state = codestate.code_state()
    res["reanalysis"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "from": "per_item.csv",
                         "commit": state["commit"], "dirty": state["dirty"], "code_sha256": state["code_sha256"],
                         "recomputed": recomputed,
                         "note": "scores unchanged; statistics recomputed under the current lib/report/stats.py rules"}
    return res


def _derived(exp: str, old: dict, nll: dict, names: list[str], cfg: dict, kw: dict, comps: list[dict], rows: list[dict], ids: list[str]) -> dict:
    """The experiment-specific tables its notebook derives from the NLLs and from ``comps`` (the
    comparisons vs the reference that ``analysis.summarize`` just computed, reused, not recomputed)."""
    atol, n_boot, seed, primary = kw["atol"], kw["n_boot"], kw["seed"], kw["primary_test"]
    out = {}
    if exp == "exp03":
        ref = old.get("reference", "bare")
        out["semantic_gradient"] = analysis.semantic_gradient(nll, ref=ref, seed=seed)
        out["structural_fraction"] = analysis.structural_fraction(nll, ref=ref)
        pairs = conditions.llm_vs_generic_pairs(nll)
        if pairs and conditions.GENERIC_SURROGATE in nll:
            out["llm_vs_generic"] = stats.compare_conditions(nll, None, pairs=pairs, n_boot=n_boot, seed=seed, atol=atol,
                                                             primary_test=primary)
        out.update(analysis.word_order(nll, rows, ids, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary))
    elif exp == "exp05":
        from lib.studies import prefixlen

        lengths, contents = prefixlen.parse_lengths(cfg["LENGTHS"]), prefixlen.parse_contents(cfg["CONTENTS"])
        out["length_curves"] = prefixlen.curves(comps, contents, lengths)
        out["decomposition"] = prefixlen.decompose(nll, contents, lengths, n_boot=n_boot, seed=seed, atol=atol)
        out["keyword_density"] = prefixlen.density(nll, contents, lengths, n_boot=n_boot, seed=seed, atol=atol,
                                                   primary_test=primary)
    elif exp == "exp06":
        from lib.studies import contamination

        cutoffs = sorted({int(n.rsplit("_", 1)[1]) for n in names if n.startswith("values_early_")})
        out["first_token"] = contamination.first_token_share(nll, n_boot=n_boot, seed=seed, atol=atol)
        out["first_token_primed"] = contamination.first_token_share(nll, part="primed_first_token", whole="primed",
                                                                    n_boot=n_boot, seed=seed, atol=atol)
        out["cutoff_curve"] = contamination.cutoff_curve(comps, cutoffs) if cutoffs else None
        out["best_cutoff"] = {fam: contamination.best_cutoff(nll, cutoffs, fam, n_boot=n_boot, seed=seed, atol=atol)
                              for fam in ("early", "late")} if cutoffs else {}
    elif exp == "exp07" and old.get("pairwise"):
        pairs = [(r["ref"], r["cond"]) for r in old["pairwise"]]
        out["pairwise"] = stats.compare_conditions(nll, None, pairs=pairs, n_boot=n_boot, seed=seed, atol=atol,
                                                   primary_test=primary)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.tools.reanalyse", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders holding results.json and per_item.csv")
    ap.add_argument("--dry-run", action="store_true", help="compute and print the recomputed keys, write nothing")
    ap.add_argument("--keyword-leaks", action="store_true",
                    help="exp05: split keyword effects by answer words in the keywords (reloads the run's samples)")
    a = ap.parse_args(argv)
    for run in a.runs:
        res = reanalyse(run, keyword_leaks=a.keyword_leaks)
        if not a.dry_run:
            write_json_atomic(Path(run) / RESULTS_FILE, res)
        print(f"{run}: recomputed {', '.join(res['reanalysis']['recomputed'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
