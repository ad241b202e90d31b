"""SQuAD v1.1 loading (hub `rajpurkar/squad` or a local file in its schema) and SQuAD answer metrics.

`lib.data` covers SQuAD 2.0; v1.1 has the same columns (id, title, context, question, answers) and
every question is answerable. Rows are mapped by `lib.data`'s SQuAD mapper, so skip reasons and the
`Sample` schema are the same as for `squad_v2`.

Metrics follow the official SQuAD v1.1 script: normalize (lower case, drop punctuation, drop the
articles a/an/the, collapse white space); EM is exact equality of normalized strings; F1 is the
token-count (multiset) overlap F1; both take the maximum over all reference answers.
"""
from __future__ import annotations

import re
import string
from collections import Counter

from lib.data import hub, schema

SQUAD_V1 = hub._Spec("rajpurkar/squad", None, "validation", "id", "question",
                     ("id", "question", "context", "answers"), hub._map_squad_v2)
SPLITS = ("train", "validation")


class SquadV1Data(schema.LoadedData):
    """``LoadedData`` named "squad_v1.1" (``lib.data.DATASETS`` lists the sets ``load_samples`` knows)."""

    def __post_init__(self):
        if self.name != "squad_v1.1":
            raise ValueError(f"SquadV1Data holds squad_v1.1 only, got {self.name!r}")


def load_squad_v1(n: int, *, split: str = "validation", source: str | None = None,
                  max_passage_words: int | None = None, min_passage_words: int | None = None,
                  allow_fewer: bool = False) -> SquadV1Data:
    """The first `n` eligible SQuAD v1.1 rows of `split` (file order), as `lib.data.Sample`s."""
    if split not in SPLITS:
        raise ValueError(f"SQuAD v1.1 split {split!r} not in {SPLITS}")
    schema._check_int("n", n, 1)
    schema._check_int("max_passage_words", max_passage_words, 1)
    schema._check_int("min_passage_words", min_passage_words, 1)
    lim = schema._Limits(max_passage_words, min_passage_words)
    rows, desc = hub._open_rows(SQUAD_V1, source, split)
    missing = [c for c in SQUAD_V1.columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"squad_v1.1 rows from {desc} lack columns {missing}; expected {list(SQUAD_V1.columns)}")
    samples, skipped, taken = [], [], set()
    for idx, row in enumerate(rows):
        rid, query = str(row["id"]), (row["question"] or "").strip()
        out = "duplicate_id" if rid in taken else "empty_query" if not query else hub._map_squad_v2(row, lim)
        if isinstance(out, str):
            skipped.append((rid, out))
            continue
        meta = {"dataset": "squad_v1.1", "split": split, "row": idx, "truncated": False, **out["meta"]}
        samples.append(schema.Sample(id=rid, query=query, passage=out["passage"], answer=out["answers"][0],
                                     answers=tuple(out["answers"]), meta=meta))
        taken.add(rid)
        if len(samples) == n:
            break
    loaded = SquadV1Data(name="squad_v1.1", split=split, samples=samples, skipped=skipped, source=desc)
    if len(samples) < n and not allow_fewer:
        raise ValueError(f"squad_v1.1: found {len(samples)} eligible rows of the {n} requested in {desc} "
                         f"(split {split!r}); skip counts: {loaded.skip_counts()}")
    return loaded


# ----------------------------------------------------------------------------- metrics
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, refs) -> float:
    refs = _refs(refs)
    return max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)


def f1_score(pred: str, refs) -> float:
    return max(_f1(pred, r) for r in _refs(refs))


def _refs(refs) -> list[str]:
    if isinstance(refs, str):
        refs = [refs]
    refs = list(refs)
    if not refs:
        raise ValueError("no reference answers given; expected at least one")
    return refs
