"""Encoder-decoder path: masking == removal, decoder path == the model's own forward, batching, specials."""
import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from lib.studies import encdec

V = 128


def _tiny(family):
    torch.manual_seed(0)
    if family == "t5":
        m = T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
        m.set_attn_implementation("eager")
        return encdec.EncDecLM(m.eval(), None, "t5", "tiny-t5", None, 1, 0, 0)
    if family == "t5gemma2":  # merged decoder attention over [decoder tokens; encoder states]
        import transformers as tf

        sub = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                   max_position_embeddings=256)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
        enc = tf.T5Gemma2EncoderConfig(text_config=sub, vision_config=vision, mm_tokens_per_image=4, boi_token_index=V - 3,
                                       eoi_token_index=V - 2, image_token_index=V - 1)
        m = tf.T5Gemma2ForConditionalGeneration(tf.T5Gemma2Config(encoder=enc, decoder=tf.T5Gemma2DecoderConfig(**sub),
                                                                  eoi_token_index=V - 2, image_token_index=V - 1))
        m.set_attn_implementation("eager")
        return encdec.EncDecLM(m.eval(), None, "t5gemma", "tiny-t5gemma2", 2, 1, 2, 0)
    if family == "t5gemma":
        import transformers as tf

        sub = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                   max_position_embeddings=256)
        m = tf.T5GemmaForConditionalGeneration(tf.T5GemmaConfig(encoder=tf.T5GemmaModuleConfig(**sub), decoder=tf.T5GemmaModuleConfig(**sub),
                                                                vocab_size=V, bos_token_id=2, eos_token_id=1, pad_token_id=0))
        m.set_attn_implementation("eager")
        return encdec.EncDecLM(m.eval(), None, "t5gemma", "tiny-t5gemma", 2, 1, 2, 0)
    m = BartForConditionalGeneration(BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                                decoder_ffn_dim=64, max_position_embeddings=128))
    m.set_attn_implementation("eager")
    return encdec.EncDecLM(m.eval(), None, "bart", "tiny-bart", 0, 2, 2, 1)


def _ids(n, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(3, V, (n,), generator=g).tolist())


FAMS = ("t5", "bart", "t5gemma", "t5gemma2")


@pytest.mark.parametrize("family", FAMS)
def test_special_tokens_are_explicit(family):
    em = _tiny(family)
    ids, seg = encdec.encoder_inputs(em, [7, 8], [9, 10, 11])
    if family == "t5":
        assert ids == [7, 8, 9, 10, 11, 1] and seg == [1, 1, 2, 2, 2, 0]
    elif family == "bart":
        assert ids == [0, 7, 8, 9, 10, 11, 2] and seg == [0, 1, 1, 2, 2, 2, 0]
    else:
        assert ids == [2, 7, 8, 9, 10, 11, 1] and seg == [0, 1, 1, 2, 2, 2, 0]
    with pytest.raises(ValueError, match="empty document"):
        encdec.encoder_inputs(em, [7], [])


@pytest.mark.parametrize("family", FAMS)
def test_masking_the_prefix_equals_removing_it_from_the_encoder_output(family):
    em = _tiny(family)
    prefix, doc, q, a = _ids(5, 1), _ids(12, 2), _ids(4, 3), _ids(3, 4)
    (h, seg), = encdec.encode_many(em, [(prefix, doc)])
    keep = [i for i, g in enumerate(seg) if g != 1]
    masked, _ = encdec._decoder_batch(em, [h], [torch.tensor([0 if g == 1 else 1 for g in seg])], [q], [a])
    removed, _ = encdec._decoder_batch(em, [h[keep]], [torch.ones(len(keep), dtype=torch.long)], [q], [a])
    assert torch.allclose(masked[0], removed[0], atol=1e-6)
    visible, _ = encdec._decoder_batch(em, [h], [torch.ones(len(seg), dtype=torch.long)], [q], [a])
    assert not torch.allclose(masked[0], visible[0], atol=1e-4)  # the mask does hide something


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("with_query", [True, False])
def test_decoder_path_equals_a_full_forward_pass(family, with_query):
    em = _tiny(family)
    prefix, doc, q, a = _ids(4, 5), _ids(10, 6), (_ids(3, 7) if with_query else ()), _ids(4, 8)
    ids, _ = encdec.encoder_inputs(em, prefix, doc)
    rows = encdec.score_items(em, [encdec.Item("s", "c", prefix, doc, False, q, a)])
    labels = torch.tensor([list(q) + list(a)])
    with torch.no_grad():  # the model builds decoder inputs by shifting the labels right itself
        logits = em.model(input_ids=torch.tensor([ids]), labels=labels).logits[0].float()
    ref = torch.nn.functional.cross_entropy(logits[len(q):], torch.tensor(a), reduction="none")
    assert torch.allclose(torch.tensor(rows[0]["token_nlls"]), ref, atol=1e-5)


@pytest.mark.parametrize("family", FAMS)
def test_batched_equals_one_by_one_and_probe(family):
    em = _tiny(family)
    items = [encdec.Item(f"s{i}", c, _ids(2 + i, 10 + i) if c != "bare" else (), _ids(8 + 3 * i, 20 + i), c == "oracle",
                         _ids(i, 30 + i), _ids(1 + i, 40 + i)) for i in range(3) for c in ("bare", "oracle", "full")]
    batched = encdec.score_items(em, items, batch_size=16, attn_probe=True)
    single = [encdec.score_items(em, [it], batch_size=1)[0] for it in items]
    merged = family == "t5gemma2"
    for b, s in zip(batched, single):
        assert max(abs(x - y) for x, y in zip(b["token_nlls"], s["token_nlls"])) < 1e-5
        assert ("cross_attn_share" in b) is not merged and ("cross_weight_share" in b) is merged
        if not merged:
            assert 0 < b["cross_attn_share"] < 1
        else:
            assert 0 < b["cross_weight_share"] < 1 and 0 <= b["query_weight_share"] < 1
