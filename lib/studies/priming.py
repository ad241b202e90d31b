"""exp01 ("back to basics"), and the shared base of every study: two-phase priming conditions:
prepare, encode once, score in batches.

A condition says which prefix Phase A sees, whether the prefix entries stay in the cache, and
which prompt Phase B feeds::

    A_bare            [anchor, doc]                          prompt with query
    B_full_oracle     [anchor, query, doc] (prefix kept)     prompt without query
    C_full_repeat     [anchor, query, doc] (prefix kept)     prompt with query
    D_trunc_oracle    [anchor, query, doc] -> [anchor, doc]  prompt with query
    E_trunc_random    [anchor, other, doc] -> [anchor, doc]  prompt with query

B, C and D derive from ONE ``[query + doc]`` forward; A and D have the same cache length by
construction (the seed notebook's D was one entry short of A). Every condition of a sample scores
the same document ids and the same answer ids (matched tokenization, see ``lib.kv.encode``).
"other" is another sample's query, assigned by a seeded derangement, so it is stable across
reruns and resumes.
"""
from __future__ import annotations

import difflib
import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from lib.kv import encode as enc_mod
from lib.report.discrimination import discrimination_summary
from lib.report.tables import nll_table

PROMPT_QUERY = "\n\nQuestion: {query}\nAnswer:"
PROMPT_NO_QUERY = "\n\nAnswer:"
PREFIX_SEP = "\n"
PREFIX_SOURCES = ("none", "query", "other_query")
PROMPTS = ("query", "no_query")


@dataclass(frozen=True)
class CacheCondition:
    name: str
    prefix: str  # one of PREFIX_SOURCES
    keep_prefix: bool
    prompt: str  # one of PROMPTS
    description: str = ""

    def __post_init__(self):
        if self.prefix not in PREFIX_SOURCES:
            raise ValueError(f"condition {self.name!r}: prefix {self.prefix!r} not in {PREFIX_SOURCES}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"condition {self.name!r}: prompt {self.prompt!r} not in {PROMPTS}")
        if self.keep_prefix and self.prefix == "none":
            raise ValueError(f"condition {self.name!r}: keep_prefix needs a prefix")


EXP01_CONDITIONS = (
    CacheCondition("A_bare", "none", False, "query", "bare [doc]; query at scoring"),
    CacheCondition("B_full_oracle", "query", True, "no_query", "[query + doc] kept whole; query not repeated"),
    CacheCondition("C_full_repeat", "query", True, "query", "[query + doc] kept whole; query repeated"),
    CacheCondition("D_trunc_oracle", "query", False, "query", "[query + doc], query entries dropped, doc re-positioned"),
    CacheCondition("E_trunc_random", "other_query", False, "query", "[other query + doc], prefix dropped, doc re-positioned"),
)
EXP01_COMPARISONS = (  # (reference, condition): positive d means the condition has the lower NLL
    ("A_bare", "B_full_oracle"),
    ("A_bare", "C_full_repeat"),
    ("A_bare", "D_trunc_oracle"),
    ("E_trunc_random", "D_trunc_oracle"),
    ("B_full_oracle", "D_trunc_oracle"),
)


def unknown_condition(name: str, known) -> ValueError:
    """The error for an unknown condition name: the known names and a did-you-mean (also used by
    ``lib.studies.conditions``, which imports this module)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown condition {name!r}; known conditions: {sorted(known)}.{hint}")


def select_conditions(names) -> tuple[CacheCondition, ...]:
    """Conditions by name, in the order given; unknown names raise with the known ones listed."""
    known = {c.name: c for c in EXP01_CONDITIONS}
    for n in names:
        if n not in known:
            raise unknown_condition(n, known)
    return tuple(known[n] for n in names)


def assign_other(ids: list[str], seed: int, groups: dict[str, str] | None = None) -> dict[str, str]:
    """Map each id to a different id (seeded derangement, a bijection); needs at least two ids.

    With ``groups`` (id -> article), the other id is always from ANOTHER group: ids are shuffled,
    sorted by group (groups in shuffled order) and rotated by the size of the largest group, so
    no id lands in its own contiguous block. Raises when one group holds more than half the ids.
    """
    if len(ids) < 2:
        raise ValueError(f"need at least 2 samples to assign another sample's query, got {len(ids)}")
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids are not unique")
    order = list(ids)
    random.Random(seed).shuffle(order)
    if groups is None:
        # rotate the shuffled order by one: a derangement whatever the shuffle gave
        return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    missing = [i for i in ids if i not in groups]
    if missing:
        raise ValueError(f"groups has no entry for ids {missing[:5]}")
    rank = {g: r for r, g in enumerate(dict.fromkeys(groups[i] for i in order))}
    order.sort(key=lambda i: rank[groups[i]])
    shift = max(Counter(groups[i] for i in ids).values())
    if 2 * shift > len(ids):
        raise ValueError(f"one article holds {shift} of {len(ids)} samples: another sample from a different "
                         f"article cannot be assigned to each (draw samples across articles)")
    return {order[i]: order[(i + shift) % len(order)] for i in range(len(order))}


def other_assignment(samples, seed: int) -> dict[str, str]:
    """``assign_other`` over ``samples``, across articles when every sample has ``meta['article']``
    (registry data sets); otherwise each sample counts as its own article."""
    ids = [s.id for s in samples]
    if all("article" in s.meta for s in samples):
        return assign_other(ids, seed, {s.id: s.meta["article"] for s in samples})
    return assign_other(ids, seed)


@dataclass
class Prepared:
    """Token ids of one sample, shared by all its conditions."""

    sample_id: str
    doc_ids: list[int]
    prefix_ids: dict[str, list[int]]  # "query" / "other_query" -> ids of text + PREFIX_SEP
    prompt_ids: dict[str, list[int]]  # "query" / "no_query"
    answer_ids: list[int]
    other_id: str
    flags: dict = field(default_factory=dict)
    # distractor answers (``lib.kv.margin``), tokenized exactly as the gold answer after the query prompt
    distractor_ids: list[list[int]] = field(default_factory=list)
    distractor_samples: list[str] = field(default_factory=list)  # the samples they come from


def _answer_ids(tokenizer, prompt_text: str, prompt_ids: list[int], answer: str) -> tuple[list[int], bool]:
    """Answer ids as the tokenizer splits them after the prompt; flag when the join merged tokens."""
    joint = enc_mod.tokenize(tokenizer, prompt_text + " " + answer)
    if joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids):
        return joint[len(prompt_ids):], False
    return enc_mod.tokenize(tokenizer, " " + answer), True


def prepare(tokenizer, arch, sample, other_query: str, other_id: str, distractors=(), *,
            prompt_query: str = PROMPT_QUERY) -> Prepared:
    """Token ids of ``sample``; ``distractors``: ``(sample id, answer)`` pairs scored beside the gold
    answer (``lib.kv.margin``), tokenized the same way after the same prompt. ``prompt_query``: the
    query template (one ``{query}`` field; exp07 uses its seed's)."""
    if prompt_query.count("{query}") != 1:
        raise ValueError(f"prompt_query must contain '{{query}}' exactly once, got {prompt_query!r}")
    q_prompt = prompt_query.format(query=sample.query)
    prompt_ids = {"query": enc_mod.tokenize(tokenizer, q_prompt), "no_query": enc_mod.tokenize(tokenizer, PROMPT_NO_QUERY)}
    answer_ids, answer_drift = _answer_ids(tokenizer, q_prompt, prompt_ids["query"], sample.answer)
    if not answer_ids:
        raise ValueError(f"sample {sample.id!r}: answer {sample.answer!r} tokenizes to nothing")
    distractor_ids = [_answer_ids(tokenizer, q_prompt, prompt_ids["query"], a)[0] for _, a in distractors]
    for (sid, a), ids in zip(distractors, distractor_ids):
        if not ids:
            raise ValueError(f"sample {sample.id!r}: distractor {a!r} (from {sid!r}) tokenizes to nothing")
    prefix_ids = {
        "query": enc_mod.tokenize(tokenizer, sample.query + PREFIX_SEP),
        "other_query": enc_mod.tokenize(tokenizer, other_query + PREFIX_SEP),
    }
    reserve = (max(len(v) for v in prefix_ids.values()) + max(len(v) for v in prompt_ids.values())
               + max(map(len, [answer_ids, *distractor_ids])))
    doc_ids, truncated = enc_mod.fit_document(enc_mod.tokenize(tokenizer, sample.passage), arch, reserve)
    drift = enc_mod.boundary_drift(tokenizer, sample.query + PREFIX_SEP, sample.passage, prefix_ids["query"], doc_ids) if not truncated else None
    flags = {"doc_truncated": truncated, "prefix_boundary_drift": drift, "answer_boundary_drift": answer_drift}
    return Prepared(sample.id, doc_ids, prefix_ids, prompt_ids, answer_ids, other_id, flags, distractor_ids,
                    [sid for sid, _ in distractors])


def distractor_pairs(samples, n_distractors: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """{sample id: [(distractor sample id, its answer), ...]} (``margin.assign_distractors``)."""
    from lib.kv import margin

    by_id = {s.id: s for s in samples}
    chosen = margin.assign_distractors(samples, n_distractors, seed)
    return {sid: [(o, by_id[o].answer) for o in others] for sid, others in chosen.items()}


def item_extras(p: Prepared) -> dict:
    """WorkItem keyword arguments and row fields that carry ``p``'s distractors."""
    if not p.distractor_ids:
        return {}
    return {"distractor_ids": tuple(tuple(d) for d in p.distractor_ids)}


def work_items(items: list[Prepared], conditions=EXP01_CONDITIONS) -> list:
    """One ``engine.WorkItem`` per (prepared sample, condition)."""
    from lib.kv.engine import WorkItem

    out = []
    for it in items:
        for c in conditions:
            prefix = () if c.prefix == "none" else tuple(it.prefix_ids[c.prefix])
            extra = {"other_id": it.other_id if c.prefix == "other_query" else None, **it.flags}
            if it.distractor_samples:
                extra["distractor_samples"] = list(it.distractor_samples)
            out.append(WorkItem(it.sample_id, c.name, tuple(it.doc_ids), prefix, c.keep_prefix,
                                tuple(it.prompt_ids[c.prompt]), tuple(it.answer_ids), extra, **item_extras(it)))
    return out


def score_prepared(lm, items: list[Prepared], conditions=EXP01_CONDITIONS, *, batch_size: int = 16) -> list[dict]:
    """Rows (one per item x condition), through the engine (Phase A once per distinct encoding)."""
    from lib.kv.engine import Engine

    return Engine(lm, phase_b_batch=batch_size).score_items(work_items(items, conditions))


def run(lm, samples, store, *, conditions=EXP01_CONDITIONS, seed: int = 42, chunk: int = 4, batch_size: int = 16,
        mem_budget_gb: float = 2.0, progress: bool = True, n_distractors: int = 0) -> list[dict]:
    """Score every (sample, condition) not yet in ``store``; append each wave of ``chunk`` samples as it finishes.

    ``n_distractors`` > 0 scores that many other samples' answers beside the gold answer on the
    same cache (``lib.kv.margin``: margin, rank, top-1 in every row). Resumable: a killed run rerun
    with the same store finishes the missing items only. Returns all rows.
    """
    from lib.kv.engine import Engine

    by_id = {s.id: s for s in samples}
    other = other_assignment(samples, seed)
    dis = distractor_pairs(samples, n_distractors, seed)
    prepared = [prepare(lm.tokenizer, lm.arch, s, by_id[other[s.id]].query, other[s.id], dis[s.id]) for s in samples]
    engine = Engine(lm, mem_budget_gb=mem_budget_gb, phase_b_batch=batch_size)
    return engine.run(work_items(prepared, conditions), store, wave=chunk, progress=progress)


def diagnose(comparisons: list[dict], alpha: float = 0.05) -> list[str]:
    """Plain-language reading of exp01's comparisons (``lib.report.verdicts``: "not distinguishable" only when
    neither the t-test nor the Wilcoxon test rejects after Holm; the declared primary test decides the
    direction; a rejection by the other test alone reads "test-dependent")."""
    from lib.report import verdicts

    by = {(r["ref"], r["cond"]): r for r in comparisons}

    def verdict(ref, cond):
        r = by[(ref, cond)]
        word = verdicts.words(r, alpha)
        size = f"mean delta {r['mean_delta']:+.4f} nats ({r['pct_of_ref']:+.1f}% of {ref})" if "pct_of_ref" in r else ""
        return (f"{cond} is {word} {ref} ({size}, d={r['d']:+.3f}, 95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
                f"Holm p t={r['p_holm']:.3g} / Wilcoxon={r['p_holm_wilcoxon']:.3g}, primary {r.get('primary_test', 't')}, "
                f"win {r['win_rate']:.0%})"), word

    lines = []
    b, wb = verdict("A_bare", "B_full_oracle")
    lines.append(f"Query in context, not repeated: {b}.")
    c, _ = verdict("A_bare", "C_full_repeat")
    lines.append(f"Query in context and repeated: {c}.")
    d, wd = verdict("A_bare", "D_trunc_oracle")
    lines.append(f"KEY, truncated oracle: {d}.")
    e, we = verdict("E_trunc_random", "D_trunc_oracle")
    lines.append(f"Semantic signal: {e}.")
    f, _ = verdict("B_full_oracle", "D_trunc_oracle")
    lines.append(f"Truncation vs full context: {f}.")
    readings = {
        ("better than", "better than"): "truncation keeps a benefit, and it depends on the prefix being the real query.",
        ("better than", "not distinguishable from"): "truncation keeps a benefit, but a random query gives a similar one (not semantic).",
        ("better than", "worse than"): "truncation keeps a benefit, and a random query gives an even larger one (not semantic).",
        ("not distinguishable from", "better than"): "no net benefit over bare, but the real query beats a random one: a random prefix hurts more than the query does.",
        ("not distinguishable from", "not distinguishable from"): "no detectable effect of truncated priming at this N.",
        ("not distinguishable from", "worse than"): "no net benefit over bare, and a random prefix does better than the query.",
    }
    if verdicts.WORDS["test-dependent"] in (wd, we):
        lines.append("Reading: none; the t-test and the Wilcoxon test disagree on a key comparison (see both p-values).")
    elif wd == "worse than":
        lines.append("Reading: the truncated oracle cache hurts; priming with the query does not survive truncation here.")
    else:
        lines.append("Reading: " + readings[(wd, we)])
    return lines


def analyse(rows: list[dict], sample_ids: list[str], conditions=EXP01_CONDITIONS, comparisons=EXP01_COMPARISONS,
            *, n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Summary of an exp01-style run: mean NLL, paired comparisons (Holm), hardness, ranks, diagnosis.

    ``atol``: noise tolerance of the scoring dtype (``lib.kv.noise.noise_atol``); ``primary_test``: the
    declared test ("t" or "wilcoxon"); both recorded.
    """
    from lib.report import stats, stats_hardness

    names = [c.name for c in conditions]
    nll = nll_table(rows, names, sample_ids)
    comps = stats.compare_conditions(nll, None, pairs=list(comparisons), n_boot=n_boot, seed=seed, atol=atol,
                                     primary_test=primary_test)
    ref = names[0]
    return {
        "n_samples": len(sample_ids),
        "primary_test": primary_test,
        "noise_atol": stats.NOISE_ATOL if atol is None else float(atol),
        "mean_nll": {n: float(v.mean()) for n, v in nll.items()},
        "sd_nll": {n: float(v.std(ddof=1)) if len(v) > 1 else float("nan") for n, v in nll.items()},
        "comparisons": comps,
        "hardness": stats_hardness.hardness_table(nll, ref, names[1:], seed=seed, atol=atol) if len(sample_ids) >= 10 else [],
        "ranks": stats.ranks_per_sample(nll, atol=atol),
        "diagnosis": diagnose(comps) if set(comparisons) == set(EXP01_COMPARISONS) else [],
        **discrimination_summary(rows, sample_ids, names, pairs=list(comparisons), nll_comparisons=comps, n_boot=n_boot,
                                 seed=seed, atol=atol, primary_test=primary_test),
    }


def figures(summary: dict, nll: dict[str, np.ndarray], out_dir, title: str = "") -> list:
    """Effect sizes with CI, per-sample delta histograms, hardness heatmap, mean NLL."""
    from pathlib import Path

    from lib.report import plots

    out = Path(out_dir)
    paths = [
        plots.plot_effects(summary["comparisons"], out / "effects.png", title=title),
        plots.plot_delta_hist({r["label"]: nll[r["ref"]] - nll[r["cond"]] for r in summary["comparisons"]},
                              out / "delta_hist.png", title=title),
        plots.plot_mean_nll(nll, out / "mean_nll.png", title=title),
    ]
    if summary["hardness"]:
        paths.append(plots.plot_hardness_heatmap(summary["hardness"], out / "hardness_heatmap.png", title=title))
    return paths


SANITY = dict(
    passage="The capital of France is Paris. It is known for the Eiffel Tower.",
    query="What is the capital of France?",
    answer="Paris",
    other_query="What is the population of Japan?",
)


def sanity_example(lm) -> dict[str, float]:
    """NLL of ' Paris' under the five conditions on a one-fact document (printed by exp01)."""
    from lib.data import Sample

    s = Sample("sanity", SANITY["query"], SANITY["passage"], SANITY["answer"])
    item = prepare(lm.tokenizer, lm.arch, s, SANITY["other_query"], "sanity-other")
    return {r["condition"]: r["nll"] for r in score_prepared(lm, [item])}


def cache_lengths(lm, sample, other_query: str) -> dict[str, int]:
    """Cache length of every condition for one sample (A and D must be equal by construction)."""
    item = prepare(lm.tokenizer, lm.arch, sample, other_query, "other")
    out = {}
    for c in EXP01_CONDITIONS:
        pre = None if c.prefix == "none" else item.prefix_ids[c.prefix]
        full, enc = enc_mod.encode_full(lm.model, lm.arch, item.doc_ids, pre)
        out[c.name] = enc_mod.shape(full, enc, lm.arch, keep_prefix=c.keep_prefix).length
    if out["A_bare"] != out["D_trunc_oracle"]:
        raise AssertionError(f"A and D caches differ in length: {out}")
    return out


RUNTIME_KNOBS = ("BATCH_SIZE", "CHUNK", "MEM_BUDGET_GB", "OUT_DIR", "FRESH", "SMOKE", "N_BOOT", "PROGRESS", "PRIMARY_TEST",
                 "VALUE_DRIFT_N")  # knobs that change no stored row


def store_config(params: dict, lm, conditions=EXP01_CONDITIONS) -> dict:
    """What makes a run's rows comparable: every knob that changes a number, plus the templates.

    Runtime knobs (batch size, output folder, ...) are left out, so changing them resumes the
    same run; anything else differing makes ``RunStore`` refuse to mix rows.
    """
    return {
        **{k: v for k, v in params.items() if k not in RUNTIME_KNOBS},
        "model_source": lm.source,
        "dtype": str(lm.dtype),
        "bos": {"id": lm.arch.bos_id, "source": lm.arch.bos_source},
        "conditions": [c.__dict__ for c in conditions],
        "prompt_query": PROMPT_QUERY,
        "prompt_no_query": PROMPT_NO_QUERY,
        "prefix_sep": PREFIX_SEP,
    }
