"""exp01 condition logic that needs no model: assignments, names, tables, diagnosis, store config."""
import numpy as np
import pytest

from lib.report import tables
from lib.studies import priming


def test_assign_other_is_a_seeded_derangement():
    ids = [f"s{i}" for i in range(50)]
    a = priming.assign_other(ids, 42)
    assert set(a) == set(ids) and all(a[i] != i for i in ids)
    assert sorted(a.values()) == sorted(ids)  # every query is used once
    assert a == priming.assign_other(ids, 42) and a != priming.assign_other(ids, 43)
    with pytest.raises(ValueError, match="at least 2"):
        priming.assign_other(["only"], 0)
    with pytest.raises(ValueError, match="not unique"):
        priming.assign_other(["a", "a"], 0)


def test_unknown_condition_lists_known_ones():
    assert [c.name for c in priming.select_conditions(["D_trunc_oracle", "A_bare"])] == ["D_trunc_oracle", "A_bare"]
    with pytest.raises(ValueError, match="Did you mean 'A_bare'") as e:
        priming.select_conditions(["A_bar"])
    assert "E_trunc_random" in str(e.value)


def test_condition_validation():
    with pytest.raises(ValueError, match="prefix 'doc'"):
        priming.CacheCondition("x", "doc", False, "query")
    with pytest.raises(ValueError, match="keep_prefix needs a prefix"):
        priming.CacheCondition("x", "none", True, "query")


def _rows(nll: dict[str, np.ndarray]):
    return [{"sample_id": f"s{i}", "condition": c, "nll": float(v[i])} for c, v in nll.items() for i in range(len(v))]


def test_nll_table_refuses_missing_items():
    rows = _rows({"A_bare": np.ones(3), "D_trunc_oracle": np.ones(3)})
    table = tables.nll_table(rows, ["A_bare", "D_trunc_oracle"], ["s0", "s1", "s2"])
    assert table["A_bare"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="no row"):
        tables.nll_table(rows[:-1], ["A_bare", "D_trunc_oracle"], ["s0", "s1", "s2"])


def test_analyse_and_diagnosis_follow_the_numbers():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 0.5, 60)
    nll = {"A_bare": a, "B_full_oracle": a + 0.5 + rng.normal(0, 0.1, 60), "C_full_repeat": a + rng.normal(0, 0.3, 60),
           "D_trunc_oracle": a - 0.3 + rng.normal(0, 0.1, 60), "E_trunc_random": a + rng.normal(0, 0.1, 60)}
    summary = priming.analyse(_rows(nll), [f"s{i}" for i in range(60)], n_boot=200)
    by = {(r["ref"], r["cond"]): r for r in summary["comparisons"]}
    assert by[("A_bare", "B_full_oracle")]["d"] < 0 < by[("A_bare", "D_trunc_oracle")]["d"]
    text = "\n".join(summary["diagnosis"])
    assert "B_full_oracle is worse than A_bare" in text
    assert "D_trunc_oracle is better than A_bare" in text
    assert "D_trunc_oracle is better than E_trunc_random" in text
    assert "depends on the prefix being the real query" in text
    assert len(summary["hardness"]) == 5 * 4


def test_store_config_drops_runtime_knobs_only():
    class LM:
        source, dtype = "bundled:x", "torch.float32"

        class arch:
            bos_id, bos_source = 1, "bos_token"

    cfg = priming.store_config({"MODEL": "m", "N_SAMPLES": 5, "BATCH_SIZE": 8, "OUT_DIR": "o", "SMOKE": True}, LM)
    assert cfg["MODEL"] == "m" and cfg["N_SAMPLES"] == 5
    assert not {"BATCH_SIZE", "OUT_DIR", "SMOKE"} & set(cfg)
    assert cfg["prompt_query"] == priming.PROMPT_QUERY and len(cfg["conditions"]) == 5


def test_diagnosis_separates_no_net_benefit_from_no_effect():
    rng = np.random.default_rng(1)
    a = rng.normal(2.0, 0.5, 80)
    nll = {"A_bare": a, "B_full_oracle": a + rng.normal(0, 0.1, 80), "C_full_repeat": a + rng.normal(0, 0.1, 80),
           "D_trunc_oracle": a + rng.normal(0, 0.1, 80), "E_trunc_random": a + 0.4 + rng.normal(0, 0.1, 80)}
    text = "\n".join(priming.analyse(_rows(nll), [f"s{i}" for i in range(80)], n_boot=200)["diagnosis"])
    assert "D_trunc_oracle is not distinguishable from A_bare" in text
    assert "no net benefit over bare, but the real query beats a random one" in text
