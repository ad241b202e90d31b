"""Generated number blocks in EXPERIMENT_PLAN.md: one per run, written from its results.json.

A block is the text between ``<!-- RUN-BLOCK results/<run> -->`` and ``<!-- /RUN-BLOCK -->``;
``python -m lib.report.index`` (``make index``) rewrites every block, so a number in a block is always the
file's number and prose around it cites the block. A block holds one line of identity (model,
data and its sha256, N, real data or pipeline check, commit, date) and a table of the run's
``summary.comparisons``: the mean delta in nats and as % of the reference NLL (95% bootstrap CIs),
Cohen's d with its CI, win rate, Holm-adjusted t and Wilcoxon p, and the verdict under the
declared primary test (``lib.report.verdicts``: "null" only when neither test rejects).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from lib.report import blockfmt, blockkinds

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- RUN-BLOCK (\S+) -->\n)(.*?)(<!-- /RUN-BLOCK -->)", re.S)


_f, _p = blockfmt.num, blockfmt.pval


def _identity(run: str, r: dict) -> str:
    cfg, prov, data = r.get("config", {}), r.get("provenance", {}), r.get("data", {})
    sides = {k: data[k] for k in ("train", "eval") if isinstance(data.get(k), dict)}
    if "eval" in sides:  # exp07: a training and an evaluation side of the same file
        data = {**sides["eval"], "sides": sides}
    model = cfg.get("MODEL") or cfg.get("MODELS") or cfg.get("DEC_MODEL") or cfg.get("model", "?")
    name = data.get("name") or cfg.get("DATASET") or cfg.get("DATASETS") or "?"
    parts = [x.strip().split("@")[0] for x in str(name).split(",")]
    kind = ("pipeline check (synthetic data)" if all(p == "synthetic" for p in parts) else
            "real data" if name != "?" else "data not recorded")
    if (prov.get("run_kind") or {}).get("random_init") or cfg.get("random_init") or r.get("random_init"):
        kind = f"pipeline check (RANDOM-INIT model{', on real data' if kind == 'real data' else ''}: says nothing about language)"
    sha = (data.get("provenance") or {}).get("sha256")
    commit = blockfmt.commit(prov)
    bits = [f"`{run}/results.json`", f"model {model} ({cfg.get('dtype', '?')})",
            f"data {name} N={data.get('n_samples') or r.get('summary', {}).get('n_samples', '?')}", kind]
    if "sides" in data:
        bits.append(", ".join(f"{k} N={v.get('n_samples', '?')} ({v.get('split', '?')})" for k, v in data["sides"].items()))
    if cfg.get("ANCHOR"):
        bits.append(f"anchor {cfg['ANCHOR']!r} (id {(cfg.get('bos') or {}).get('id', '?')}, instead of the model's BOS policy)")
    if sha:
        bits.append(f"file sha256 {sha[:12]}")
    if "sides" in data:
        bits.append("samples sha256 " + ", ".join(f"{k} {(v.get('content_sha256') or '?')[:12]}" for k, v in data["sides"].items()))
    elif data.get("content_sha256"):
        bits.append(f"samples sha256 {data['content_sha256'][:12]}")
    bits += [f"primary test {r.get('summary', {}).get('primary_test') or 't (undeclared)'}",
             f"commit {commit}", (prov.get("date") or "?")[:10]]
    return "; ".join(bits) + "."


_comparisons = blockfmt.comparisons


def _ci(v: dict, key: str = "mean", ci: str = "mean_ci", fmt: str = "+.4f") -> str:
    lo, hi = (v.get(ci) or [None, None])
    return f"{_f(v.get(key), fmt)} [{_f(lo, fmt)}, {_f(hi, fmt)}]"


def _discrimination(disc: dict | None) -> list[str]:
    if not disc:
        return []
    k = ", ".join(map(str, disc.get("n_distractors", [])))
    out = ["", f"Discrimination (gold answer vs {k} type-matched distractors from other articles, same cache): "
           "mean margin (nats) / mean gold rank / top-1: " + ", ".join(
               f"{n} {_f(m, '+.3f')} / {_f(disc['mean_gold_rank'][n], '.2f')} / {_f(disc['top1'][n], '.2f')}"
               for n, m in disc["mean_margin"].items()) + "."]
    out += _comparisons(disc["comparisons"], "d(margin): positive = the condition separates the gold answer from the "
                                             "distractors better (mean delta = change in margin, nats)")
    gaps = [f"{c['label'].removesuffix(' (margin)')} {_f(c['entropy_gap'], '+.3f')}" for c in disc["comparisons"]
            if "entropy_gap" in c]
    if gaps:
        out += ["", "Entropy gap d(nll) - d(margin): " + ", ".join(gaps) + "."]
    ranks = [c for c in disc["comparisons"] if "rank_better" in c]
    if ranks:  # scale-free: the margin is in nats and can grow while no answer changes rank
        out += ["", "Gold rank, paired (share of samples whose gold answer ranks better / worse among the candidates, "
                "Wilcoxon p; top-1 rate reference -> condition): " + ", ".join(
                    f"{c['label'].removesuffix(' (margin)')} {_f(100 * c['rank_better'], '.1f')}% / {_f(100 * c['rank_worse'], '.1f')}%, "
                    f"p {_p(c['p_rank_wilcoxon'])}, top-1 {_f(c['top1_ref'], '.3f')} -> {_f(c['top1_cond'], '.3f')}" for c in ranks) + "."]
    return out


def _doc_lengths(s: dict) -> list[str]:
    """exp10: per path, the documents' actual lengths (and own-article paragraphs), the mean NLLs, one
    comparison table per target length, the margins; then the naturally long documents."""
    out = []
    for path, p in (s.get("paths") or {}).items():
        toks, fill = p.get("mean_doc_tokens") or {}, p.get("mean_article_fillers") or {}
        lengths = sorted(toks, key=int)
        out += ["", f"{path} path ({p.get('model', '?')}{', RANDOM-INIT: plumbing only' if p.get('random_init') else ''}), "
                f"padding `{s.get('filler', 'unrelated')}`; mean document tokens per target length: " + ", ".join(
                    f"L={L} {_f(toks[L], '.0f')}" + (f" ({_f(fill[L], '.1f')} own-article paragraphs)" if fill.get(L) else "")
                    for L in lengths) + "."]
        if p.get("mean_nll"):
            out += ["", "Mean answer NLL: " + ", ".join(f"{k} {_f(v, '.4f')}" for k, v in p["mean_nll"].items()) + "."]
        for L in sorted(p.get("curves") or {}, key=int):
            out += _comparisons(p["curves"][L], f"{path}, target length {L} (mean {_f(toks.get(L), '.0f')} tokens)")
        out += _discrimination(p.get("discrimination"))
    ld = s.get("long_documents")
    if ld:
        out += _comparisons(ld.get("vs_bare") or [], f"Naturally long documents ({(ld.get('data') or {}).get('name', '?')}, "
                                                     f"mean {_f(ld.get('mean_passage_words'), '.0f')} words, "
                                                     f"{ld.get('model', '?')}{', RANDOM-INIT' if ld.get('random_init') else ''})")
    return out


def _extras(s: dict) -> list[str]:
    """The experiment-specific tables a summary carries (margins, pairwise, gradients, cutoffs, lengths)."""
    out = _discrimination(s.get("discrimination")) + _doc_lengths(s)
    vd = s.get("value_drift")
    if vd:
        out += ["", "Document value vectors, truncated oracle vs bare, entry by entry (mean over samples [95% CI]):", "",
                "| layer | n | cosine | L2 | relative L2 |", "|---|---|---|---|---|"]
        out += [f"| {v['layer']} | {v['n']} | {_ci(v, 'cosine', 'cosine_ci', '.4f')} | {_ci(v, 'l2', 'l2_ci', '.3f')} | "
                f"{_ci(v, 'rel_l2', 'rel_l2_ci', '.4f')} |" for v in vd]
    crit = s.get("success_criteria")
    if crit:
        out += ["", "Seed success criteria (judged on the 95% CI of d vs bare: met / not met / undecided when the CI "
                "spans the threshold):", "", "| criterion | condition | d > | d [95% CI] | verdict |", "|---|---|---|---|---|"]
        out += [f"| {c['criterion']} | {c['cond']} | {_f(c['threshold'], '+.2f')} | {_f(c['d'], '+.3f')} "
                f"[{_f(c['ci_low'], '+.3f')}, {_f(c['ci_high'], '+.3f')}] | {c['verdict']} |" for c in crit]
    for key, title in (("pairwise", "Pairwise"), ("llm_vs_generic", "Model-written surrogates vs extractor_matched"),
                       ("word_order", "Word order: the oracle's tokens scrambled vs in order (same tokens, same count)")):
        if s.get(key):
            out += _comparisons(s[key], title)
    if s.get("word_order_margin"):
        out += _comparisons(s["word_order_margin"], "Word order on the margin (positive: scrambled separates the gold "
                                                    "answer better)")
    g = s.get("semantic_gradient")
    if g:
        lo, hi = g.get("pooled_rho_ci") or [None, None]
        out += ["", f"Semantic gradient over {' < '.join(g.get('order', []))}: pooled Spearman rho "
                f"{_f(g.get('pooled_rho'), '+.3f')} [{_f(lo, '+.3f')}, {_f(hi, '+.3f')}], sample-level permutation p "
                f"{_p(g.get('pooled_p_samples'))}; per-sample mean rho {_f(g.get('per_sample_mean_rho'), '+.3f')}, "
                f"{_f(100 * g['per_sample_share_positive'] if 'per_sample_share_positive' in g else None, '.0f')}% of "
                f"samples positive, Wilcoxon p {_p(g.get('per_sample_wilcoxon_p'))}."]
    for mode, rows in (s.get("enc_effects") or {}).items():  # exp09: encoder prefixes, per decoder mode
        out += _comparisons(rows, f"Encoder prefix vs bare, {'query in the decoder' if mode == 'q' else 'no query in the decoder'}")
    lc = s.get("length_control")
    if lc:
        out += _comparisons(lc.get("components") or [], "Length control (decoder: no query -> Q random tokens -> the query)")
    vs_bare = s.get("vs_bare")
    if isinstance(vs_bare, dict):  # exp11: one table per Phase A attention mode
        for mode, rows in vs_bare.items():
            out += _comparisons(rows, f"{mode} Phase A, vs bare")
    if s.get("bidirectional_vs_causal"):
        out += _comparisons(s["bidirectional_vs_causal"], "Bidirectional vs causal Phase A, same prefix")
    f = s.get("structural_fraction")
    fractions = ([f] if f and "structural" in f else list((f or {}).values()))  # one, or one per exp11 attention mode
    fractions += [s[k] for k in ("structural_fraction_q", "structural_fraction_nq") if s.get(k)]  # exp09
    for f in fractions:
        out += ["", f"Structural fraction ({f['structural']} vs {f['full']}): {_f(f['fraction_of_mean_benefit'], '.2f')} of "
                f"the mean benefit ({_f(f['mean_benefit_structural'], '+.4f')} vs {_f(f['mean_benefit_full'], '+.4f')} "
                f"nats), {_f(f['fraction_of_d'], '.2f')} of d{_fraction_caveat(f)}."]
    for ft in (s.get("first_token"), s.get("first_token_primed")):
        if not ft:
            continue
        what = "values" if ft["part"].startswith("values_") else "keys and values"
        out += ["", f"First document token ({ft['part']}: the {what} of that one entry primed, every layer): "
                f"{_f(ft['mean_delta_part'], '+.4f')} of {ft['whole']}'s {_f(ft['mean_delta_whole'], '+.4f')} nats, share {_f(ft['share'], '.2f')} "
                f"[{_f(ft['share_ci'][0], '.2f')}, {_f(ft['share_ci'][1], '.2f')}]; d {_f(ft['d_part'], '+.3f')} vs "
                f"{_f(ft['d_whole'], '+.3f')}"
                + ("; the two deltas have opposite signs, so the share is not a part of the whole"
                   if ft['mean_delta_part'] * ft['mean_delta_whole'] < 0 else "") + "."]
    for fam, b in (s.get("best_cutoff") or {}).items():
        out += ["", f"Best {fam} cutoff {b['cutoff']} (bootstrap 95% range {b['cutoff_ci'][0]:.0f}-{b['cutoff_ci'][1]:.0f}): "
                f"mean delta {_ci(b, 'mean_delta', 'mean_delta_ci')} nats ({_ci(b, 'pct_of_ref', 'pct_ci', '+.2f')}% of "
                f"bare), d {_ci(b, 'd', 'd_ci', '+.3f')} on the samples it was chosen on; split-half d "
                f"{_f(b['split_half_d'], '+.3f')}."]
    curve = s.get("cutoff_curve")
    if curve:
        out += ["", "Cutoff curve (primed values at layers < c (early) or >= c (late), vs bare):", "",
                "| c | early: mean delta nats [95% CI] | early d [95% CI] | late: mean delta nats [95% CI] | late d [95% CI] |",
                "|---|---|---|---|---|"]
        late = {r["cutoff"]: r for r in curve.get("late", [])}
        for e in curve.get("early", []):
            l = late.get(e["cutoff"], {})
            out.append(f"| {e['cutoff']} | {_mci(e)} | {_dci(e)} | {_mci(l)} | {_dci(l)} |")
    curves = s.get("length_curves")
    if curves:
        lengths = sorted({r["length"] for rows in curves.values() for r in rows})
        out += ["", "Length curves, mean delta vs bare in nats (d) per prefix length L:", "",
                "| content | " + " | ".join(f"L={L}" for L in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for content, rows in curves.items():
            by = {r["length"]: r for r in rows}
            out.append(f"| {content} | " + " | ".join(
                f"{_f(by[L].get('mean_delta'), '+.4f')} ({_f(by[L]['d'], '+.2f')})" if L in by else "" for L in lengths) + " |")
    dec = s.get("decomposition")
    if dec:
        parts = ("total", "structure", "vocabulary", "meaning", "content_effect")
        out += ["", "Decomposition of the mean NLL reduction vs bare (nats [95% CI]): total = structure + vocabulary + "
                "meaning (or + content where the content has no scrambled twin):", "",
                "| content | L | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
        for r in dec:
            out.append(f"| {r['content']} | {r['length']} | " + " | ".join(
                _ci(r[p]) if isinstance(r.get(p), dict) else "" for p in parts) + " |")
    leak = (s.get("keyword_answer_leak") or {}).get("split")
    if leak:
        out += ["", "Keyword gain vs bare split by whether the sample's keywords hold a word of its answer (leaked: the "
                "prefix primes the answer itself) or not (clean); nats [95% CI], d; leaked - clean unpaired (Welch p):", "",
                "| condition | leaked n | leaked: mean delta | leaked d | clean n | clean: mean delta | clean d | "
                "leaked - clean [95% CI] | Welch p |", "|---|---|---|---|---|---|---|---|---|"]
        for r in leak:
            lk, cl, df = r.get("leaked") or {}, r.get("clean") or {}, r.get("leaked_minus_clean") or {}
            out.append(f"| {r['cond']} | {r['n_leaked']} | {_ci(lk) if lk else ''} | {_f(lk.get('d'), '+.3f') if lk else ''} | "
                       f"{r['n_clean']} | {_ci(cl) if cl else ''} | {_f(cl.get('d'), '+.3f') if cl else ''} | "
                       f"{_ci(df, 'diff', 'diff_ci') if df else ''} | {_f(df.get('p_welch'), '.2g') if df else ''} |")
    cd = s.get("crossdata")
    if cd:
        pooled = cd["pooled"]
        for subset in ("all", "hard_heldout", "hard_naive"):
            if subset in pooled:
                out += _comparisons(pooled[subset]["semantic"], f"Semantic delta (NLL(random_tokens) - NLL(condition)), "
                                                                f"{subset}, pooled N={pooled[subset].get('n', '?')}")
        for lab, r in [*cd.get("datasets", {}).items(), ("pooled", pooled)]:
            if r.get("all", {}).get("llm_vs_generic"):
                out += _comparisons(r["all"]["llm_vs_generic"], f"Model-written surrogates vs extractor_matched, {lab}, "
                                                                f"all samples (N={r['all'].get('n', '?')})")
    return out


def _mci(r: dict) -> str:
    return (f"{_f(r.get('mean_delta'), '+.4f')} [{_f(r.get('mean_delta_ci_low'), '+.4f')}, "
            f"{_f(r.get('mean_delta_ci_high'), '+.4f')}]") if r else ""


def _dci(r: dict) -> str:
    return f"{_f(r.get('d'), '+.3f')} [{_f(r.get('ci_low'), '+.3f')}, {_f(r.get('ci_high'), '+.3f')}]" if r else ""


def _fraction_caveat(f: dict) -> str:
    """What the signs of the two benefits say about the structural fraction: nothing when both help."""
    s, full = f.get("mean_benefit_structural"), f.get("mean_benefit_full")
    if s is None or full is None or s != s or full != full:
        return ""
    if (s > 0) != (full > 0) and s != 0:
        return "; the two benefits have opposite signs, so the ratio is meaningless"
    if s < 0 and full < 0:
        return "; both hurt, so this is the share of the full prefix's harm a content-free prefix already does"
    return ""


def render(run: str, results_root: Path | None = None) -> str:
    """The block body for ``run``: a run folder like ``results/exp01_x`` (its results.json) or a JSON file
    like ``results/bench/exp01_<model>.json``, relative to the repo root. exp08, exp12 and benchmark
    files get their own tables (``lib.report.blockkinds``)."""
    folder = (results_root or ROOT) / run
    path = folder if run.endswith(".json") else folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"RUN-BLOCK names {run!r} but {path} does not exist")
    r = json.loads(path.read_text())
    k = blockkinds.kind(r)
    if k in ("bench_gen", "bench_exp08", "bench_exp12train", "bench_phase_a", "sinks"):
        return "\n".join(getattr(blockkinds, k)(run, r)) + "\n"
    if k == "bench_train":
        return "\n".join(blockkinds.bench_train(run, r)) + "\n"
    if k == "bench":
        return "\n".join(blockkinds.bench(run, r)) + "\n"
    if k == "probe":
        return "\n".join(blockkinds.probe(run, r)) + "\n"
    if k == "reachability":
        return "\n".join(blockkinds.reachability(run, folder, r)) + "\n"
    if k == "latent":
        return "\n".join(blockkinds.latent(run, folder, r)) + "\n"
    s = r.get("summary", {})
    lines = [_identity(run, r), ""]
    if "mean_nll" in s:
        lines.append("Mean answer NLL: " + ", ".join(f"{k} {_f(v, '.4f')}" for k, v in s["mean_nll"].items()) + ".")
        lines.append("")
    if s.get("comparisons"):  # exp11 keeps its comparisons per attention mode (_extras)
        lines += _comparisons(s["comparisons"])
    lines += _extras(s)
    return "\n".join(lines) + "\n"


def update(text: str, results_root: Path | None = None) -> str:
    """``text`` with every RUN-BLOCK rewritten from its results.json."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), results_root) + m.group(4), text)


def update_plan(plan=None) -> Path:
    plan = Path(plan or ROOT / "EXPERIMENT_PLAN.md")
    plan.write_text(update(plan.read_text()))
    return plan
