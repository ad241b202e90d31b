"""Soft-prompt reachability of final-layer residual targets (exp08).

A soft prompt is a free ``[T, d]`` block of input embeddings (no token ids). We optimize it with
Adam so that the model's final-layer residual at those T positions matches a target ``[T, d]``,
and ask which targets can be hit.

Layouts: targets ``[n, T, d]``; a batch of soft prompts ``[P, T, d]`` where prompt ``p`` belongs
to target ``p // restarts`` and is restart ``p % restarts`` (target-major). Every prompt's initial
value comes from its own seed, and the batched loss is the SUM of per-prompt MSEs, so with Adam
(elementwise) a prompt's trajectory does not depend on which other prompts share its batch:
batched restarts equal one-by-one restarts up to float reassociation (tested).

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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RESIDUALS = ("hidden_states", "pre_norm")
TEXTS = ("wikitext", "wiki", "brown", "synthetic")
FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_norm")


def check_pos_int(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


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
    check_pos_int("n", n)
    if text in ("wiki", "brown"):
        from lib.data import realdata

        docs, _ = realdata.load_prose(text)
        if text == "brown":
            return [d["text"] for d in docs][:n]
        return realdata.round_robin([d["text"].split("\n\n") for d in docs])[:n]
    if text == "wikitext":
        from datasets import load_dataset

        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
        out = []
        for r in rows:
            t = r["text"].strip()
            if len(t) >= 20 and not t.startswith("="):
                out.append(t)
                if len(out) >= n:
                    break
        return out
    if text == "synthetic":
        from lib.data import synthetic_qa

        return [s.passage for s in synthetic_qa(n, seed=seed)]
    path = Path(text).expanduser()
    if path.suffix == ".txt" and path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()][:n]
    raise ValueError(f"text source {text!r} not supported; choices: {TEXTS} or a path to an existing .txt file")


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


# --------------------------------------------------------------------------------------- optimizer
@dataclass(frozen=True)
class ExtendRule:
    """Keep optimizing (to ``max_steps``) when curves still fall: the best restart's running-min
    loss dropped by more than ``tol`` (relative) over the last ``window`` fraction of steps, for the
    median target. Targets already below the reach threshold count as flat."""

    window: float = 0.1
    tol: float = 0.01

    def __post_init__(self):
        if not 0 < self.window < 1:
            raise ValueError(f"window must be in (0, 1), got {self.window!r}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")

    def decide(self, best_curves: np.ndarray, reached: np.ndarray) -> dict:
        steps = best_curves.shape[1] - 1
        w = max(1, int(round(self.window * steps)))
        run_min = np.minimum.accumulate(best_curves, axis=1)
        drop = 1.0 - run_min[:, -1] / np.maximum(run_min[:, -1 - w], 1e-30)
        drop = np.where(reached, 0.0, drop)
        med = float(np.median(drop))
        return {"rule": f"extend if median over targets of the relative drop of the best restart's running-min "
                        f"loss over the last {self.window:.0%} of steps ({w} steps) > {self.tol}; reached targets "
                        f"count as 0", "window_steps": w, "median_relative_drop": med,
                "share_falling": float(np.mean(drop > self.tol)), "still_falling": med > self.tol}


@dataclass
class Fit:
    """Result of optimizing P = targets x restarts prompts. Curves hold the loss before each step
    plus the final loss after the last step (``[P, steps + 1]``)."""

    restarts: int
    curves: np.ndarray          # [P, S+1]
    final_mse: np.ndarray       # [P]
    cosine: np.ndarray          # [P, T] per-position cosine(achieved, target) at the end
    steps: int
    extension: dict | None = None
    prompts: torch.Tensor | None = field(default=None, repr=False)  # [P, T, d] final soft prompts


def init_prompts(seeds: list[int], seq_len: int, d: int, std: float) -> torch.Tensor:
    """``[P, T, d]``: prompt p ~ N(0, std^2) from its own generator seeded with seeds[p]."""
    return torch.stack([torch.randn(seq_len, d, generator=torch.Generator().manual_seed(int(s))) * std
                        for s in seeds])


class _Chunk:
    def __init__(self, reader, targets, seeds, lr, std):
        self.reader = reader
        self.target = targets.to(reader.device)
        self.prompt = init_prompts(seeds, targets.shape[1], targets.shape[2], std).to(reader.device).requires_grad_(True)
        self.opt = torch.optim.Adam([self.prompt], lr=lr)
        self.losses: list[np.ndarray] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            mse = (self.reader(self.prompt) - self.target).pow(2).mean(dim=(1, 2))   # [P]
            self.opt.zero_grad(set_to_none=True)
            mse.sum().backward()
            self.opt.step()
            self.losses.append(mse.detach().cpu().numpy())

    @torch.no_grad()
    def finish(self):
        res = self.reader(self.prompt)
        mse = (res - self.target).pow(2).mean(dim=(1, 2)).cpu().numpy()
        cos = torch.nn.functional.cosine_similarity(res, self.target, dim=-1).cpu().numpy()
        return np.stack(self.losses + [mse], axis=1), mse, cos


def optimize(reader: ResidualReader, targets: torch.Tensor, *, restarts: int, steps: int, lr: float = 0.01,
             init_std: float = 1.0, seed: int = 0, chunk: int = 256, max_steps: int | None = None,
             rule: ExtendRule | None = None, reach_frac: float = 0.01, progress=None) -> Fit:
    """Optimize ``restarts`` soft prompts per target, ``chunk`` prompts per forward. Prompt
    (target i, restart r) starts from seed ``seed + 1_000_003 * r + i``. With ``max_steps``,
    ``rule`` decides after ``steps`` whether every chunk continues to ``max_steps``."""
    check_pos_int("restarts", restarts)
    check_pos_int("steps", steps)
    check_pos_int("chunk", chunk)
    if targets.dim() != 3 or targets.shape[-1] != reader.d_model:
        raise ValueError(f"targets must be [n, T, {reader.d_model}], got {tuple(targets.shape)}")
    if max_steps is not None and max_steps < steps:
        raise ValueError(f"max_steps={max_steps} is below steps={steps}")
    n = targets.shape[0]
    seeds = [seed + 1_000_003 * r + i for i in range(n) for r in range(restarts)]
    flat = targets.float().repeat_interleave(restarts, dim=0)
    chunks = [_Chunk(reader, flat[i:i + chunk], seeds[i:i + chunk], lr, init_std) for i in range(0, len(seeds), chunk)]
    for c in chunks:
        c.run(steps)
        if progress:  # called with the prompt-steps just done
            progress(steps * c.prompt.shape[0])
    extension, total = None, steps
    if max_steps is not None:
        curves = np.concatenate([np.stack(c.losses, axis=1) for c in chunks])
        best = best_rows(curves[:, -1], n, restarts)
        init = curves[:, 0].reshape(n, restarts).mean(1)
        extension = (rule or ExtendRule()).decide(curves[best], curves[best, -1] <= reach_frac * init)
        if extension["still_falling"] and max_steps > steps:
            for c in chunks:
                c.run(max_steps - steps)
                if progress:
                    progress((max_steps - steps) * c.prompt.shape[0])
            total = max_steps
        extension.update(steps=steps, max_steps=max_steps, steps_run=total)
    done = [c.finish() for c in chunks]
    return Fit(restarts, np.concatenate([d[0] for d in done]), np.concatenate([d[1] for d in done]),
               np.concatenate([d[2] for d in done]), total, extension,
               torch.cat([c.prompt.detach().cpu() for c in chunks]))


def best_rows(final: np.ndarray, n: int, restarts: int) -> np.ndarray:
    """Row index (into P) of each target's best restart by final loss."""
    return np.arange(n) * restarts + final.reshape(n, restarts).argmin(1)


# --------------------------------------------------------------------------------------- part helpers
def choose_pairs(n: int, pairs: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint (A, B) index pairs among ``n`` real targets, chosen by ``seed``."""
    check_pos_int("pairs", pairs)
    if 2 * pairs > n:
        raise ValueError(f"pairs={pairs} needs {2 * pairs} real targets, only n={n} available")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:2 * pairs].tolist()
    return perm[0::2], perm[1::2]
