"""Re-analysis from per_item.csv: same scores, same d, the current statistics' columns added."""
import json
import shutil
from pathlib import Path

import pytest

from lib.tools import reanalyse

REPO = Path(__file__).resolve().parents[1]


def _ds(summary) -> dict:
    """{(path, ref, cond): d} of every comparison row anywhere in a summary."""
    out = {}

    def walk(x, path=""):
        if isinstance(x, dict):
            if {"d", "ref", "cond"} <= set(x):
                out[(path, x["ref"], x["cond"])] = x["d"]
            for k, v in x.items():
                walk(v, f"{path}/{k}")
        elif isinstance(x, list):
            for v in x:
                walk(v, path)

    walk(summary)
    return out


@pytest.mark.parametrize("run", ["exp09", "exp11"])
def test_reanalysis_of_encdec_and_prefix_lm_keeps_every_d(tmp_path, run):
    dst = tmp_path / run
    dst.mkdir()
    for f in ("results.json", "per_item.csv"):
        shutil.copy(REPO / "results" / run / f, dst / f)
    old = _ds(json.loads((REPO / "results" / run / "results.json").read_text())["summary"])
    new = _ds(reanalyse.reanalyse(dst)["summary"])
    assert set(old) == set(new) and len(old) >= 10
    assert all(old[k] == pytest.approx(new[k], abs=1e-6) for k in old if old[k] is not None)


@pytest.mark.parametrize("run", ["exp02_gemma3_270m", "exp06_gemma3_270m"])
def test_reanalysis_keeps_the_scores_and_adds_absolute_effects(tmp_path, run):
    src = REPO / "results" / run
    dst = tmp_path / run
    dst.mkdir()
    for f in ("results.json", "per_item.csv"):
        shutil.copy(src / f, dst / f)
    old = json.loads((src / "results.json").read_text())
    new = reanalyse.reanalyse(dst)
    assert new["summary"]["mean_nll"] == pytest.approx(old["summary"]["mean_nll"], abs=1e-9)
    od = {c["cond"]: c["d"] for c in old["summary"]["comparisons"]}
    for c in new["summary"]["comparisons"]:
        assert c["d"] == pytest.approx(od[c["cond"]], abs=1e-6), c["cond"]
        assert {"mean_delta", "pct_of_ref", "p_holm_wilcoxon", "primary_test"} <= set(c)
    assert new["reanalysis"]["from"] == "per_item.csv" and "comparisons" in new["reanalysis"]["recomputed"]
    assert new["config"] == old["config"] and new["provenance"] == old["provenance"]


def test_unsupported_experiment_raises(tmp_path):
    (tmp_path / "exp12_x").mkdir()
    with pytest.raises(ValueError, match="rerun its notebook"):
        reanalyse.reanalyse(tmp_path / "exp12_x")


def test_reanalysis_of_exp03_adds_the_word_order_comparison(tmp_path):
    dst = tmp_path / "exp03"
    dst.mkdir()
    for f in ("results.json", "per_item.csv"):
        shutil.copy(REPO / "results" / "exp03" / f, dst / f)
    s = reanalyse.reanalyse(dst)["summary"]
    (row,) = s["word_order"]
    assert (row["ref"], row["cond"]) == ("oracle_matched", "scrambled_oracle")
    assert row["mean_delta"] == pytest.approx(s["mean_nll"]["oracle_matched"] - s["mean_nll"]["scrambled_oracle"], abs=1e-9)
    assert "word_order" in reanalyse.reanalyse(dst)["reanalysis"]["recomputed"]


def test_reanalysis_of_a_real_prefix_lm_run_adds_the_rank_readout_and_keeps_every_d(tmp_path):
    """exp11's margins are recomputed through prefixlm.discrimination (the notebook's own function): every
    d(nll) and d(margin) is unchanged and each margin comparison gains the gold-rank change."""
    src = REPO / "results" / "sweeps" / "real" / "exp11__smollm2-135m-instruct__squad_v1.1"
    dst = tmp_path / "exp11_real"
    dst.mkdir()
    for f in ("results.json", "per_item.csv"):
        shutil.copy(src / f, dst / f)
    old_summary = json.loads((src / "results.json").read_text())["summary"]
    new_summary = reanalyse.reanalyse(dst)["summary"]
    old, new = _ds(old_summary), _ds(new_summary)
    assert set(old) == set(new) and len(old) >= 20
    assert all(old[k] == pytest.approx(new[k], abs=1e-9) for k in old if old[k] is not None)
    comps = new_summary["discrimination"]["comparisons"]
    assert len(comps) == 10 and all({"rank_better", "rank_worse", "p_rank_wilcoxon", "top1_cond"} <= set(c) for c in comps)


def test_exp05_keyword_leak_split_from_reloaded_samples():
    """The synthetic exp05 run predates the split: reloading its samples finds keywords holding the
    answer in most samples (the synthetic templates put it there), and the gain lives in those."""
    r = reanalyse.reanalyse(REPO / "results/exp05_gemma3_270m", keyword_leaks=True)
    leak = r["summary"]["keyword_answer_leak"]
    assert len(leak["leaked_ids"]["kw10"]) > 150
    (row,) = [x for x in leak["split"] if x["cond"] == "kw10_L32"]
    assert row["n_leaked"] + row["n_clean"] == r["summary"]["n_samples"]
    assert row["leaked"]["mean"] > row["clean"]["mean"]
