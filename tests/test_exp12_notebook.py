"""exp12 notebook (LatentWire): the real experiment's defaults, and a papermill SMOKE run on the two bundled
models with different tokenizers (slow; the build itself: tests/test_notebooks.py)."""
import pytest

from nbrun import ROOT, load_builder, rows, smoke


def test_exp12_defaults_are_the_experiment():
    defaults = {p.name: p.default for p in load_builder(ROOT / "builders" / "build_exp12.py").PARAMS}
    assert defaults["MODELS"] == "meta-llama/Llama-3.1-8B-Instruct,Qwen/Qwen2.5-7B-Instruct"
    assert defaults["DATASET"] == "squad_v1.1" and defaults["M_LIST"] == "32" and defaults["D_Z"] == 256
    assert defaults["ENCODER"] == "bytes" and defaults["BYTE_MAX"] == 2048 and defaults["LATENT_INPUT"] == "prompt"
    assert defaults["K_TOKENS"] == 4 and defaults["LR"] == 5e-5 and defaults["BATCH_SIZE"] == 64 and defaults["EPOCHS"] == 24


@pytest.mark.slow
def test_papermill_smoke_run(tmp_path):
    out = tmp_path / "run"
    res = smoke("experiments/exp12/exp12_latent_prefix.ipynb", out, executed=tmp_path / "executed.ipynb", timeout=300,
                PROGRESS=False, ANCHORS="<|endoftext|>,")
    names = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    assert res["training"]["4"]["meta"]["bos_ids"] == [0, 151643]  # SmolLM2 reads the <|endoftext|> override, Qwen its policy
    assert res["config"]["MODELS"] == ",".join(names) and res["config"]["M_LIST"] == "4"
    assert res["provenance"]["commit"] and res["summary"]["pipeline_check_only"] is True
    by_model = res["summary"]["by_model"]
    assert sorted(by_model) == sorted(names)
    for n in names:
        summ = by_model[n]
        assert {(s["condition"], s["m"]) for s in summ} == {("text", 0), ("replay", 0)} | {
            (c, 4) for c in ("latent", "budget", "budget_slot", "latent_other", "latent_zero")}
        for s in summ:
            assert s["n"] == 4 and 0 <= s["f1"] <= 1 and s["nll_per_token"] > 0
        (v,) = res["summary"]["verdicts"][n]
        assert v["m"] == 4 and set(v["checks"]) == {"first_tok_at1", "f1", "f1_ratio_to_text"}
    assert res["summary"]["replay_vs_text_max_nll_gap"] < 1e-3  # soft replay of the prompt's embeddings == text
    (joint,) = res["summary"]["joint"]
    assert joint["n"] == 4 and joint["f1"] <= joint["oracle_f1"] + 1e-12
    assert len(rows(out)) == 2 * 4 * (2 + 5) + 4
    assert (out / "wire_m4.ckpt.pt").is_file() and (out / "_eval" / "items.jsonl").is_file()
    assert (out / "curves_0.png").is_file() and (out / "curves_1.png").is_file() and (out / "training_curves.png").is_file()
    assert len(res["training"]["4"]["history"]) == 2  # 8 samples / batch 4, one epoch
    assert res["training"]["4"]["meta"]["models"] == names
