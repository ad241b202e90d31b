"""exp12 notebook: the real experiment's defaults, and a papermill SMOKE run (slow; the build itself:
tests/test_notebooks.py)."""
import pytest

from nbrun import ROOT, load_builder, rows, smoke


def test_exp12_defaults_are_the_experiment():
    defaults = {p.name: p.default for p in load_builder(ROOT / "builders" / "build_exp12.py").PARAMS}
    assert defaults["MODEL"] == "meta-llama/Llama-3.1-8B-Instruct" and defaults["DATASET"] == "squad_v1.1"
    assert defaults["M_LIST"] == "4,8,16,32"


@pytest.mark.slow
def test_papermill_smoke_run(tmp_path):
    out = tmp_path / "run"
    res = smoke("experiments/exp12/exp12_latent_prefix.ipynb", out, executed=tmp_path / "executed.ipynb", timeout=300,
                PROGRESS=False)
    assert res["config"]["MODEL"] == "smollm2-135m-instruct" and res["config"]["M_LIST"] == "2,4"
    assert res["provenance"]["commit"]
    summ = res["summary"]["by_condition"]
    assert {(s["condition"], s["m"]) for s in summ} == {("text", 0), ("replay", 0)} | {
        (c, m) for c in ("latent", "budget", "latent_other", "latent_zero") for m in (2, 4)}
    assert res["summary"]["replay_vs_text_max_nll_gap"] < 1e-3  # soft replay of the prompt's embeddings == text
    for s in summ:
        assert s["n"] == 6 and 0 <= s["f1"] <= 1 and s["nll_per_token"] > 0
    assert len(rows(out)) == 6 * (2 + 4 * 2)
    assert (out / "latent_m2.ckpt.pt").is_file() and (out / "latent_m4.ckpt.pt").is_file()
    assert (out / "curves.png").is_file() and (out / "training_curves.png").is_file()
    assert len(res["training"]["4"]["history"]) == 4  # 16 samples / batch 4, one epoch
