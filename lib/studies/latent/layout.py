"""exp12's one layout, shared by training, first-token metrics, NLL and generation, and the frozen
reader it feeds (``lib.studies.latent``).

Layout (one, shared by training, first-token metrics, NLL and generation), per example:
    [BOS] [prefix] [anchor ids] -> [answer ids] [EOS]
- BOS is the model's anchor token (``arch.bos_id``; SmolLM2: ``<|im_start|>``), only at position 0.
- prefix: the latent (M vectors), or token ids (text prompt: the whole passage; token budget: its
  first M tokens), or soft vectors (replay of the passage's own embeddings; zeros; another sample's
  latent).
- anchor: ``ANCHOR.format(query=...)``, the question as text. Answer ids are
  ``tokenize(" " + answer) + [EOS]``: EOS is a supervised target.
Rows are right-padded; padding is expressed ONLY by the attention mask (positions are explicit
``0..len-1``), never by a token id, so EOS == PAD is harmless. The LM predicts answer token t from
position ``prompt_len - 1 + t``; logits are computed only there (``answer_logits``). The shift
happens once, in ``assemble``'s gather index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

ANCHOR = "\nQuestion: {query}\nAnswer:"
CONDITIONS = ("text", "replay", "latent", "budget", "latent_other", "latent_zero")
PER_M = ("latent", "budget", "latent_other", "latent_zero")  # text and replay do not depend on M


@dataclass(frozen=True)
class Item:
    sample_id: str
    context_ids: tuple[int, ...]  # what the latent encodes (the passage)
    anchor_ids: tuple[int, ...]   # what stays text (the question)
    answer_ids: tuple[int, ...]   # answer tokens + EOS
    answers: tuple[str, ...]      # every reference answer (metrics)
    context_bytes: int = 0        # UTF-8 bytes of the passage (compression)

    def __post_init__(self):
        for k in ("context_ids", "anchor_ids", "answer_ids"):
            if len(getattr(self, k)) == 0:
                raise ValueError(f"item {self.sample_id}: {k} is empty; expected at least one token")


def make_items(tokenizer, samples, *, anchor: str = ANCHOR, max_context_tokens: int = 0) -> list[Item]:
    """Tokenize samples into the layout; passages longer than ``max_context_tokens`` (>0) are cut."""
    if "{query}" not in anchor:
        raise ValueError(f"anchor {anchor!r} must contain '{{query}}'")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; EOS is a supervised answer token")
    out = []
    for s in samples:
        ctx = tokenizer(s.passage, add_special_tokens=False).input_ids
        if max_context_tokens > 0:
            ctx = ctx[:max_context_tokens]
        out.append(Item(s.id, tuple(ctx), tuple(tokenizer(anchor.format(query=s.query), add_special_tokens=False).input_ids),
                        tuple(tokenizer(" " + s.answer.strip(), add_special_tokens=False).input_ids) + (eos,),
                        tuple(s.answers or (s.answer,)), len(s.passage.encode())))
    return out


# ----------------------------------------------------------------------------- the frozen reader
def decoder(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits from final hidden states (``lib.kv.scoring.lm_logits``: head in float32 whatever the
    model dtype, final-logit soft-capping where the model has it); float64 input stays float64."""
    from lib.kv.scoring import lm_logits as _head

    return _head(model, hidden)


def embed(model, ids) -> torch.Tensor:
    emb = model.get_input_embeddings()
    return emb(torch.as_tensor(list(ids), dtype=torch.long, device=emb.weight.device))  # [] stays long (no BOS)


@dataclass
class Batch:
    inputs_embeds: torch.Tensor     # (B, T, d) right-padded with zeros
    attention_mask: torch.Tensor    # (B, T) 1 = real, 0 = pad
    position_ids: torch.Tensor      # (B, T) 0..T-1
    lengths: list[int]              # real length per row
    prompt_lengths: list[int]       # BOS + prefix + anchor
    rows: torch.Tensor              # (N,) row of each supervised answer token
    cols: torch.Tensor              # (N,) column whose output predicts it (prompt_len - 1 + t)
    targets: torch.Tensor           # (N,) the answer token ids
    first: torch.Tensor             # (N,) bool: answer position 0


def assemble(model, bos_id, prefixes: list, anchors: list, answers: list | None = None) -> Batch:
    """Right-padded batch of ``[BOS][prefix][anchor][answer[:-1]]``; a prefix is token ids or a (P, d) tensor."""
    emb = model.get_input_embeddings()
    dtype, dev = emb.weight.dtype, emb.weight.device
    seqs, plens = [], []
    for i, (pre, anc) in enumerate(zip(prefixes, anchors, strict=True)):
        head = [bos_id] if bos_id is not None else []
        ans = list(answers[i][:-1]) if answers is not None else []
        if isinstance(pre, torch.Tensor):
            if pre.dim() != 2 or pre.shape[1] != emb.weight.shape[1]:
                raise ValueError(f"soft prefix {i} has shape {tuple(pre.shape)}; expected (P, {emb.weight.shape[1]})")
            parts = [embed(model, head), pre.to(dev, dtype), embed(model, list(anc) + ans)]
            seqs.append(torch.cat(parts))
            plens.append(len(head) + pre.shape[0] + len(anc))
        else:
            seqs.append(embed(model, head + list(pre) + list(anc) + ans))
            plens.append(len(head) + len(pre) + len(anc))
    lengths = [s.shape[0] for s in seqs]
    T = max(lengths)
    x = torch.zeros(len(seqs), T, emb.weight.shape[1], dtype=dtype, device=dev)
    mask = torch.zeros(len(seqs), T, dtype=torch.long, device=dev)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    rows, cols, tgts, first = [], [], [], []
    if answers is not None:
        for i, ans in enumerate(answers):
            if len(ans) == 0:
                raise ValueError(f"answer {i} is empty; expected at least the EOS token")
            for t, tok in enumerate(ans):
                rows.append(i), cols.append(plens[i] - 1 + t), tgts.append(int(tok)), first.append(t == 0)
    lt = lambda v, d=torch.long: torch.tensor(v, dtype=d, device=dev)  # noqa: E731
    return Batch(x, mask, torch.arange(T, device=dev).expand(len(seqs), T), lengths, plens,
                 lt(rows), lt(cols), lt(tgts), lt(first, torch.bool))


def answer_logits(model, batch: Batch) -> torch.Tensor:
    """(N, V) float32 logits at the answer positions only (teacher forcing)."""
    h = decoder(model)(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).last_hidden_state
    return lm_logits(model, h[batch.rows, batch.cols])


@torch.no_grad()
def greedy(model, bos_id, eos_id, prefixes, anchors, max_new_tokens: int, forced=None):
    """Greedy decoding on the same layout: (tokens per row, list of (B, V) logits per step).

    forced: per-row token lists fed instead of the argmax (teacher forcing through the cache; tests).
    Stops after ``max_new_tokens`` steps or when every row has emitted EOS (never at a gold length).
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b = assemble(model, bos_id, prefixes, anchors)
    B, dev = len(prefixes), b.inputs_embeds.device
    lengths = torch.tensor(b.lengths, device=dev)
    cache = DynamicCache()
    out = decoder(model)(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask, position_ids=b.position_ids,
                         past_key_values=cache, use_cache=True)
    logits = lm_logits(model, out.last_hidden_state[torch.arange(B, device=dev), lengths - 1])
    mask, toks, steps, done = b.attention_mask, [[] for _ in range(B)], [], torch.zeros(B, dtype=torch.bool, device=dev)
    for t in range(max_new_tokens):
        steps.append(logits)
        nxt = logits.argmax(-1) if forced is None else torch.tensor([f[t] for f in forced], device=dev)
        for i in range(B):
            if not done[i]:
                toks[i].append(int(nxt[i]))
        done |= nxt == eos_id
        if (forced is None and bool(done.all())) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], 1)
        out = decoder(model)(inputs_embeds=embed(model, nxt.tolist())[:, None], attention_mask=mask,
                             position_ids=(lengths + t)[:, None], past_key_values=cache, use_cache=True)
        logits = lm_logits(model, out.last_hidden_state[:, -1])
    return toks, steps
