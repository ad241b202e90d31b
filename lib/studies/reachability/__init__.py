"""Soft-prompt reachability of final-layer residual targets (exp08).

A soft prompt is a free ``[T, d]`` block of input embeddings (no token ids). We optimize it with
Adam so that the model's final-layer residual at those T positions matches a target ``[T, d]``,
and ask which targets can be hit.

Layouts: targets ``[n, T, d]``; a batch of soft prompts ``[P, T, d]`` where prompt ``p`` belongs
to target ``p // restarts`` and is restart ``p % restarts`` (target-major). Every prompt's initial
value comes from its own seed, and the batched loss is the SUM of per-prompt MSEs, so with Adam
(elementwise) a prompt's trajectory does not depend on which other prompts share its batch:
batched restarts equal one-by-one restarts up to float reassociation (tested). The optimizer
(``optimize``, the step-extension rule) is ``lib.studies.reachability.optim``; its checkpoint
store (per chunk of targets, resumable bit-identically) ``lib.studies.reachability.store``; both
re-exported here.

The residual is read through generic interfaces only: ``get_input_embeddings()`` to embed real
tokens, the base model (``model.base_model``) called with ``inputs_embeds=`` and
``output_hidden_states=True``. ``ResidualReader.norm_check`` records whether
``hidden_states[-1]`` already has the final norm applied, by comparing it with a forward hook on
the final norm module. When it does, every reachable residual lies on the norm's output manifold
(for RMSNorm: ``||y / w|| = sqrt(d)``), so targets off that manifold have an MSE floor above 0.
Summaries and the interpretation table live in ``lib.studies.reachability.report``; figures in
``lib.studies.reachability.plots``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.studies.reachability.optim import ExtendRule, Fit, best_rows, check_pos_int, init_prompts, optimize
from lib.studies.reachability.store import ChunkStore, PartMismatch, store_config

__all__ = ["ResidualReader", "RealStats", "ExtendRule", "Fit", "ChunkStore", "PartMismatch", "best_rows", "check_pos_int",
           "choose_pairs", "init_prompts", "interpolate", "load_texts", "load_texts_recorded", "matched_gaussian", "optimize", "parse_floats",
           "raw_gaussian", "replace_dims", "store_config", "token_windows"]

RESIDUALS = ("hidden_states", "pre_norm")
TEXTS = ("wikitext", "wiki", "brown", "synthetic")
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_norm")


def parse_floats(text: str, name: str) -> list[float]:
    """``"0, 0.5,1"`` -> ``[0.0, 0.5, 1.0]``; raises ValueError naming ``name`` on bad entries."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name}={text!r}: expected a comma-separated list of numbers")
    try:
        return [float(t) for t in items]
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a comma-separated list of numbers") from None


# --------------------------------------------------------------------------------------- residuals
class ResidualReader:
    """Final-layer residuals of a causal LM for token ids or soft prompts. Parameters frozen."""

    def __init__(self, model, residual: str = "hidden_states"):
        if residual not in RESIDUALS:
            raise ValueError(f"residual {residual!r} not supported; choices: {RESIDUALS}")
        self.model, self.residual = model, residual
        for p in model.parameters():
            p.requires_grad_(False)
        self.base = model.base_model
        self.embedding = model.get_input_embeddings()
        self.norm_name, self.norm = next(((n, getattr(self.base, n)) for n in FINAL_NORM_NAMES
                                          if isinstance(getattr(self.base, n, None), torch.nn.Module)), (None, None))
        if residual == "pre_norm" and self.norm is None:
            raise ValueError(f"residual='pre_norm' needs a final norm module named one of {FINAL_NORM_NAMES} "
                             f"on {type(self.base).__name__}; none found")
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.d_model = self.embedding.weight.shape[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``[n, T]`` ids -> ``[n, T, d]`` input embeddings."""
        return self.embedding(ids.to(self.device))

    def _forward(self, embeds: torch.Tensor, capture: dict | None = None):
        hook = None
        if self.norm is not None and capture is not None:
            def grab(_m, args, out):
                capture["in"], capture["out"] = args[0], out
            hook = self.norm.register_forward_hook(grab)
        try:
            return self.base(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
        finally:
            if hook is not None:
                hook.remove()

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """``[P, T, d]`` soft prompts -> ``[P, T, d]`` residuals (differentiable, float32)."""
        if embeds.dim() != 3 or embeds.shape[-1] != self.d_model:
            raise ValueError(f"embeds must be [P, T, {self.d_model}], got {tuple(embeds.shape)}")
        cap = {} if self.residual == "pre_norm" else None
        out = self._forward(embeds.to(self.dtype), cap)
        res = cap["in"] if cap is not None else out.hidden_states[-1]
        return res.float()

    @torch.no_grad()
    def of_ids(self, ids: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Residuals of real token windows ``[n, T]`` -> ``[n, T, d]`` (float32, CPU)."""
        return torch.cat([self(self.embed(ids[i:i + batch])).cpu() for i in range(0, len(ids), batch)])

    @torch.no_grad()
    def norm_check(self, ids: torch.Tensor) -> dict:
        """Does ``hidden_states[-1]`` equal the final norm's output (or its input)? Recorded, not assumed."""
        cap: dict = {}
        out = self._forward(self.embed(ids), cap)
        last = out.hidden_states[-1].float()
        info = {"final_norm_module": self.norm_name, "residual": self.residual,
                "n_hidden_states": len(out.hidden_states)}
        if not cap:
            info.update(hidden_states_includes_final_norm=None, note="no final norm module found; unknown")
            return info
        d_out = (last - cap["out"].float()).abs().max().item()
        d_in = (last - cap["in"].float()).abs().max().item()
        scale = last.abs().max().item()
        info.update(max_abs_diff_to_norm_output=d_out, max_abs_diff_to_norm_input=d_in,
                    hidden_states_includes_final_norm=(d_out <= 1e-5 * max(scale, 1.0)) if d_out != d_in else None,
                    target_includes_final_norm=(self.residual == "hidden_states" and d_out <= 1e-5 * max(scale, 1.0)))
        return info


# --------------------------------------------------------------------------------------- text
def load_texts(text: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` raw texts: "wikitext" (wikitext-2-raw-v1 train, through ``datasets``), "wiki"
    (offline Wikipedia paragraphs, one article after another round-robin so the first n span many
    articles), "brown" (offline Brown corpus documents), "synthetic" (``lib.data.synthetic_qa``
    passages: a pipeline check) or a local .txt file (one text per line). "wiki" and "brown" need
    ``python -m lib.data prepare`` once (``lib.data.realdata.load_prose``)."""
    return load_texts_recorded(text, n, seed)[0]


def load_texts_recorded(text: str, n: int, seed: int = 0) -> tuple[list[str], dict]:
    """``load_texts`` and the record a results.json keeps of them: ``{name, n_texts, provenance,
    content_sha256}``. The provenance names the registry package and the file's pinned sha256 (wiki,
    brown), the hub set and its ``datasets`` fingerprint (wikitext), the generator and seed (synthetic)
    or the local file and its sha256; ``content_sha256`` hashes the texts actually used."""
    check_pos_int("n", n)
    if text in ("wiki", "brown"):
        from lib.data import realdata

        docs, prov = realdata.load_prose(text)
        out = ([d["text"] for d in docs][:n] if text == "brown"
               else realdata.round_robin([d["text"].split("\n\n") for d in docs])[:n])
    elif text == "wikitext":
        from datasets import load_dataset

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
        prov = {"hub": "wikitext", "config": "wikitext-2-raw-v1", "split": "train",
                "datasets_fingerprint": getattr(rows, "_fingerprint", None)}
        out = []
        for r in rows:
            t = r["text"].strip()
            if len(t) >= 20 and not t.startswith("="):
                out.append(t)
                if len(out) >= n:
                    break
    elif text == "synthetic":
        from lib.data import synthetic_qa

        prov = {"synthetic": "lib.data.synthetic_qa", "seed": seed}
        out = [s.passage for s in synthetic_qa(n, seed=seed)]
    else:
        path = Path(text).expanduser()
        if not (path.suffix == ".txt" and path.is_file()):
            raise ValueError(f"text source {text!r} not supported; choices: {TEXTS} or a path to an existing .txt file")
        data = path.read_bytes()
        prov = {"local": str(text), "sha256": hashlib.sha256(data).hexdigest()}
        out = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()][:n]
    digest = hashlib.sha256("\n\x00".join(out).encode("utf-8")).hexdigest()
    return out, {"name": text, "n_texts": len(out), "provenance": prov, "content_sha256": digest}


def token_windows(tokenizer, texts: list[str], seq_len: int, n: int, per_text: int = 1) -> tuple[torch.Tensor, dict]:
    """``[n, seq_len]`` distinct token windows: up to ``per_text`` non-overlapping windows from the
    start of each text (the tokenizer's own special tokens kept). Counts what was skipped."""
    check_pos_int("seq_len", seq_len)
    check_pos_int("n", n)
    check_pos_int("per_text", per_text)
    seen, windows = set(), []
    stats = {"texts_read": 0, "too_short": 0, "duplicates": 0}
    for t in texts:
        stats["texts_read"] += 1
        ids = tokenizer(t)["input_ids"]
        if len(ids) < seq_len:
            stats["too_short"] += 1
        for k in range(min(per_text, len(ids) // seq_len)):
            w = tuple(ids[k * seq_len:(k + 1) * seq_len])
            if w in seen:
                stats["duplicates"] += 1
                continue
            seen.add(w)
            windows.append(w)
            if len(windows) == n:
                return torch.tensor(windows), stats
    raise ValueError(f"n={n} windows of {seq_len} tokens wanted, only {len(windows)} distinct ones in "
                     f"{len(texts)} texts ({stats}); pass more texts or a larger per_text")


# --------------------------------------------------------------------------------------- targets
@dataclass
class RealStats:
    """Statistics of real residuals ``[N, T, d]``: per-position mean and covariance factor, typical
    per-position L2 norm (median over sequences), per-dimension std (over sequences and positions)."""

    mu: torch.Tensor        # [T, d]
    factor: torch.Tensor    # [T, d, d]; factor @ factor.T == Sigma_i (negative eigenvalues clipped)
    norms: torch.Tensor     # [T]
    dim_std: torch.Tensor   # [d]
    n: int
    clipped_eigen: float    # most negative eigenvalue clipped to 0

    @classmethod
    def fit(cls, res: torch.Tensor) -> "RealStats":
        if res.dim() != 3 or res.shape[0] < 2:
            raise ValueError(f"res must be [N>=2, T, d], got {tuple(res.shape)}")
        x = res.double()
        mu = x.mean(0)
        xc = (x - mu).transpose(0, 1)                              # [T, N, d]
        cov = xc.transpose(1, 2) @ xc / (x.shape[0] - 1)           # [T, d, d]
        evals, evecs = torch.linalg.eigh(cov)
        factor = evecs * evals.clamp_min(0).sqrt().unsqueeze(1)
        return cls(mu.float(), factor.float(), x.norm(dim=-1).median(0).values.float(),
                   x.reshape(-1, x.shape[-1]).std(0).float(), int(x.shape[0]), float(evals.min().clamp_max(0)))


def matched_gaussian(stats: RealStats, n: int, seed: int) -> torch.Tensor:
    """2a: ``[n, T, d]``, position i drawn from N(mu_i, Sigma_i)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *stats.mu.shape, generator=g)
    return stats.mu + torch.einsum("tij,ntj->nti", stats.factor, z)


def raw_gaussian(stats: RealStats, n: int, seed: int) -> torch.Tensor:
    """2b: ``[n, T, d]`` isotropic Gaussian, each position rescaled to the typical real norm."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *stats.mu.shape, generator=g)
    return z / z.norm(dim=-1, keepdim=True) * stats.norms[:, None]


def interpolate(a: torch.Tensor, b: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """Part 3: ``[pairs * len(alphas), T, d]``, pair-major: alpha*A + (1-alpha)*B."""
    if a.shape != b.shape:
        raise ValueError(f"A and B differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    al = torch.tensor(alphas, dtype=a.dtype)[None, :, None, None]
    return (al * a[:, None] + (1 - al) * b[:, None]).reshape(-1, *a.shape[1:])


def replace_dims(targets: torch.Tensor, fractions: list[float], dim_std: torch.Tensor, seed: int) -> tuple[torch.Tensor, list]:
    """Part 4: ``[n * len(fractions), T, d]`` (target-major). For each target one random order of the
    d dimensions; fraction f replaces the first round(f*d) of them (nested sets across f) at every
    position by N(0, dim_std) draws. Returns the targets and the replaced counts."""
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"fractions {bad} outside [0, 1]")
    g = torch.Generator().manual_seed(seed)
    n, t, d = targets.shape
    out, counts = [], []
    for i in range(n):
        order = torch.randperm(d, generator=g)
        noise = torch.randn(t, d, generator=g) * dim_std
        for f in fractions:
            k = int(round(f * d))
            x = targets[i].clone()
            x[:, order[:k]] = noise[:, order[:k]]
            out.append(x)
            counts.append(k)
    return torch.stack(out), counts


# --------------------------------------------------------------------------------------- part helpers
def choose_pairs(n: int, pairs: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (A, B) index pairs among ``n`` real targets, chosen by ``seed``."""
    check_pos_int("pairs", pairs)
    if 2 * pairs > n:
        raise ValueError(f"pairs={pairs} needs {2 * pairs} real targets, only n={n} available")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:2 * pairs].tolist()
    return perm[0::2], perm[1::2]
