"""One float-noise rule, with a tolerance tied to the scoring dtype (simulated data with known answers)."""
import math

import numpy as np
import pytest
import torch

from lib.kv import noise
from lib.report import stats as S
from lib.report import stats_hardness as H


def test_tolerance_depends_on_the_scoring_dtype():
    assert noise.noise_atol("float32") == S.NOISE_ATOL == 1e-5
    assert noise.noise_atol(torch.float32) == noise.noise_atol("torch.float32") == 1e-5
    assert noise.noise_atol(torch.bfloat16) > noise.noise_atol(torch.float16) > noise.noise_atol(torch.float32)
    assert noise.noise_atol(None) == 1e-5  # unknown dtype: the float32 default
    with pytest.raises(ValueError, match="int8.*float32"):
        noise.noise_atol("int8")


def test_clean_delta_is_the_one_rule():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    cond = ref - np.array([1e-6, -5e-4, 2e-3, 0.0])
    np.testing.assert_allclose(noise.clean_delta(ref, cond), [0.0, -5e-4, 2e-3, 0.0], rtol=1e-9, atol=0)
    np.testing.assert_allclose(noise.clean_delta(ref, cond, atol=1e-3), [0.0, 0.0, 2e-3, 0.0], rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="atol"):
        noise.clean_delta(ref, cond, atol=-1.0)


def test_bf16_noise_is_not_an_effect_under_the_bf16_tolerance():
    """Two identical conditions scored in different bfloat16 batches differ by ~1e-3 nats: no effect at that dtype."""
    rng = np.random.default_rng(1)
    ref = rng.normal(2, 0.5, 80)
    noisy = ref + rng.normal(0, 3e-4, 80)
    atol = noise.noise_atol("bfloat16")
    r = S.paired_test(ref, noisy, n_boot=100, atol=atol)
    assert r.d == 0.0 and r.mean_delta == 0.0 and r.win_rate == 0.5 and math.isnan(r.p_wilcoxon)
    assert S.paired_test(ref, noisy, n_boot=100).d != 0.0  # the float32 rule would call it an effect
    rows = S.compare_conditions({"a": ref, "b": noisy}, "a", n_boot=50, atol=atol)
    assert rows[0]["d"] == 0.0 and rows[0]["noise_atol"] == atol


def test_ranks_treat_float_noise_as_a_tie():
    rng = np.random.default_rng(2)
    a = rng.normal(2, 0.5, 40)
    nll = {"a": a, "a_again": a + 1e-8 * rng.random(40), "worse": a + 0.5}
    out = S.ranks_per_sample(nll)
    assert out["share_best"]["a"] == pytest.approx(0.5) and out["share_best"]["a_again"] == pytest.approx(0.5)
    assert out["mean_rank"]["a"] == out["mean_rank"]["a_again"] == 1.5
    out = S.ranks_per_sample({"a": a, "b": a + 5e-4}, atol=noise.noise_atol("bfloat16"))
    assert out["share_best"] == {"a": 0.5, "b": 0.5}


def test_hardness_means_use_the_noise_rule():
    rng = np.random.default_rng(3)
    a = rng.normal(2, 0.5, 50)
    rows = H.hardness_table({"a": a, "b": a + 1e-8 * rng.random(50)}, "a", ["b"], n_bins=5, n_perm=20)
    assert all(r["mean_delta"] == 0.0 and r["d"] == 0.0 and r["win_rate"] == 0.5 for r in rows)


# ----------------------------------------------------------------------------- the LM head in float32
def _bf16_model(kind, logit_scale=12.0):
    from tiny import build

    m = build(kind)
    with torch.no_grad():  # real models have |logits| of 10-30; the tiny random head gives ~1
        m.get_output_embeddings().weight.mul_(logit_scale)
    return m.to(torch.bfloat16)


def _head_f64(m, h, targets):
    w = m.get_output_embeddings().weight.double()
    logits = h.double() @ w.T
    cap = getattr(m.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


@pytest.mark.parametrize("kind", ["llama", "gemma3_softcap"])
def test_bf16_model_head_and_log_softmax_run_in_float32(kind):
    from lib.kv import scoring

    m = _bf16_model(kind)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (2, 24), generator=g)
    with torch.no_grad():
        hidden = m.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # bf16
    rows, cols = torch.tensor([0] * 12 + [1] * 12), torch.arange(24) % 12 + 11
    tgt = ids[rows, (cols + 1) % 24]
    with torch.no_grad():
        ref = _head_f64(m, hidden[rows, cols], tgt)
        got = scoring._answer_nll(m, hidden, rows, cols, tgt)
    assert got.dtype == torch.float32
    # the old path: head (and soft-capping) in bf16, logits rounded to bf16, then cast
    cap = getattr(m.config.get_text_config(decoder=True), "final_logit_softcapping", None)
    with torch.no_grad():
        old_logits = m.get_output_embeddings()(hidden[rows, cols])  # bf16
    old_logits = torch.tanh(old_logits / cap) * cap if cap else old_logits
    old = torch.nn.functional.cross_entropy(old_logits.float(), tgt, reduction="none")
    err_new, err_old = float((got.double() - ref).abs().max()), float((old.double() - ref).abs().max())
    assert err_new < 1e-5, (err_new, err_old)
    assert err_old > 100 * err_new
    # logits of a float64 input stay float64 (finite-difference gradient checks rely on it)
    assert scoring.lm_logits(m.double(), hidden.double()[:, :2]).dtype == torch.float64


def test_float32_head_passes_gradients_to_the_hidden_states():
    from lib.kv import scoring

    m = _bf16_model("gemma3_softcap").requires_grad_(False)
    h = torch.randn(3, m.config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    nll = scoring._answer_nll(m, h[None], torch.zeros(3, dtype=torch.long), torch.arange(3), torch.tensor([4, 5, 6]))
    nll.sum().backward()
    assert h.grad is not None and h.grad.dtype == torch.bfloat16 and h.grad.abs().sum() > 0
