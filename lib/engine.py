"""The evaluation engine: score samples x conditions with the least forward work, batched.

Input is a list of ``WorkItem`` (one per (sample, condition)): the document ids, the prefix ids
Phase A sees, how the cache is shaped, and the Phase B prompt and answer ids. The engine

1. plans Phase A once per DISTINCT encoding ``(doc_ids, prefix_ids)``: conditions that share an
   encoding (full oracle, full oracle + repeat, truncated oracle) share one forward, and the bare
   cache is computed once per sample;
2. runs Phase A batched across encodings, sorted by length and right-padded (a causal model's
   real tokens never see the padding after them; positions are 0..L-1 per row; each item's cache
   is a view ``[:L]`` of the batch, no copy); only the base model runs, no logits;
3. shapes each item's cache (``lib.encode.shape``: keep/drop the prefix, re-position);
4. runs Phase B batched across conditions and samples (``lib.scoring.score``: left-padded caches,
   logits only at answer positions), items sorted by length to limit padding.

Batch sizes come from a token budget derived from ``mem_budget_gb``; on CUDA an out-of-memory
error halves the batch and retries. No deep copies, no per-step ``gc.collect``/``empty_cache``.
``run`` streams rows into a ``RunStore`` wave by wave (a wave = ``wave`` samples), so a killed run
resumes at the first unfinished wave with the same batch composition as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lib import cache as kv
from lib import encode as enc_mod
from lib import scoring


@dataclass(frozen=True)
class WorkItem:
    sample_id: str
    condition: str
    doc_ids: tuple[int, ...]
    prefix_ids: tuple[int, ...]  # () for the bare cache
    keep_prefix: bool
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    row: dict = field(default_factory=dict, compare=False)  # extra fields copied into the result row

    def __post_init__(self):
        if not self.doc_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty document")
        if not self.answer_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty answer")
        if not self.prompt_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty prompt (the last prompt token predicts answer[0])")
        if self.keep_prefix and not self.prefix_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: keep_prefix without a prefix")

    @property
    def encoding(self) -> tuple:
        return (self.doc_ids, self.prefix_ids)


@dataclass
class EngineStats:
    phase_a_forwards: int = 0  # batched forward calls
    phase_a_encodings: int = 0  # distinct encodings encoded
    phase_a_tokens: int = 0  # real (unpadded) tokens
    phase_a_padded_tokens: int = 0  # tokens including padding
    phase_b_forwards: int = 0
    phase_b_items: int = 0
    oom_retries: int = 0


def token_budget(model, mem_budget_gb: float) -> int:
    """Tokens per Phase A batch that fit ``mem_budget_gb`` (activations + the kept KV cache).

    Per token: KV entries of every layer, plus the largest transient activations of one layer
    (hidden states, the MLP's intermediate, q/k/v), with a safety factor of 2.
    """
    if mem_budget_gb <= 0:
        raise ValueError(f"mem_budget_gb must be > 0, got {mem_budget_gb}")
    cfg = model.config.get_text_config(decoder=True)
    p = next(model.parameters())
    size = p.element_size() if p.is_floating_point() else 2  # quantized weights compute in 16 bits
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    kv_bytes = 2 * cfg.num_hidden_layers * n_kv * head_dim * size
    inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    act_bytes = size * (6 * cfg.hidden_size + 3 * inter + 2 * n_heads * head_dim)
    return max(64, int(mem_budget_gb * 2**30 / (2 * (kv_bytes + act_bytes))))


def _batches(lengths: list[int], budget: int, max_batch: int, *, cost: list[int] | None = None,
             min_tokens: int = 512, slack: float = 0.05) -> list[list[int]]:
    """Indices grouped into batches, longest ``lengths`` first (the padded dimension).

    A batch closes when adding the next item would make ``items * max(cost)`` exceed ``budget``
    (``cost`` defaults to ``lengths``) or exceed ``max_batch`` items, or, once it holds
    ``min_tokens`` real tokens (enough for efficient matmuls), when the next item is more than
    ``slack`` shorter than the batch's longest (to keep padding waste low).
    """
    cost = lengths if cost is None else cost
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], -cost[i]))
    out, cur, real, top = [], [], 0, 0
    for i in order:
        if cur:
            full = (len(cur) + 1) * max(top, cost[i]) > budget or len(cur) >= max_batch
            ragged = real >= min_tokens and lengths[i] < (1 - slack) * lengths[cur[0]]
            if full or ragged:
                out.append(cur)
                cur, real, top = [], 0, 0
        cur.append(i)
        real += lengths[i]
        top = max(top, cost[i])
    if cur:
        out.append(cur)
    return out


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class Engine:
    """Plans and runs Phase A / Phase B for lists of WorkItems on one loaded model."""

    def __init__(self, lm, *, mem_budget_gb: float = 2.0, max_batch: int = 64, phase_b_batch: int | None = None):
        self.lm, self.model, self.arch = lm, lm.model, lm.arch
        self.budget = token_budget(self.model, mem_budget_gb)
        self.max_batch = max_batch
        self.phase_b_batch = phase_b_batch
        self.stats = EngineStats()
        self.device = next(self.model.parameters()).device

    # ---- Phase A ---------------------------------------------------------------------------
    def encode_many(self, encodings: list[tuple]) -> list[tuple[kv.DocCache, enc_mod.Encoded]]:
        """Full (unshaped) caches for distinct ``(doc_ids, prefix_ids)`` encodings, batched."""
        built = [enc_mod.build_inputs(self.arch, list(d), list(p)) for d, p in encodings]
        for b in built:
            if len(b.input_ids) > self.arch.max_positions:
                raise ValueError(f"input of {len(b.input_ids)} tokens exceeds the model's {self.arch.max_positions} positions")
        out: list = [None] * len(built)
        for idx in _batches([len(b.input_ids) for b in built], self.budget, self.max_batch):
            self._encode_batch(idx, built, out)
        self.stats.phase_a_encodings += len(built)
        return out

    def _halving_on_oom(self, run, idx: list[int]) -> None:
        """``run(idx)``; on an out-of-memory error, split ``idx`` in half and retry each half."""
        try:
            run(idx)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err) or len(idx) == 1:
                raise
            self.stats.oom_retries += 1
            half = len(idx) // 2
            self._halving_on_oom(run, idx[:half])
            self._halving_on_oom(run, idx[half:])

    def _encode_batch(self, idx: list[int], built, out) -> None:
        self._halving_on_oom(lambda part: self._encode_batch_once(part, built, out), idx)

    @torch.no_grad()
    def _encode_batch_once(self, idx: list[int], built, out) -> None:
        lens = [len(built[i].input_ids) for i in idx]
        tmax = max(lens)
        ids = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = torch.tensor(built[i].input_ids, device=self.device)
            mask[r, : lens[r]] = 1
        pos = torch.arange(tmax, device=self.device)[None].expand(len(idx), tmax)
        past = DynamicCache()
        self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
        keys = [layer.keys for layer in past.layers]
        values = [layer.values for layer in past.layers]
        for r, i in enumerate(idx):
            n = lens[r]
            dc = kv.DocCache(
                tuple(k[r : r + 1, :, :n] for k in keys),
                tuple(v[r : r + 1, :, :n] for v in values),
                torch.arange(n, device=self.device)[None],
                {"n_anchor": built[i].n_anchor, "n_prefix": built[i].n_prefix, "n_doc": built[i].n_doc},
            )
            out[i] = (dc, built[i])
        self.stats.phase_a_forwards += 1
        self.stats.phase_a_tokens += sum(lens)
        self.stats.phase_a_padded_tokens += len(idx) * tmax

    # ---- Phase B ---------------------------------------------------------------------------
    def score_items(self, items: list[WorkItem]) -> list[dict]:
        """Rows for ``items`` (any order, any mix of samples and conditions), in input order."""
        keys = list(dict.fromkeys(it.encoding for it in items))
        full = dict(zip(keys, self.encode_many(keys)))
        caches = []
        for it in items:
            dc, enc = full[it.encoding]
            caches.append(enc_mod.shape(dc, enc, self.arch, keep_prefix=it.keep_prefix))
        nlls: list = [None] * len(items)
        # Phase B pads the new tokens (what the linear layers pay for) and holds a padded copy of the
        # batch's caches (what memory pays for): batch by new-token length, budget on the total
        new_len = [len(it.prompt_ids) + len(it.answer_ids) for it in items]
        total = [c.length + n for c, n in zip(caches, new_len)]
        for idx in _batches(new_len, self.budget, self.phase_b_batch or self.max_batch, cost=total, min_tokens=256):
            self._score_batch(idx, items, caches, nlls)
        rows = []
        for it, c, tok in zip(items, caches, nlls):
            rows.append({
                "sample_id": it.sample_id,
                "condition": it.condition,
                "n_doc_tokens": len(it.doc_ids),
                "n_prefix_tokens": len(it.prefix_ids),
                "cache_len": c.length,
                "n_prompt_tokens": len(it.prompt_ids),
                "n_answer_tokens": len(it.answer_ids),
                **it.row,
                "token_nlls": [round(float(x), 6) for x in tok],
                "nll": float(tok.mean()),
            })
        return rows

    def _score_batch(self, idx, items, caches, nlls) -> None:
        self._halving_on_oom(lambda part: self._score_batch_once(part, items, caches, nlls), idx)

    def _score_batch_once(self, idx, items, caches, nlls) -> None:
        got = scoring.score(self.model, [caches[i] for i in idx], [list(items[i].prompt_ids) for i in idx],
                            [list(items[i].answer_ids) for i in idx], batch_size=len(idx))
        for i, t in zip(idx, got):
            nlls[i] = t
        self.stats.phase_b_forwards += 1
        self.stats.phase_b_items += len(idx)

    # ---- streaming -------------------------------------------------------------------------
    def run(self, items: list[WorkItem], store, *, wave: int = 8, progress: bool = True, desc: str = "samples") -> list[dict]:
        """Score every item not yet in ``store``, ``wave`` samples at a time; returns all stored rows."""
        from tqdm.auto import tqdm

        by_sample: dict[str, list[WorkItem]] = {}
        for it in items:
            by_sample.setdefault(it.sample_id, []).append(it)
        seen = set()
        for it in items:
            if (it.sample_id, it.condition) in seen:
                raise ValueError(f"duplicate work item {(it.sample_id, it.condition)}")
            seen.add((it.sample_id, it.condition))
        todo = [s for s, its in by_sample.items() if not all(store.is_done(s, it.condition) for it in its)]
        bar = tqdm(total=len(by_sample), initial=len(by_sample) - len(todo), desc=desc, disable=not progress)
        for w in range(0, len(todo), wave):
            batch = [it for s in todo[w : w + wave] for it in by_sample[s] if not store.is_done(s, it.condition)]
            store.append(self.score_items(batch))
            bar.update(len(todo[w : w + wave]))
        bar.close()
        return store.rows()
