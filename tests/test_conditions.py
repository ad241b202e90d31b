"""The condition registry: exact token matching, surrogates, generation cache, unknown names."""
import pytest

from lib.studies import conditions as C
from lib.data import surrogates
from lib.data import synthetic_qa
from lib.kv.encode import tokenize
from lib.kv.engine import Engine


def test_unknown_condition_lists_known_names():
    with pytest.raises(ValueError, match="Did you mean 'oracle'") as e:
        C.get(["oracel"])
    assert "extractor_matched" in str(e.value)


def test_fit_tiles_and_cuts():
    assert C.fit([1, 2, 3], 7, "x") == [1, 2, 3, 1, 2, 3, 1]
    assert C.fit([1, 2, 3], 2, "x") == [1, 2]
    with pytest.raises(ValueError, match="empty source"):
        C.fit([], 3, "x")


def test_tfidf_keywords_are_deterministic_and_document_specific():
    docs = {s.id: s.passage for s in synthetic_qa(20, 3)}
    a, b = surrogates.tfidf_keywords(docs, 5), surrogates.tfidf_keywords(docs, 5)
    assert a == b and all(len(v) == 5 for v in a.values())
    assert len({tuple(v) for v in a.values()}) > 15  # documents get their own keywords
    assert all(w not in surrogates.STOPWORDS for v in a.values() for w in v)
    with pytest.raises(ValueError, match="k must be"):
        surrogates.tfidf_keywords(docs, 0)


def test_first_sentence():
    assert surrogates.first_sentence("One two. Three four.") == "One two."
    assert surrogates.first_sentence("No end") == "No end"


def _fake_generated(samples):
    return {k: {s.id: f"{k} text about {s.query}" for s in samples} for k in surrogates.GENERATION_PROMPTS}


@pytest.mark.slow
def test_token_matched_conditions_have_exactly_q_tokens(smollm2):
    samples = synthetic_qa(12, 5)
    conds = C.get(C.TOKEN_MATCHED)
    items = C.build_items(smollm2, samples, conds, generated=_fake_generated(samples))
    sep = len(tokenize(smollm2.tokenizer, "\n"))
    by_sample = {}
    for it in items:
        by_sample.setdefault(it.sample_id, []).append(it)
    for s in samples:
        q = len(tokenize(smollm2.tokenizer, s.query))
        its = by_sample[s.id]
        assert len(its) == len(C.TOKEN_MATCHED)
        assert {len(it.prefix_ids) for it in its} == {q + sep}, s.id
        assert len({it.doc_ids for it in its}) == 1 and len({it.answer_ids for it in its}) == 1
    # seeded: the same items again, and random prefixes differ across samples
    again = C.build_items(smollm2, samples, conds, generated=_fake_generated(samples))
    assert [it.prefix_ids for it in again] == [it.prefix_ids for it in items]
    rnd = [it.prefix_ids for it in items if it.condition == "random_tokens"]
    assert len(set(rnd)) == len(rnd)


@pytest.mark.slow
def test_every_registered_condition_scores(smollm2):
    samples = synthetic_qa(3, 6)
    items = C.build_items(smollm2, samples, C.get(list(C.REGISTRY)), generated=_fake_generated(samples))
    rows = Engine(smollm2).score_items(items)
    assert len(rows) == 3 * len(C.REGISTRY) and all(r["nll"] > 0 for r in rows)
    by = {(r["sample_id"], r["condition"]): r for r in rows}
    s = samples[0].id
    assert by[(s, "oracle")]["cache_len"] == by[(s, "bare")]["cache_len"] == by[(s, "kw10")]["cache_len"]
    assert by[(s, "oracle_full")]["cache_len"] > by[(s, "bare")]["cache_len"]
    with pytest.raises(ValueError, match="run surrogates.generate first"):
        C.build_items(smollm2, samples, C.get(["llm_question"]))


@pytest.mark.slow
def test_generation_is_cached_and_reused(smollm2, tmp_path, monkeypatch):
    samples = synthetic_qa(2, 7)
    cache = surrogates.GeneratedCache(tmp_path / "gen.json")
    first = surrogates.generate(smollm2, samples, ["llm_question"], cache, max_new_tokens=8)
    assert set(first["llm_question"]) == {s.id for s in samples}
    assert all(isinstance(t, str) for t in first["llm_question"].values())

    def no_generation(*a, **k):
        raise AssertionError("generate() was called although the texts are cached")

    monkeypatch.setattr(smollm2.model, "generate", no_generation)
    reloaded = surrogates.GeneratedCache(tmp_path / "gen.json")
    assert surrogates.generate(smollm2, samples, ["llm_question"], reloaded) == first
    with pytest.raises(ValueError, match="unknown generated surrogate"):
        surrogates.generate(smollm2, samples, ["llm_poem"], reloaded)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_batched_generation_keeps_the_reference_texts(model, request, tmp_path):
    """The batched path (every kind together, sorted by length, rows leaving at their first line) keeps
    the same texts as the reference (model.generate per kind, every row to max_new_tokens)."""
    lm = request.getfixturevalue(model)
    samples = synthetic_qa(6, 11)
    kinds = ["llm_question", "llm_extract", "paraphrase"]
    ref = surrogates.generate(lm, samples, kinds, surrogates.GeneratedCache(tmp_path / "a.json"), max_new_tokens=24,
                              batch_size=3, reference=True)
    fast = surrogates.generate(lm, samples, kinds, surrogates.GeneratedCache(tmp_path / "b.json"), max_new_tokens=24,
                               batch_size=5)
    assert fast == ref and all(t for k in kinds for t in ref[k].values())


@pytest.mark.slow
def test_generation_keeps_finished_batches_when_interrupted(smollm2, tmp_path, monkeypatch):
    """A run killed in the middle keeps every finished batch: the rerun generates only the rest."""
    from lib.kv import greedy

    samples = synthetic_qa(5, 3)
    real, calls = greedy._prefill, []

    def dies_in_second_batch(model, head, prompts, *a, **k):  # one prefill per decode batch
        calls.append(len(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(model, head, prompts, *a, **k)

    monkeypatch.setattr(greedy, "_prefill", dies_in_second_batch)
    with pytest.raises(KeyboardInterrupt):
        surrogates.generate(smollm2, samples, ["llm_question"], surrogates.GeneratedCache(tmp_path / "gen.json"),
                            max_new_tokens=4, batch_size=2)
    assert calls == [2, 2]
    kept = surrogates.GeneratedCache(tmp_path / "gen.json")
    assert sum(kept.get(smollm2.name, "llm_question", s.id) is not None for s in samples) == 2
    monkeypatch.setattr(greedy, "_prefill", real)
    spy, real_gen = [], greedy.generate
    monkeypatch.setattr(greedy, "generate", lambda m, prompts, **k: (spy.append(len(prompts)), real_gen(m, prompts, **k))[1])
    out = surrogates.generate(smollm2, samples, ["llm_question"], kept, max_new_tokens=4, batch_size=2)
    assert spy == [3] and set(out["llm_question"]) == {s.id for s in samples}


@pytest.mark.slow
@pytest.mark.parametrize("L", [1, 8, 37])
def test_length_conditions_have_exactly_l_tokens_and_scrambles_keep_the_multiset(smollm2, L):
    from collections import Counter

    from lib.studies import prefixlen

    samples = synthetic_qa(6, 9)
    conds = prefixlen.grid(list(prefixlen.CONTENTS), [L])
    items = C.build_items(smollm2, samples, conds)
    sep = tokenize(smollm2.tokenizer, "\n")
    by = {(it.sample_id, it.condition): it for it in items}
    for s in samples:
        bare = by[(s.id, "bare")]
        assert bare.prefix_ids == ()
        for c in conds[1:]:
            it = by[(s.id, c.name)]
            assert len(it.prefix_ids) == L + len(sep) and list(it.prefix_ids[L:]) == sep, (s.id, c.name)
            assert it.doc_ids == bare.doc_ids and it.answer_ids == bare.answer_ids
        for ordered, scrambled in prefixlen.SCRAMBLED_OF.items():
            a = by[(s.id, prefixlen.name(ordered, L))].prefix_ids[:L]
            b = by[(s.id, prefixlen.name(scrambled, L))].prefix_ids[:L]
            assert Counter(a) == Counter(b)
        # the ordered query tiled: starts with the query's own tokens
        q = tokenize(smollm2.tokenizer, s.query)
        assert list(by[(s.id, prefixlen.name("oracle", L))].prefix_ids[:L]) == (q * (L // len(q) + 1))[:L]
    if L == 37:  # long enough that a shuffle of the query almost surely changes the order
        assert any(by[(s.id, "scrambled_L37")].prefix_ids != by[(s.id, "oracle_L37")].prefix_ids for s in samples)


@pytest.mark.slow
def test_long_prefixes_cut_the_shared_document_to_fit_the_context(smollm2):
    import dataclasses

    from lib.studies import prefixlen

    samples = synthetic_qa(2, 4)
    small = dataclasses.replace(smollm2, arch=dataclasses.replace(smollm2.arch, max_positions=120))
    conds = prefixlen.grid(["random"], [8, 64])
    items = C.build_items(small, samples, conds)
    for it in items:
        assert 1 + len(it.prefix_ids) + len(it.doc_ids) + len(it.prompt_ids) + len(it.answer_ids) <= 120
        assert it.row["doc_truncated"]
    assert len({it.doc_ids for it in items if it.sample_id == samples[0].id}) == 1


def test_at_length_validates():
    assert C.at_length("extractor", 16).name == "extractor_L16"
    assert C.at_length("oracle", 4, scramble=True).name == "scrambled_oracle_L4"
    with pytest.raises(ValueError, match="positive int"):
        C.at_length("extractor", 0)
    with pytest.raises(ValueError, match="no prefix"):
        C.at_length("bare", 8)
    with pytest.raises(ValueError, match="unknown condition"):
        C.at_length("extractr", 8)
    # recipes of the registry are unchanged by the new fields (older run stores stay valid)
    assert "length" not in C.REGISTRY["oracle"].recipe() and C.at_length("oracle", 4).recipe()["length"] == 4
