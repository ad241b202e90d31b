"""The hub data sets (`HUB_DATASETS`: MS MARCO v1.1, SQuAD 2.0, TriviaQA rc.wikipedia, HotpotQA
distractor, neural-bridge/rag-dataset-12000): one row mapper per set and the scan that takes the first `n` eligible rows in file order.

- `source=None` loads the hub copy through `datasets.load_dataset`; a `.json`, `.jsonl` or
  `.parquet` path loads a local file whose rows use that data set's own hub schema; any other
  string is a hub id, optionally `"hub_id:config"`. `neural_bridge` (split `test`; the seed's
  naturally long documents, ~600 words) has no id column: its ids are `neural_bridge-<split>-<row>`.
- Checks run in this order and the first failing one is the skip reason: `duplicate_id`,
  `empty_query`, answer checks (`no_answer`, `empty_answer`, `unanswerable`), passage checks
  (`no_selected_passage`, `supporting_title_missing`, `answer_not_in_context`, `empty_passage`),
  then the word limits (`passage_too_long`, `passage_too_short`).
- Word limits skip rows, except for TriviaQA, whose long Wikipedia pages are cut to a window of
  `max_passage_words` words (default 300) around the first answer match (`meta['truncated']`).
  A TriviaQA match is case-insensitive and must not be glued to word characters ("Art" does
  not match inside "Martha").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lib.data.schema import Sample, _Limits, _as_list, _clean_answers, _length_reason, _n_words, _unique

NO_ANSWER = "No Answer Present."
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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


SEED_ANSWER_WORDS = (2, 30)  # the exp01 seed's answer filter (words, inclusive)


def _map_ms_marco_seed(row: dict, lim: _Limits):
    """The exp01 seed's MS MARCO selection: the FIRST passage (``passages[0]``, not the selected one,
    so the answer need not be in it) and the first answer (``answers[0]``, not the well-formed one),
    answers of 2-30 words. One stated departure: "No Answer Present." is skipped (``no_answer``), where
    the seed kept it (three words) and scored a placeholder as if it were an answer."""
    answers = [a for a in _as_list(row["answers"], "answers") if isinstance(a, str)]
    if not answers or not answers[0].strip():
        return "empty_answer"
    answer = answers[0].strip()
    if answer == NO_ANSWER:
        return "no_answer"
    if not SEED_ANSWER_WORDS[0] <= _n_words(answer) <= SEED_ANSWER_WORDS[1]:
        return "answer_length"
    texts = list(row["passages"]["passage_text"])
    if not texts or not (texts[0] or "").strip():
        return "empty_passage"
    passage = texts[0].strip()
    reason = _length_reason(passage, lim)
    if reason:
        return reason
    selected = list(row["passages"].get("is_selected") or [])
    return {"passage": passage, "answers": (answer,),
            "meta": {"query_type": row.get("query_type"), "passage_index": 0, "answer_source": "answers[0]",
                     "passage_is_selected": bool(selected and selected[0] == 1)}}


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
    # the exp01 seed's selection (train split, passages[0], answers[0], 2-30-word answers)
    "ms_marco_seed": _Spec("microsoft/ms_marco", "v1.1", "train", "query_id", "query",
                           ("query", "query_id", "answers", "passages"), _map_ms_marco_seed),
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
