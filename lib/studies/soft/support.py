"""exp07 helpers that need no cache kernel: data splits, the seed's prompt, reference values and success
criteria, nearest vocabulary tokens, prefix hashes (re-exported by ``lib.studies.soft``)."""
from __future__ import annotations

import hashlib

import torch


def nearest_tokens(lm, prefix: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each prefix vector, the ``k`` vocabulary tokens with the highest cosine to it."""
    w = lm.model.get_input_embeddings().weight.detach().float()
    p = prefix.detach().float().to(w.device)
    cos = torch.nn.functional.normalize(p, dim=-1) @ torch.nn.functional.normalize(w, dim=-1).T  # (P, V)
    top = cos.topk(k, dim=-1)
    return [[(lm.tokenizer.decode([int(i)]), round(float(c), 4)) for c, i in zip(cs, ix)]
            for cs, ix in zip(top.values, top.indices)]


def load_splits(dataset: str, n_train: int, n_eval: int, *, train_split: str = "", eval_split: str = "", seed: int = 42,
                source: str | None = None, **limits):
    """Training and evaluation samples that share no sample (id or query+passage); synthetic uses seeds seed / seed+1;
    both splits ``"articles"``: disjoint articles of a one-split registry set (``lib.data.core.load_article_splits``)."""
    from lib.data import load_samples
    from lib.data.core import ARTICLE_SPLIT, load_article_splits

    if ARTICLE_SPLIT in (train_split, eval_split):
        if train_split != eval_split:
            raise ValueError(f"train_split={train_split!r}, eval_split={eval_split!r}: set both to {ARTICLE_SPLIT!r} for an article split")
        return load_article_splits(dataset, n_train, n_eval, seed=seed, source=source, **limits)
    synth = dataset == "synthetic"
    tr = load_samples(dataset, n_train, split=None if synth else (train_split or None), source=source, seed=seed, **limits)
    ev = load_samples(dataset, n_eval, split=None if synth else (eval_split or None), source=source, seed=seed + 1, **limits)
    shared = {s.id for s in tr.samples} & {s.id for s in ev.samples}
    shared |= {s.id for s in ev.samples if (s.query, s.passage) in {(t.query, t.passage) for t in tr.samples}}
    if shared:
        raise ValueError(f"{len(shared)} evaluation samples also occur in training (e.g. {sorted(shared)[:3]}); "
                         f"use different splits (train_split={train_split!r}, eval_split={eval_split!r})")
    return tr, ev


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# The seed's (exp25, Gemma 3 4B-IT, MS MARCO) prompt, reference values and success criteria, for the
# verdict printed by the notebook. References are other runs on another model: context, not a test.
SEED_PROMPT = "\nQuery: {query}\nAnswer:"


SEED_REFERENCE = (
    {"source": "seed Exp 19", "condition": "values_only (all 34 layers)", "d": 0.056},
    {"source": "seed Exp 19", "condition": "values_early_layers (0-16)", "d": 0.211},
    {"source": "seed Exp 21", "condition": "values_early_layers (0-15)", "d": 0.227},
    {"source": "seed Exp 24", "condition": "static_fact @ cutoff=16", "d": 0.21},
)


SUCCESS_CRITERIA = (
    {"criterion": "primary", "cond": "vel_soft_fact", "threshold": 0.25,
     "question": "does the fact-initialised soft prefix beat the discrete prefix's d = +0.227 (d > +0.25)?"},
    {"criterion": "secondary", "cond": "vel_soft_random", "threshold": 0.10,
     "question": "does the randomly initialised soft prefix learn anything useful (d > +0.10)?"},
)


def success_verdicts(comparisons: list[dict], criteria=SUCCESS_CRITERIA) -> list[dict]:
    """One row per seed criterion "d(cond vs bare) > threshold", judged on the bootstrap CI of d:
    "met" when the whole CI is above the threshold, "not met" when it is wholly below, "undecided"
    when it spans it (the point estimate alone decides nothing). A criterion whose condition was not
    evaluated raises."""
    by = {c["cond"]: c for c in comparisons}
    out = []
    for crit in criteria:
        if crit["cond"] not in by:
            raise ValueError(f"criterion {crit['criterion']!r} needs condition {crit['cond']!r}; evaluated: {sorted(by)}")
        c = by[crit["cond"]]
        lo, hi, t = c["ci_low"], c["ci_high"], crit["threshold"]
        verdict = "met" if lo > t else "not met" if hi < t else "undecided"
        out.append({**crit, "d": c["d"], "ci_low": lo, "ci_high": hi, "verdict": verdict})
    return out
