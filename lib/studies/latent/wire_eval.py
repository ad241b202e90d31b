"""exp12 LatentWire evaluation: per model and joint, resumable (``lib.studies.latent.wire``).

Conditions per model, at equal M (every one through the one layout ``[BOS][prefix][anchor] -> answer``):
  text          the full text prompt: context ids + anchor (also the KD teacher)
  latent        THIS model's adapter applied to the shared Z
  budget        the WHOLE prompt (passage + question text) cut to its first M tokens of THIS model's
                tokenizer, then the answer cue (the seed's token-budget baseline)
  budget_slot   the format-matched baseline: the first M tokens of what the latent holds, placed exactly
                where the latent sits, with the latent's anchor (``LATENT_INPUT=prompt``: the same text as
                ``budget``; ``passage``: the single-model exp12's budget)
  latent_other  another example's latent (the next one in evaluation order)
  latent_zero   M zero vectors
Joint (the seed's joint rescoring): each model greedily decodes a candidate from its latent; every
candidate is scored under every model from that model's latent (per-token NLL of `` candidate`` + EOS in
that model's tokens); the candidate with the lowest SUM over models of per-token NLL is the joint answer
(ties: the earlier model). Also the oracle (best F1 of the candidates) and the agreement rate.

Resumable: one stored row per (model, condition, m, chunk of examples) in a ``RunStore`` (the chunk's
per-example rows inside it): a kill loses at most the chunk in progress, a rerun skips stored chunks.
"""
from __future__ import annotations

import torch

from lib.data import squad
from lib.lab.runs import RunStore
from lib.studies.latent import evaluation as ev
from lib.studies.latent.layout import answer_logits, assemble, embed

CONDITIONS = ("text", "latent", "budget", "budget_slot", "latent_other", "latent_zero")
PER_M = CONDITIONS[1:]
KEY = ("model", "condition", "m", "chunk")
JOINT = "joint"
RUNTIME_KNOBS = ("OUT_DIR", "FRESH", "PROGRESS", "SMOKE", "CHECKPOINT_EVERY")
# the seed's acceptance criteria (latentwire_experiment_log.md, newest entry first)
CRITERIA = {"first_tok_at1": 0.08, "f1": 0.05, "f1_ratio_to_text": 0.25}
CRITERIA_SOURCE = ("seeds/latentwire_experiment_log.md line 49 (2025-09-29 (d), the last update): Stage B FirstTok@1 > 8%, "
                   "F1 > 0.05; lines 56, 64 and 70 (2025-09-29 (a)-(c), earlier): FirstTok@1 > 12%, F1 > 0.10, latent >= 25% "
                   "of text. Used: the last update's two thresholds plus the earlier 25% ratio, which it did not restate")


def store_config(params: dict, checkpoints: dict) -> dict:
    """The notebook's knobs that change numbers plus each M's checkpoint meta (config, data, models)."""
    return {"params": {k: v for k, v in params.items() if k not in RUNTIME_KNOBS}, "checkpoints": checkpoints}


def open_store(out_dir, config: dict, *, fresh: bool = False) -> RunStore:
    return RunStore(out_dir, config, key_fields=KEY, fresh=fresh)


@torch.no_grad()
def latents(tw, lms, items_by_model, batch_size: int) -> list[torch.Tensor]:
    """Per model, the calibrated latents (N, M, d_model) of every item (encoder run once per batch)."""
    out = [[] for _ in lms]
    src = lms[tw.wire.cfg.encoder_source]
    for s in range(0, len(items_by_model[0]), batch_size):
        z = tw.wire.latent(src, [its[s:s + batch_size] for its in items_by_model])
        for j, a in enumerate(tw.wire.adapters):
            out[j].append(a(z).float())
    return [torch.cat(x) for x in out]


def prefixes(cond: str, lm, items, lat_all=None, start: int = 0, m: int = 0):
    """(prefixes, anchors) of ``cond`` for ``items`` (at ``start`` of the evaluation set; ``lat_all``: this
    model's latents of the WHOLE set, for latent and latent_other)."""
    anchors = [it.anchor_ids for it in items]
    if cond == "text":
        return [it.context_ids for it in items], anchors
    if cond == "replay":
        return [embed(lm.model, it.context_ids).detach().float() for it in items], anchors
    if cond in ("budget", "budget_slot", "latent_zero") and m < 1:
        raise ValueError(f"condition {cond!r} needs m >= 1, got {m}")
    if cond == "budget":
        return [it.prompt_ids[:m] for it in items], [it.cue_ids for it in items]
    if cond == "budget_slot":
        return [it.context_ids[:m] for it in items], anchors
    if cond == "latent_zero":
        return [torch.zeros(m, lm.model.get_input_embeddings().weight.shape[1]) for _ in items], anchors
    if cond in ("latent", "latent_other"):
        if lat_all is None:
            raise ValueError(f"condition {cond!r} needs the trained wire's latents")
        z = lat_all.roll(-1, 0) if cond == "latent_other" else lat_all
        return list(z[start:start + len(items)]), anchors
    raise ValueError(f"unknown condition {cond!r}; choose from {CONDITIONS + ('replay',)}")


def evaluate(lms, names, items_by_model, conditions, store: RunStore, *, tw=None, m: int = 0, chunk: int = 16,
             max_new_tokens: int = 16, joint: bool = True, progress: bool = False, on_chunk=None) -> None:
    """Score every (model, condition, chunk) not yet in ``store``; then the joint rescoring (``joint`` and
    more than one model and ``latent`` among the conditions). ``on_chunk(key)`` runs after each stored
    chunk (tests). Rows read back with ``rows(store)``."""
    from tqdm.auto import tqdm

    if len(set(names)) != len(names) or len(names) != len(lms):
        raise ValueError(f"model names {names!r} must be distinct, one per model")
    n = len(items_by_model[0])
    if "latent_other" in conditions and n < 2:
        raise ValueError("latent_other needs at least 2 items (it uses the next item's latent)")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    starts = list(range(0, n, chunk))
    todo = [(j, c, k) for j in range(len(lms)) for c in conditions for k in range(len(starts))
            if not store.is_done(names[j], c, m, k)]
    need = joint or any(c in ("latent", "latent_other") for _, c, _ in todo)
    lat_all = latents(tw, lms, items_by_model, chunk) if tw is not None and need else None
    bar = tqdm(total=len(todo), desc=f"evaluate M={m}", disable=not progress)
    for j, cond, k in todo:
        items = items_by_model[j][starts[k]:starts[k] + chunk]
        pre, anchors = prefixes(cond, lms[j], items, lat_all[j] if lat_all else None, starts[k], m)
        rows = [{**r, "model": names[j]} for r in ev.chunk_rows(lms[j], items, pre, anchors, cond, m, max_new_tokens)]
        store.append([{"model": names[j], "condition": cond, "m": m, "chunk": k, "rows": rows}])
        if on_chunk:
            on_chunk((names[j], cond, m, k))
        bar.update(1)
    bar.close()
    if joint and len(lms) > 1 and "latent" in conditions and tw is not None:
        _joint(lms, names, items_by_model, store, lat_all, m, starts, chunk, on_chunk)


def rows(store: RunStore, model: str | None = None) -> list[dict]:
    """Per-example rows of the stored chunks (of ``model``), ordered by (model, m, condition, chunk)."""
    got = sorted(store.rows(), key=lambda r: (r["model"], r["m"], r["condition"], r["chunk"]))
    return [x for r in got if model is None or r["model"] == model for x in r["rows"]]


def _candidate_ids(tok, text: str, eos) -> tuple:
    body = tok(" " + text.strip(), add_special_tokens=False).input_ids if text.strip() else []
    return tuple(body) + (eos,)


@torch.no_grad()
def _joint(lms, names, items_by_model, store, lat_all, m, starts, chunk, on_chunk) -> None:
    latent = {(r["model"], r["sample_id"]): r for r in rows(store) if r["condition"] == "latent" and r["m"] == m}
    for k, s in enumerate(starts):
        if store.is_done(JOINT, "latent_joint", m, k):
            continue
        idx = range(s, min(s + chunk, len(items_by_model[0])))
        ref = [items_by_model[0][i] for i in idx]
        cands = [[latent[(nm, it.sample_id)]["pred"] for nm in names] for it in ref]
        score = torch.zeros(len(ref), len(names), dtype=torch.float64)  # [example, candidate]
        for j, lm in enumerate(lms):
            eos = lm.tokenizer.eos_token_id
            its = [items_by_model[j][i] for i in idx]
            for c in range(len(names)):
                ans = [_candidate_ids(lm.tokenizer, cs[c], eos) for cs in cands]
                b = assemble(lm.model, lm.arch.bos_id, list(lat_all[j][s:s + len(its)]), [it.anchor_ids for it in its], ans)
                nll = torch.nn.functional.cross_entropy(answer_logits(lm.model, b), b.targets, reduction="none")
                for i in range(len(its)):
                    score[i, c] += float(nll[b.rows == i].mean())
        out = []
        for i, it in enumerate(ref):
            pick = int(score[i].argmin())
            pred = cands[i][pick]
            f1s = [squad.f1_score(x, it.answers) for x in cands[i]]
            out.append({"sample_id": it.sample_id, "condition": "latent_joint", "m": m, "model": JOINT, "pred": pred,
                        "pick": pick, "scores": score[i].tolist(), "em": squad.exact_match(pred, it.answers),
                        "f1": squad.f1_score(pred, it.answers), "oracle_f1": max(f1s),
                        "agree": len({squad.normalize_answer(x) for x in cands[i]}) == 1})
        store.append([{"model": JOINT, "condition": "latent_joint", "m": m, "chunk": k, "rows": out}])
        if on_chunk:
            on_chunk((JOINT, "latent_joint", m, k))


def summarize_joint(joint_rows: list[dict], names) -> list[dict]:
    out = []
    for m in sorted({r["m"] for r in joint_rows}):
        rs = [r for r in joint_rows if r["m"] == m]
        mean = lambda k: sum(float(r[k]) for r in rs) / len(rs)  # noqa: E731
        out.append({"condition": "latent_joint", "m": m, "n": len(rs), "em": mean("em"), "f1": mean("f1"),
                    "oracle_f1": mean("oracle_f1"), "agreement": mean("agree"),
                    **{f"picked_{nm}": sum(r["pick"] == j for r in rs) / len(rs) for j, nm in enumerate(names)}})
    return out


def verdicts(summary: list[dict], criteria: dict = CRITERIA) -> list[dict]:
    """Per M, the seed's acceptance criteria on ``latent`` (one model's summary): each met or not."""
    text = [s for s in summary if s["condition"] == "text"]
    if not text:
        raise ValueError("verdicts need the text condition's summary (latent F1 as a share of text F1)")
    tf1 = text[0]["f1"]
    out = []
    for s in summary:
        if s["condition"] != "latent":
            continue
        ratio = s["f1"] / tf1 if tf1 > 0 else None
        checks = {"first_tok_at1": s["first_tok_at1"] > criteria["first_tok_at1"], "f1": s["f1"] > criteria["f1"],
                  "f1_ratio_to_text": ratio is not None and ratio >= criteria["f1_ratio_to_text"]}
        out.append({"m": s["m"], "first_tok_at1": s["first_tok_at1"], "f1": s["f1"], "text_f1": tf1, "f1_ratio": ratio,
                    "checks": checks, "met": all(checks.values())})
    return out


def verdict_lines(name: str, verdict_rows: list[dict], criteria: dict = CRITERIA) -> list[str]:
    lines = []
    for v in verdict_rows:
        c = v["checks"]
        ratio = "n/a (text F1 0)" if v["f1_ratio"] is None else f"{v['f1_ratio']:.2f}"
        lines.append(f"{name} M={v['m']}: FirstTok@1 {v['first_tok_at1']:.3f} > {criteria['first_tok_at1']} "
                     f"{'met' if c['first_tok_at1'] else 'not met'}; F1 {v['f1']:.3f} > {criteria['f1']} "
                     f"{'met' if c['f1'] else 'not met'}; latent/text F1 {ratio} >= {criteria['f1_ratio_to_text']} "
                     f"{'met' if c['f1_ratio_to_text'] else 'not met'} => {'MET' if v['met'] else 'NOT MET'}")
    return lines
