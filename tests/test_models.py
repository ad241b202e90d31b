"""lib.kv.models: ArchInfo of tiny configs built in code and of the bundled real models; loading errors."""
import warnings
import json
import time

import pytest
import torch
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers, processors
from transformers import (DynamicCache, Gemma3Config, Gemma3ForConditionalGeneration, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast)
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from lib.kv.models import BUNDLED, ArchInfo, BundledModel, arch_info, load_model, model_cache_dir, text_config

VOCAB = {"<bos>": 0, "<eos>": 1, "<unk>": 2, "a": 3, "b": 4}


def tiny_tokenizer(*, adds_bos=False, **special):
    tok = Tokenizer(tok_models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def tiny_gemma3_multimodal():
    text = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, sliding_window=8, max_position_embeddings=256,
                layer_types=["sliding_attention"] * 3 + ["full_attention"])
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=127,
                       boi_token_index=125, eoi_token_index=126)
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(cfg)


# ---- tiny models built in code -----------------------------------------------------------------
def test_llama_all_full_no_window():
    info = arch_info(tiny_llama(), tiny_tokenizer(bos_token="<bos>", eos_token="<eos>"), "tiny-llama")
    assert info.model_type == "llama"
    assert info.layer_types == ("full_attention", "full_attention")
    assert info.sliding_window is None
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim, info.hidden_size) == (2, 4, 2, 8, 32)
    assert info.max_positions == 64 and info.vocab_size == 128
    assert len(info.rope) == 2
    json.dumps(info.to_dict())  # JSON-able


def test_multimodal_gemma3_resolves_to_text_config():
    model = tiny_gemma3_multimodal()
    assert text_config(model.config).model_type == "gemma3_text"
    info = arch_info(model, tiny_tokenizer(adds_bos=True, bos_token="<bos>", eos_token="<eos>"))
    assert info.model_type == "gemma3_text"
    assert info.n_layers == 4 and info.hidden_size == 32 and info.head_dim == 16
    assert (info.n_heads, info.n_kv_heads) == (2, 1)
    assert info.layer_types == ("sliding_attention",) * 3 + ("full_attention",)
    assert info.sliding_window == 8 and info.sliding_layers == (0, 1, 2)
    assert info.vocab_size == 128 and info.max_positions == 256


def test_mistral_global_window_makes_every_layer_sliding_like_transformers():
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=64, sliding_window=4))
    info = arch_info(model, tiny_tokenizer(bos_token="<bos>"))
    assert info.layer_types == ("sliding_attention", "sliding_attention") and info.sliding_window == 4
    # the same reading as transformers' own config-built cache
    cache = DynamicCache(config=model.config)
    assert [type(layer) for layer in cache.layers] == [DynamicSlidingWindowLayer] * 2
    assert [type(layer) for layer in DynamicCache(config=tiny_llama().config).layers] == [DynamicLayer] * 2


@pytest.mark.parametrize("special, adds_bos, expected", [
    (dict(bos_token="<bos>", eos_token="<eos>"), True, (0, "tokenizer")),
    (dict(bos_token="<bos>", eos_token="<eos>"), False, (0, "bos_token")),
    (dict(eos_token="<eos>"), False, (1, "eos_token")),
    (dict(), False, (None, "none")),
])
def test_bos_policy(special, adds_bos, expected):
    info = arch_info(tiny_llama(), tiny_tokenizer(adds_bos=adds_bos, **special))
    assert (info.bos_id, info.bos_source) == expected


def _fields(**over):
    base = dict(name="x", model_type="llama", n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, hidden_size=32,
                vocab_size=10, layer_types=("full_attention",) * 2, sliding_window=None, max_positions=64,
                bos_id=0, bos_source="bos_token", rope=("r0", "r1"))
    base.update(over)
    return base


def test_archinfo_validates():
    ArchInfo(**_fields())
    with pytest.raises(ValueError, match=r"'sliding_atention'.*Did you mean 'sliding_attention'"):
        ArchInfo(**_fields(layer_types=("full_attention", "sliding_atention"), sliding_window=4))
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        ArchInfo(**_fields(layer_types=("full_attention", "sliding_attention")))
    with pytest.raises(ValueError, match="sliding_window must be None"):
        ArchInfo(**_fields(sliding_window=4))
    with pytest.raises(ValueError, match="Did you mean 'eos_token'"):
        ArchInfo(**_fields(bos_source="eos"))
    with pytest.raises(ValueError, match="bos_id is None exactly"):
        ArchInfo(**_fields(bos_id=None))
    with pytest.raises(ValueError, match="2 entries for 3 layers"):
        ArchInfo(**_fields(n_layers=3))
    with pytest.raises(ValueError, match="not a multiple"):
        ArchInfo(**_fields(n_kv_heads=3))


def test_load_local_folder(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    tiny_tokenizer(bos_token="<bos>", eos_token="<eos>").save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu", attn_implementation="eager")
    assert loaded.source == f"local:{tmp_path.resolve()}"
    assert loaded.dtype == torch.float32 and next(loaded.model.parameters()).dtype == torch.float32
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token == "<eos>"  # no pad token: eos stands in
    assert (loaded.arch.bos_id, loaded.arch.bos_source) == (0, "bos_token")
    assert load_model(str(tmp_path), dtype="bfloat16").model.dtype == torch.bfloat16


# ---- loading errors (nothing is loaded) ---------------------------------------------------------
def test_unknown_name_lists_bundled_with_did_you_mean():
    with pytest.raises(ValueError, match=r"'smollm2-135m'.*bundled: \['gemma-3-270m', 'qwen2.5-coder-0.5b-instruct', "
                                         r"'smollm2-135m-instruct'\]. Did you mean 'smollm2-135m-instruct'"):
        load_model("smollm2-135m")
    with pytest.raises(ValueError, match="no such folder"):
        load_model("./no/such/folder")


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"'float8'.*choices: \['bfloat16', 'float16', 'float32'\]"):
        load_model("gemma-3-270m", dtype="float8")
    with pytest.raises(ValueError, match="Did you mean 'bfloat16'"):
        load_model("gemma-3-270m", dtype="bfloat61")


def test_4bit_on_cpu_raises_before_loading():
    assert torch.cuda.is_available() is False
    t0 = time.time()
    # an unreachable hub id: had it tried to load, the error would be an OSError, not this one
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU.*load_in_4bit=False.*smollm2-135m-instruct"):
        load_model("no-such-owner/no-such-model", load_in_4bit=True)
    assert time.time() - t0 < 1.0


# ---- bundled real models ------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_arch(smollm2):
    a = smollm2.arch
    assert smollm2.source.startswith("bundled:") and str(model_cache_dir()) in smollm2.source
    assert (a.model_type, a.n_layers, a.hidden_size, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == \
        ("llama", 30, 576, 9, 3, 64, 49152)
    assert a.layer_types == ("full_attention",) * 30 and a.sliding_window is None
    assert all(abs(r.base - 1e5) / 1e5 < 1e-3 for r in a.rope)
    ids = smollm2.tokenizer("Hello world").input_ids
    assert ids == smollm2.tokenizer("Hello world", add_special_tokens=False).input_ids  # no BOS added
    assert a.bos_source in ("bos_token", "eos_token") and a.bos_id is not None and ids[0] != a.bos_id
    assert smollm2.tokenizer.pad_token is not None
    assert smollm2.dtype == torch.float32 and smollm2.device == torch.device("cpu")
    assert not smollm2.model.training
    json.dumps(a.to_dict())


@pytest.mark.slow
def test_gemma3_arch(gemma3):
    a = gemma3.arch
    assert (a.model_type, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == \
        ("gemma3_text", 18, 4, 1, 256, 262144)
    assert a.layer_types.count("sliding_attention") == 15 and a.layer_types.count("full_attention") == 3
    assert a.sliding_window == 512
    theta = {"sliding_attention": 1e4, "full_attention": 1e6}
    assert [r.layer_type for r in a.rope] == list(a.layer_types)
    assert all(abs(r.base / theta[r.layer_type] - 1) < 1e-3 for r in a.rope)
    assert a.bos_source == "tokenizer"
    assert gemma3.tokenizer.convert_ids_to_tokens(a.bos_id) == "<bos>"
    assert gemma3.tokenizer("Hello").input_ids[0] == a.bos_id


@pytest.mark.slow
def test_qwen2_arch(qwen2):
    a = qwen2.arch
    assert (a.model_type, a.n_layers, a.hidden_size, a.n_heads, a.n_kv_heads, a.head_dim, a.vocab_size) == \
        ("qwen2", 24, 896, 14, 2, 64, 151936)
    assert a.layer_types == ("full_attention",) * 24 and a.sliding_window is None
    assert all(abs(r.base - 1e6) / 1e6 < 1e-3 for r in a.rope)
    assert not qwen2.model.config.tie_word_embeddings  # untied LM head
    assert a.bos_source == "bos_token" and qwen2.tokenizer.convert_ids_to_tokens(a.bos_id) == "<|endoftext|>"
    assert qwen2.tokenizer("Hello world").input_ids[0] != a.bos_id  # the tokenizer adds none itself
    record = json.loads((model_cache_dir() / "qwen2.5-coder-0.5b-instruct" / "dkv_conversion.json").read_text())
    assert record["gguf_sha256"] == BUNDLED["qwen2.5-coder-0.5b-instruct"].sha256


def test_split_gguf_parts_are_checked_before_use(tmp_path, monkeypatch):
    """The parts are concatenated in order and a wrong sha256 is refused (a tiny split 'GGUF')."""
    import importlib.util
    import sys

    for i, chunk in enumerate((b"GGUF-head", b"-middle-", b"tail"), 1):
        pkg = tmp_path / f"dkv_fake_part{i}" / "data"
        pkg.mkdir(parents=True)
        (pkg.parent / "__init__.py").write_text("raise ImportError('parts are never imported')")
        (pkg / f"part0{i}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    import hashlib

    good = hashlib.sha256(b"GGUF-head-middle-tail").hexdigest()
    parts = tuple((f"dkv_fake_part{i}", f"data/part0{i}.bin") for i in range(1, 4))
    spec = BundledModel("fake", "fake==1", "dkv_fake_part1", "fake.gguf", False, "fake", parts=parts, sha256=good)
    out = spec.gguf_path(tmp_path / "work")
    assert out.read_bytes() == b"GGUF-head-middle-tail" and not any(m.startswith("dkv_fake") for m in sys.modules)
    bad = BundledModel("fake", "fake==1", "dkv_fake_part1", "fake.gguf", False, "fake", parts=parts, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="concatenated parts have sha256 .* expected 0000"):
        bad.gguf_path(tmp_path / "work2")
    assert not (tmp_path / "work2" / "fake.gguf").exists()  # a corrupt assembly is never left to be used
    (tmp_path / "dkv_fake_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(FileNotFoundError, match="part files missing"):
        spec.gguf_path(tmp_path / "work3")
    with pytest.raises(ValueError, match="parts need sha256"):
        BundledModel("fake", "fake==1", "m", "f.gguf", False, "fake", parts=parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_second_load_is_fast(name, smollm2, gemma3, qwen2):
    t0 = time.time()
    loaded = load_model(name, device="cpu")
    assert time.time() - t0 < 15
    known = {"smollm2-135m-instruct": smollm2, "gemma-3-270m": gemma3, "qwen2.5-coder-0.5b-instruct": qwen2}
    assert loaded.arch.to_dict() == known[name].arch.to_dict()


def test_anchor_override_replaces_the_policy_and_rejects_multi_token_anchors():
    from lib.kv.models import with_anchor

    tok = tiny_tokenizer(adds_bos=False, bos_token="<bos>", eos_token="<eos>")
    info = arch_info(tiny_llama(), tok)
    a = with_anchor(info, tok, "<eos>")
    assert (a.bos_id, a.bos_source) == (1, "override") and a.n_layers == info.n_layers
    with pytest.raises(ValueError, match=r"anchor '<eos><bos>' tokenizes to 2 tokens"):
        with_anchor(info, tok, "<eos><bos>")
    with pytest.raises(ValueError, match="anchor '' "):
        with_anchor(info, tok, "")


def test_anchor_advice_names_the_sink_anchor_for_qwen2_policy_loads_only():
    from dataclasses import replace
    from lib.kv.models import anchor_advice, with_anchor

    tok = tiny_tokenizer(adds_bos=False, bos_token="<bos>", eos_token="<eos>")
    info = arch_info(tiny_llama(), tok)
    assert info.model_type == "llama" and anchor_advice(info) is None
    qwen = replace(info, model_type="qwen2")
    msg = anchor_advice(qwen)
    assert msg and "<|im_start|>" in msg and f"id {info.bos_id}" in msg and "ANCHOR" in msg
    assert anchor_advice(with_anchor(qwen, tok, "<eos>")) is None  # a chosen anchor is the run's decision


@pytest.mark.slow
def test_load_model_warns_on_qwen_policy_anchor_only():
    from lib.kv.models import load_model

    with pytest.warns(UserWarning, match=r"not this model family's attention sink.*'<\|im_start\|>'"):
        load_model("qwen2.5-coder-0.5b-instruct")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert load_model("qwen2.5-coder-0.5b-instruct", anchor="<|im_start|>").arch.bos_source == "override"


@pytest.mark.slow
def test_anchor_override_on_qwen_encodes_with_the_new_anchor(qwen2):
    """Real model: the override reaches Phase A (the cache's entry 0 is the new anchor's key) and changes the
    bare NLL, and the model's own policy is untouched by it."""
    from lib.kv.encode import build_inputs
    from lib.kv.models import with_anchor

    arch = with_anchor(qwen2.arch, qwen2.tokenizer, "<|im_start|>")
    assert arch.bos_id == qwen2.tokenizer.convert_tokens_to_ids("<|im_start|>") and arch.bos_source == "override"
    assert qwen2.arch.bos_source == "bos_token" and qwen2.arch.bos_id != arch.bos_id
    assert build_inputs(arch, [10, 11]).input_ids == [arch.bos_id, 10, 11]
