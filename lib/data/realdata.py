"""Loaders for the real data extracted by ``lib.data.registry``: QA sets in the ``Sample`` schema, prose.

QA sets (``REAL_QA``), read from the verified cache copy (``source=None``) or from a local file in
the same layout (a path, for tests and user copies):
  squad_v1.1                  SQuAD v1.1 dev (48 articles, 10,565 questions)
  squad_v1.1_long             the same questions, each with a LONG passage: consecutive paragraphs of
                              its article joined into blocks of >= ``LONG_BLOCK_WORDS`` words (the block
                              holding the question's paragraph); the offline stand-in for the seed's
                              naturally long documents (neural-bridge, ~600 words); no default word limit
  squad_shifts_<domain>       SQuAD-Shifts new_wiki / nyt / reddit / amazon (SQuAD schema)
  coqa                        CoQA test stories, first-turn question only
  coqa_history                CoQA turns 2.., the query carries the earlier turns ("Q: .. A: ..")
  quoref, cosmosqa, drop, multirc, ropes   natural-instructions passage tasks (answers lose the
                              one trailing "." the task format appends; ``meta['target_raw']``)

Sampling across articles (seeded): SQuAD in file order puts ~5 questions on a paragraph and
hundreds on one article, so the first n rows would be a handful of articles. Candidates are
grouped by article (SQuAD title / CoQA story / natural-instructions passage), ordered within an
article one question per paragraph at a time, and the articles interleaved round-robin in a
seeded order: the first n samples span min(n, #articles) articles, and the first k of n are the
samples for n=k. Every sample has ``meta['article']``; "other sample" conditions use it
(``lib.studies.priming.assign_other``) so that the other sample always comes from another article.
``article_split`` splits by article for training (exp07, exp12: the canary rule).

Prose (``load_prose``): ``wiki`` (206 Wikipedia pages from gensim's test data, markup stripped to
paragraphs of prose) and ``brown`` (the Brown corpus, 500 documents, tags removed).
"""
from __future__ import annotations

import bz2
import hashlib
import json
import random
import re
from pathlib import Path

from lib.data import registry

_SQUAD_FILES = {"squad_v1.1": "squaddev_v1.1.json", "squad_shifts_new_wiki": "new_wiki_v1.0.json",
                "squad_shifts_nyt": "nyt_v1.0.json", "squad_shifts_reddit": "reddit_v1.0.json",
                "squad_shifts_amazon": "amazon_reviews_v1.0.json"}
_NI_FILES = {"quoref": "ni002_quoref.json", "cosmosqa": "ni024_cosmosqa.json", "drop": "ni028_drop.json",
             "multirc": "ni058_multirc.json", "ropes": "ni061_ropes.json"}
REAL_QA: dict[str, str] = {**_SQUAD_FILES, "squad_v1.1_long": "squaddev_v1.1.json", "coqa": "coqa.test.json", "coqa_history": "coqa.test.json", **_NI_FILES}
PROSE = ("wiki", "brown")
DEFAULT_MAX_WORDS = 300  # the seeds' passage filter (MAX_PASSAGE_WORDS = 300)
LONG_BLOCK_WORDS = 600  # squad_v1.1_long: the seed's long documents averaged ~604 words
LONG = ("squad_v1.1_long",)


def default_max_words(name: str) -> int | None:
    """The passage word limit a registry set gets when none is given (None: no limit)."""
    return None if name in LONG else DEFAULT_MAX_WORDS


def source_file(name: str, source: str | None) -> tuple[Path, dict]:
    """(file to read, provenance) for data set ``name``: the verified cache copy or a local path."""
    member = REAL_QA[name]
    if source is None:
        return registry.path("bigbench", member), registry.provenance("bigbench", member)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"local data file not found: {source} (expected a file in the layout of "
                                f"bigbench's {member})")
    return path, {"local_file": str(path), "sha256": registry.sha256_file(path)}


# ---------------------------------------------------------------- candidates in file order
# A candidate: dict(id, query, passage, answers (list, first = reference), article, paragraph, meta)

def _article_id(a_idx: int, p_idx: int, per_paragraph: bool) -> str:
    """A SQuAD-layout candidate's article: ``a<article>``, or ``a<article>p<paragraph>`` in a one-article file."""
    return f"a{a_idx}p{p_idx}" if per_paragraph else f"a{a_idx}"


def _squad(doc: dict):
    """A file holding ONE article (SQuAD-Shifts Reddit: 2,035 unrelated comments under one title) has
    no article structure: each paragraph is then its own article (``meta['article_unit']``)."""
    row = 0
    per_paragraph = len(doc["data"]) == 1
    for a_idx, art in enumerate(doc["data"]):
        for p_idx, par in enumerate(art["paragraphs"]):
            for qa in par["qas"]:
                texts = [a["text"] for a in qa.get("answers", [])]
                starts = [a.get("answer_start") for a in qa.get("answers", [])]
                yield {"id": str(qa["id"]), "query": qa["question"], "passage": par["context"], "answers": texts,
                       "article": _article_id(a_idx, p_idx, per_paragraph), "paragraph": p_idx, "row": row,
                       "meta": {"title": art.get("title"), "answer_start": starts[0] if starts else None,
                                "article_unit": "paragraph" if per_paragraph else "title"}}
                row += 1


def article_paragraphs(name: str, source: str | None = None) -> dict[str, list[str]]:
    """{article: its paragraphs in file order, stripped as sample passages are} of a SQuAD-layout set: a
    sample's ``meta['article']`` and ``meta['paragraph']`` index into it (a one-article file: every
    paragraph its own article)."""
    if name not in _SQUAD_FILES:
        raise ValueError(f"article paragraphs need a SQuAD-layout registry set ({', '.join(_SQUAD_FILES)}), got {name!r}")
    path, _ = source_file(name, source)
    doc = json.loads(Path(path).read_text())
    if "data" not in doc or not isinstance(doc["data"], list):
        raise ValueError(f"{path}: not in the SQuAD layout (a 'data' list of articles with 'paragraphs')")
    if len(doc["data"]) == 1:
        return {_article_id(0, p, True): [par["context"].strip()] for p, par in enumerate(doc["data"][0]["paragraphs"])}
    return {_article_id(a, 0, False): [par["context"].strip() for par in art["paragraphs"]] for a, art in enumerate(doc["data"])}


def blocks(paragraphs: list[str], target: int) -> list[list[int]]:
    """Consecutive paragraph indices grouped greedily into blocks of >= ``target`` words; a short
    remainder joins the block before it."""
    out, cur, words = [], [], 0
    for i, p in enumerate(paragraphs):
        cur.append(i)
        words += len(p.split())
        if words >= target:
            out.append(cur)
            cur, words = [], 0
    if cur:
        if out:
            out[-1] += cur
        else:
            out.append(cur)
    return out


def _squad_long(doc: dict, target: int = LONG_BLOCK_WORDS):
    """SQuAD questions with their paragraph's block (``blocks``) as the passage; ``paragraph`` is the
    block index (one question per block at a time when drawn across articles)."""
    groups = {f"a{a}": blocks([par["context"] for par in art["paragraphs"]], target) for a, art in enumerate(doc["data"])}
    texts = {f"a{a}": [par["context"] for par in art["paragraphs"]] for a, art in enumerate(doc["data"])}
    for c in _squad(doc):
        art = c["article"]
        b, k = next((b, blk.index(c["paragraph"])) for b, blk in enumerate(groups[art]) if c["paragraph"] in blk)
        yield {**c, "passage": "\n\n".join(texts[art][p] for p in groups[art][b]), "paragraph": b,
               "meta": {**c["meta"], "block_paragraphs": groups[art][b], "answer_paragraph": c["paragraph"],
                        "answer_paragraph_position": k}}


def _coqa(doc: dict, history: bool):
    row = 0
    for story in doc["data"]:
        qs, ans = story["questions"], story["answers"]
        extra = story.get("additional_answers") or {}
        turns = range(1, len(qs)) if history else range(min(1, len(qs)))
        for t in turns:
            answers = [ans[t]["input_text"]] + [alt[t]["input_text"] for alt in extra.values() if t < len(alt)]
            query = qs[t]["input_text"]
            if history:
                past = "\n".join(f"Q: {qs[i]['input_text']}\nA: {ans[i]['input_text']}" for i in range(t))
                query = f"{past}\nQ: {query}"
            yield {"id": f"{story['id']}-t{t + 1}", "query": query, "passage": story["story"], "answers": answers,
                   "article": story["id"], "paragraph": 0, "row": row,
                   "meta": {"source": story.get("source"), "turn": t + 1, "span_text": ans[t].get("span_text")}}
            row += 1


_NI_HEADERS = re.compile(r"^(Passage:|Context:|Paragraph-|Background Paragraph:)\s*")
_MULTIRC_SENT = re.compile(r"\s*Sent \d+:\s*")  # MultiRC numbers its sentences inline


def _natural_instructions(doc: dict, name: str):
    for row, ex in enumerate(doc["examples"]):
        text = ex["input"]
        cut = text.rfind("Question:")
        if cut < 0:
            raise ValueError(f"{name} example {row}: no 'Question:' in its input {text[:80]!r}")
        passage, query = text[:cut].strip(), text[cut + len("Question:"):].strip()
        meta = {"target_raw": list(ex["target"])}
        if name == "drop" and "\nAnswer type:" in query:
            query, _, kind = query.partition("\nAnswer type:")
            meta["answer_type"] = kind.strip()
        passage = _NI_HEADERS.sub("", passage)
        if name == "multirc":
            passage = _MULTIRC_SENT.sub(" ", passage).strip()
        answers = [t[:-1] if t.endswith(".") else t for t in ex["target"]]
        article = hashlib.sha1(passage.encode()).hexdigest()[:12]
        yield {"id": f"{name}-{row}", "query": query.strip(), "passage": passage, "answers": answers,
               "article": article, "paragraph": 0, "row": row, "meta": meta}


def candidates(name: str, path: Path) -> list[dict]:
    """Every row of ``name`` in file order (before filters)."""
    doc = json.loads(Path(path).read_text())
    if name in LONG:
        if "data" not in doc or not isinstance(doc["data"], list):
            raise ValueError(f"{path}: not in the SQuAD layout (a 'data' list of articles with 'paragraphs')")
        return list(_squad_long(doc))
    if name in _SQUAD_FILES:
        if "data" not in doc or not isinstance(doc["data"], list):
            raise ValueError(f"{path}: not in the SQuAD layout (a 'data' list of articles with 'paragraphs')")
        return list(_squad(doc))
    if name in ("coqa", "coqa_history"):
        if "data" not in doc or (doc["data"] and "story" not in doc["data"][0]):
            raise ValueError(f"{path}: not in the CoQA layout (a 'data' list of stories)")
        return list(_coqa(doc, history=name == "coqa_history"))
    if "examples" not in doc:
        raise ValueError(f"{path}: not a natural-instructions task.json (no 'examples')")
    return list(_natural_instructions(doc, name))


def across_articles(cands: list[dict], seed: int) -> list[dict]:
    """Candidates reordered: one question per paragraph within an article, articles round-robin,
    all orders seeded (see the module docstring)."""
    rng = random.Random(seed)
    articles: dict[str, dict[int, list[dict]]] = {}
    for c in cands:
        articles.setdefault(c["article"], {}).setdefault(c["paragraph"], []).append(c)
    queues = []
    for paragraphs in articles.values():
        lists = list(paragraphs.values())
        for lst in lists:
            rng.shuffle(lst)
        rng.shuffle(lists)
        queues.append(round_robin(lists))
    rng.shuffle(queues)
    return round_robin(queues)


def round_robin(lists: list[list]) -> list:
    out, depth = [], 0
    while True:
        layer = [lst[depth] for lst in lists if depth < len(lst)]
        if not layer:
            return out
        out.extend(layer)
        depth += 1


def article_split(samples, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) samples with no article in both; a seeded ``eval_fraction`` of the articles
    goes to eval. Raises when a side would be empty."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    arts = sorted({s.meta["article"] for s in samples})
    random.Random(seed).shuffle(arts)
    n_eval = round(len(arts) * eval_fraction)
    if n_eval == 0 or n_eval == len(arts):
        raise ValueError(f"{len(arts)} articles cannot be split with eval_fraction={eval_fraction}")
    held = set(arts[:n_eval])
    return [s for s in samples if s.meta["article"] not in held], [s for s in samples if s.meta["article"] in held]


# ---------------------------------------------------------------- prose
def _strip_wikitext(text: str) -> list[str]:
    """Paragraphs of prose from MediaWiki markup (templates, tables, refs, files, headings dropped)."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for _ in range(6):  # nested templates and tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("&nbsp;", " ").replace("&ndash;", "–").replace("&mdash;", "—")
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines()
                 if ln.strip() and not ln.lstrip().startswith(("=", "*", "#", "|", "!", ":", "{", "}", ";"))]
        para = " ".join(lines)
        para = re.sub(r"\s+", " ", para).strip()
        para = re.sub(r"\(\s*[,;]?\s*\)", "", para).replace(" ,", ",").replace(" .", ".")
        if len(para.split()) >= 20 and not re.search(r"\{\{|\}\}|\[\[|\]\]|\||<|>", para):
            out.append(para)  # paragraphs with markup left over (broken tables, templates) are dropped
    return out


def _wiki_docs(path: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    docs = []
    root = ET.fromstring(bz2.decompress(Path(path).read_bytes()))
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    for page in root.iter(f"{ns}page"):
        if page.findtext(f"{ns}ns") != "0" or page.find(f"{ns}redirect") is not None:
            continue
        wikitext = page.findtext(f"{ns}revision/{ns}text") or ""
        paragraphs = _strip_wikitext(wikitext)
        if paragraphs:
            docs.append({"id": f"wiki-{page.findtext(f'{ns}id')}", "text": "\n\n".join(paragraphs),
                         "meta": {"title": page.findtext(f"{ns}title"), "paragraphs": len(paragraphs)}})
    return docs


_DETOK = [(re.compile(r" ([,.;:!?)\]}%])"), r"\1"), (re.compile(r"([(\[{$]) "), r"\1"),
          (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"), (re.compile(r"`` ?"), '"'), (re.compile(r" ?''"), '"')]


def _brown_docs(folder: Path) -> list[dict]:
    docs = []
    for f in sorted(Path(folder).iterdir()):
        sentences = []
        for line in f.read_text(encoding="latin-1").splitlines():
            words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
            if words:
                sent = " ".join(words)
                for pat, rep in _DETOK:
                    sent = pat.sub(rep, sent)
                sentences.append(sent)
        docs.append({"id": f"brown-{f.name}", "text": " ".join(sentences), "meta": {"category": f.name[1]}})
    return docs


def load_prose(name: str, *, source: str | None = None) -> tuple[list[dict], dict]:
    """(documents ``{id, text, meta}``, provenance) for ``wiki`` or ``brown`` prose."""
    if name not in PROSE:
        raise ValueError(f"unknown prose source {name!r}; choose from {PROSE}")
    key, member = ("gensim", "enwiki-shortened.xml.bz2") if name == "wiki" else ("brown", "brown")
    if source is None:
        path, prov = registry.path(key, member), registry.provenance(key, member)
    else:
        path, prov = Path(source), {"local": str(source)}
        if not path.exists():
            raise FileNotFoundError(f"local {name} source not found: {source}")
    docs = _wiki_docs(path) if name == "wiki" else _brown_docs(path)
    return docs, prov
