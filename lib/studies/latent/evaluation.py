"""exp12 evaluation: every condition through the one layout of ``lib.studies.latent``.

Conditions (prefix between BOS and the question anchor):
  text          the whole passage as token ids (the full text prompt; also the KD teacher)
  replay        the passage's own input embeddings as a soft prefix (sanity: must match text)
  latent        the compressor's M vectors for this passage
  budget        the first M passage tokens (question kept, as in every condition)
  latent_other  the latent of a different sample (the next one in evaluation order)
  latent_zero   M zero vectors
Per row: greedy prediction with a fixed ``max_new_tokens`` (cut at EOS and at the first newline),
EM and F1 (SQuAD normalization, max over all references), answer NLL on the same token set for every
condition (answer tokens + EOS), rank of the first gold token, the greedy first token.
"""
from __future__ import annotations

import numpy as np
import torch

from lib.studies import latent as lat
from lib.data import squad


def prefixes(cond: str, model, bos_id, items, comp=None, m: int = 0) -> list:
    """The prefixes of ``cond`` for ``items`` (token-id tuples or (P, d) tensors)."""
    if cond == "text":
        return [it.context_ids for it in items]
    if cond == "replay":
        return [lat.embed(model, it.context_ids).detach().float() for it in items]
    if cond == "budget":
        if m < 1:
            raise ValueError(f"budget needs m >= 1, got {m}")
        return [it.context_ids[:m] for it in items]
    if cond == "latent_zero":
        return [torch.zeros(comp.cfg.m, comp.d_model) for _ in items]
    if cond in ("latent", "latent_other"):
        if comp is None:
            raise ValueError(f"condition {cond!r} needs a trained compressor")
        with torch.no_grad():
            z = lat.encode(model, bos_id, comp, items)
        return list(z.roll(-1, 0) if cond == "latent_other" else z)
    raise ValueError(f"unknown condition {cond!r}; choose from {lat.CONDITIONS}")


def clean_prediction(tokenizer, toks: list[int], eos_id) -> str:
    if eos_id in toks:
        toks = toks[: toks.index(eos_id)]
    return tokenizer.decode(toks, skip_special_tokens=True).strip().split("\n")[0].strip()


@torch.no_grad()
def evaluate(lm, items, conditions, *, comp=None, m: int = 0, max_new_tokens: int = 16, batch_size: int = 16,
             progress: bool = False) -> list[dict]:
    """One row per (item, condition); ``m`` labels the rows (0 for text/replay). ``progress``: a bar
    over (condition, item) pairs (``tqdm.auto``: a widget in JupyterLab, text elsewhere)."""
    from tqdm.auto import tqdm

    if "latent_other" in conditions and len(items) < 2:
        raise ValueError("latent_other needs at least 2 items (it uses the next item's latent)")
    model, bos = lm.model, lm.arch.bos_id
    rows = []
    bar = tqdm(total=len(conditions) * len(items), desc=f"generate M={m}", disable=not progress)
    for cond in conditions:
        # latent_other rolls within the whole evaluation set, not within a batch
        pre_all = prefixes(cond, model, bos, items, comp, m) if cond == "latent_other" else None
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            pre = pre_all[s:s + batch_size] if pre_all is not None else prefixes(cond, model, bos, chunk, comp, m)
            rows += chunk_rows(lm, chunk, pre, [it.anchor_ids for it in chunk], cond, m, max_new_tokens)
            bar.update(len(chunk))
    bar.close()
    return rows


@torch.no_grad()
def chunk_rows(lm, chunk, pre, anchors, cond: str, m: int, max_new_tokens: int) -> list[dict]:
    """One row per item of ``chunk`` read with prefixes ``pre`` and ``anchors`` (the one layout): greedy
    prediction, EM/F1, answer NLL (answer tokens + EOS), rank of the first gold token, greedy first token."""
    model, bos, eos = lm.model, lm.arch.bos_id, lm.tokenizer.eos_token_id
    answers = [it.answer_ids for it in chunk]
    b = lat.assemble(model, bos, pre, anchors, answers)
    logits = lat.answer_logits(model, b)
    nll = torch.nn.functional.cross_entropy(logits, b.targets, reduction="none")
    first_logits = logits[b.first]
    ranks = (first_logits > first_logits.gather(1, b.targets[b.first][:, None])).sum(1)
    toks, _ = lat.greedy(model, bos, eos, pre, anchors, max_new_tokens)
    rows = []
    for i, it in enumerate(chunk):
        pred = clean_prediction(lm.tokenizer, toks[i], eos)
        tok_nll = nll[b.rows == i]
        rows.append({"sample_id": it.sample_id, "condition": cond, "m": m,
                     "prefix_len": int(pre[i].shape[0] if isinstance(pre[i], torch.Tensor) else len(pre[i])),
                     "context_tokens": len(it.context_ids), "context_bytes": it.context_bytes,
                     "pred": pred, "em": squad.exact_match(pred, it.answers), "f1": squad.f1_score(pred, it.answers),
                     "nll_sum": float(tok_nll.sum()), "n_tokens": len(it.answer_ids),
                     "first_rank": int(ranks[i]), "pred_first": toks[i][0] if toks[i] else -1})
    return rows


def summarize(rows: list[dict], *, d_model: int, bytes_per_value: int = 2) -> list[dict]:
    """One line per (condition, m): EM, F1, NLL/token, FirstTok@1/@5, distinct first tokens, compression.

    Compression = passage size / prefix size. Tokens: passage tokens / prefix length. Bytes: UTF-8 bytes
    of the passage / prefix bytes, where a soft prefix costs ``P * d_model * bytes_per_value`` and a
    token prefix the passage's bytes times the kept fraction of its tokens (an approximation).
    """
    out = []
    for key in sorted({(r["condition"], r["m"]) for r in rows}, key=lambda k: (k[1], k[0])):
        rs = [r for r in rows if (r["condition"], r["m"]) == key]
        soft = key[0] in ("latent", "latent_other", "latent_zero", "replay")
        plen = np.mean([r["prefix_len"] for r in rs])
        ctx_tok, ctx_bytes = np.mean([r["context_tokens"] for r in rs]), np.mean([r["context_bytes"] for r in rs])
        prefix_bytes = plen * d_model * bytes_per_value if soft else np.mean(
            [r["context_bytes"] * min(1.0, r["prefix_len"] / r["context_tokens"]) for r in rs])
        out.append({"condition": key[0], "m": key[1], "n": len(rs),
                    "em": float(np.mean([r["em"] for r in rs])), "f1": float(np.mean([r["f1"] for r in rs])),
                    "nll_per_token": sum(r["nll_sum"] for r in rs) / sum(r["n_tokens"] for r in rs),
                    "first_tok_at1": float(np.mean([r["first_rank"] < 1 for r in rs])),
                    "first_tok_at5": float(np.mean([r["first_rank"] < 5 for r in rs])),
                    "distinct_first_tokens": len({r["pred_first"] for r in rs}),
                    "prefix_len_mean": float(plen), "context_tokens_mean": float(ctx_tok),
                    "compression_tokens": float(ctx_tok / plen) if plen else None,
                    "prefix_bytes_mean": float(prefix_bytes), "context_bytes_mean": float(ctx_bytes),
                    "compression_bytes": float(ctx_bytes / prefix_bytes) if prefix_bytes else None})
    return out


def plot_curves(summary: list[dict], path, title: str = "", conditions=None):
    """F1, NLL/token and FirstTok@1 against M for each condition; text and replay as horizontal lines.

    One legend for the three panels, outside them on the right: inside, it covered the text/replay
    reference lines."""
    from lib.report import plots

    out = plots.out_path(path)
    fig = _curves_figure(summary, title, conditions)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def _curves_figure(summary: list[dict], title: str = "", conditions=None):
    from lib.report import plots

    fig = plots.new_figure(15.5, 4)
    axes = fig.subplots(1, 3)
    for ax, key, lab in zip(axes, ("f1", "nll_per_token", "first_tok_at1"), ("F1", "answer NLL per token", "FirstTok@1")):
        for i, cond in enumerate(conditions or lat.CONDITIONS):
            pts = sorted((r["m"], r[key]) for r in summary if r["condition"] == cond)
            if not pts:
                continue
            if cond in ("text", "replay"):
                ax.axhline(pts[0][1], color=f"C{i}", ls="--" if cond == "text" else ":", label=cond)
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=cond)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (prefix vectors / tokens)")
        ax.set_ylabel(lab)
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), fontsize=8, loc="outside right upper")
    plots.suptitle(fig, title or "latent prefix vs token budget")
    return fig


def load_splits(dataset: str, n_train: int, n_eval: int, *, train_split: str = "train", eval_split: str = "validation",
                seed: int = 42, source: str | None = None, min_passage_words: int | None = None,
                max_passage_words: int | None = None):
    """(train, eval) ``LoadedData`` sharing no sample. squad_v1.1: the hub's two splits, or with both splits
    ``"articles"`` disjoint articles of the offline registry copy of SQuAD v1.1 dev (``load_article_splits``;
    ``source``: a local file in its schema); synthetic: seeds seed and seed+1."""
    from lib.data import load_samples
    from lib.data.core import ARTICLE_SPLIT, load_article_splits

    lim = dict(min_passage_words=min_passage_words, max_passage_words=max_passage_words)
    if ARTICLE_SPLIT in (train_split, eval_split):
        if train_split != eval_split or dataset != "squad_v1.1":
            raise ValueError(f"split {ARTICLE_SPLIT!r} needs both splits set to it and DATASET squad_v1.1; got "
                             f"train_split={train_split!r}, eval_split={eval_split!r}, dataset={dataset!r}")
        return load_article_splits(dataset, n_train, n_eval, seed=seed, source=source, **lim)
    if dataset == "squad_v1.1":
        tr = squad.load_squad_v1(n_train, split=train_split, source=source, **lim)
        te = squad.load_squad_v1(n_eval, split=eval_split, source=source, **lim)
    elif dataset == "synthetic":
        tr = load_samples("synthetic", n_train, seed=seed, **lim)
        te = load_samples("synthetic", n_eval, seed=seed + 1, **lim)
    else:
        raise ValueError(f"exp12 data set {dataset!r} not supported; choose from ('squad_v1.1', 'synthetic')")
    seen = {(s.query, s.passage) for s in tr.samples}
    shared = [s.id for s in te.samples if (s.query, s.passage) in seen or s.id in {t.id for t in tr.samples}]
    if shared:
        raise ValueError(f"{len(shared)} evaluation samples also occur in training (e.g. {shared[:3]}); "
                         f"use different splits (train {train_split!r}, eval {eval_split!r})")
    return tr, te
