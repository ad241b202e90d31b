"""Re-analysis from per_item.csv: same scores, same d, the current statistics' columns added."""
import json
import shutil
from pathlib import Path

import pytest

from lib.tools import reanalyse

REPO = Path(__file__).resolve().parents[1]


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
