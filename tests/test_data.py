"""Tests for lib/data/core.py and the modules it joins (schema.py, hub.py, synthetic.py): the Sample
schema, the loaders on local fixtures in each data set's own schema (tests/data/), and the offline
synthetic generator."""
from pathlib import Path

import pytest

from lib.data.core import DATASETS, LoadedData, Sample, load_samples, synthetic_qa
from lib.data.hub import _word_window
from lib.data.schema import _as_list

DATA = Path(__file__).parent / "data"
MS_MARCO = DATA / "ms_marco_v1.1_sample.jsonl"
MS_MARCO_WFA_TEXT = DATA / "ms_marco_v1.1_wfa_string.jsonl"
SQUAD = DATA / "squad_v2_sample.jsonl"
TRIVIA = DATA / "triviaqa_rc.wikipedia_sample.jsonl"
HOTPOT = DATA / "hotpotqa_distractor_sample.jsonl"
NEURAL_BRIDGE = DATA / "neural_bridge_rag_sample.jsonl"  # neural-bridge/rag-dataset-12000's schema


def _meta(name, row, **extra):
    return {"dataset": name, "split": "validation", "row": row, "truncated": False, **extra}


# ---------------------------------------------------------------- Sample
def test_sample_defaults_answers_to_answer_and_stores_tuple():
    s = Sample(id="a", query="q?", passage="p", answer="x")
    assert s.answers == ("x",) and s.meta == {}
    t = Sample(id="a", query="q?", passage="p", answer="x", answers=["x", "y"])
    assert t.answers == ("x", "y")


@pytest.mark.parametrize("kwargs, match", [
    ({"id": ""}, r"Sample\.id must be a non-empty string"),
    ({"query": "  "}, r"Sample\.query must be a non-empty string"),
    ({"passage": None}, r"Sample\.passage must be a non-empty string, got None"),
    ({"answer": ""}, r"Sample\.answer must be a non-empty string"),
    ({"answer": " x"}, r"Sample\.answer must be stripped, got ' x'"),
    ({"answers": ("y", "x")}, r"must start with answer 'x'"),
    ({"answers": ("x", "")}, r"non-empty strings, got \[''\]"),
    ({"answers": ("x", "y", "y")}, r"unique, repeated: \['y'\]"),
    ({"answers": "x"}, r"must be a tuple of strings"),
    ({"meta": [1]}, r"Sample\.meta must be a dict, got list"),
])
def test_sample_validation_errors(kwargs, match):
    fields = {"id": "a", "query": "q?", "passage": "p", "answer": "x", **kwargs}
    with pytest.raises(ValueError, match=match):
        Sample(**fields)


def test_loaded_data_skip_counts_and_name_check():
    data = LoadedData("squad_v2", "validation", [], [("a", "x"), ("b", "y"), ("c", "y")])
    assert data.skip_counts() == {"y": 2, "x": 1}
    assert data.n_scanned == 3
    with pytest.raises(ValueError, match="did you mean 'squad_v2'"):
        LoadedData("squad", "validation", [])


# ---------------------------------------------------------------- argument checks
def test_unknown_name_lists_datasets_and_suggests():
    with pytest.raises(ValueError) as err:
        load_samples("ms-marco", 3)
    msg = str(err.value)
    assert "unknown data set 'ms-marco'" in msg and "did you mean 'ms_marco'?" in msg
    assert all(name in msg for name in DATASETS)
    with pytest.raises(ValueError, match="did you mean") as err:
        load_samples("HotpotQA", 3)
    assert "'hotpotqa'" in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, r"n must be an int >= 1"),
    ({"n": True}, r"n must be an int >= 1"),
    ({"n": 2, "max_passage_words": 0}, r"max_passage_words must be an int >= 1"),
    ({"n": 2, "max_passage_words": 5, "min_passage_words": 6},
     r"min_passage_words=6 exceeds max_passage_words=5"),
    ({"n": 2, "source": "x.jsonl"}, r"source must be None"),
    ({"n": 2, "split": "validation"}, r"no splits; split must be None"),
])
def test_synthetic_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_samples("synthetic", **kwargs)


def test_local_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_samples("squad_v2", 1, source=str(tmp_path / "missing.jsonl"))
    odd = tmp_path / "rows.csv"
    odd.write_text("id,question\n")
    with pytest.raises(ValueError, match=r"unsupported suffix; use one of \['.json', "):
        load_samples("squad_v2", 1, source=str(odd))
    with pytest.raises(ValueError, match=r"lack columns \['query', 'query_id'"):
        load_samples("ms_marco", 1, source=str(SQUAD))


def test_as_list_reads_list_text_and_rejects_garbage():
    assert _as_list("[]", "f") == [] and _as_list(None, "f") == []
    assert _as_list("['a', 'b']", "f") == ["a", "b"]
    assert _as_list("plain", "f") == ["plain"]
    with pytest.raises(ValueError, match=r"f: cannot parse list text '\[oops'"):
        _as_list("[oops", "f")
    with pytest.raises(ValueError, match="expected a list or its text, got int"):
        _as_list(3, "f")


# ---------------------------------------------------------------- MS MARCO
def test_ms_marco_fixture_exact_samples_and_skips():
    data = load_samples("ms_marco", 10, source=str(MS_MARCO), max_passage_words=40,
                        allow_fewer=True)
    assert (data.name, data.split, data.source) == ("ms_marco", "validation", str(MS_MARCO))
    assert data.samples == [
        Sample("1001", "what is the capital of france",
               "Paris is the capital and largest city of France.", "Paris", ("Paris",),
               _meta("ms_marco", 0, query_type="LOCATION", passage_index=1,
                     answer_source="answers", url="http://example.org/1001/1")),
        Sample("1002", "what is the capital of italy", "Rome is the capital city of Italy.",
               "The capital of Italy is Rome.", ("The capital of Italy is Rome.", "Rome"),
               _meta("ms_marco", 1, query_type="LOCATION", passage_index=0,
                     answer_source="wellFormedAnswers", url="http://example.org/1002/0")),
        Sample("1007", "what is the largest animal", "The blue whale is the largest animal.",
               "Blue whale", ("Blue whale",),
               _meta("ms_marco", 7, query_type="ENTITY", passage_index=1,
                     answer_source="answers", url="http://example.org/1007/1")),
    ]
    assert data.skipped == [("1003", "no_answer"), ("1004", "empty_answer"),
                            ("1005", "no_selected_passage"), ("1006", "passage_too_long"),
                            ("1001", "duplicate_id")]
    assert data.n_scanned == 8


def test_ms_marco_without_limit_keeps_long_passage_and_stops_at_n():
    data = load_samples("ms_marco", 3, source=str(MS_MARCO))
    assert [s.id for s in data.samples] == ["1001", "1002", "1006"]
    assert data.skipped == [("1003", "no_answer"), ("1004", "empty_answer"),
                            ("1005", "no_selected_passage")]
    first = load_samples("ms_marco", 1, source=str(MS_MARCO))
    assert first.samples == data.samples[:1] and first.skipped == []


def test_ms_marco_min_words_and_split_name():
    data = load_samples("ms_marco", 5, source=str(MS_MARCO), split="train",
                        min_passage_words=8, allow_fewer=True)
    assert data.split == "train" and [s.id for s in data.samples] == ["1001", "1006"]
    assert data.samples[0].meta["split"] == "train"
    assert data.skip_counts()["passage_too_short"] == 2  # 1002 (7 words) and 1007 (7 words)


def test_ms_marco_well_formed_answers_stored_as_text():
    data = load_samples("ms_marco", 2, source=str(MS_MARCO_WFA_TEXT))
    assert [(s.answer, s.answers) for s in data.samples] == [
        ("100 degrees Celsius", ("100 degrees Celsius",)),
        ("The canal is 5 km long.", ("The canal is 5 km long.", "5 km")),
    ]


def test_ms_marco_parquet_matches_jsonl(tmp_path):
    import datasets
    parquet = tmp_path / "ms_marco.parquet"
    datasets.load_dataset("json", data_files=str(MS_MARCO), split="train").to_parquet(parquet)
    from_parquet = load_samples("ms_marco", 3, source=str(parquet))
    assert from_parquet.samples == load_samples("ms_marco", 3, source=str(MS_MARCO)).samples


def test_too_few_eligible_rows_error_and_allow_fewer():
    with pytest.raises(ValueError) as err:
        load_samples("ms_marco", 10, source=str(MS_MARCO), max_passage_words=40)
    msg = str(err.value)
    assert "found 3 eligible rows of the 10 requested after scanning 8 rows" in msg
    assert "'no_answer': 1" in msg and "'duplicate_id': 1" in msg and "allow_fewer=True" in msg
    data = load_samples("ms_marco", 10, source=str(MS_MARCO), max_passage_words=40,
                        allow_fewer=True)
    assert len(data.samples) == 3 and len(data.skipped) == 5


# ---------------------------------------------------------------- SQuAD 2.0
def test_squad_v2_fixture_exact_samples_and_skips():
    data = load_samples("squad_v2", 10, source=str(SQUAD), max_passage_words=30,
                        allow_fewer=True)
    assert data.samples == [
        Sample("sq0", "In what region did the Normans give their name?",
               "The Normans were people who gave their name to Normandy, a region in France.",
               "Normandy", ("Normandy", "France"),
               _meta("squad_v2", 0, title="Normans", answer_start=47)),
        Sample("sq5", "Which river runs through Rouen?", "The Seine runs through Rouen.",
               "Seine", ("Seine", "the Seine"), _meta("squad_v2", 5, title="Rouen",
                                                      answer_start=4)),
    ]
    assert data.skipped == [("sq1", "unanswerable"), ("sq2", "empty_answer"),
                            ("sq3", "passage_too_long"), ("sq4", "empty_query")]


# ---------------------------------------------------------------- TriviaQA
def test_triviaqa_fixture_exact_samples_and_skips():
    data = load_samples("triviaqa", 10, source=str(TRIVIA), allow_fewer=True)
    words = [f"w{i}" for i in range(400)]
    words[250] = "Zanzibar"
    paris, island, smith = data.samples
    assert paris == Sample("tc_1", "Which city is the capital of France?",
                           "The capital, paris, lies on the Seine.", "Paris",
                           ("Paris", "City of Light"),
                           _meta("triviaqa", 0, title="Paris", doc_index=1, matched="paris"))
    # 400-word page cut to the default 300-word window around word 250, clamped to the end
    assert island.passage == " ".join(words[100:400])
    assert island.meta["truncated"] is True and island.answers == ("Zanzibar", "Unguja")
    assert smith.answer == "J. Smith" and smith.meta["matched"] == "John Smith"
    assert smith.passage == "The famous report was written by John Smith in the spring."
    # tc_2: "Art" only occurs inside words ("Martha", "partly"); tc_6 has no pages
    assert data.skipped == [("tc_2", "answer_not_in_context"), ("tc_4", "empty_answer"),
                            ("tc_6", "answer_not_in_context")]


def test_triviaqa_custom_window_and_min_words():
    data = load_samples("triviaqa", 1, source=str(TRIVIA), max_passage_words=50,
                        min_passage_words=20)
    words = [f"w{i}" for i in range(400)]
    words[250] = "Zanzibar"
    assert data.samples[0].id == "tc_3"
    assert data.samples[0].passage == " ".join(words[226:276])
    assert data.skipped == [("tc_1", "passage_too_short"), ("tc_2", "answer_not_in_context")]


def test_word_window_keeps_original_spacing_and_match():
    text = "a b\nc  d e f g"
    assert _word_window(text, 0, 1, 10) == (text, False)
    assert _word_window(text, 7, 8, 3) == ("c  d e", True)  # match "d" centred
    assert _word_window(text, 13, 14, 3) == ("e f g", True)  # clamped at the end


# ---------------------------------------------------------------- HotpotQA
def test_hotpotqa_fixture_exact_samples_and_skips():
    data = load_samples("hotpotqa", 10, source=str(HOTPOT), allow_fewer=True)
    assert data.samples == [
        Sample("hp0", "Which band does the singer born in Alpha sing in?",
               "Alpha is a town. It lies on a river.\n"
               "Gamma was born in Alpha. Gamma sings in Beta.",
               "Beta", ("Beta",), _meta("hotpotqa", 0, type="bridge", level="medium",
                                        supporting_titles=["Alpha", "Gamma"])),
        Sample("hp1", "Are Alpha and Delta both towns?",
               "Alpha is a town. It lies on a river.\nDelta is unrelated.", "no", ("no",),
               _meta("hotpotqa", 1, type="comparison", level="medium",
                     supporting_titles=["Alpha", "Delta"])),
        Sample("hp5", "When did Beta form?", "Beta is a band. It formed late.", "late",
               ("late",), _meta("hotpotqa", 5, type="bridge", level="medium",
                                supporting_titles=["Beta"])),
    ]
    assert data.skipped == [("hp2", "empty_answer"), ("hp3", "supporting_title_missing"),
                            ("hp0", "duplicate_id")]


def test_neural_bridge_fixture_ids_from_rows_skips_and_word_limits():
    data = load_samples("neural_bridge", 10, source=str(NEURAL_BRIDGE), allow_fewer=True, min_passage_words=5)
    assert [s.id for s in data.samples] == ["neural_bridge-test-0", "neural_bridge-test-5"]
    first, last = data.samples
    assert first.answer == "Ada Moss, the keeper" and first.query == "Who kept the log at Pell Point?"
    assert first.passage.startswith("The lighthouse") and first.meta == _meta("neural_bridge", 0, split="test", passage_words=39)
    assert last.answer == "a layer called patina" and last.meta["row"] == 5
    assert data.skipped == [("neural_bridge-test-1", "passage_too_short"), ("neural_bridge-test-2", "empty_answer"),
                            ("neural_bridge-test-3", "empty_passage"), ("neural_bridge-test-4", "empty_query")]
    assert data.split == "test" and data.source == str(NEURAL_BRIDGE)
    assert [s.id for s in load_samples("neural_bridge", 1, source=str(NEURAL_BRIDGE), max_passage_words=30, min_passage_words=5).samples] \
        == ["neural_bridge-test-5"]  # the 39-word page is over the limit


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_seed_dependent():
    a, b = synthetic_qa(20, seed=7), synthetic_qa(20, seed=7)
    assert a == b
    assert synthetic_qa(5, seed=7) == a[:5]
    c = synthetic_qa(20, seed=8)
    assert [s.passage for s in a] != [s.passage for s in c]
    assert [s.id for s in a] == [f"synth-7-{i}" for i in range(20)]


def test_synthetic_answer_appears_exactly_once_over_200_samples():
    samples = synthetic_qa(200, seed=42)
    assert len({s.id for s in samples}) == 200
    for s in samples:
        assert s.passage.count(s.answer) == 1, s
        assert s.passage.lower().count(s.answer.lower()) == 1, s
        assert s.answer.lower() not in s.query.lower(), s
        assert 1 <= len(s.answer.split()) <= 4, s
        assert 60 <= len(s.passage.split()) <= 150, s
        assert s.answers == (s.answer,) and s.meta["dataset"] == "synthetic"
    templates = {s.meta["template"] for s in samples}
    assert len(templates) >= 8, templates
    assert len({s.passage.index(s.answer) * 10 // len(s.passage) for s in samples}) >= 5


def test_synthetic_does_not_touch_global_random_state():
    import random
    random.seed(123)
    expected = random.random()
    random.seed(123)
    synthetic_qa(10, seed=1)
    assert random.random() == expected


def test_load_samples_synthetic_matches_generator_and_applies_limits():
    data = load_samples("synthetic", 6, seed=3)
    assert data.samples == synthetic_qa(6, seed=3)
    assert (data.split, data.source, data.skipped) == ("generated", "synthetic", [])
    short = load_samples("synthetic", 6, seed=3, max_passage_words=90)
    assert all(len(s.passage.split()) <= 90 for s in short.samples) and len(short.samples) == 6
    assert short.skipped and set(short.skip_counts()) == {"passage_too_long"}
    assert {s.id for s in short.samples} | {i for i, _ in short.skipped} == \
        {f"synth-3-{i}" for i in range(short.n_scanned)}
    with pytest.raises(ValueError, match="found 0 eligible rows of the 2 requested"):
        load_samples("synthetic", 2, max_passage_words=30)


def test_ms_marco_seed_selection_takes_first_passage_and_first_answer(tmp_path):
    """The exp01 seed's selection: passages[0] (selected or not), answers[0], 2-30-word answers, split train."""
    import json as _json

    rows = [{"query_id": 1, "query": "where is paris", "query_type": "LOCATION",
             "answers": ["Paris is in France", "France"], "wellFormedAnswers": ["Paris is in France."],
             "passages": {"passage_text": ["Paris lies on the Seine in northern France today.", "Other text here."],
                          "is_selected": [0, 1], "url": ["u0", "u1"]}},
            {"query_id": 2, "query": "q two", "answers": ["Rome"], "wellFormedAnswers": [],
             "passages": {"passage_text": ["Rome is old."], "is_selected": [1], "url": ["u"]}},
            {"query_id": 3, "query": "q three", "answers": ["No Answer Present."], "wellFormedAnswers": [],
             "passages": {"passage_text": ["Some passage words."], "is_selected": [0], "url": ["u"]}},
            {"query_id": 4, "query": "q four", "answers": [" ".join(["w"] * 31)], "wellFormedAnswers": [],
             "passages": {"passage_text": ["Some passage words."], "is_selected": [0], "url": ["u"]}}]
    path = tmp_path / "ms_marco_train.jsonl"
    path.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    data = load_samples("ms_marco_seed", 4, source=str(path), min_passage_words=None, allow_fewer=True)
    assert data.split == "train" and [s.id for s in data.samples] == ["1"]
    s = data.samples[0]
    assert s.passage == "Paris lies on the Seine in northern France today." and s.answers == ("Paris is in France",)
    assert s.meta["passage_is_selected"] is False and s.meta["answer_source"] == "answers[0]"
    assert data.skipped == [("2", "answer_length"), ("3", "no_answer"), ("4", "answer_length")]
