"""exp09, exp10 (with ``doclen``): encoder-decoder scoring: ``[prefix + doc]`` through a bidirectional encoder, prefix hidden from the decoder.

Encoder input (special tokens explicit, per family, see ``encoder_inputs``):
  t5 / random-t5    prefix + doc + [EOS]
  bart / t5gemma    [BOS] + prefix + doc + [EOS]
The encoder sees everything (document tokens attend to the prefix). The decoder's cross-attention
mask is 0 at the prefix positions when ``hide_prefix`` (an "oracle (masked)" condition), which
equals deleting those rows from the encoder output (tested). Special tokens stay visible.

Decoder input: ``[decoder_start] + dec_prompt + answer[:-1]``; the logits at position
``len(dec_prompt) + t`` predict ``answer[t]`` (one shift; ``dec_prompt`` may be empty, then the
start token predicts ``answer[0]``). The NLL covers the answer tokens only (no EOS), like the
decoder-only path.

Offline models: no pretrained encoder-decoder ships with this repo. ``load("random-t5-tiny")`` and
``load("random-bart-tiny")`` build RANDOM-INIT tiny models over the bundled SmolLM2 tokenizer, for
plumbing (SMOKE) only: their numbers mean nothing about language. Real names load from the hub.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import BaseModelOutput

from lib.studies.encdec import probe

RANDOM = ("random-t5-tiny", "random-bart-tiny")


@dataclass
class EncDecLM:
    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    family: str  # t5 | bart | t5gemma
    name: str
    bos_id: int | None  # prepended to the encoder input (None: none)
    eos_id: int
    start_id: int  # decoder start
    pad_id: int
    random_init: bool = False

    @property
    def device(self):
        return next(self.model.parameters()).device


def _family(model) -> str:
    mt = model.config.model_type
    if mt in ("t5", "mt5", "umt5"):
        return "t5"
    if mt in ("bart", "mbart"):
        return "bart"
    if mt.startswith("t5gemma"):
        return "t5gemma"
    raise ValueError(f"unsupported encoder-decoder model_type {mt!r}; supported: t5, mt5, umt5, bart, mbart, t5gemma")


def load(name: str, *, dtype: str | None = None, device: str | None = None, attn_implementation: str = "eager") -> EncDecLM:
    """A hub id / local folder, or one of ``RANDOM`` (random-init tiny models, offline). Eager attention
    by default: T5Gemma needs it and the attention-weight probe reads ``output_attentions``."""
    import transformers as tf

    from lib.kv.models import LOADED

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name in RANDOM:
        from lib.kv.models import load_model

        tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu").tokenizer
        v = len(tok)
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        torch.manual_seed(0)
        if name == "random-t5-tiny":
            cfg = tf.T5Config(vocab_size=v, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                              decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos)
            model, fam, bos = tf.T5ForConditionalGeneration(cfg), "t5", None
        else:
            bos = tok.bos_token_id if tok.bos_token_id is not None else eos
            cfg = tf.BartConfig(vocab_size=v, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                max_position_embeddings=4200, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                                decoder_start_token_id=eos, forced_eos_token_id=None)
            model, fam = tf.BartForConditionalGeneration(cfg), "bart"
        model = model.float().to(dev).eval()
        model.set_attn_implementation(attn_implementation)
        LOADED.append({"name": name, "source": "random-init", "family": fam, "dtype": "float32", "random_init": True,
                       "init_seed": 0, "n_params": sum(p.numel() for p in model.parameters())})
        return EncDecLM(model, tok, fam, name, bos, eos, model.config.decoder_start_token_id, pad, random_init=True)
    torch_dtype = getattr(torch, dtype) if dtype and dtype != "auto" else (torch.bfloat16 if dev == "cuda" else torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(name)
    model = tf.AutoModelForSeq2SeqLM.from_pretrained(name, dtype=torch_dtype, attn_implementation=attn_implementation).to(dev).eval()
    fam = _family(model)
    cfg = model.config
    dec_cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    start = cfg.decoder_start_token_id if getattr(cfg, "decoder_start_token_id", None) is not None else dec_cfg.bos_token_id
    bos = None if fam == "t5" else (tok.bos_token_id if tok.bos_token_id is not None else cfg.bos_token_id)
    LOADED.append({"name": name, "source": f"hub:{name}", "family": fam, "dtype": str(torch_dtype).removeprefix("torch."),
                   "random_init": False, "hub_commit": getattr(cfg, "_commit_hash", None)})
    return EncDecLM(model, tok, fam, name, bos, tok.eos_token_id, int(start), tok.pad_token_id)


def tokenize(em: EncDecLM, text: str) -> list[int]:
    return em.tokenizer(text, add_special_tokens=False)["input_ids"]


def encoder_inputs(em: EncDecLM, prefix_ids, doc_ids) -> tuple[list[int], list[int]]:
    """(input ids, segment per position: 0 special, 1 prefix, 2 doc)."""
    if not doc_ids:
        raise ValueError("empty document: doc_ids has no tokens")
    head = [] if em.bos_id is None else [int(em.bos_id)]
    prefix_ids, doc_ids = list(prefix_ids or []), list(doc_ids)
    ids = head + prefix_ids + doc_ids + [int(em.eos_id)]
    seg = [0] * len(head) + [1] * len(prefix_ids) + [2] * len(doc_ids) + [0]
    return ids, seg


@dataclass(frozen=True)
class Item:
    sample_id: str
    condition: str
    prefix_ids: tuple[int, ...]
    doc_ids: tuple[int, ...]
    hide_prefix: bool
    dec_prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]
    row: dict = field(default_factory=dict, compare=False)


@torch.no_grad()
def encode_many(em: EncDecLM, encodings: list[tuple]) -> list[tuple[torch.Tensor, list[int]]]:
    """Encoder states (T_i, H) and segments for distinct ``(prefix_ids, doc_ids)``, right-padded batches."""
    built = [encoder_inputs(em, p, d) for p, d in encodings]
    out = []
    for s in range(0, len(built), 16):
        chunk = built[s:s + 16]
        t = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), t), em.pad_id, dtype=torch.long, device=em.device)
        mask = torch.zeros(len(chunk), t, dtype=torch.long, device=em.device)
        for r, (x, _) in enumerate(chunk):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        h = em.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        out += [(h[r, :len(x)], seg) for r, (x, seg) in enumerate(chunk)]
    return out


def _decoder_batch(em: EncDecLM, states: list[torch.Tensor], cross: list[torch.Tensor], prompts, answers,
                   attn_probe: bool = False, prefix_cols=None):
    """(per-token answer NLLs, probe dicts): ``attn_probe`` adds the output-norm share (separate
    cross-attention only) and the attention-weight shares (``probe``; eager attention)."""
    b = len(states)
    te = max(s.shape[0] for s in states)
    hid = states[0].shape[-1]
    enc = states[0].new_zeros(b, te, hid)
    emask = torch.zeros(b, te, dtype=torch.long, device=em.device)
    for r, (s, c) in enumerate(zip(states, cross)):
        enc[r, :s.shape[0]] = s
        emask[r, :s.shape[0]] = c
    dec = [[em.start_id] + list(p) + list(a[:-1]) for p, a in zip(prompts, answers)]
    td = max(map(len, dec))
    dids = torch.full((b, td), em.pad_id, dtype=torch.long, device=em.device)
    dmask = torch.zeros(b, td, dtype=torch.long, device=em.device)
    for r, x in enumerate(dec):
        dids[r, :len(x)] = torch.tensor(x)
        dmask[r, :len(x)] = 1
    if attn_probe:
        probe.check_eager(em.model)
    merged = attn_probe and probe.is_merged(em.model)
    norms = probe.NormProbe(em.model) if attn_probe and not merged else None
    try:
        res = em.model(encoder_outputs=BaseModelOutput(last_hidden_state=enc), attention_mask=emask,
                       decoder_input_ids=dids, decoder_attention_mask=dmask, use_cache=False, output_attentions=attn_probe)
    finally:
        if norms:
            norms.remove()
    logits = res.logits
    out, shares = [], []
    for r, (p, a) in enumerate(zip(prompts, answers)):
        cols = torch.arange(len(p), len(p) + len(a), device=em.device)
        lg = logits[r, cols].float()
        out.append(torch.nn.functional.cross_entropy(lg, torch.tensor(list(a), device=em.device), reduction="none").cpu())
        if attn_probe:
            sh = probe.weight_shares(res.decoder_attentions, res.cross_attentions, r, cols, len(p),
                                     (prefix_cols or [[]] * b)[r], merged)
            if norms:
                sh["cross_attn_share"] = norms.cross_share(r, cols)
            shares.append(sh)
    return out, shares


def score_items(em: EncDecLM, items: list[Item], *, batch_size: int = 16, attn_probe: bool = False) -> list[dict]:
    """Rows for ``items``: encoder once per distinct (prefix, doc), decoder batched."""
    keys = list(dict.fromkeys((it.prefix_ids, it.doc_ids) for it in items))
    enc = dict(zip(keys, encode_many(em, keys)))
    rows = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        states, cross, pcols = [], [], []
        for it in chunk:
            h, seg = enc[(it.prefix_ids, it.doc_ids)]
            states.append(h)
            cross.append(torch.tensor([0 if (it.hide_prefix and g == 1) else 1 for g in seg], device=em.device))
            pcols.append([i for i, g in enumerate(seg) if g == 1])
        with torch.no_grad():
            nlls, shares = _decoder_batch(em, states, cross, [it.dec_prompt_ids for it in chunk],
                                          [it.answer_ids for it in chunk], attn_probe, pcols)
        for k, (it, t) in enumerate(zip(chunk, nlls)):
            row = {"sample_id": it.sample_id, "condition": it.condition, "n_prefix_tokens": len(it.prefix_ids),
                   "n_doc_tokens": len(it.doc_ids), "n_dec_prompt_tokens": len(it.dec_prompt_ids),
                   "n_answer_tokens": len(it.answer_ids), **it.row,
                   "token_nlls": [round(float(x), 6) for x in t], "nll": float(t.mean())}
            if attn_probe:
                row.update(shares[k])
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- exp09 design
ENC_CONDITIONS = ("bare", "oracle", "random", "kw5", "kw10", "template", "first_sentence", "wrongdoc_sentence",
                  "shuffled_sentence", "shuffled_wrongdoc")  # the last three: the truncation wound 2x2 (``designs``)
DEC_MODES = ("q", "nq", "rq")  # query in the decoder / no query / Q random tokens in its place


def _random_ids(em: EncDecLM, n: int, seed: int) -> list[int]:
    import random as _r

    rng = _r.Random(seed)
    special = set(getattr(em.tokenizer, "all_special_ids", []))
    out = []
    while len(out) < n:
        i = rng.randrange(len(em.tokenizer))
        if i not in special:
            out.append(i)
    return out


def build_items(em: EncDecLM, samples, *, enc_conditions=ENC_CONDITIONS, seed: int = 42,
                length_control: bool = True) -> list[Item]:
    """Every encoder condition with the query in the decoder (``__q``) and without (``__nq``); with
    ``length_control`` also ``bare__rq`` and ``oracle__rq`` (Q random decoder tokens), the 2x3 design.
    ``wrongdoc_sentence`` / ``shuffled_*``: the truncation-wound cells (``designs.wound_prefixes``)."""
    import hashlib

    from lib.data import surrogates
    from lib.studies.encdec import designs

    unknown = [c for c in enc_conditions if c not in ENC_CONDITIONS]
    if unknown or "bare" not in enc_conditions:
        raise ValueError(f"encoder conditions {list(enc_conditions)}: must include 'bare' and come from {ENC_CONDITIONS}")
    kws = {k: surrogates.tfidf_keywords({s.id: s.passage for s in samples}, k) for k in (5, 10)
           if f"kw{k}" in enc_conditions}
    template = tokenize(em, surrogates.STATIC["static_fact"])
    first = {s.id: tuple(tokenize(em, surrogates.first_sentence(s.passage))) for s in samples}
    wound = designs.wound_prefixes(samples, first, seed) if set(designs.WOUND[1:]) & set(enc_conditions) else {}
    items = []
    for s in samples:
        h = int(hashlib.sha256(f"{seed}|{s.id}".encode()).hexdigest()[:12], 16)
        q, doc, ans = tokenize(em, s.query), tuple(tokenize(em, s.passage)), tuple(tokenize(em, s.answer))
        if not ans:
            raise ValueError(f"sample {s.id!r}: answer {s.answer!r} tokenizes to nothing")
        prefixes = {"bare": (), "oracle": tuple(q), "random": tuple(_random_ids(em, len(q), h)),
                    "template": tuple(template), "first_sentence": first[s.id], **wound.get(s.id, {})}
        for k, v in kws.items():
            prefixes[f"kw{k}"] = tuple(tokenize(em, " ".join(v[s.id])))
        dec = {"q": tuple(q), "nq": (), "rq": tuple(_random_ids(em, len(q), h + 1))}
        row = {"q_tokens": len(q)}
        for c in enc_conditions:
            for m in ("q", "nq"):
                items.append(Item(s.id, f"{c}__{m}", prefixes[c], doc, c != "bare", dec[m], ans, row))
        if length_control:
            for c in ("bare", "oracle"):
                items.append(Item(s.id, f"{c}__rq", prefixes[c], doc, c != "bare", dec["rq"], ans, row))
    return items


def condition_names(enc_conditions=ENC_CONDITIONS, length_control: bool = True) -> list[str]:
    names = [f"{c}__{m}" for c in enc_conditions for m in ("q", "nq")]
    return names + (["bare__rq", "oracle__rq"] if length_control else [])


def analyse(nll: dict, rows: list[dict], enc_conditions=ENC_CONDITIONS, *, n_boot: int = 2000, seed: int = 0,
            atol: float | None = None, primary_test: str = "t", answer_words: dict[str, int] | None = None,
            ids: list[str] | None = None, split_words: int = 5) -> dict:
    """Encoder effects per decoder mode, structural fraction, the 2x3 length control with its length x
    encoder interactions, the truncation wound (when its four cells are scored), the factoid split
    (with ``answer_words`` and ``ids``, the samples in ``nll`` order) and the attention probe."""
    from lib.report import analysis, stats
    from lib.studies.encdec import designs

    kw = dict(n_boot=n_boot, seed=seed, atol=atol, primary_test=primary_test)
    out = {"enc_effects": {}}
    for m in ("q", "nq"):
        out["enc_effects"][m] = stats.compare_conditions(nll, f"bare__{m}", [f"{c}__{m}" for c in enc_conditions if c != "bare"], **kw)
        if "random" in enc_conditions and "oracle" in enc_conditions:
            out[f"structural_fraction_{m}"] = analysis.structural_fraction(nll, ref=f"bare__{m}", structural=f"random__{m}",
                                                                         full=f"oracle__{m}")
    if "bare__rq" in nll and "oracle__rq" in nll:
        # length component: no query -> random tokens of the query's length; semantic: random -> the real query
        pairs = [(f"{c}__nq", f"{c}__rq") for c in ("bare", "oracle")] + [(f"{c}__rq", f"{c}__q") for c in ("bare", "oracle")]
        comps = stats.compare_conditions(nll, None, pairs=pairs, **kw)
        for r in comps:
            r["component"] = "length" if r["ref"].endswith("__nq") else "semantic"
        total = stats.compare_conditions(nll, None, pairs=[("bare__nq", "bare__q"), ("oracle__nq", "oracle__q")], **kw)
        out["length_control"] = {"components": comps, "total": total,
                                 "interactions": designs.length_interaction(nll, **kw)}
    if all(c in enc_conditions for c in designs.WOUND):
        out["truncation_wound"] = {m: designs.truncation_wound(nll, m, **kw) for m in ("q", "nq")}
    if answer_words is not None:
        if ids is None:
            raise ValueError("the factoid split needs ids (the sample ids in nll order) beside answer_words")
        out["factoid_split"] = {m: designs.factoid_split(nll, ids, answer_words, enc_conditions, mode=m, threshold=split_words, **kw)
                                for m in ("q", "nq")}
    shares = probe.summarize(rows)
    out["cross_attn_share"] = shares.pop("cross_attn_share", {})
    out["attention_weights"] = shares
    return out


def run(em: EncDecLM, items: list[Item], store, *, wave: int = 8, batch_size: int = 16, attn_probe: bool = True,
        progress: bool = True) -> list[dict]:
    """Score every item not yet in ``store``, ``wave`` samples at a time (resumable); returns all stored rows."""
    from lib.lab.runs import run_waves

    by: dict[str, list[Item]] = {}
    for it in items:
        by.setdefault(it.sample_id, []).append(it)
    names = sorted({it.condition for it in items})
    return run_waves(store, list(by), names,
                     lambda ids: score_items(em, [it for i in ids for it in by[i] if not store.is_done(i, it.condition)],
                                             batch_size=batch_size, attn_probe=attn_probe),
                     wave=wave, progress=progress)


def store_config(params: dict, em: EncDecLM) -> dict:
    from lib.studies.priming import RUNTIME_KNOBS
    from lib.data import surrogates

    return {**{k: v for k, v in params.items() if k not in RUNTIME_KNOBS}, "model": em.name, "family": em.family,
            "random_init": em.random_init, "specials": {"bos": em.bos_id, "eos": em.eos_id, "start": em.start_id},
            "template": surrogates.STATIC["static_fact"]}
