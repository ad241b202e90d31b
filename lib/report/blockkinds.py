"""RUN-BLOCK bodies for the runs whose results are not paired NLL comparisons: exp08 (reachability),
exp12 (latent prefixes) and the engine benchmark (``results/bench/*.json``).

``lib.report.logblocks.render`` picks one of these by the file's shape; each reads only the run's
own files (results.json, the per-part ``metrics.json`` of exp08, the ``per_item.csv`` that exp12's
results.json names) so every number in the block is a number in those files or a statistic of them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from lib.report import blockfmt, stats


_f, _commit = blockfmt.num, blockfmt.commit


def kind(r: dict) -> str | None:
    """"reachability", "latent", "sinks", "bench..." or None (an ordinary comparisons run)."""
    s = r.get("summary") or {}
    if ("interpretation" in r or "interpretation" in s) and ("headline" in r or "headline" in s):  # exp08 (old, new layout)
        return "reachability"
    if "by_condition" in s or ("verdicts" in s and "by_model" in s):  # exp12
        return "latent"
    if r.get("design") == "exp07train":
        return "bench_train"
    if r.get("design") == "sinks":
        return "sinks"
    if r.get("design") in ("gen", "exp08", "exp12train"):
        return "bench_" + r["design"]
    if r.get("design") in ("exp11", "exp07eval", "exp06"):
        return "bench_phase_a"
    if "design" in r and "speedup" in r:
        return "bench"
    if "relative_mse_at_step" in r:
        return "probe"
    return None


# exp08 ---------------------------------------------------------------------------------------------

PART_NAMES = {"1": "1 real", "2a": "2a matched Gaussian", "2b": "2b raw Gaussian", "3": "3 interpolation",
              "4": "4 dimension replacement"}


def _prose_source(text: str, data: dict) -> str:
    """``text`` with its recorded source (``load_texts_recorded``'s ``data``): package, file and texts sha256."""
    src = data.get("provenance") or {}
    if src:
        bits = [src.get("package") or src.get("local") or src.get("hub") or src.get("synthetic") or "?"]
        bits += [f"file sha256 {src['sha256'][:12]}"] if src.get("sha256") else []
        bits += [f"{data.get('n_texts', '?')} texts sha256 {data['content_sha256'][:12]}"] if data.get("content_sha256") else []
        return f"{text} ({', '.join(bits)})"
    return text if text == "synthetic" else f"{text} (source not recorded)"


def reachability(run: str, folder: Path, r: dict) -> list[str]:
    cfg, prov = r.get("config", {}), r.get("provenance", {})
    s = r.get("summary", r)
    parts = {}
    for p in sorted(folder.glob("part*/metrics.json")):
        m = json.loads(p.read_text())
        parts[str(m["part"])] = m["summary"]
    if not parts:
        raise FileNotFoundError(f"{folder}: no part*/metrics.json (exp08 writes one per part)")
    text = cfg.get("TEXT", "?")
    kind_ = "pipeline check (synthetic text)" if text == "synthetic" else "real text"
    text = _prose_source(text, r.get("data") or {})
    ext = r.get("extension") or s.get("extension") or {}
    out = [f"`{run}/results.json` and `part*/metrics.json`; model {cfg.get('MODEL', '?')} ({cfg.get('DTYPE', '?')}); "
           f"text {text}; {kind_}; residual {cfg.get('RESIDUAL', '?')}; lr {cfg.get('LR', '?')}; "
           f"steps run {r.get('steps_run', ext.get('steps_run', '?'))} (STEPS {cfg.get('STEPS', '?')}, MAX_STEPS "
           f"{cfg.get('MAX_STEPS', '?')}); commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}.", ""]
    if ext:
        out += [f"Extension rule: {ext.get('rule', '?')}. Measured median relative drop {_f(ext.get('median_relative_drop'), '.3f')}, "
                f"{_f(100 * ext['share_falling'] if 'share_falling' in ext else None, '.0f')}% of targets still falling "
                f"-> {ext.get('steps_run', '?')} steps.", ""]
    out += ["| part | targets | restarts | steps | median initial MSE | median final MSE | median relative MSE (q25-q75) | "
            "reached | mean cosine |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(parts, key=lambda k: list(PART_NAMES).index(k) if k in PART_NAMES else 99):
        p = parts[key]
        rel, cos = p["relative_mse"], p.get("cosine_by_position", {}).get("mean")
        reached = round(p["share_reached"] * p["n_targets"])
        out.append(f"| {PART_NAMES.get(key, key)} | {p['n_targets']} | {p['restarts']} | {p['steps']} | "
                   f"{_f(p['initial_mse']['median'], '.3f')} | {_f(p['final_mse']['median'], '.3f')} | "
                   f"{_f(rel['median'], '.3f')} ({_f(rel['q25'], '.3f')}-{_f(rel['q75'], '.3f')}) | {reached}/{p['n_targets']} | "
                   f"{_f(float(np.mean(cos)) if cos else None, '.3f')} |")
    by_label = r.get("by_label") or s.get("by_label") or {}
    for key, what in (("3", "alpha"), ("4", "f")):
        if by_label.get(key):
            out += ["", f"Part {key}, median relative MSE by {what} (targets per {what}): " + ", ".join(
                f"{k}: {_f(v['median_relative_mse'], '.3f')} ({v['n']})" for k, v in by_label[key].items()) + "."]
    table = r.get("interpretation") or s.get("interpretation") or []
    if table:
        out += ["", "The design's interpretation table, each row tested on the medians above:", "",
                "| observation | measured | holds |", "|---|---|---|"]
        out += [f"| {t['observation']} | {t['measured']} | {'yes' if t['holds'] else 'no'} |" for t in table]
    return out


def probe(run: str, r: dict) -> list[str]:
    """exp08's long part-1 probe (``lib.studies.reachability.probe part1-long``): relative MSE by step; with
    restarts (``best_relative_mse_at_step``), the best restart's per target and the targets reached at each step."""
    prov = r.get("provenance", {})
    best = r.get("best_relative_mse_at_step")
    at = best if best is not None else r["relative_mse_at_step"]
    n = len(next(iter(at.values())))
    reach = (r.get("summary") or {}).get("threshold", {}).get("reach_frac")
    head = (f"`{run}`: {r.get('what', '?')}; {_f(float(r['seconds']) if 'seconds' in r else None, '.0f')} s; "
            f"commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}.")
    rows = sorted(at.items(), key=lambda kv: int(kv[0]))
    cols = " | ".join(f"target {i}" for i in range(n))
    if best is None:
        out = [head, "", f"| step | {cols} |", "|---|" + "---|" * n]
        out += [f"| {step} | " + " | ".join(_f(v, '.3f') for v in vals) + " |" for step, vals in rows]
    else:
        restarts = (r.get("summary") or {}).get("restarts", "?")
        reached = r.get("reached_at_step", {})
        lr = (prov.get("args") or {}).get("lr")
        out = [head, "", f"Best of {restarts} restarts per target{f', Adam lr {lr:g}' if lr is not None else ''}: MSE at "
                         f"the step / the target's initial MSE (mean over restarts); reached: relative MSE <= {reach}.", "",
               f"| step | {cols} | reached |", "|---|" + "---|" * (n + 1)]
        out += [f"| {step} | " + " | ".join(_f(v, '.3f') for v in vals) + f" | {reached.get(step, '?')}/{n} |"
                for step, vals in rows]
        if r.get("data"):
            out += ["", f"Data: {_prose_source(r['data'].get('name', '?'), r['data'])}."]
    if reach is not None:
        reached_n = sum(t["reached"] for t in r["summary"].get("targets", []))
        out += ["", f"Reached (relative MSE <= {reach}) by the last step: {reached_n} of {n}."]
    return out


# exp12 ---------------------------------------------------------------------------------------------

LATENT_COLUMNS = (("em", "EM", ".3f"), ("f1", "F1", ".3f"), ("nll_per_token", "NLL/token", ".3f"),
                  ("first_tok_at1", "FirstTok@1", ".3f"), ("first_tok_at5", "FirstTok@5", ".3f"),
                  ("distinct_first_tokens", "distinct first tokens", "d"), ("compression_tokens", "compression (tokens)", ".1f"),
                  ("compression_bytes", "compression (bytes)", ".3f"))


def per_token_nll(per_item: Path, model: str | None = None) -> dict[int, dict[str, dict[str, float]]]:
    """{M: {condition: {sample_id: nll_sum / n_tokens}}} from an exp12 per_item.csv (M 0 holds text and replay);
    ``model``: only that model's rows (LatentWire runs hold several; joint rows carry no NLL and are skipped)."""
    out: dict = {}
    with open(per_item, newline="") as fh:
        for row in csv.DictReader(fh):
            if (model is not None and row.get("model") != model) or row["condition"] == "latent_joint":
                continue
            out.setdefault(int(row["m"]), {}).setdefault(row["condition"], {})[row["sample_id"]] = (
                float(row["nll_sum"]) / int(row["n_tokens"]))
    return out


def latent_comparisons(by_m: dict, *, n_boot: int = 2000, atol: float | None = None) -> dict[int, list[dict]]:
    """Per M, the paired comparisons of per-token answer NLL that say what the latent carries: latent vs
    latent_other (sample-specific content), vs latent_zero (any prefix) and vs budget (the compression
    claim), Holm within each M. Positive mean delta = the latent has the lower NLL."""
    out = {}
    for m, conds in sorted(by_m.items()):
        if m == 0 or "latent" not in conds:
            continue
        ids = sorted(conds["latent"])
        nll = {"latent": [conds["latent"][i] for i in ids]}
        refs = [c for c in ("latent_other", "latent_zero", "budget") if c in conds]
        for c in refs:
            missing = set(ids) - set(conds[c])
            if missing:
                raise ValueError(f"M={m}: condition {c!r} lacks samples {sorted(missing)[:3]} that 'latent' has")
            nll[c] = [conds[c][i] for i in ids]
        out[m] = stats.compare_conditions(nll, None, pairs=[(c, "latent") for c in refs], n_boot=n_boot, atol=atol)
    return out


def latent(run: str, folder: Path, r: dict) -> list[str]:
    """exp12: one table (and comparisons) per model; a LatentWire run (``summary.by_model``) also its joint rescoring
    and the seed's verdicts."""
    cfg, prov, data = r.get("config", {}), r.get("provenance", {}), r.get("data", {})
    ev, tr = data.get("eval", {}), data.get("train", {})
    name = ev.get("name", cfg.get("DATASET", "?"))
    kind_ = "pipeline check (synthetic data)" if name == "synthetic" else "real data"
    wire = "by_model" in r["summary"]
    model = cfg.get("MODELS") or cfg.get("MODEL", "?")
    enc = (f"ENCODER {cfg.get('ENCODER', '?')}; LATENT_INPUT {cfg.get('LATENT_INPUT', '?')}; K_TOKENS "
           f"{cfg.get('K_TOKENS', '?')}" if wire else f"ENC_LAYER {cfg.get('ENC_LAYER', '?')}")
    out = [f"`{run}/results.json`; model{'s' if wire else ''} {model} ({cfg.get('DTYPE', '?')}); data {name}: train "
           f"{tr.get('n_samples', '?')}, evaluation {ev.get('n_samples', '?')}; {kind_}; M {cfg.get('M_LIST', '?')}; "
           f"{enc}; KD_WEIGHT {cfg.get('KD_WEIGHT', '?')}; {cfg.get('EPOCHS', '?')} epochs "
           f"of batch {cfg.get('BATCH_SIZE', '?')}; commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}."]
    tables = r["summary"]["by_model"] if wire else {None: r["summary"]["by_condition"]}
    csv_name = r.get("per_item_csv") or "per_item.csv"
    path = folder / Path(csv_name).name
    for mod, summary in tables.items():
        out += [""] + ([f"**{mod}**", ""] if mod is not None else [])
        out += ["| condition | M | n | " + " | ".join(c[1] for c in LATENT_COLUMNS) + " |",
                "|---|---|---|" + "---|" * len(LATENT_COLUMNS)]
        for row in sorted(summary, key=lambda x: (x["m"], x["condition"])):
            out.append(f"| {row['condition']} | {row['m'] or '-'} | {row['n']} | " + " | ".join(
                _f(row.get(k), fmt) for k, _, fmt in LATENT_COLUMNS) + " |")
        for v in (r["summary"].get("verdicts") or {}).get(mod, []):
            out += ["", f"Seed acceptance criteria at M={v['m']}: " + ", ".join(
                f"{k} {'met' if ok else 'not met'}" for k, ok in v["checks"].items()) + "."]
    for j in r["summary"].get("joint") or []:
        out += ["", f"Joint rescoring, M={j['m']} (n {j['n']}): EM {_f(j['em'], '.3f')}, F1 {_f(j['f1'], '.3f')}, "
                f"oracle F1 {_f(j['oracle_f1'], '.3f')}, agreement {_f(j['agreement'], '.3f')}."]
    gap = r["summary"].get("replay_vs_text_max_nll_gap")
    if gap is not None:
        out += ["", f"Replay (the prompt's own embeddings through the soft-prefix path) vs text: max |NLL gap| "
                f"{_f(gap, '.2e')} nats."]
    training = r.get("training") or {}
    last = []
    for m, t in sorted(training.items(), key=lambda kv: int(kv[0])):
        hist = t.get("history") or []
        if hist:
            tail = [h["loss"] for h in hist[-10:] if "loss" in h]
            if tail:
                last.append(f"M={m} {np.mean(tail):.3f} ({len(hist)} steps)")
    if last:
        out += ["", "Mean training loss over the last 10 optimizer steps: " + ", ".join(last) + "."]
    for mod in tables if path.is_file() else ():
        for m, rows in latent_comparisons(per_token_nll(path, mod)).items():
            out += blockfmt.comparisons(rows, f"{mod + ', ' if mod else ''}M={m}, per-sample answer NLL per token, "
                                              f"latent vs each reference (positive = the latent is better; Holm within M)",
                                        unit="nats/token", pct="% of ref")
    return out


# engine benchmark ------------------------------------------------------------------------------------

def bench_train(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.bench --design exp07train``: exp07 training, reference vs fast (and batched) path."""
    prov = r.get("provenance", {})
    return [f"`{run}`; exp07 training; model {r['model']} ({r['dtype']}, {r['device']}, {r['threads']} threads); "
            f"{r['n_samples']} examples x {r['epochs']} epochs = {r['micro_steps']} micro-steps; cutoff {r['cutoff']} of "
            f"{r['n_layers']} layers; best of {r['repeats']} interleaved repeats; commit {_commit(prov)}; "
            f"{(prov.get('date') or '?')[:10]}.", "",
            "| reference steps/s | fast steps/s | ratio | max relative loss diff | max prefix diff | agreement | matmul peak | "
            "fast useful FLOP/s | of peak (reference) |", "|---|---|---|---|---|---|---|---|---|",
            f"| {_f(r['steps_per_s']['reference'], '.2f')} | {_f(r['steps_per_s']['fast'], '.2f')} | {_f(r['speedup'], '.2f')}x | "
            f"{_f(r['max_rel_loss_diff'], '.1e')} | {_f(r['max_abs_prefix_diff'], '.1e')} | "
            f"{'ok' if r['agreement_ok'] else 'FAILED'} | {_gflops(r['matmul_peak_flops'])} | "
            f"{_gflops(r['fast_useful_flops_per_s'])} | {_f(100 * r['fast_useful_fraction_of_peak'], '.0f')}% "
            f"({_f(100 * r['reference_useful_fraction_of_peak'], '.0f')}%) |"] + _batched_line(r)


def bench_gen(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.bench --design gen``: model-written surrogates, the reference path vs the batched one
    (a file written before the batched path existed: every row to the token cap vs first-line stop)."""
    prov = r.get("provenance", {})
    head = (f"`{run}`; model-written surrogates; model {r['model']}; {r['n_samples']} {r['data']} samples x {len(r['kinds'])} "
            f"kinds = {r['prompts']} prompts, at most {r['max_new_tokens']} new tokens; best of {r['repeats']}; commit "
            f"{_commit(prov)}; {(prov.get('date') or '?')[:10]}.")
    same = "yes" if r["texts_identical"] else "NO"
    if "work" not in r:
        return [head, "", "| reference prompts/s (batch %d) | first-line stop prompts/s | ratio | tokens generated (with padding) | "
                "texts identical |" % r["batch"], "|---|---|---|---|---|",
                f"| {_f(r['prompts_per_s']['reference'], '.2f')} | {_f(r['prompts_per_s']['fast'], '.2f')} | {_f(r['ratio'], '.2f')}x | "
                f"{r['generated_tokens_incl_padding']['reference']} -> {r['generated_tokens_incl_padding']['fast']} | {same} |"]
    w = r["work"]
    batched = (f"decode batch {r['fast_batch']}, prefill {r['prefill_batch']} per forward" if "prefill_batch" in r
               else f"batch {r['fast_batch']}")  # before 2026-12-06 one prefill forward per decode batch
    return [head, "", f"| reference prompts/s (batch {r['batch']}) | batched prompts/s ({batched}) | ratio | "
            "prefill tokens (with padding) | decode row-steps | texts identical |", "|---|---|---|---|---|---|",
            f"| {_f(r['prompts_per_s']['reference'], '.2f')} | {_f(r['prompts_per_s']['fast'], '.2f')} | {_f(r['ratio'], '.2f')}x | "
            f"{w['reference']['prefill_tokens']} -> {w['fast']['prefill_tokens']} | "
            f"{w['reference']['decode_row_steps']} -> {w['fast']['decode_row_steps']} | {same} |"]


def bench_exp08(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.bench --design exp08``: one target's restarts per forward vs the whole part in one batch."""
    prov = r.get("provenance", {})
    return [f"`{run}`; exp08 optimization; model {r['model']} ({r['dtype']}, {r['device']}, {r['threads']} threads); "
            f"{r['n_targets']} targets x {r['restarts']} restarts x {r['steps']} steps, {r['seq_len']}-token prompts; best of "
            f"{r['repeats']} interleaved repeats; commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}.", "",
            "| per-target prompt-steps/s | batched prompt-steps/s | ratio | max relative final-MSE diff | agreement | matmul peak | "
            "batched of peak (per target) |", "|---|---|---|---|---|---|---|",
            f"| {_f(r['prompt_steps_per_s']['per_target'], '.1f')} | {_f(r['prompt_steps_per_s']['batched'], '.1f')} | "
            f"{_f(r['speedup'], '.2f')}x | {_f(r['max_rel_final_mse_diff'], '.1e')} | {'ok' if r['agreement_ok'] else 'FAILED'} | "
            f"{_gflops(r['matmul_peak_flops'])} | {_f(100 * r['batched_fraction_of_peak'], '.0f')}% "
            f"({_f(100 * r['per_target_fraction_of_peak'], '.0f')}%) |"]


def bench_exp12train(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.bench --design exp12train``: one example per model forward vs the step's batch."""
    prov = r.get("provenance", {})
    return [f"`{run}`; exp12 training (two-model wire); models {r['model']} ({r['dtype']}, {r['device']}, {r['threads']} "
            f"threads); {r['n_examples']} {r['dataset']} examples in batches of {r['batch_size']} ({r['steps']} optimizer steps), "
            f"M={r['m']}; best of {r['repeats']} interleaved repeats; commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}.",
            "", "| one per forward examples/s | batched examples/s | ratio | float64 loss / gradient diff | agreement | "
            "float32 gradient diff | matmul peak | batched of peak (one per forward) |", "|---|---|---|---|---|---|---|---|",
            f"| {_f(r['examples_per_s']['per_example'], '.2f')} | {_f(r['examples_per_s']['batched'], '.2f')} | "
            f"{_f(r['speedup'], '.2f')}x | {_f(r['loss_rel_diff'], '.1e')} / {_f(r['grad_rel_diff'], '.1e')} | "
            f"{'ok' if r['agreement_ok'] else 'FAILED'} | {_f(r['grad_rel_diff_float32'], '.1e')} | {_gflops(r['matmul_peak_flops'])} | "
            f"{_f(100 * r['batched_fraction_of_peak'], '.0f')}% ({_f(100 * r['per_example_fraction_of_peak'], '.0f')}%) |"]


def bench_phase_a(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.bench --design exp11|exp07eval``: one item per Phase A forward vs several."""
    prov = r.get("provenance", {})
    what = {"exp11": "exp11 prefix-LM scoring", "exp07eval": "exp07 evaluation", "exp06": "exp06 hybrid-cache scoring"}[r["design"]]
    lab = r.get("path_labels") or {"reference": "one per forward", "batched": f"{r['phase_a_batch']} per forward"}
    return [f"`{run}`; {what}; model {r['model']} ({r['dtype']}, {r['device']}, {r['threads']} threads); {r['rows']} rows "
            f"({r['n_samples']} {r['data']} samples, {r['n_distractors']:g} distractors each{'' if r['n_distractors'] == 4 else ' on average'}); best of {r['repeats']} interleaved "
            f"repeats; commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}.", "",
            f"| {lab['reference']} rows/s | {lab['batched']} rows/s | ratio | max abs NLL diff (nats) | agreement | "
            f"matmul peak | {lab.get('short', 'batched')} of peak ({lab['reference']}) |", "|---|---|---|---|---|---|---|",
            f"| {_f(r['rows_per_s']['reference'], '.2f')} | {_f(r['rows_per_s']['batched'], '.2f')} | {_f(r['speedup'], '.2f')}x | "
            f"{_f(r['max_abs_nll_diff'], '.1e')} | {'ok' if r['nll_agreement_ok'] else 'FAILED'} | {_gflops(r['matmul_peak_flops'])} | "
            f"{_f(100 * r['batched_fraction_of_peak'], '.0f')}% ({_f(100 * r['reference_fraction_of_peak'], '.0f')}%) |"]


def _batched_line(r: dict) -> list[str]:
    """The batched path (several examples per forward), when the run timed one."""
    b = r.get("best_batched")
    if not b:
        return []
    f64 = r.get("same_prefix_check_dtype") == "float64"
    f32 = r.get("same_prefix_check_float32", {}).get(b)
    also = (f" (float32: NLL {_f(f32['nll_rel_diff'], '.1e')}, gradient {_f(f32['grad_rel_diff'], '.1e')}, rounding)"
            if f32 else "")
    return ["", f"Batched (`{b}`, examples per forward): {_f(r['steps_per_s'][b], '.2f')} steps/s, "
                f"{_f(r['batched_speedup'], '.2f')}x the reference, {_f(r['batched_vs_fast'], '.2f')}x the fast path, "
                f"{_f(100 * r['batched_useful_fraction_of_peak'], '.0f')}% of peak; at the same prefix"
                f"{' in float64' if f64 else ''}: NLL "
                f"{_f(r['same_prefix_check'][b]['nll_rel_diff'], '.1e')}, gradient "
                f"{_f(r['same_prefix_check'][b]['grad_rel_diff'], '.1e')} relative{also}; trajectory: max relative loss diff "
                f"{_f(r['max_rel_loss_diff_by_path'][b], '.1e')} (control, initial prefix x (1 + 1e-6): "
                f"{_f(r['max_rel_loss_diff_by_path']['control'], '.1e')})."]


def _mem(v) -> float | None:
    """GiB: a plain peak, or the ``peak_bytes`` of ``lib.tools.bench_memory`` (already above the warmed model)."""
    if isinstance(v, dict):
        return v["peak_bytes"] / 2 ** 30
    return v / 2 ** 30 if v else None


def _gflops(x) -> str:
    return f"{x / 1e9:.1f} GFLOP/s" if x else "n/a"


def _warm(mem: dict) -> float | None:
    v = mem.get("engine_at_memory_n")
    return v["warmup_bytes"] / 2 ** 30 if isinstance(v, dict) else None


def bench(run: str, r: dict) -> list[str]:
    prov = r.get("provenance", {})
    rate = "pairs_per_s" if "pairs_per_s" in r else "items_per_s"
    unit = rate.split("_")[0]
    ref = next(k for k in r[rate] if k != "engine")
    mem = r.get("peak_memory_bytes") or {}
    above = any(isinstance(v, dict) for v in mem.values())
    out = [f"`{run}`; design {r['design']}; model {r.get('model', '?')} ({r.get('dtype', '?')}, {r.get('device', '?')}, "
           f"{r.get('threads', '?')} threads); {r.get('n_samples', '?')} samples, {r.get('n_pairs', r.get('n_items', '?'))} "
           f"{unit}; reference path `{ref}`; best of {r.get('repeats', '?')} repeats; commit {_commit(prov)}; "
           f"{(prov.get('date') or '?')[:10]}.", "",
           f"| reference {unit}/s | engine {unit}/s | ratio | max dNLL | agreement | matmul peak | engine useful FLOP/s | "
           f"of peak | peak memory{' above the warm model' if above else ''}, reference / engine |",
           "|---|---|---|---|---|---|---|---|---|"]
    peak, useful = r.get("matmul_peak_flops"), r.get("engine_useful_flops_per_s")
    frac = r.get("engine_useful_fraction_of_peak")
    out.append(f"| {_f(r[rate][ref], '.2f')} | {_f(r[rate]['engine'], '.2f')} | {_f(r['speedup'], '.2f')}x | "
               f"{_f(r.get('max_abs_nll_diff'), '.1e')} | {'ok' if r.get('nll_agreement_ok') else 'FAILED'} | "
               f"{_gflops(peak)} | {_gflops(useful)} | "
               f"{_f(100 * frac if frac is not None else None, '.0f')}{'%' if frac is not None else ''} | "
               f"{_f(_mem(mem.get(ref)), '.2f')} / {_f(_mem(mem.get('engine')), '.2f')} GiB |")
    if r.get("memory_n"):
        out += ["", f"Memory run: n={r['memory_n']} samples under mem_budget_gb {r.get('mem_budget_gb')} (+{r.get('overhead_gb')} "
                f"GiB overhead): peak {_f(_mem(mem.get('engine_at_memory_n')), '.2f')} GiB above the warm model "
                f"(the warm-up, {_f(_warm(mem), '.2f')} GiB, counted with the model)."]
    return out


def sinks(run: str, r: dict) -> list[str]:
    """``python -m lib.tools.sinks``: where the query prompt's attention goes, per layer, and how much priming moves
    the first document token's values against the others'."""
    cfg, prov, data, s = r["config"], r.get("provenance", {}), r.get("data", {}), r["summary"]
    sha = ((data.get("provenance") or {}).get("sha256") or "?")[:12]
    anchor = cfg["bos_source"] + (f" {cfg['anchor']!r}" if cfg.get("anchor") else "")
    head = (f"`{run}`; model {cfg['MODEL']} ({cfg['dtype']}, anchor: {anchor}); data {data.get('name', '?')} "
            f"N={s['n_samples']}; real data; file sha256 {sha}; samples sha256 {(data.get('content_sha256') or '?')[:12]}; "
            f"prefix {cfg['PREFIX']}; commit {_commit(prov)}; {(prov.get('date') or '?')[:10]}; `{r.get('command', '')}`.")
    out = [head, "", "Attention of the query prompt (mean over heads and prompt positions) and value change under priming "
           "(|v_primed - v_bare| / |v_bare|, mean over heads):", "",
           "| layer | anchor | first doc token | other doc token (mean) | prompt | first / other | value change, first | "
           "value change, other |", "|---|---|---|---|---|---|---|---|"]
    for x in s["layers"]:
        ratio = x["first_doc"] / x["other_doc_mean"] if x["other_doc_mean"] > 0 else float("nan")
        out.append(f"| {x['layer']} | {_f(x['anchor'], '.3f')} | {_f(x['first_doc'], '.3f')} | {_f(x['other_doc_mean'], '.4f')} | "
                   f"{_f(x['prompt'], '.3f')} | {_f(ratio, '.1f')} | {_f(x['value_change_first_doc'], '.2f')} | "
                   f"{_f(x['value_change_other_doc'], '.2f')} |")
    out += ["", f"The first document token draws {_f(s['mean_first_doc_over_other'], '.1f')}x an average other document "
            f"token's attention (mean over layers) and more than the anchor in {s['layers_first_doc_above_anchor']} of "
            f"{len(s['layers'])} layers; priming changes its values by {_f(s['mean_value_change_first_doc'], '.2f')} of their "
            f"norm against {_f(s['mean_value_change_other_doc'], '.2f')} for the other tokens (mean over layers)."]
    return out
