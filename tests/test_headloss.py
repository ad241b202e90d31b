"""``lib.kv.headloss.answer_nll``: the answer NLL and its gradient in one pass over the LM head,
against the plain path (``scoring.lm_logits`` + cross-entropy + autograd) as the oracle."""
import pytest
import torch
from tiny import build

from lib.kv import headloss, scoring


def _plain(model, hidden, targets):
    h = hidden.detach().clone().requires_grad_(True)
    nll = torch.nn.functional.cross_entropy(scoring.lm_logits(model, h), targets, reduction="none")
    (nll * torch.arange(1, len(targets) + 1, dtype=nll.dtype)).sum().backward()  # unequal weights per row
    return nll.detach(), h.grad


def _one_pass(model, hidden, targets, chunk):
    h = hidden.detach().clone().requires_grad_(True)
    nll = headloss.answer_nll(model, h, targets, chunk=chunk)
    (nll * torch.arange(1, len(targets) + 1, dtype=nll.dtype)).sum().backward()
    return nll.detach(), h.grad


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kind", ["llama", "gemma3_softcap", "qwen2"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 10 ** 6])
def test_one_pass_equals_the_plain_head_in_float64(kind, chunk):
    """Chunks of 1 token, an uneven split of the vocabulary, and one chunk for all; final soft-capping
    (gemma3_softcap) and a head with a bias (llama's head given one below) included."""
    m = build(kind).double()
    for p in m.parameters():
        p.requires_grad_(False)
    if kind == "llama":  # a biased head: untie and add a bias the plain path applies
        head = m.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        head.bias = torch.nn.Parameter(torch.randn(head.weight.shape[0], dtype=torch.float64), requires_grad=False)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, m.config.hidden_size, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, m.get_output_embeddings().weight.shape[0], (9,), generator=g)
    targets[0] = 0
    targets[1] = m.get_output_embeddings().weight.shape[0] - 1  # the first and the last vocabulary entries
    nll_p, g_p = _plain(m, hidden, targets)
    nll_o, g_o = _one_pass(m, hidden, targets, chunk)
    assert _rel(nll_o, nll_p) <= 1e-12
    assert _rel(g_o, g_p) <= 1e-12


def test_float32_within_rounding_and_no_grad():
    m = build("gemma3")
    for p in m.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(5, m.config.hidden_size, generator=g) * 3
    targets = torch.randint(0, m.config.vocab_size, (5,), generator=g)
    nll_p, g_p = _plain(m, hidden, targets)
    nll_o, g_o = _one_pass(m, hidden, targets, 16)
    assert nll_o.dtype == torch.float32 and _rel(nll_o, nll_p) <= 1e-5 and _rel(g_o, g_p) <= 1e-5
    with torch.no_grad():  # evaluation: no gradient accumulated, same NLL
        assert _rel(headloss.answer_nll(m, hidden, targets, chunk=16), nll_p) <= 1e-5
    bf = hidden.to(torch.bfloat16)  # a bf16 hidden state is upcast: the NLL comes back in float32
    assert headloss.answer_nll(m, bf, targets).dtype == torch.float32


def test_refuses_what_it_cannot_do():
    m = build("llama")
    h = torch.zeros(2, m.config.hidden_size)
    with pytest.raises(ValueError, match="requires a gradient"):
        headloss.answer_nll(m, h, torch.tensor([1, 2]))  # the head is trainable: no gradient would reach it
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match=r"token ids in \[0, "):
        headloss.answer_nll(m, h, torch.tensor([1, m.config.vocab_size]))
    with pytest.raises(ValueError, match="targets"):
        headloss.answer_nll(m, h, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="chunk"):
        headloss.answer_nll(m, h, torch.tensor([1, 2]), chunk=0)


@pytest.mark.slow
def test_one_pass_on_the_gemma3_270m_head(gemma3):
    """The bundled Gemma 3's 262k-token tied head on hidden states of a real forward. Oracle: the plain
    path in float64. In float32 both paths carry rounding: measured 5.7e-6 (plain) and 4.3e-7 (one pass)
    relative in the NLL, 8.4e-5 and 1.0e-4 in the gradient (a difference of two vectors of the weights'
    size); the one pass must stay within 2x of the plain path's own error."""
    import types

    from real_env import EXACT

    m = gemma3.model
    ids = torch.tensor([m.config.bos_token_id, 818, 5279, 529, 7001, 563, 9079, 236761], device=m.device)
    with torch.no_grad():
        hidden = m.base_model(input_ids=ids[None]).last_hidden_state[0, :-1].float()
    targets = ids[1:]
    w = m.get_output_embeddings().weight
    head64 = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.float64, device=w.device).requires_grad_(False)
    head64.weight.copy_(w.double())
    m64 = types.SimpleNamespace(get_output_embeddings=lambda: head64, config=m.config)
    nll64, g64 = _plain(m64, hidden.double(), targets)
    was = [p.requires_grad for p in m.parameters()]
    for p in m.parameters():
        p.requires_grad_(False)
    try:
        nll_p, g_p = _plain(m, hidden, targets)
        nll_o, g_o = _one_pass(m, hidden, targets, headloss.CHUNK)
    finally:
        for p, r in zip(m.parameters(), was):
            p.requires_grad_(r)
    if EXACT:
        assert _rel(nll_o.double(), nll64) <= max(2 * _rel(nll_p.double(), nll64), 1e-6)
        assert _rel(g_o.double(), g64) <= max(2 * _rel(g_p.double(), g64), 1e-6)
    else:  # a bf16 / nf4 model: the head runs in float32 on its rounded weights either way
        assert _rel(nll_o, nll_p) <= 1e-4 and _rel(g_o, g_p) <= 1e-3
