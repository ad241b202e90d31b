"""exp02-05 (a shared study module, see ``lib.studies``): the registry of named cache conditions,
how each prefix is made and what the cache keeps.

Every condition of a sample scores the same document ids and the same ``PROMPT_QUERY`` prompt and
answer ids (matched tokenization, ``lib.studies.priming.prepare``). A prefix is ``text_ids + sep_ids`` with
``sep_ids = tokenize(PREFIX_SEP)``. Token-matched conditions (``matched=True``) use exactly Q text
tokens, Q = the number of tokens of the sample's query alone: their source ids are tiled or cut
to Q, then the separator follows; so the prefix length is the same across the whole family.

Sources (``Condition.source``):
  none           the bare cache
  query          the sample's query
  other_query    another sample's query (seeded derangement, ``priming.assign_other``)
  static:<key>   a fixed framing from ``surrogates.STATIC``
  keywords:<k>   the document's top-k TF-IDF keywords; ``other_keywords:<k>`` another document's
  first_sentence the document's first sentence
  random_tokens  Q ids drawn uniformly (seeded per sample) from the vocabulary, special ids excluded
  repeat_token   one common token (" the") repeated
  scrambled      the query's tokens in a seeded random order
  generated:<kind>  a model-generated text (``surrogates.generate``)
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from lib.kv import encode as enc_mod
from lib.studies import priming
from lib.studies.priming import unknown_condition  # noqa: F401  (conditions.unknown_condition)
from lib.data import surrogates
from lib.kv.engine import WorkItem


@dataclass(frozen=True)
class Condition:
    name: str
    source: str
    keep_prefix: bool = False
    matched: bool = False
    family: str = ""
    description: str = ""
    length: int | None = None  # exactly this many text tokens (source tiled or cut), e.g. exp05's L sweep
    scramble: bool = False  # shuffle the (fitted) text tokens: same multiset, no order

    def recipe(self) -> dict:
        """What the run store hashes; the length/scramble fields only when set (older stores stay valid)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("length", "scramble") or v}


def at_length(base: str, length: int, *, scramble: bool = False, name: str | None = None) -> Condition:
    """Registry condition ``base`` with its text tiled or cut to exactly ``length`` tokens (optionally scrambled)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    c = get([base])[0]
    if c.source == "none":
        raise ValueError(f"{base!r} has no prefix; it has no length")
    return Condition(name or f"{'scrambled_' if scramble else ''}{base}_L{length}", c.source, c.keep_prefix, False,
                     "length", f"{c.description or base} at {length} tokens" + (", scrambled" if scramble else ""),
                     length, scramble)


def _reg(*conds: Condition) -> dict[str, Condition]:
    return {c.name: c for c in conds}


REGISTRY = _reg(
    Condition("bare", "none", family="reference", description="[anchor, doc]"),
    Condition("oracle", "query", family="reference", description="the query, dropped and re-positioned"),
    Condition("oracle_full", "query", keep_prefix=True, family="reference", description="the query kept in the cache"),
    *[Condition(k, f"static:{k}", family="static", description=v) for k, v in surrogates.STATIC.items()],
    *[Condition(f"kw{k}", f"keywords:{k}", family="keyword", description=f"top-{k} TF-IDF keywords of the document") for k in (5, 10, 20)],
    *[Condition(f"kw{k}_other", f"other_keywords:{k}", family="keyword", description=f"top-{k} keywords of another document") for k in (5, 10, 20)],
    Condition("first_sentence", "first_sentence", family="keyword", description="the document's first sentence"),
    # the token-matched family: exactly Q prefix tokens
    Condition("random_tokens", "random_tokens", matched=True, family="matched"),
    Condition("repeat_token", "repeat_token", matched=True, family="matched"),
    Condition("scrambled_oracle", "scrambled", matched=True, family="matched"),
    Condition("unrelated_query", "other_query", matched=True, family="matched"),
    Condition("extractor_matched", "static:extractor", matched=True, family="matched"),
    Condition("adversarial_matched", "static:adversarial", matched=True, family="matched"),
    Condition("llm_extract", "generated:llm_extract", matched=True, family="matched"),
    Condition("llm_question", "generated:llm_question", matched=True, family="matched"),
    Condition("llm_summarize", "generated:llm_summarize", matched=True, family="matched"),
    Condition("same_topic", "generated:same_topic", matched=True, family="matched"),
    Condition("paraphrase", "generated:paraphrase", matched=True, family="matched"),
    Condition("oracle_matched", "query", matched=True, family="matched", description="the query itself (Q tokens by definition)"),
)
GENERIC_SURROGATE = "extractor_matched"  # what the model-written surrogates are tested against (exp03, exp04)
LLM_SURROGATES = ("llm_extract", "llm_question", "llm_summarize")


def llm_vs_generic_pairs(names) -> list[tuple[str, str]]:
    """``(extractor_matched, llm_*)`` for every model-written surrogate among ``names``."""
    return [(GENERIC_SURROGATE, c) for c in LLM_SURROGATES if c in names]


TOKEN_MATCHED = ("random_tokens", "repeat_token", "scrambled_oracle", "unrelated_query", "same_topic", "paraphrase",
                 "extractor_matched", "adversarial_matched", "llm_extract", "llm_question", "llm_summarize",
                 "oracle_matched")


def get(names) -> tuple[Condition, ...]:
    """Conditions by name; an unknown name raises with the known names and a did-you-mean."""
    for n in names:
        if n not in REGISTRY:
            raise unknown_condition(n, REGISTRY)
    return tuple(REGISTRY[n] for n in names)


def generated_kinds(conds) -> list[str]:
    return sorted({c.source.split(":", 1)[1] for c in conds if c.source.startswith("generated:")})


def fit(ids: list[int], q: int, what: str) -> list[int]:
    """Tile or cut ``ids`` to exactly ``q`` tokens."""
    if not ids:
        raise ValueError(f"{what}: empty source text, cannot make a {q}-token prefix")
    return (list(ids) * (q // len(ids) + 1))[:q]


def _seed(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def prefix_ids(cond: Condition, ctx: dict) -> list[int] | None:
    """Prefix ids (text + separator) of ``cond`` for one sample; None for the bare cache.

    ctx: tokenizer, arch, sample, other (another Sample), keywords {k: {id: [...]}}, generated
    {kind: {id: text}}, seed.
    """
    tok, s = ctx["tokenizer"], ctx["sample"]
    t = lambda text: enc_mod.tokenize(tok, text)  # noqa: E731
    src = cond.source
    if src == "none":
        return None
    q = len(t(s.query))
    n = cond.length or (q if cond.matched else None)  # target text length; None: the text's own
    kind, _, arg = src.partition(":")
    rng = random.Random(_seed(ctx["seed"], cond.name, s.id))
    if kind == "query":
        ids = t(s.query)
    elif kind == "other_query":
        ids = t(ctx["other"].query)
    elif kind == "static":
        ids = t(surrogates.STATIC[arg])
    elif kind == "keywords":
        ids = t(" ".join(ctx["keywords"][int(arg)][s.id]))
    elif kind == "other_keywords":
        ids = t(" ".join(ctx["keywords"][int(arg)][ctx["other"].id]))
    elif kind == "first_sentence":
        ids = t(surrogates.first_sentence(s.passage))
    elif kind == "random_tokens":
        special = set(getattr(tok, "all_special_ids", []))
        ids = []
        while len(ids) < (n or q):
            i = rng.randrange(ctx["arch"].vocab_size)
            if i not in special and i < len(tok):
                ids.append(i)
    elif kind == "repeat_token":
        ids = t(" the")
    elif kind == "scrambled":
        ids = t(s.query)
        rng.shuffle(ids)
    elif kind == "generated":
        text = ctx["generated"][arg][s.id]
        if not text:
            raise ValueError(f"sample {s.id!r}: the generated {arg!r} surrogate is empty; delete it from the cache to regenerate")
        ids = t(text)
    else:
        raise ValueError(f"condition {cond.name!r}: unknown source {src!r}")
    if n:
        ids = fit(ids, n, f"{cond.name} on {s.id}")
    if cond.scramble:
        ids = list(ids)
        rng.shuffle(ids)
    return list(ids) + t(priming.PREFIX_SEP)


def build_items(lm, samples, conds, *, seed: int = 42, generated: dict | None = None, keyword_docs: dict | None = None,
                n_distractors: int = 0) -> list[WorkItem]:
    """WorkItems for every sample x condition (all scored with the query prompt); ``n_distractors``
    other samples' answers ride along on each item (``lib.kv.margin``)."""
    need_kw = sorted({int(c.source.split(":")[1]) for c in conds if "keywords:" in c.source})
    docs = keyword_docs or {s.id: s.passage for s in samples}
    keywords = {k: surrogates.tfidf_keywords(docs, k) for k in need_kw}
    kinds = generated_kinds(conds)
    missing = [k for k in kinds if not generated or k not in generated]
    if missing:
        raise ValueError(f"generated surrogates {missing} are needed; run surrogates.generate first")
    by_id = {s.id: s for s in samples}
    other = priming.other_assignment(samples, seed)
    dis = priming.distractor_pairs(samples, n_distractors, seed)
    items = []
    for s in samples:
        p = priming.prepare(lm.tokenizer, lm.arch, s, by_id[other[s.id]].query, other[s.id], dis[s.id])
        ctx = {"tokenizer": lm.tokenizer, "arch": lm.arch, "sample": s, "other": by_id[other[s.id]],
               "keywords": keywords, "generated": generated or {}, "seed": seed}
        q_tokens = len(enc_mod.tokenize(lm.tokenizer, s.query))
        pres = [prefix_ids(c, ctx) or [] for c in conds]
        # the document is shared by every condition: cut it once so the longest prefix still fits the context
        longest = max(map(len, [p.answer_ids, *p.distractor_ids]))
        doc_ids, cut = enc_mod.fit_document(p.doc_ids, lm.arch, max(map(len, pres)) + len(p.prompt_ids["query"]) + longest)
        flags = {**p.flags, "doc_truncated": p.flags["doc_truncated"] or cut}
        for c, pre in zip(conds, pres):
            items.append(WorkItem(s.id, c.name, tuple(doc_ids), tuple(pre), c.keep_prefix,
                                  tuple(p.prompt_ids["query"]), tuple(p.answer_ids),
                                  {"family": c.family, "q_tokens": q_tokens, **flags,
                                   **({"distractor_samples": p.distractor_samples} if p.distractor_samples else {})},
                                  **priming.item_extras(p)))
    return items


def store_config(params: dict, lm, conds) -> dict:
    """What makes rows comparable (see ``priming.store_config``), plus every condition's recipe."""
    return {
        **priming.store_config(params, lm, conditions=()),
        "conditions": [c.recipe() for c in conds],
        "static_texts": surrogates.STATIC,
        "generation_prompts": {k: surrogates.GENERATION_PROMPTS[k] for k in generated_kinds(conds)},
    }
