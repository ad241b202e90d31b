"""exp01's value-vector analysis: bare vs truncated-oracle document values, aligned entry by entry."""
from types import SimpleNamespace

import numpy as np
import pytest

from lib.studies import valuedrift
from lib.studies.priming import Prepared
from tiny import arch_of, build


def _lm(kind):
    m = build(kind)
    return SimpleNamespace(model=m, arch=arch_of(m))


def _prep(seed=0, n_doc=20, n_q=6):
    rng = np.random.default_rng(seed)
    doc = rng.integers(5, 120, n_doc).tolist()
    q = rng.integers(5, 120, n_q).tolist()
    return Prepared(f"s{seed}", doc, {"query": q, "other_query": q[::-1]}, {"query": [3, 4]}, [7, 8], "o")


@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_layer0_values_agree_and_deeper_layers_move(kind):
    lm = _lm(kind)
    rows = valuedrift.drift(lm, [_prep(0), _prep(1)])
    layers = valuedrift.default_layers(lm.arch.n_layers)
    assert sorted({r["layer"] for r in rows}) == layers and len(rows) == 2 * len(layers)
    for r in rows:
        assert r["n_doc"] == 20
        if r["layer"] == 0:  # a value depends only on its own token at layer 0: the built-in oracle
            assert r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["rel_l2"] < 1e-5
        else:  # the query was attended to during encoding
            assert r["rel_l2"] > 1e-3 and r["cosine"] < 1.0
    s = valuedrift.summarize(rows, n_boot=200)
    assert [x["layer"] for x in s] == layers and all(x["n"] == 2 for x in s)
    assert all(x["cosine_ci"][0] <= x["cosine"] <= x["cosine_ci"][1] for x in s)


def test_bad_layers_and_empty_rows_raise():
    lm = _lm("llama")
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        valuedrift.sample_drift(lm, _prep(), [0, 4])
    with pytest.raises(ValueError, match="no value-drift rows"):
        valuedrift.summarize([])


@pytest.mark.slow
def test_real_models_layer0_agrees(smollm2, gemma3):
    for lm in (smollm2, gemma3):
        from lib.studies.priming import prepare
        from lib.data.core import Sample

        s = Sample(id="a", query="Who built the bridge?", passage="The bridge was built in 1901 by the town council "
                   "after a long debate about its cost and the river's floods.", answer="the town council")
        p = prepare(lm.tokenizer, lm.arch, s, "What is it?", "b")
        rows = valuedrift.drift(lm, [p])
        first = next(r for r in rows if r["layer"] == 0)
        assert first["cosine"] == pytest.approx(1.0, abs=1e-5) and first["rel_l2"] < 1e-4
        assert all(r["rel_l2"] > 1e-3 for r in rows if r["layer"] > 0)
