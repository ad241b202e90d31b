"""The sample schema every loader returns (`Sample`, `LoadedData`), the names of the known data sets,
and the helpers the loaders share (word limits, answer cleaning, argument checks).

Conventions
- `answer` is the single reference we score: non-empty and stripped. `answers` holds every
  reference answer, unique, with `answer` first.
- `meta` always has `dataset`, `split`, `row` (0-based index in the source, file order) and
  `truncated` (bool); loaders add set-specific keys (`query_type`, `title`, `template`, ...).
- Every row looked at and not used is recorded in `LoadedData.skipped` as `(row id, reason)`.
  Words are whitespace-separated tokens.
"""
from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lib.data.realdata import REAL_QA

HUB_DATASETS: tuple[str, ...] = ("ms_marco", "ms_marco_seed", "squad_v2", "triviaqa", "hotpotqa", "neural_bridge")
DATASETS: tuple[str, ...] = (*HUB_DATASETS, *REAL_QA, "synthetic")


def _did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value).lower(), list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Sample:
    """One QA item. `answers` defaults to `(answer,)`; a list is stored as a tuple."""

    id: str
    query: str
    passage: str
    answer: str
    answers: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        for name in ("id", "query", "passage", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Sample.{name} must be a non-empty string, got {value!r}")
        if self.answer != self.answer.strip():
            raise ValueError(f"Sample.answer must be stripped, got {self.answer!r}")
        if not isinstance(self.answers, (tuple, list)):
            raise ValueError(f"Sample.answers must be a tuple of strings, got {self.answers!r}")
        answers = tuple(self.answers) or (self.answer,)
        object.__setattr__(self, "answers", answers)
        bad = [a for a in answers if not isinstance(a, str) or not a.strip()]
        if bad:
            raise ValueError(f"Sample.answers must hold non-empty strings, got {bad!r}")
        if answers[0] != self.answer:
            raise ValueError(f"Sample.answers must start with answer {self.answer!r}, "
                             f"got {answers!r}")
        dupes = sorted(a for a, c in Counter(answers).items() if c > 1)
        if dupes:
            raise ValueError(f"Sample.answers must be unique, repeated: {dupes!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"Sample.meta must be a dict, got {type(self.meta).__name__}")


@dataclass
class LoadedData:
    """Samples from one data set and split, plus every row looked at and not used."""

    name: str
    split: str
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str | None = None  # hub id, local path or "synthetic"; for provenance
    provenance: dict = field(default_factory=dict)  # registry sets: package, version, sha256, license

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ValueError(f"unknown data set {self.name!r}; choose from {DATASETS}"
                             f"{_did_you_mean(self.name, DATASETS)}")

    @property
    def n_scanned(self) -> int:
        return len(self.samples) + len(self.skipped)

    def content_sha256(self) -> str:
        """sha256 of the samples used (id, query, passage, answers, in order): the data's identity."""
        import hashlib
        import json

        rows = [[s.id, s.query, s.passage, list(s.answers)] for s in self.samples]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    def info(self) -> dict:
        """What a results.json records about the data."""
        return {"name": self.name, "split": self.split, "n_samples": len(self.samples), "source": self.source,
                "skipped": self.skip_counts(), "content_sha256": self.content_sha256(),
                "provenance": self.provenance, "pipeline_check_only": self.name == "synthetic"}

    def skip_counts(self) -> dict[str, int]:
        """reason -> count, most frequent first (ties alphabetical)."""
        counts = Counter(reason for _, reason in self.skipped)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- shared helpers
@dataclass(frozen=True)
class _Limits:
    max_words: int | None
    min_words: int | None


def _unique(items) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _n_words(text: str) -> int:
    return len(text.split())


def _length_reason(passage: str, lim: _Limits) -> str | None:
    if lim.max_words is not None and _n_words(passage) > lim.max_words:
        return "passage_too_long"
    if lim.min_words is not None and _n_words(passage) < lim.min_words:
        return "passage_too_short"
    return None


def _as_list(value: Any, what: str) -> list:
    """A list field that some copies store as its JSON/Python text (e.g. the string "[]")."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "[]"):
            return []
        if text.startswith("["):
            import ast
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"{what}: cannot parse list text {value!r}") from err
            if not isinstance(parsed, list):
                raise ValueError(f"{what}: list text {value!r} parsed to {type(parsed).__name__}")
            return parsed
        return [value]
    raise ValueError(f"{what}: expected a list or its text, got {type(value).__name__}")


def _clean_answers(values) -> list[str]:
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _check_int(name: str, value, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"{name} must be an int >= {low} or None, got {value!r}")
