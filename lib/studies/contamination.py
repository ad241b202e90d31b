"""exp06: layer-selective value contamination. Hybrid caches built from a bare and a primed cache.

For each sample, Phase A runs twice: ``[anchor, doc]`` (bare) and ``[anchor, prefix, doc]`` with
the prefix dropped and the document re-positioned (primed). Both then hold the same entries at the
same positions, so any mix of their per-layer keys and values is a valid cache (``cache.splice``):

  bare                 bare keys and values everywhere (the reference)
  primed               primed keys and values everywhere (full priming)
  values_only          primed values at every layer, bare keys
  keys_only            primed keys at every layer, bare values
  values_early_<c>     primed values at layers < c, bare elsewhere (c = 0 is bare)
  values_late_<c>      primed values at layers >= c, bare elsewhere (c = 0 is values_only)
  values_first_token   primed values of the first document entry only (every layer), bare elsewhere
  values_except_first  primed values of every document entry but the first (every layer)
  primed_first_token   primed keys and values of the first document entry only, bare elsewhere
  primed_except_first  primed keys and values of every document entry but the first

The last four split values_only and primed by position: the first document token sits right after the anchor in
the bare run and after the prefix in the primed one, so its state differs for a reason other than
the prefix's content (on some models that token carries most of values_only's effect).

All conditions of a sample score the same query prompt and answer ids. Phase B runs batched across
the hybrids (they share prompt and answer lengths).
"""
from __future__ import annotations

import numpy as np

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.kv import margin, scoring
from lib.studies import priming
from lib.report import stats
from lib.data import surrogates
from lib.kv.noise import clean_delta

FIXED = ("bare", "primed", "values_only", "keys_only", "values_first_token", "values_except_first", "primed_first_token",
         "primed_except_first")
POSITION_SPLIT = FIXED[4:]


def parse_cutoffs(spec: str, n_layers: int) -> list[int]:
    """``"all"`` -> 1..n_layers-1; ``"none"`` -> [] (the fixed hybrids only); else comma-separated ints in
    [1, n_layers-1] (sorted, unique)."""
    if str(spec).strip() == "all":
        return list(range(1, n_layers))
    if str(spec).strip() == "none":
        return []
    out = []
    for x in str(spec).split(","):
        x = x.strip()
        if not x:
            continue
        if not x.lstrip("-").isdigit() or not 1 <= int(x) < n_layers:
            raise ValueError(f"cutoff {x!r} must be an integer in [1, {n_layers - 1}] for a {n_layers}-layer model (CUTOFFS={spec!r})")
        out.append(int(x))
    if not out:
        raise ValueError(f"CUTOFFS={spec!r} gives no cutoff; use 'all', 'none' or e.g. '4,8,12'")
    return sorted(set(out))


def condition_names(cutoffs: list[int]) -> list[str]:
    return [*FIXED, *[f"values_early_{c}" for c in cutoffs], *[f"values_late_{c}" for c in cutoffs]]


def _anchor_length(bare: kv.DocCache, primed: kv.DocCache, n_anchor: int | None) -> int:
    """Entries before the document: the caches' recorded ``n_anchor`` (``encode`` and the engine write it);
    an explicit ``n_anchor`` must agree with it, and is required only for a cache that records none."""
    recorded = {c.meta["n_anchor"] for c in (bare, primed) if "n_anchor" in c.meta}
    if len(recorded) > 1:
        raise ValueError(f"the bare and primed caches record different anchor lengths: {sorted(recorded)}")
    if recorded:
        (rec,) = recorded
        if n_anchor is not None and n_anchor != rec:
            raise ValueError(f"n_anchor={n_anchor!r} disagrees with the caches' n_anchor={rec}")
        return rec
    if n_anchor is None:
        raise ValueError("the cache records no n_anchor (meta) and none was given: pass n_anchor= "
                         "(1 with an anchor token, 0 without)")
    return n_anchor


def hybrid(name: str, bare: kv.DocCache, primed: kv.DocCache, *, n_anchor: int | None = None) -> kv.DocCache:
    """The cache of condition ``name`` (see the module docstring). The position split needs the number of
    entries before the document (1 with an anchor token, 0 without; entry ``n_anchor`` is the first
    document token): it is read from the caches' meta; ``n_anchor`` is for caches that record none."""
    n = bare.n_layers
    if name in POSITION_SPLIT:
        n_anchor = _anchor_length(bare, primed, n_anchor)
        if n_anchor not in (0, 1) or bare.length <= n_anchor:
            raise ValueError(f"n_anchor={n_anchor!r} must be 0 or 1 and leave a document entry (cache length {bare.length})")
        entries = [n_anchor] if name.endswith("_first_token") else range(n_anchor + 1, bare.length)
        return kv.splice(bare, primed, range(n), keys=name.startswith("primed_"), values=True, entries=entries)
    if name == "bare":
        return bare
    if name == "primed":
        return primed
    if name == "values_only":
        return kv.splice(bare, primed, range(n), values=True)
    if name == "keys_only":
        return kv.splice(bare, primed, range(n), keys=True, values=False)
    kind, _, c = name.rpartition("_")
    if kind in ("values_early", "values_late") and c.isdigit() and 0 <= int(c) <= n:
        layers = range(int(c)) if kind == "values_early" else range(int(c), n)
        return kv.splice(bare, primed, layers, values=True) if len(layers) else bare
    raise ValueError(f"unknown hybrid condition {name!r}; expected one of {FIXED} or values_early_<c> / "
                     f"values_late_<c> with 0 <= c <= {n}")


def prefix_ids(tokenizer, prefix: str) -> list[int]:
    """Prefix ids (text + separator) of a static surrogate key or a literal text."""
    text = surrogates.STATIC.get(prefix, prefix)
    if not text.strip():
        raise ValueError(f"prefix {prefix!r} is empty")
    return enc_mod.tokenize(tokenizer, text) + enc_mod.tokenize(tokenizer, priming.PREFIX_SEP)


def score_samples(engine, samples, names: list[str], prefix: list[int], *, batch_size: int = 32,
                  distractors: dict | None = None, share_prompt: bool = True) -> list[dict]:
    """Rows (one per sample x condition) for ``samples``; Phase A batched through ``engine``.

    ``distractors``: {sample id: [(other sample id, answer), ...]} (``priming.distractor_pairs``,
    drawn once over the whole run) scored on each hybrid cache beside the gold answer (``lib.kv.margin``).
    """
    lm = engine.lm
    # no other-sample query is used here: preparing each sample on its own keeps a sample's ids
    # independent of which wave it is scored in
    dis = distractors or {}
    preps = [priming.prepare(lm.tokenizer, lm.arch, s, s.query, s.id, dis.get(s.id, ())) for s in samples]
    for p in preps:  # the document must fit next to the prefix too
        need = len(prefix) + len(p.prompt_ids["query"]) + max(map(len, [p.answer_ids, *p.distractor_ids]))
        p.doc_ids, cut = enc_mod.fit_document(p.doc_ids, lm.arch, need)
        p.flags["doc_truncated"] = p.flags["doc_truncated"] or cut
    return score_prepared(engine, preps, names, prefix, batch_size=batch_size, share_prompt=share_prompt)


def score_prepared(engine, preps, names: list[str], prefix: list[int], *, batch_size: int = 32,
                   share_prompt: bool = True) -> list[dict]:
    """Rows for ``priming.Prepared`` items (token ids only; the query prompt is scored).

    Samples go through in consecutive chunks whose caches (full primed, bare, primed) fit the
    engine's ``cache_budget_bytes``, so memory does not grow with the number of samples.
    """
    per_token = engine.kv_bytes_per_token
    chunks, cur, used = [], [], 0
    for p in preps:
        cost = per_token * (3 * (1 + len(p.doc_ids)) + len(prefix))
        if cur and used + cost > engine.cache_budget_bytes:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(p)
        used += cost
    return [row for chunk in chunks + [cur] if chunk
            for row in _score_chunk(engine, chunk, names, prefix, batch_size, share_prompt)]


def _score_chunk(engine, preps, names: list[str], prefix: list[int], batch_size: int, share_prompt: bool = True) -> list[dict]:
    lm = engine.lm
    encs = [(tuple(p.doc_ids), ()) for p in preps] + [(tuple(p.doc_ids), tuple(prefix)) for p in preps]
    full = engine.encode_many(encs)
    pairs = []  # (prepared sample, condition, hybrid cache)
    for i, p in enumerate(preps):
        bare = enc_mod.shape(*full[i], lm.arch)
        primed = enc_mod.shape(*full[len(preps) + i], lm.arch)
        pairs += [(p, name, hybrid(name, bare, primed, n_anchor=full[i][1].n_anchor)) for name in names]
    cands = lambda p: [p.answer_ids, *p.distractor_ids]  # noqa: E731  gold first, then distractors on the same cache
    # prompt sharing (as the engine's): a hybrid cache that several answers continue runs prompt[:-1] once
    # (scoring.extend, a new cache) and each answer feeds [last prompt token] + answer, so the last prompt
    # token still predicts answer[0]; equal to re-running the prompt per answer to float32 noise (tested)
    share = share_prompt and all(len(cands(p)) >= 2 and len(p.prompt_ids["query"]) >= 2 for p in preps)
    nlls = []
    if share:
        per = max(1, batch_size // max(len(cands(p)) for p in preps))  # pairs per forward: about batch_size rows
        for s in range(0, len(pairs), per):
            sub = pairs[s:s + per]
            ext = scoring.extend(engine.model, [c for _, _, c in sub], [list(p.prompt_ids["query"][:-1]) for p, _, _ in sub])
            caches = [e for e, (p, _, _) in zip(ext, sub) for _ in cands(p)]
            feed = [list(p.prompt_ids["query"][-1:]) for p, _, _ in sub for _ in cands(p)]
            answers = [a for p, _, _ in sub for a in cands(p)]
            nlls += scoring.score(engine.model, caches, feed, answers, batch_size=len(caches))
            engine.stats.prompt_extensions += len(sub)
            engine.stats.phase_b_items += len(caches)
    else:
        caches, prompts, answers = [], [], []
        for p, _, cache in pairs:
            for cand in cands(p):
                caches.append(cache)
                prompts.append(p.prompt_ids["query"])
                answers.append(cand)
        for s in range(0, len(caches), batch_size):
            nlls += scoring.score(engine.model, caches[s:s + batch_size], prompts[s:s + batch_size], answers[s:s + batch_size],
                                  batch_size=batch_size)
        engine.stats.phase_b_items += len(caches)
    rows, k = [], 0
    for p, name, _ in pairs:
        tok, dn = nlls[k], [float(t.mean()) for t in nlls[k + 1:k + 1 + len(p.distractor_ids)]]
        k += 1 + len(p.distractor_ids)
        row = {"sample_id": p.sample_id, "condition": name, "n_doc_tokens": len(p.doc_ids),
               "n_prefix_tokens": len(prefix), "n_answer_tokens": len(p.answer_ids), **p.flags,
               "token_nlls": [round(float(x), 6) for x in tok], "nll": float(tok.mean())}
        if dn:
            row.update(distractor_samples=list(p.distractor_samples), distractor_nlls=[round(x, 6) for x in dn],
                       **margin.candidate_stats(row["nll"], dn, engine.atol))
        rows.append(row)
    return rows


def run(engine, samples, store, names: list[str], prefix: list[int], *, wave: int = 8,
        batch_size: int = 32, progress: bool = True, n_distractors: int = 0, seed: int = 42,
        share_prompt: bool = True) -> list[dict]:
    """Score every sample not yet complete in ``store``, ``wave`` samples at a time (resumable);
    ``n_distractors`` answers of other samples ride along on every hybrid cache (``lib.kv.margin``)."""
    from lib.lab.runs import run_waves

    by = {s.id: s for s in samples}
    dis = priming.distractor_pairs(samples, n_distractors, seed)
    return run_waves(store, list(by), names, lambda ids: score_samples(engine, [by[i] for i in ids], names, prefix,
                                                                        batch_size=batch_size, distractors=dis,
                                                                        share_prompt=share_prompt),
                     wave=wave, progress=progress)


def cutoff_curve(comparisons: list[dict], cutoffs: list[int]) -> dict[str, list[dict]]:
    """{"early": [...], "late": [...]}: d vs bare (with CI) at each cutoff, the mean delta (nats, % of bare) beside it."""
    by = {r["cond"]: r for r in comparisons}
    keys = ("d", "ci_low", "ci_high", "p_holm", "p_holm_wilcoxon", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
            "pct_of_ref", "pct_ci_low", "pct_ci_high")
    return {fam: [{"cutoff": c, **{k: by[f"values_{fam}_{c}"][k] for k in keys if k in by[f"values_{fam}_{c}"]}}
                  for c in cutoffs] for fam in ("early", "late")}


def best_cutoff(nll: dict[str, np.ndarray], cutoffs: list[int], family: str = "early", *, ref: str = "bare",
                n_boot: int = 2000, seed: int = 0, atol: float | None = None) -> dict:
    """The cutoff with the largest d vs ``ref``, its bootstrap CI, and an unbiased split-half estimate.

    Every d here uses the one noise rule (``lib.kv.noise.clean_delta`` with ``atol``, the scoring
    dtype's tolerance): a cutoff equal to ``ref`` up to float noise has d exactly 0, so it cannot win
    on the sd of its rounding, and the reported d lies in its own CI.

    - ``cutoff``/``d``: argmax over cutoffs on all samples (optimistic: chosen and measured on the
      same samples); ``mean_delta`` (nats) and ``pct_of_ref`` (% of the mean ``ref`` NLL) with their
      CIs (``mean_delta_ci``, ``pct_ci``) beside it.
    - ``cutoff_ci``: 2.5/97.5 percentiles of the argmax over bootstrap resamples of samples;
      ``cutoff_share``: how often each cutoff wins.
    - ``d_ci``: bootstrap CI of d at the chosen cutoff.
    - ``split_half_d``: choose the cutoff on one random half, measure d on the other, both ways,
      averaged (no selection bias; the honest size of "the best cutoff").
    """
    names = [f"values_{family}_{c}" for c in cutoffs]
    ref_v = np.asarray(nll[ref], dtype=np.float64)
    delta = np.stack([clean_delta(ref_v, nll[n], atol) for n in names])  # (C, n)
    n = delta.shape[1]
    if n < 4:
        raise ValueError(f"best_cutoff needs >= 4 samples, got {n}")

    def d_of(cols):
        x = delta[:, cols]
        sd = x.std(axis=1, ddof=1)
        return np.where(sd > 0, x.mean(axis=1) / np.where(sd > 0, sd, 1), 0.0)

    d_all = d_of(np.arange(n))
    k = int(np.argmax(d_all))
    rng = np.random.default_rng(seed)
    boot = np.array([int(np.argmax(d_of(rng.integers(0, n, n)))) for _ in range(n_boot)])
    lo, hi = np.percentile([cutoffs[b] for b in boot], [2.5, 97.5])
    best = stats.paired_test(ref_v, nll[names[k]], n_boot=n_boot, seed=seed, atol=atol)
    perm = np.random.default_rng(seed + 1).permutation(n)
    halves = (perm[: n // 2], perm[n // 2:])
    split = []
    for a, b in (halves, halves[::-1]):
        kk = int(np.argmax(d_of(a)))
        split.append({"chosen_on_half": cutoffs[kk], "d_on_other_half": float(d_of(b)[kk])})
    return {"family": family, "cutoff": cutoffs[k], "d": float(d_all[k]), "d_ci": [best.ci_low, best.ci_high],
            "mean_delta": best.mean_delta, "mean_delta_ci": [best.mean_delta_ci_low, best.mean_delta_ci_high],
            "pct_of_ref": best.pct_of_ref, "pct_ci": [best.pct_ci_low, best.pct_ci_high],
            "noise_atol": best.noise_atol,
            "cutoff_ci": [float(lo), float(hi)],
            "cutoff_share": {str(c): float((boot == i).mean()) for i, c in enumerate(cutoffs)},
            "split_half": split, "split_half_d": float(np.mean([s["d_on_other_half"] for s in split]))}


def first_token_share(nll: dict[str, np.ndarray], *, part: str = "values_first_token", whole: str = "values_only",
                      ref: str = "bare", n_boot: int = 2000, seed: int = 0, atol: float | None = None) -> dict | None:
    """How much of ``whole``'s effect vs ``ref`` the first document token alone carries (``values_only`` and its
    first-token values by default; ``primed`` and ``primed_first_token`` for full priming).

    ``share`` = mean delta of ``part`` / mean delta of ``whole`` (deltas ``ref`` - condition,
    nats; deltas within the dtype's noise tolerance ``atol`` count as 0), with a paired bootstrap CI over
    samples (``share_ci``). Near 1: the position artifact (the first document token sits after the anchor in
    the bare run, after the prefix in the primed one) carries the effect; near 0: the rest of the document
    does. None when the run lacks either condition (runs before the position hybrids existed).
    """
    if part not in nll or whole not in nll:
        return None
    ref_v = np.asarray(nll[ref], dtype=np.float64)
    dp, dw = clean_delta(ref_v, nll[part], atol), clean_delta(ref_v, nll[whole], atol)
    n = len(ref_v)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        w = dw[i].mean()
        if w != 0:
            boot.append(dp[i].mean() / w)
    lo, hi = (np.percentile(boot, [2.5, 97.5]) if boot else (float("nan"), float("nan")))
    w = float(dw.mean())
    return {"part": part, "whole": whole, "ref": ref, "n": n,
            "mean_delta_part": float(dp.mean()), "mean_delta_whole": w,
            "share": float(dp.mean() / w) if w != 0 else float("nan"), "share_ci": [float(lo), float(hi)],
            "d_part": stats.cohens_d_paired(ref_v, np.asarray(nll[part], dtype=np.float64)),
            "d_whole": stats.cohens_d_paired(ref_v, np.asarray(nll[whole], dtype=np.float64))}
