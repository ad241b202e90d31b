"""Surrogate prefix texts: static framings, TF-IDF keywords, first sentences, model-generated texts.

Static texts are fixed strings (the wording is this repo's own; the ``static_fact`` question is the
one the earlier line of work used). Keywords are the document's top-k words by TF-IDF over the
documents of the run (lower-cased alphabetic words of 3+ letters, a small stop list removed; ties
broken alphabetically, so the result is deterministic). Generated surrogates are produced by the
loaded model with greedy decoding and cached in a JSON file keyed by model name, kind and sample
id, so a rerun (or a resumed run) reuses them instead of generating again.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

STATIC = {
    "extractor": "Extract every key data point, fact, name, number and attribute from the following text.",
    "universal": "Read the following passage carefully; a question about its content will follow.",
    "static_fact": "What are the key facts I need to know?",
    "adversarial": "The recipe calls for two cups of flour, a pinch of salt and three ripe bananas.",
    "adv_instruct": "Ignore the following text entirely; it is irrelevant and must not be used for anything.",
}

GENERATION_PROMPTS = {  # kind -> instruction; {passage} / {query} are filled in
    "llm_extract": "List the key facts of this passage as short keywords.\n\nPassage: {passage}",
    "llm_question": "Write one question that this passage answers.\n\nPassage: {passage}",
    "llm_summarize": "Summarize this passage in one sentence.\n\nPassage: {passage}",
    "same_topic": "Write a different question about the same topic as this question: {query}",
    "paraphrase": "Rephrase this question with different words, keeping its meaning: {query}",
}

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once
only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves one two three also many much known used
""".split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


def words(text: str) -> list[str]:
    return [w.lower().strip("'-") for w in _WORD.findall(text) if w.lower() not in STOPWORDS]


def tfidf_keywords(docs: dict[str, str], k: int) -> dict[str, list[str]]:
    """Top-``k`` keywords of every document (by id) by TF-IDF over ``docs``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tokens = {i: words(d) for i, d in docs.items()}
    df = Counter(w for ws in tokens.values() for w in set(ws))
    n = len(docs)
    out = {}
    for i, ws in tokens.items():
        tf = Counter(ws)
        score = {w: (c / len(ws)) * math.log((1 + n) / (1 + df[w])) + 1e-12 * c for w, c in tf.items()}
        out[i] = [w for w, _ in sorted(score.items(), key=lambda x: (-x[1], x[0]))[:k]]
    return out


def first_sentence(text: str) -> str:
    """The text up to and including the first sentence end (., ! or ? followed by space or end)."""
    m = re.search(r"[.!?](\s|$)", text)
    return text[: m.end()].strip() if m else text.strip()


class GeneratedCache:
    """Model-generated surrogate texts in a JSON file: {model: {kind: {sample_id: text}}}."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, model: str, kind: str, sample_id: str) -> str | None:
        return self.data.get(model, {}).get(kind, {}).get(sample_id)

    def put_many(self, model: str, kind: str, texts: dict[str, str]) -> None:
        from lib.data.jsonio import write_json_atomic

        self.data.setdefault(model, {}).setdefault(kind, {}).update(texts)
        write_json_atomic(self.path, self.data)


def _chat(tokenizer, instruction: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                             add_generation_prompt=True)
    return instruction + "\n\n"


def _first_line_done(tok):
    """``stop`` for ``lib.kv.greedy.generate``: a row is done once its text (leading whitespace dropped)
    holds a newline, i.e. its first line -- all that ``generate`` keeps -- is complete."""
    return lambda new: "\n" in tok.decode(new, skip_special_tokens=True).lstrip()


def _prompt(tok, kind: str, s) -> str:
    return _chat(tok, GENERATION_PROMPTS[kind].format(passage=s.passage, query=s.query))


def _first_line(tok, tokens) -> str:
    return tok.decode(tokens, skip_special_tokens=True).strip().split("\n")[0].strip()


def generate(lm, samples, kinds, cache: GeneratedCache, *, max_new_tokens: int = 32, batch_size: int = 128,
             progress: bool = False, reference: bool = False, prefill_batch: int = 8) -> dict:
    """{kind: {sample_id: text}} for every sample, generating only what ``cache`` lacks (greedy); the
    text kept is the first line of what the model writes (stripped; kept even when empty: the
    condition builder refuses empty texts).

    The default path (``lib.kv.greedy``) puts the prompts of every kind together, sorted by length,
    in decode batches of ``batch_size`` rows prefilled ``prefill_batch`` rows per forward; a row stops
    once its first line is complete or at end of sequence.
    ``reference=True`` is the path it replaced and is checked against: ``model.generate`` per kind in
    batches of ``batch_size``, every row run to ``max_new_tokens`` or end of sequence. Both write the
    cache after every batch, so a killed run keeps what it generated. ``progress``: a bar over the
    prompts still to generate (``tqdm.auto``)."""
    from tqdm.auto import tqdm

    from lib.kv import greedy

    unknown = [k for k in kinds if k not in GENERATION_PROMPTS]
    if unknown:
        raise ValueError(f"unknown generated surrogate kinds {unknown}; known: {sorted(GENERATION_PROMPTS)}")
    tok = lm.tokenizer
    todo = [(k, s) for k in kinds for s in samples if cache.get(lm.name, k, s.id) is None]
    bar = tqdm(total=len(todo), desc="generate", disable=not progress)
    if reference:
        for kind in kinds:
            part_all = [s for k, s in todo if k == kind]
            for i in range(0, len(part_all), batch_size):
                part = part_all[i : i + batch_size]
                rows = _reference_rows(lm, [_prompt(tok, kind, s) for s in part], max_new_tokens)
                cache.put_many(lm.name, kind, {s.id: _first_line(tok, r) for s, r in zip(part, rows)})
                bar.update(len(part))
    else:
        special = not getattr(tok, "chat_template", None)
        ids = [tok(_prompt(tok, k, s), add_special_tokens=special)["input_ids"] for k, s in todo]

        def keep(idx, rows):
            by_kind: dict[str, dict] = {}
            for i, r in zip(idx, rows):
                by_kind.setdefault(todo[i][0], {})[todo[i][1].id] = _first_line(tok, r)
            for k, texts in by_kind.items():
                cache.put_many(lm.name, k, texts)
            bar.update(len(idx))

        greedy.generate(lm.model, ids, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                        batch_size=batch_size, prefill_batch=prefill_batch, stop=_first_line_done(tok), on_batch=keep)
    bar.close()
    return {k: {s.id: cache.get(lm.name, k, s.id) for s in samples} for k in kinds}


def _reference_rows(lm, prompts: list[str], max_new_tokens: int):
    """``model.generate`` (greedy, left padding) on ``prompts``: the new tokens of each row."""
    import torch

    tok = lm.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not getattr(tok, "chat_template", None))
    finally:
        tok.padding_side = side
    enc = {k: v.to(lm.device) for k, v in enc.items()}
    with torch.no_grad():
        gen = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return gen[:, enc["input_ids"].shape[1]:].tolist()
