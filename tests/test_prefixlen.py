"""exp05 helpers: length/content grid, decomposition identities, density, parsing; exp10 document padding."""
from dataclasses import replace

import numpy as np
import pytest

from lib.report import plots
from lib.studies import prefixlen


def test_parse_lengths_and_contents():
    assert prefixlen.parse_lengths("32, 8,16") == [8, 16, 32]
    for bad in ("8,x", "0", "8,8", ""):
        with pytest.raises(ValueError):
            prefixlen.parse_lengths(bad)
    assert prefixlen.parse_contents("random,kw5") == ["random", "kw5"]
    with pytest.raises(ValueError, match="Did you mean 'extractor'"):
        prefixlen.parse_contents("random,extractr")
    with pytest.raises(ValueError, match="must include 'random'"):
        prefixlen.parse_contents("kw5")


def test_grid_names_and_lengths():
    conds = prefixlen.grid(["random", "scrambled", "kw10"], [8, 32])
    assert [c.name for c in conds] == ["bare", "random_L8", "scrambled_L8", "kw10_L8", "random_L32", "scrambled_L32", "kw10_L32"]
    assert conds[2].scramble and conds[2].source == "query" and conds[6].length == 32
    other = prefixlen.grid(["random", "kw5_other"], [8])[2]  # wrong-document keywords (the seed's kw*_other)
    assert (other.name, other.source, other.length, other.scramble) == ("kw5_other_L8", "other_keywords:5", 8, False)
    assert {"kw5_other", "kw10_other", "kw20_other"} <= set(prefixlen.parse_contents(
        "random,kw5_other,kw10_other,kw20_other"))


def _fake_nll(contents, lengths, n=50, seed=0):
    rng = np.random.default_rng(seed)
    nll = {"bare": rng.normal(2, 0.3, n)}
    for L in lengths:
        for i, c in enumerate(contents):
            nll[prefixlen.name(c, L)] = nll["bare"] - 0.01 * i * np.log2(L) + rng.normal(0, 0.05, n)
    return nll


def test_decomposition_components_add_up_to_the_total():
    contents, lengths = ["random", "oracle", "scrambled", "kw5", "repeat"], [8, 64]
    nll = _fake_nll(contents, lengths)
    rows = prefixlen.decompose(nll, contents, lengths, n_boot=50)
    assert {(r["content"], r["length"]) for r in rows} == {(c, L) for c in ("oracle", "kw5", "repeat") for L in lengths}
    for r in rows:
        parts = ("structure", "vocabulary", "meaning") if r["content"] == "oracle" else ("structure", "content_effect")
        assert set(parts) <= set(r)
        assert sum(r[p]["mean"] for p in parts) == pytest.approx(r["total"]["mean"], abs=1e-12)
        x = nll[prefixlen.name(r["content"], r["length"])]
        assert r["total"]["mean"] == pytest.approx(float((nll["bare"] - x).mean()))


def test_density_pairs_and_curves():
    contents, lengths = ["random", "kw5", "kw10", "kw20"], [8, 16]
    nll = _fake_nll(contents, lengths)
    dens = prefixlen.density(nll, contents, lengths, n_boot=50)
    assert [r["label"] for r in dens][:3] == ["kw10_L8 vs kw5_L8", "kw20_L8 vs kw5_L8", "kw20_L8 vs kw10_L8"] and len(dens) == 6
    comps = [{"cond": n, "d": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p_holm": 0.5, "mean_delta": 0.01} for n in nll if n != "bare"]
    curv = prefixlen.curves(comps, contents, lengths)
    assert [p["length"] for p in curv["kw5"]] == lengths


def test_plots(tmp_path):
    contents, lengths = ["random", "oracle", "scrambled", "kw5"], [8, 16]
    nll = _fake_nll(contents, lengths)
    rows = prefixlen.decompose(nll, contents, lengths, n_boot=50)
    comps = [{"cond": n, "d": 0.1, "ci_low": 0.0, "ci_high": 0.2, "p_holm": 0.5, "mean_delta": 0.01} for n in nll if n != "bare"]
    assert plots.plot_decomposition(rows, tmp_path / "d.png").stat().st_size > 1000
    assert plots.plot_length_curves(prefixlen.curves(comps, contents, lengths), tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError):
        plots.plot_decomposition([], tmp_path / "e.png")


def test_pad_document_keeps_the_passage_first_and_hits_the_target():
    from lib.studies.encdec import doclen

    doc, fill = [1, 2, 3], [[10, 11, 12, 13], [20, 21, 22]]
    out, used = doclen.pad_document(doc, fill, [9], 8)
    assert out == [1, 2, 3, 9, 10, 11, 12, 13] and used == 1
    out, used = doclen.pad_document(doc, fill, [9], 10)
    assert out == [1, 2, 3, 9, 10, 11, 12, 13, 9, 20] and used == 2
    assert doclen.pad_document(doc, fill, [9], 0) == (doc, 0)
    with pytest.raises(ValueError, match="not enough filler"):
        doclen.pad_document(doc, fill, [9], 50)
    assert "s1" not in doclen.filler_order(["s0", "s1", "s2"], "s1", 0)
    assert doclen.parse_lengths("256,0") == [0, 256]
    with pytest.raises(ValueError):
        doclen.parse_lengths("256,x")


def test_article_filler_reads_the_samples_own_article_on_from_its_paragraph(tmp_path):
    """FILLER='article' (exp10 on SQuAD): a document is the question's paragraph, then the article's
    later paragraphs, then its earlier ones, then unrelated passages; indices come from the loader's meta."""
    import json

    from lib.data import load_samples
    from lib.data.realdata import article_paragraphs
    from lib.studies.encdec import doclen

    par = lambda k: {"context": f"p{k} " + f"w{k} " * 20, "qas": [  # noqa: E731
        {"id": f"q{k}", "question": f"What is in paragraph {k}?", "answers": [{"text": f"p{k}", "answer_start": 0}]}]}
    doc = {"data": [{"title": "A", "paragraphs": [par(0), par(1), par(2)]}, {"title": "B", "paragraphs": [par(3), par(4)]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    samples = load_samples("squad_v1.1", 5, source=str(path), seed=0).samples
    pars = article_paragraphs("squad_v1.1", str(path))
    text = lambda k: par(k)["context"].strip()  # noqa: E731  (as the loader strips passages)
    assert pars == {"a0": [text(k) for k in range(3)], "a1": [text(k) for k in (3, 4)]}
    own = doclen.article_fillers(samples, pars)
    assert own["q1"] == [text(2), text(0)] and own["q0"] == [text(1), text(2)] and own["q4"] == [text(3)]
    vocab: dict[str, int] = {}
    tok = lambda t: [vocab.setdefault(w, len(vocab)) for w in t.split()]  # noqa: E731  (one id per word)
    padded = doclen._padded(samples, [0, 63, 100], tok, 0, None, "test", own)
    q1 = {s.id: s for s in samples}["q1"]
    # 21 words per paragraph + SEP ("\n\n" -> no words): own passage, then p2, then p0, then unrelated
    assert padded[("q1", 63)] == (tok(text(1)) + tok(text(2)) + tok(text(0)), 2, 2)
    doc100, used, from_article = padded[("q1", 100)]
    assert doc100[:63] == tok(q1.passage) + tok(text(2)) + tok(text(0)) and len(doc100) == 100 and (used, from_article) == (4, 2)
    assert padded[("q1", 0)] == (tok(q1.passage), 0, 0)
    # without own fillers the same call pads with unrelated passages only
    assert doclen._padded(samples, [63], tok, 0, None, "test")[("q1", 63)][2] == 0
    rows = [{"condition": "bare_len63", "article_fillers": 2}, {"condition": "bare_len63", "article_fillers": 1},
            {"condition": "oracle_len63", "article_fillers": 9}]
    assert doclen.mean_fill(rows, [63], "article_fillers") == {63: 1.5}
    with pytest.raises(ValueError, match="not the sample's passage"):
        doclen.article_fillers(samples, {"a0": [text(1), text(0), text(2)], "a1": [text(3), text(4)]})
    with pytest.raises(ValueError, match="article 'a9'"):
        doclen.article_fillers([replace(q1, meta={**q1.meta, "article": "a9"})], pars)
    with pytest.raises(ValueError, match="SQuAD-layout"):
        article_paragraphs("coqa")


def test_keyword_answer_leaks_flag_samples_whose_keywords_hold_an_answer_word():
    from lib.data.schema import Sample
    from lib.studies import prefixlen

    docs = ["Tesla built the induction motor in Pittsburgh while working for Westinghouse.",
            "The river floods every spring, and farmers plant rice after the water recedes."]
    s = [Sample("a", "Where was the motor built?", docs[0], "Pittsburgh"),
         Sample("b", "When does the river flood?", docs[1], "in spring")]
    out = prefixlen.keyword_answer_leaks(s, ["random", "kw5", "kw20"])
    assert set(out) == {"kw5", "kw20"}
    # every word is in one document only, so TF-IDF ties and the top 5 are alphabetical: a's holds
    # 'pittsburgh' (built, induction, motor, pittsburgh, tesla); b's (every, farmers, floods, plant, recedes) not 'spring'
    assert out["kw5"] == ["a"] and out["kw20"] == ["a", "b"]


def test_leak_split_recovers_an_effect_confined_to_the_leaked_samples():
    """Simulated: keywords help by 0.5 nats exactly on the 40 samples whose keywords hold the answer."""
    import numpy as np

    from lib.studies import prefixlen

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(120)]
    bare = rng.normal(3, 1, 120)
    kw = bare - np.r_[np.full(40, 0.5), np.zeros(80)] + rng.normal(0, 0.2, 120)
    (row,) = prefixlen.leak_split({"bare": bare, "kw10_L32": kw}, ids, {"kw10": ids[:40]}, [8, 32], n_boot=500, seed=1)
    assert (row["n_leaked"], row["n_clean"], row["cond"]) == (40, 80, "kw10_L32")
    assert row["leaked"]["mean_ci"][0] > 0.4 and row["leaked"]["mean_ci"][1] < 0.6
    assert row["clean"]["mean_ci"][0] < 0 < row["clean"]["mean_ci"][1]
    lo, hi = row["leaked_minus_clean"]["diff_ci"]
    assert 0.4 < lo < 0.5 < hi < 0.6 and row["leaked_minus_clean"]["p_welch"] < 1e-6
    with pytest.raises(ValueError, match="not in ids"):
        prefixlen.leak_split({"bare": bare, "kw10_L32": kw}, ids, {"kw10": ["zz"]}, [32])
