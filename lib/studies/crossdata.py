"""exp04: hard examples across data sets, without choosing "hard" on the scores under test.

Data-set specs. ``parse_datasets("ms_marco,squad_v2", sources="a.jsonl,")`` gives one
``DataSpec`` per entry; ``synthetic@7`` is the offline synthetic set drawn with seed 7 (so an
offline run can stand in for several data sets). Sample ids are prefixed with the spec's label
(``"ms_marco/123"``) so ids from different sets never collide in one run store.

Metrics. The primary metric is the *semantic delta* ``NLL(random_tokens) - NLL(condition)``: a
token-matched random prefix of the same length is the reference, so what is left is what the
prefix's content adds beyond its structure (positive: the content helps). Because the bare NLL
does not enter it, choosing samples on their bare NLL does not bias it through regression to the
mean the way it biases ``NLL(bare) - NLL(condition)``.

Hard subsets, two ways, both reported:
- ``naive`` (the earlier codebase's method): the top ``fraction`` of samples by their own bare
  NLL. Its d vs bare is biased upward by regression to the mean; kept as a contrast.
- ``heldout`` (primary): two-fold cross-fitting. Samples of a data set are split in two halves
  (seeded). On one half, a ridge regression predicts bare NLL from features known before any
  scoring (answer, query and document token counts, query/document word overlap, whether the
  answer text occurs in the document); the rule "predicted hardness >= the fit half's
  (1 - fraction) quantile" is then applied to the OTHER half. Every sample's membership is
  decided by a model that never saw its scores, so tests on the subset (including d vs bare)
  carry no selection bias. The out-of-fold Spearman rho of prediction vs bare NLL says how much
  real hardness the rule captures (rho near 0: the subset is close to a random one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from lib.report import stats
from lib.studies import conditions

SEMANTIC_REF = "random_tokens"
FEATURES = ("log_answer_tokens", "log_query_tokens", "log_doc_tokens", "query_doc_overlap", "answer_in_doc")


@dataclass(frozen=True)
class DataSpec:
    label: str
    name: str
    source: str | None
    seed: int | None


def parse_datasets(spec: str, sources: str = "") -> list[DataSpec]:
    """``"ms_marco,synthetic@3"`` (+ optional comma-aligned local sources) -> DataSpecs."""
    from lib.data import DATASETS

    names = [x.strip() for x in spec.split(",") if x.strip()]
    if not names:
        raise ValueError(f"DATASETS={spec!r} names no data set; choose from {DATASETS} (synthetic@SEED allowed)")
    srcs = [x.strip() for x in sources.split(",")] if sources.strip() else [""] * len(names)
    if len(srcs) != len(names):
        raise ValueError(f"DATA_SOURCES has {len(srcs)} entries for {len(names)} data sets {names}; "
                         f"give one per data set (empty = hub copy) or none")
    out = []
    for label, src in zip(names, srcs):
        name, _, seed = label.partition("@")
        if name not in DATASETS:
            raise ValueError(f"unknown data set {name!r} in DATASETS={spec!r}; choose from {DATASETS}")
        if seed and (name != "synthetic" or not seed.isdigit()):
            raise ValueError(f"{label!r}: only synthetic takes a seed, written synthetic@<int>")
        out.append(DataSpec(label, name, src or None, int(seed) if seed else None))
    labels = [d.label for d in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"DATASETS lists a data set twice: {labels}")
    return out


def load(specs: list[DataSpec], n: int, *, seed: int, split: str | None = None, **limits) -> dict:
    """{label: LoadedData} with sample ids prefixed ``label/``; synthetic uses its own seed if given."""
    from lib.data import load_samples

    out = {}
    for d in specs:
        data = load_samples(d.name, n, split=None if d.name == "synthetic" else split, source=d.source,
                            seed=d.seed if d.seed is not None else seed, **limits)
        data.samples = [replace(s, id=f"{d.label}/{s.id}", meta={**s.meta, "dataset_label": d.label}) for s in data.samples]
        out[d.label] = data
    return out


# ----------------------------------------------------------------------------- hardness features
def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def features(sample, n_answer: int, n_query: int, n_doc: int) -> list[float]:
    """Score-free hardness features of one sample, in ``FEATURES`` order."""
    q, p = _words(sample.query), _words(sample.passage)
    return [float(np.log(n_answer)), float(np.log(max(n_query, 1))), float(np.log(max(n_doc, 1))),
            len(q & p) / max(len(q), 1), float(sample.answer.lower() in sample.passage.lower())]


def feature_table(items, samples, ref: str = "bare") -> dict[str, np.ndarray]:
    """{data-set label: (n, len(FEATURES)) array} in sample order, from the ``ref`` WorkItems."""
    by = {(it.sample_id, it.condition): it for it in items}
    out: dict[str, list] = {}
    for s in samples:
        it = by.get((s.id, ref))
        if it is None:
            raise ValueError(f"sample {s.id!r} has no {ref!r} item; features need the reference condition")
        out.setdefault(s.meta["dataset_label"], []).append(
            features(s, len(it.answer_ids), it.row["q_tokens"], len(it.doc_ids)))
    return {k: np.asarray(v, float) for k, v in out.items()}


def _ridge_fit(x: np.ndarray, y: np.ndarray, lam: float):
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x - mu) / sd
    w = np.linalg.solve(z.T @ z + lam * np.eye(x.shape[1]), z.T @ (y - y.mean()))
    return lambda xn: ((xn - mu) / sd) @ w + y.mean()


def heldout_hard(x: np.ndarray, bare: np.ndarray, fraction: float, *, seed: int, lam: float = 1.0) -> dict:
    """Two-fold cross-fitted hard subset (see module docstring).

    x: (n, n_features) score-free features; bare: (n,) bare NLL, used only to FIT on the other fold.
    Returns mask (n,) bool, out-of-fold predictions, their Spearman rho with bare, and the fold ids.
    """
    from scipy import stats as ss

    x, bare = np.asarray(x, float), np.asarray(bare, float)
    n = len(bare)
    if not 0 < fraction < 1:
        raise ValueError(f"hard fraction must be in (0, 1), got {fraction!r}")
    if x.shape[0] != n or n < 4:
        raise ValueError(f"need >= 4 samples with one feature row each, got x {x.shape} and {n} scores")
    fold = np.zeros(n, dtype=int)
    fold[np.random.default_rng(seed).permutation(n)[n // 2:]] = 1
    pred, mask, thresholds = np.empty(n), np.zeros(n, bool), []
    for k in (0, 1):
        fit, test = fold != k, fold == k
        f = _ridge_fit(x[fit], bare[fit], lam)
        thr = float(np.quantile(f(x[fit]), 1 - fraction))
        pred[test] = f(x[test])
        mask[test] = pred[test] >= thr
        thresholds.append(thr)
    rho = ss.spearmanr(pred, bare).statistic if np.ptp(pred) > 0 else float("nan")
    return {"mask": mask, "pred": pred, "fold": fold, "thresholds": thresholds, "oof_spearman_rho": float(rho)}


def naive_hard(bare: np.ndarray, fraction: float) -> np.ndarray:
    """Top ``fraction`` of samples by their own bare NLL (biased; kept as a contrast)."""
    bare = np.asarray(bare, float)
    k = max(1, int(round(fraction * len(bare))))
    mask = np.zeros(len(bare), bool)
    mask[np.argsort(-bare, kind="stable")[:k]] = True
    return mask


# ----------------------------------------------------------------------------- analysis
def _sub(nll: dict, mask: np.ndarray) -> dict:
    return {k: v[mask] for k, v in nll.items()}


def subset_stats(nll: dict, names: list[str], *, ref: str = "bare", semantic_ref: str = SEMANTIC_REF,
                 n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Semantic delta (vs ``semantic_ref``) and d vs ``ref`` for every other condition, Holm within each family;
    ``llm_vs_generic``: each model-written surrogate vs ``extractor_matched`` (when the run has them)."""
    if semantic_ref not in names:
        raise ValueError(f"the semantic delta needs condition {semantic_ref!r}; the run has {names}")
    sem = [c for c in names if c not in (ref, semantic_ref)]
    n = len(next(iter(nll.values())))
    out = {"n": n}
    if n < 3:
        out.update(semantic=[], vs_bare=[], note=f"only {n} samples; no statistics")
        return out
    out["semantic"] = stats.compare_conditions(nll, semantic_ref, sem, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    out["vs_bare"] = stats.compare_conditions(nll, ref, [c for c in names if c != ref], n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    pairs = conditions.llm_vs_generic_pairs(names) if conditions.GENERIC_SURROGATE in names else []
    if pairs:
        out["llm_vs_generic"] = stats.compare_conditions(nll, None, pairs=pairs, n_boot=n_boot, seed=seed, atol=atol,
                                                         primary_test=primary_test)
    return out


def sign_consistency(per_dataset: dict[str, list[dict]], pooled: list[dict]) -> list[dict]:
    """Per condition: the sign of the semantic-delta d in each data set and whether all agree."""
    pooled_d = {r["cond"]: r["d"] for r in pooled}
    rows = []
    for c in pooled_d:
        ds = {lab: next((r["d"] for r in rows_ if r["cond"] == c), float("nan")) for lab, rows_ in per_dataset.items()}
        signs = [int(np.sign(v)) for v in ds.values() if np.isfinite(v)]
        ps = int(np.sign(pooled_d[c]))
        rows.append({"cond": c, "d_by_dataset": ds, "pooled_d": pooled_d[c], "n_positive": signs.count(1),
                     "n_negative": signs.count(-1), "n_agree_with_pooled": signs.count(ps),
                     "consistent": len(signs) == len(ds) and len(set(signs)) == 1})
    return rows


def analyse(nll_by_ds: dict[str, dict[str, np.ndarray]], feats_by_ds: dict[str, np.ndarray], names: list[str], *,
            fraction: float = 0.4, ref: str = "bare", n_boot: int = 2000, seed: int = 0, atol: float | None = None, primary_test: str = "t") -> dict:
    """Per data set and pooled: all samples, held-out hard subset (primary) and naive hard subset.

    nll_by_ds: {label: {condition: NLL per sample}}; feats_by_ds: {label: (n, len(FEATURES))}.
    """
    from lib.report import analysis

    out = {"method": {"semantic_ref": SEMANTIC_REF, "hard_fraction": fraction, "features": list(FEATURES),
                      "noise_atol": atol, "primary_test": primary_test,
                      "heldout": "two-fold cross-fitted ridge on score-free features; see lib/studies/crossdata.py",
                      "naive": "top fraction by the sample's own bare NLL (regression to the mean inflates d vs bare)"},
           "datasets": {}}
    masks = {}
    for i, (lab, nll) in enumerate(nll_by_ds.items()):
        h = heldout_hard(feats_by_ds[lab], nll[ref], fraction, seed=seed + i)
        nv = naive_hard(nll[ref], fraction)
        masks[lab] = (h["mask"], nv)
        gsub = _sub(nll, h["mask"])
        has_order = all(c in names for c in (ref, *analysis.RELEVANCE_ORDER))
        out["datasets"][lab] = {
            "n": len(nll[ref]),
            "heldout_selection": {"n_hard": int(h["mask"].sum()), "oof_spearman_rho": h["oof_spearman_rho"],
                                  "thresholds": h["thresholds"],
                                  "overlap_with_naive": float((h["mask"] & nv).sum() / max(nv.sum(), 1))},
            "all": subset_stats(nll, names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
            "hard_heldout": subset_stats(gsub, names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
            "hard_naive": subset_stats(_sub(nll, nv), names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
            "semantic_gradient_hard_heldout": (analysis.semantic_gradient(gsub, ref=ref)
                                               if has_order and h["mask"].sum() >= 3 else None),
        }
    pooled = {c: np.concatenate([nll_by_ds[lab][c] for lab in nll_by_ds]) for c in names}
    hmask = np.concatenate([masks[lab][0] for lab in nll_by_ds])
    nmask = np.concatenate([masks[lab][1] for lab in nll_by_ds])
    out["pooled"] = {
        "n": len(pooled[ref]),
        "all": subset_stats(pooled, names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
        "hard_heldout": subset_stats(_sub(pooled, hmask), names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
        "hard_naive": subset_stats(_sub(pooled, nmask), names, ref=ref, n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test),
    }
    for subset in ("all", "hard_heldout"):
        out[f"sign_consistency_{subset}"] = sign_consistency(
            {lab: out["datasets"][lab][subset]["semantic"] for lab in nll_by_ds}, out["pooled"][subset]["semantic"])
    return out


def d_grid(result: dict, subset: str = "hard_heldout", metric: str = "semantic") -> dict[str, dict[str, float]]:
    """{row label (data set or 'pooled'): {condition: d}} for a heatmap."""
    grid = {lab: {r["cond"]: r["d"] for r in ds[subset][metric]} for lab, ds in result["datasets"].items()}
    grid["pooled"] = {r["cond"]: r["d"] for r in result["pooled"][subset][metric]}
    return grid
