"""lib.report.overview on the committed results: filters, kinds, a run's comparisons (no model)."""
import json
from pathlib import Path

import pytest

from lib.report import index, overview

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rows():
    return overview.runs()


def test_every_results_json_is_a_row_with_its_kind(rows):
    assert [r["run"] for r in rows] == [r["run"] for r in index.collect()]
    by = {r["run"]: r for r in rows}
    assert by["exp01"]["kind"] == "real"  # SQuAD v1.1
    assert by["exp01_gemma3_270m"]["kind"] == "pipeline check"  # synthetic
    assert by["exp09"]["kind"] == "pipeline check"  # random-init encoder-decoder
    assert all(p.is_file() for r in rows for p in r["figures"])


def test_select_filters_and_refuses_values_that_match_nothing(rows):
    ex = overview.select(rows, experiment="exp02")
    assert ex and all(r["experiment"] == "exp02" for r in ex)
    assert {r["run"] for r in overview.select(rows, model="GEMMA", kind="pipeline check")} == \
        {r["run"] for r in rows if "gemma" in r["model"].lower() and r["kind"] == "pipeline check"}
    real = overview.select(rows, kind="real")
    assert {"exp01", "exp01_squad_smollm2_n300"} <= {r["run"] for r in real}  # SQuAD v1.1 runs
    assert len(real) == sum(r["kind"] == "real" for r in rows) and all(r["kind"] == "real" for r in real)
    with pytest.raises(ValueError, match="'exp99'.*exp01"):
        overview.select(rows, experiment="exp99")
    with pytest.raises(ValueError, match="'imaginary'"):
        overview.select(rows, data="imaginary")
    with pytest.raises(ValueError, match="'fake'"):
        overview.select(rows, kind="fake")
    with pytest.raises(ValueError, match="'nope'"):
        overview.find(rows, "nope")


def test_top_comparisons_are_the_stored_rows_by_abs_d(rows):
    r = overview.find(rows, "exp01")
    top = overview.top_comparisons(r, 3)
    stored = json.loads((ROOT / "results/exp01/results.json").read_text())["summary"]["comparisons"]
    assert top == sorted(stored, key=lambda c: -abs(c["d"]))[:3]
    exp10 = overview.top_comparisons(overview.find(rows, "exp10"), 10)  # no summary.comparisons: index effects
    assert exp10 and all({"label", "d"} <= set(c) for c in exp10)
    with pytest.raises(ValueError, match="k=0"):
        overview.top_comparisons(r, 0)


def test_index_rows_flatten_the_headline(rows):
    flat = overview.index_rows(rows)
    assert all(set(f) <= set(overview.INDEX_COLUMNS) and isinstance(f["headline"], str) for f in flat)
    assert "D_trunc_oracle vs B_full_oracle +0.92 [+0.67, +1.29]" in flat[0]["headline"]
