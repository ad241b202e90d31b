"""exp09 (seed Exp 07): where the decoder's attention goes at the answer positions.

Two readings, both averaged over decoder layers (and heads) and the positions whose logits predict
answer tokens:

Output norms (``NormProbe``, models with separate self- and cross-attention modules: T5, BART,
T5Gemma): ``cross_attn_share`` = |cross-attention output| / (|cross| + |self|) before the
residual add. Not defined for merged attention (T5Gemma 2's decoder has one attention over
[decoder tokens; encoder states]): no separate cross-attention output exists there.

Attention weights (``weight_shares``, eager attention, ``output_attentions=True``), per layer, head
and answer position, with ``S`` the self-attention weights over decoder positions and ``C`` the
cross-attention weights over encoder positions:
  self_query_share     S on the decoder prompt (the query, or its random stand-in) / sum(S)
  cross_prefix_share   C on the encoder prefix positions / sum(C); exactly 0 when the prefix is
                       hidden (the cross-attention mask gives it weight 0)
  cross_weight_share   sum(C) / (sum(S) + sum(C)): the seed's cross- vs self-attention budget;
                       merged attention only (separate softmaxes make it 0.5 by construction)
  query_weight_share   S on the decoder prompt / (sum(S) + sum(C)); merged attention only
Separate attention: sum(S) = sum(C) = 1. Merged: sum(S) + sum(C) = 1.
"""
from __future__ import annotations

import torch

SELF = ("SelfAttention", "self_attn")
CROSS = ("EncDecAttention", "encoder_attn", "cross_attn")


def attention_modules(model) -> tuple[list, list]:
    """(self-attention modules, cross-attention modules) of the decoder."""
    s, c = [], []
    for name, mod in model.get_decoder().named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in SELF:
            s.append(mod)
        elif leaf in CROSS:
            c.append(mod)
    if not s or (c and len(c) != len(s)):
        raise ValueError(f"attention probe found {len(s)} self- and {len(c)} cross-attention modules in the decoder; "
                         f"expected equal counts (or none: merged attention)")
    return s, c


def is_merged(model) -> bool:
    """True when the decoder has no separate cross-attention (T5Gemma 2's merged attention)."""
    return not attention_modules(model)[1]


class NormProbe:
    """Norms of the decoder's self- and cross-attention outputs (before the residual add)."""

    def __init__(self, model):
        s, c = attention_modules(model)
        if not c:
            raise ValueError("the output-norm probe needs separate cross-attention modules; this decoder merges "
                             "self- and cross-attention (read the weight shares instead)")
        self.self_out, self.cross_out = [], []
        self.handles = [m.register_forward_hook(lambda m, i, o: self.self_out.append(o[0].detach())) for m in s]
        self.handles += [m.register_forward_hook(lambda m, i, o: self.cross_out.append(o[0].detach())) for m in c]

    def remove(self):
        for h in self.handles:
            h.remove()

    def cross_share(self, row: int, cols) -> float:
        s = torch.stack([x[row, cols].float().norm(dim=-1) for x in self.self_out])  # (layers, answer)
        c = torch.stack([x[row, cols].float().norm(dim=-1) for x in self.cross_out])
        return float((c / (c + s)).mean())


def check_eager(model) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise ValueError(f"attention weights need eager attention, the model runs {impl!r}; load it with "
                         f"attn_implementation='eager' (lib.studies.encdec.load does by default)")


def weight_shares(self_attn, cross_attn, row: int, cols, n_prompt: int, prefix_cols, merged: bool) -> dict:
    """Shares of attention weight at answer positions ``cols`` of batch row ``row``.

    ``self_attn`` / ``cross_attn``: the model's ``decoder_attentions`` / ``cross_attentions``, one
    ``(B, heads, T_dec, T_dec)`` / ``(B, heads, T_dec, T_enc)`` tensor per layer. The decoder
    prompt sits at decoder positions ``1 .. n_prompt`` (0 is the start token); ``prefix_cols``
    are the encoder positions of the prefix. See the module docstring for the four shares.
    """
    if len(self_attn) != len(cross_attn) or not self_attn:
        raise ValueError(f"need one self- and one cross-attention map per layer, got {len(self_attn)} and {len(cross_attn)}")
    s = torch.stack([a[row][:, cols].float() for a in self_attn])  # (layers, heads, answer, T_dec)
    c = torch.stack([a[row][:, cols].float() for a in cross_attn])  # (layers, heads, answer, T_enc)
    s_tot, c_tot = s.sum(-1), c.sum(-1)
    s_q = s[..., 1:1 + n_prompt].sum(-1)
    c_p = c[..., list(prefix_cols)].sum(-1) if len(prefix_cols) else torch.zeros_like(c_tot)
    out = {"self_query_share": float((s_q / s_tot).mean()), "cross_prefix_share": float((c_p / c_tot).mean())}
    if merged:
        out["cross_weight_share"] = float((c_tot / (s_tot + c_tot)).mean())
        out["query_weight_share"] = float((s_q / (s_tot + c_tot)).mean())
    return out


def summarize(rows: list[dict]) -> dict:
    """{share name: {condition: mean over rows}} for every probe column present in ``rows``."""
    keys = ("cross_attn_share", "self_query_share", "cross_prefix_share", "cross_weight_share", "query_weight_share")
    out = {}
    for k in keys:
        by: dict[str, list[float]] = {}
        for r in rows:
            if r.get(k) not in (None, ""):
                by.setdefault(r["condition"], []).append(float(r[k]))
        if by:
            out[k] = {c: sum(v) / len(v) for c, v in by.items()}
    return out
