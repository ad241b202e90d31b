"""Answer NLL through the LM head in one pass over the head's weight (training paths).

The plain path (``scoring._answer_nll``) computes the ``(N, V)`` logits, log-softmax and
cross-entropy, and autograd's backward then multiplies the ``(N, V)`` softmax gradient by the
head weight again: two passes over a ``(V, hidden)`` weight that, for a 262k-token vocabulary
(Gemma 3), is 671 MB in float32 and memory-bound at the few dozen rows an answer has, plus three
``(N, V)`` temporaries.

``answer_nll`` walks the vocabulary in chunks and, per chunk, computes its logits, folds them into a
running log-sum-exp (online softmax: a running max ``m`` and sum ``s``, rescaled when ``m`` grows),
and, when a gradient is wanted, accumulates ``sum_v exp(l_v - m) dl_v/dz_v w_v`` while the chunk's
weight is still in cache. At the end

    nll_i            = m_i + log s_i - l_i[target_i]
    d nll_i / d h_i  = G_i / s_i - dl/dz[target_i] * w[target_i]

with ``z = h w^T + b`` and ``l = z`` or ``l = cap * tanh(z / cap)`` (final soft-capping, whose
derivative is ``1 - (l / cap)^2``). The same numbers as the plain path up to float rounding (the
sums run in another order; tested against it in float64 to 1e-12 and float32), one weight pass
instead of two, no ``(N, V)`` tensor. The head weight gets no gradient (the models here are
frozen; a head that requires one is refused by name).

Shapes: ``hidden (N, H)``, ``weight (V, H)``, ``bias (V,)`` or None, ``targets (N,)``. Runs in the
dtype ``head_dtype`` picks (float32, or float64 for float64 input), the weight upcast chunk
by chunk.
"""
from __future__ import annotations

import torch

CHUNK = 2048  # vocabulary rows per chunk (5 MB of float32 weight at hidden 640); the fastest of 512-4096 at 8-88 rows on 2 CPU cores


class _HeadNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, cap, chunk):
        dt = hidden.dtype
        n, v = hidden.shape[0], weight.shape[0]
        want = ctx.needs_input_grad[0]
        m = torch.full((n,), float("-inf"), dtype=dt, device=hidden.device)
        s = torch.zeros(n, dtype=dt, device=hidden.device)
        acc = torch.zeros_like(hidden) if want else None
        tgt = torch.zeros(n, dtype=dt, device=hidden.device)
        tgt_slope = torch.ones(n, dtype=dt, device=hidden.device)
        buf = torch.empty(n, min(chunk, v), dtype=dt, device=hidden.device)  # reused: no fresh (N, C) block per chunk
        for c0 in range(0, v, chunk):
            w = weight[c0 : c0 + chunk].to(dt)  # (C, H)
            z = buf if w.shape[0] == buf.shape[1] else buf[:, : w.shape[0]].contiguous()
            torch.mm(hidden, w.T, out=z)  # (N, C) logits before capping
            if bias is not None:
                z.add_(bias[c0 : c0 + chunk].to(dt))
            if cap:
                z.div_(cap).tanh_().mul_(cap)
            m_new = torch.maximum(m, z.amax(dim=1))
            here = (targets >= c0) & (targets < c0 + w.shape[0])
            if bool(here.any()):
                rows = here.nonzero().squeeze(1)
                lt = z[rows, targets[rows] - c0]
                tgt[rows] = lt
                if cap:
                    tgt_slope[rows] = 1 - (lt / cap) ** 2
            slope = (1 - (z / cap) ** 2) if (cap and want) else None
            scale = torch.exp(m - m_new)  # 0 on the first chunk (exp(-inf))
            p = z.sub_(m_new[:, None]).exp_()  # (N, C), in place of the logits
            s = s * scale + p.sum(dim=1)
            if want:
                if slope is not None:
                    p = p.mul_(slope)
                acc.mul_(scale[:, None]).addmm_(p, w)
            m = m_new
        nll = m + torch.log(s) - tgt
        if want:
            w_t = weight.index_select(0, targets).to(dt)  # (N, H)
            ctx.save_for_backward(acc / s[:, None] - tgt_slope[:, None] * w_t)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (d,) = ctx.saved_tensors
        return grad_nll[:, None] * d, None, None, None, None, None


def head_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the LM head and log-softmax run in: float64 for float64 input, else float32."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def answer_nll(model, hidden: torch.Tensor, targets: torch.Tensor, *, chunk: int = CHUNK) -> torch.Tensor:
    """Per-row NLL of ``targets`` under ``model``'s LM head applied to ``hidden`` (N, H): the numbers
    of ``cross_entropy(scoring.lm_logits(model, hidden), targets, reduction="none")``, one pass over the head."""
    head = model.get_output_embeddings()
    if head.weight.requires_grad:
        raise ValueError("the LM head weight requires a gradient; headloss.answer_nll gives none "
                         "(freeze the model, or use scoring's plain head)")
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    v = head.weight.shape[0]
    if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < v):
        raise ValueError(f"targets must be token ids in [0, {v}), got range [{int(targets.min())}, {int(targets.max())}]")
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    cap = getattr(cfg, "final_logit_softcapping", None) or None
    bias = getattr(head, "bias", None)
    return _HeadNLL.apply(hidden.to(head_dtype(hidden)), head.weight, bias, targets, cap, chunk)
