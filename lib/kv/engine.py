"""The evaluation engine: score samples x conditions with the least forward work, batched.

Input is a list of ``WorkItem`` (one per (sample, condition), or per (sample, condition, answer
candidate)): the document ids, the prefix ids Phase A sees, how the cache is shaped, and the Phase B
prompt and answer ids. The engine

1. dedupes: a shaped cache is identified by ``(doc_ids, prefix_ids, keep_prefix)`` and a
   continuation by (shaped cache, prompt_ids, answer_ids). Each distinct continuation is scored
   ONCE and its NLLs are copied to every item that asks for it, so two conditions that denote the
   same work get the same number by construction (bitwise), whatever the batch;
2. plans Phase A once per DISTINCT encoding ``(doc_ids, prefix_ids)``: conditions that share an
   encoding (full oracle, full oracle + repeat, truncated oracle) share one forward;
3. streams groups of encodings, longest first, each group small enough that its shaped caches fit
   the cache half of ``mem_budget_gb`` (``cache_budget_bytes``; a single encoding larger than
   that forms a group alone). Per group: Phase A batched (right-padded, positions 0..L-1 per row,
   only the base model runs), each distinct shaped cache built once straight from the batch
   (``lib.kv.encode.shape``; a cache that would still view the padded batch is cloned, so no padded
   batch outlives its forward), then Phase B batched over the group's continuations
   (``lib.kv.scoring.score``: left-padded caches, logits only at answer positions; a batch whose rows
   all continue one cache broadcasts it instead of copying it). A cache is dropped as soon as its
   last continuation is scored;
4. shares prompts (``share_prompt=True``): a (shaped cache, prompt) that several answers continue
   (gold + distractors, or answer candidates as separate items) runs ``prompt[:-1]`` ONCE
   (``scoring.extend``, batched; a new cache, the shaped one is never modified) and each answer feeds
   only ``[last prompt token] + answer`` on that extended cache, so the last prompt token still
   predicts answer[0]. One answer, or a one-token prompt, keeps the plain path.
   ``share_prompt=False`` re-runs the whole prompt per answer (the reference; equal to float32 noise,
   ``tests/test_engine_sharing.py``, ``python -m lib.tools.bench --design many8``).

Memory: at most one group's shaped and prompt-extended caches (<= ``cache_budget_bytes``: a group's
cost counts both, since while its prompts run both are alive) plus one Phase A or Phase B
batch (token budget from the other half) are alive at once, whatever the number of items. On CUDA
an out-of-memory error halves the batch and retries. No deep copies, no per-step
``gc.collect``/``empty_cache``. ``run`` streams rows into a ``RunStore`` wave by wave (a wave =
``wave`` samples), so a killed run resumes at the first unfinished wave with the same batch
composition as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lib.kv import cache as kv
from lib.kv import encode as enc_mod
from lib.kv import margin, scoring
from lib.kv.batching import batches as _batches, groups as _groups, sizes as _sizes, token_budget  # noqa: F401 (re-exported)
from lib.kv.noise import noise_atol


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
    # answers of other samples scored against the SAME cache and prompt (``lib.kv.margin``): the row
    # gets their NLLs, the contrastive margin, the gold answer's rank and top-1
    distractor_ids: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self):
        if not self.doc_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty document")
        if not self.answer_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty answer")
        if not self.prompt_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: empty prompt (the last prompt token predicts answer[0])")
        if self.keep_prefix and not self.prefix_ids:
            raise ValueError(f"{self.sample_id}/{self.condition}: keep_prefix without a prefix")
        for i, d in enumerate(self.distractor_ids):
            if not d:
                raise ValueError(f"{self.sample_id}/{self.condition}: distractor {i} is empty")

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
    phase_b_items: int = 0  # distinct continuations scored
    oom_retries: int = 0
    shaped_caches: int = 0  # distinct shaped caches built (one per (encoding, keep_prefix))
    deduplicated_items: int = 0  # items that repeated an earlier item's work: scored once, result copied
    groups: int = 0  # streamed Phase A -> shape -> Phase B groups
    peak_live_cache_bytes: int = 0  # most bytes of shaped and prompt-extended caches alive at once
    prompt_extensions: int = 0  # (shaped cache, prompt) pairs whose prompt ran once for all their answers
    phase_b_tokens: int = 0  # real (unpadded) tokens fed in Phase B, prompt extensions included


@dataclass
class _Plan:
    """``score_items``' plan: shaped caches (index c), distinct continuations (index j), prompt extensions (x)."""
    encodings: list  # distinct (doc_ids, prefix_ids)
    built: dict  # encoding -> encode.Encoded
    keep_of: dict  # c -> keep_prefix
    cache_len: list  # c -> shaped cache length
    caches_of_enc: dict  # encoding -> [c]
    jobs: list  # j -> (c, prompt_ids, answer_ids)
    src: list  # j -> the cache it continues: ("doc", c) or ("ext", x)
    feed: list  # j -> prompt tokens it feeds before its answer (the whole prompt, or its last token)
    exts: list  # x -> (c, prompt_ids): prompt[:-1] runs once on cache c
    ext_len: list  # x -> extended cache length
    exts_of_cache: dict  # c -> [x]
    jobs_of_cache: dict  # c -> [j]
    cost: dict  # encoding -> bytes of its shaped and extended caches
    nlls: list  # j -> per-token NLLs, filled by Phase B


def _nbytes(dc: kv.DocCache) -> int:
    return sum(t.numel() * t.element_size() for t in dc.keys + dc.values)


def _owned(dc: kv.DocCache, batch_storages) -> kv.DocCache:
    """``dc`` with every tensor that views a Phase A batch (storage in ``batch_storages``, or not
    exactly its own size) cloned, so the cache keeps no padded batch alive."""
    def own(t):
        st = t.untyped_storage()
        shared = st.data_ptr() in batch_storages or st.nbytes() != t.numel() * t.element_size()
        return t.clone() if shared else t

    return kv.DocCache(tuple(own(k) for k in dc.keys), tuple(own(v) for v in dc.values), dc.positions, dict(dc.meta))


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class Engine:
    """Plans and runs Phase A / Phase B for lists of WorkItems on one loaded model."""

    def __init__(self, lm, *, mem_budget_gb: float = 2.0, max_batch: int = 64, phase_b_batch: int | None = None,
                 share_prompt: bool = True):
        self.lm, self.model, self.arch = lm, lm.model, lm.arch
        self.budget = token_budget(self.model, mem_budget_gb)
        self.kv_bytes_per_token, act_bytes = _sizes(self.model)
        # Phase B's answer-position logits and their log-softmax (float32, vocab wide), in budget tokens
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self._logit_tokens = 8 * vocab / (self.kv_bytes_per_token + act_bytes)
        self.cache_budget_bytes = int(mem_budget_gb * 2**30 / 2)  # shaped caches alive at once
        self.max_batch = max_batch
        self.phase_b_batch = phase_b_batch
        self.share_prompt = share_prompt  # False: every answer re-runs its whole prompt (the reference path)
        self.stats = EngineStats()
        self.device = next(self.model.parameters()).device
        self.atol = noise_atol(getattr(lm, "dtype", None) or next(self.model.parameters()).dtype)  # ties between a distractor and the gold answer (``margin.candidate_stats``)

    # ---- Phase A ---------------------------------------------------------------------------
    def _built(self, encodings: list[tuple]) -> list[enc_mod.Encoded]:
        built = [enc_mod.build_inputs(self.arch, list(d), list(p)) for d, p in encodings]
        for b in built:
            if len(b.input_ids) > self.arch.max_positions:
                raise ValueError(f"input of {len(b.input_ids)} tokens exceeds the model's {self.arch.max_positions} positions")
        return built

    def encode_many(self, encodings: list[tuple]) -> list[tuple[kv.DocCache, enc_mod.Encoded]]:
        """Full (unshaped) caches for distinct ``(doc_ids, prefix_ids)`` encodings, batched.

        Each cache owns its row (a clone of the padded batch's slice), so it never pins the batch.
        """
        built = self._built(encodings)
        out: list = [None] * len(built)

        def take(i, row):
            out[i] = (_owned(row, ()), built[i])

        for idx in _batches([len(b.input_ids) for b in built], self.budget, self.max_batch):
            self._encode_batch(idx, built, take)
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

    def _encode_batch(self, idx: list[int], built, take) -> None:
        self._halving_on_oom(lambda part: self._encode_batch_once(part, built, take), idx)

    @torch.no_grad()
    def _encode_batch_once(self, idx: list[int], built, take) -> None:
        """One padded Phase A forward; ``take(i, row)`` gets each row as a DocCache VIEW of the batch
        (valid during the call only: keep a copy, never the view)."""
        lens = [len(built[i].input_ids) for i in idx]
        tmax = max(lens)
        ids = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(idx), tmax, dtype=torch.long, device=self.device)
        for r, i in enumerate(idx):
            ids[r, : lens[r]] = torch.tensor(built[i].input_ids, device=self.device)
            mask[r, : lens[r]] = 1
        pos = torch.arange(tmax, device=self.device)[None].expand(len(idx), tmax)
        past = DynamicCache()
        enc_mod.forward_for_cache(self.model, past, lambda: self.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True))
        keys = [layer.keys for layer in past.layers]
        values = [layer.values for layer in past.layers]
        for r, i in enumerate(idx):
            n = lens[r]
            take(i, kv.DocCache(
                tuple(k[r : r + 1, :, :n] for k in keys),
                tuple(v[r : r + 1, :, :n] for v in values),
                torch.arange(n, device=self.device)[None],
                {"n_anchor": built[i].n_anchor, "n_prefix": built[i].n_prefix, "n_doc": built[i].n_doc},
            ))
        self.stats.phase_a_forwards += 1
        self.stats.phase_a_tokens += sum(lens)
        self.stats.phase_a_padded_tokens += len(idx) * tmax

    # ---- plan, stream, Phase B -------------------------------------------------------------
    def score_items(self, items: list[WorkItem]) -> list[dict]:
        """Rows for ``items`` (any order, any mix of samples and conditions), in input order."""
        cache_of: dict[tuple, int] = {}  # (encoding, keep_prefix) -> shaped-cache index
        job_of: dict[tuple, int] = {}  # (cache index, prompt_ids, answer_ids) -> distinct continuation
        item_job, item_distractor_jobs = [], []
        n_asked = 0
        for it in items:
            c = cache_of.setdefault((it.encoding, it.keep_prefix), len(cache_of))
            item_job.append(job_of.setdefault((c, it.prompt_ids, it.answer_ids), len(job_of)))
            item_distractor_jobs.append([job_of.setdefault((c, it.prompt_ids, d), len(job_of)) for d in it.distractor_ids])
            n_asked += 1 + len(it.distractor_ids)
        jobs = list(job_of)  # (cache index, prompt_ids, answer_ids), in first-asked order
        self.stats.deduplicated_items += n_asked - len(jobs)
        plan = self._plan(cache_of, jobs)
        for group in _groups(sorted(plan.encodings, key=lambda e: -len(plan.built[e].input_ids)), plan.cost,
                             self.cache_budget_bytes):
            self.stats.groups += 1
            self._run_group(group, plan)
        rows = []
        for it, j, dj in zip(items, item_job, item_distractor_jobs):
            tok = plan.nlls[j]
            extra = margin.row_fields(float(tok.mean()), [float(plan.nlls[k].mean()) for k in dj], self.atol)
            rows.append({
                "sample_id": it.sample_id,
                "condition": it.condition,
                "n_doc_tokens": len(it.doc_ids),
                "n_prefix_tokens": len(it.prefix_ids),
                "cache_len": plan.cache_len[jobs[j][0]],
                "n_prompt_tokens": len(it.prompt_ids),
                "n_answer_tokens": len(it.answer_ids),
                **it.row,
                "token_nlls": [round(float(x), 6) for x in tok],
                "nll": float(tok.mean()),
                **extra,
            })
        return rows

    def _plan(self, cache_of: dict, jobs: list[tuple]) -> _Plan:
        """Which cache each continuation reads and what it feeds; the cache bytes of every encoding."""
        encodings = list(dict.fromkeys(enc for enc, _ in cache_of))
        built = dict(zip(encodings, self._built(encodings)))
        cache_len = [len(built[enc].keep_index(keep)) for enc, keep in cache_of]
        n_answers: dict[tuple, int] = {}
        for c, p, _ in jobs:
            n_answers[(c, p)] = n_answers.get((c, p), 0) + 1
        # prompt sharing: a (cache, prompt) with >= 2 answers runs prompt[:-1] once (an extended cache);
        # each answer then feeds [last prompt token] + answer on it (the last prompt token predicts answer[0])
        ext_of = {cp: x for x, cp in enumerate(cp for cp, n in n_answers.items()
                                               if self.share_prompt and n >= 2 and len(cp[1]) >= 2)}
        src = [("ext", ext_of[(c, p)]) if (c, p) in ext_of else ("doc", c) for c, p, _ in jobs]
        feed = [p[-1:] if (c, p) in ext_of else p for c, p, _ in jobs]
        caches_of_enc: dict[tuple, list[int]] = {}
        for (enc, _), c in cache_of.items():
            caches_of_enc.setdefault(enc, []).append(c)
        exts_of_cache: dict[int, list[int]] = {}
        for (c, _), x in ext_of.items():
            exts_of_cache.setdefault(c, []).append(x)
        jobs_of_cache: dict[int, list[int]] = {}
        for j, (c, _, _) in enumerate(jobs):
            jobs_of_cache.setdefault(c, []).append(j)
        # the group's shaped AND extended caches may all be alive at once (while the prompts run)
        ext_len = [cache_len[c] + len(p) - 1 for c, p in ext_of]
        cost = {e: self.kv_bytes_per_token * sum(cache_len[c] + sum(ext_len[x] for x in exts_of_cache.get(c, ()))
                                                 for c in caches_of_enc[e]) for e in encodings}
        return _Plan(encodings, built, {c: keep for (_, keep), c in cache_of.items()}, cache_len, caches_of_enc,
                     jobs, src, feed, list(ext_of), ext_len, exts_of_cache, jobs_of_cache, cost, [None] * len(jobs))

    def _run_group(self, group, plan: _Plan) -> None:
        """Phase A for the group's encodings, each shaped cache once, the shared prompts once, Phase B;
        frees every cache when its last use is done."""
        live: dict[tuple, kv.DocCache] = {}  # ("doc", shaped-cache index) / ("ext", extension index) -> cache
        nbytes = [0]  # bytes of caches alive now
        encs = list(group)
        enc_list = [plan.built[e] for e in encs]
        caches = [c for e in encs for c in plan.caches_of_enc[e]]
        group_jobs = [j for c in caches for j in plan.jobs_of_cache[c]]
        group_exts = [x for c in caches for x in plan.exts_of_cache.get(c, ())]
        remaining: dict[tuple, int] = {}  # uses left per live cache
        for j in group_jobs:
            remaining[plan.src[j]] = remaining.get(plan.src[j], 0) + 1
        for x in group_exts:
            key = ("doc", plan.exts[x][0])
            remaining[key] = remaining.get(key, 0) + 1

        def add(key, dc):
            live[key] = dc
            nbytes[0] += _nbytes(dc)
            self.stats.peak_live_cache_bytes = max(self.stats.peak_live_cache_bytes, nbytes[0])

        def used(key):
            remaining[key] -= 1
            if remaining[key] == 0:  # its last use is done: free it now
                nbytes[0] -= _nbytes(live.pop(key))

        def take(i, row):
            owners = {t.untyped_storage().data_ptr() for t in row.keys + row.values}
            for c in plan.caches_of_enc[encs[i]]:
                if ("doc", c) in live:  # already built before an out-of-memory retry
                    continue
                add(("doc", c), _owned(enc_mod.shape(row, enc_list[i], self.arch, keep_prefix=plan.keep_of[c]), owners))
                self.stats.shaped_caches += 1

        for idx in _batches([len(b.input_ids) for b in enc_list], self.budget, self.max_batch):
            self._encode_batch(idx, enc_list, take)
        self.stats.phase_a_encodings += len(encs)
        new_len = [len(plan.exts[x][1]) - 1 for x in group_exts]
        total = [plan.ext_len[x] for x in group_exts]
        for idx in _batches(new_len, self.budget, self.phase_b_batch or self.max_batch, cost=total, min_tokens=256):
            sel = [group_exts[k] for k in idx]
            self._halving_on_oom(lambda part: self._extend_once(part, plan, live, add), sel)
            for x in sel:
                used(("doc", plan.exts[x][0]))
        # Phase B pads the new tokens (what the linear layers pay for) and holds a padded copy of the
        # batch's caches and vocab-wide logits at answer positions (what memory pays for): batch by
        # new-token length, budget on the total
        new_len = [len(plan.feed[j]) + len(plan.jobs[j][2]) for j in group_jobs]
        total = [live[plan.src[j]].length + n + math.ceil(len(plan.jobs[j][2]) * self._logit_tokens)
                 for j, n in zip(group_jobs, new_len)]
        for idx in _batches(new_len, self.budget, self.phase_b_batch or self.max_batch, cost=total, min_tokens=256):
            sel = [group_jobs[k] for k in idx]
            self._halving_on_oom(lambda part: self._score_once(part, plan, live), sel)
            for j in sel:
                used(plan.src[j])

    def _extend_once(self, sel, plan: _Plan, live, add) -> None:
        prompts = [list(plan.exts[x][1][:-1]) for x in sel]
        got = scoring.extend(self.model, [live[("doc", plan.exts[x][0])] for x in sel], prompts)
        for x, dc in zip(sel, got):
            add(("ext", x), dc)
        self.stats.prompt_extensions += len(sel)
        self.stats.phase_b_forwards += 1
        self.stats.phase_b_tokens += sum(map(len, prompts))

    def _score_once(self, sel, plan: _Plan, live) -> None:
        feed, answers = [list(plan.feed[j]) for j in sel], [list(plan.jobs[j][2]) for j in sel]
        got = scoring.score(self.model, [live[plan.src[j]] for j in sel], feed, answers, batch_size=len(sel))
        for j, t in zip(sel, got):
            plan.nlls[j] = t
        self.stats.phase_b_forwards += 1
        self.stats.phase_b_items += len(sel)
        self.stats.phase_b_tokens += sum(len(p) + len(a) for p, a in zip(feed, answers))

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
