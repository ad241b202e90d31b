"""exp12 latent prefixes on a tiny random Llama: layout, loss, KD alignment, padding, decoding, checkpoints."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib.studies import latent as lat
from lib.studies.latent import evaluation as ev
from lib.data import squad
from tiny import build

BOS, EOS = 1, 2
D = 64


class FakeTok:
    eos_token_id = EOS
    pad_token_id = EOS  # EOS doubles as PAD, as in SmolLM2 and Llama 3

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (BOS, EOS)))


@pytest.fixture(scope="module")
def lm():
    model = build("llama")
    return SimpleNamespace(model=model, tokenizer=FakeTok(), arch=SimpleNamespace(bos_id=BOS), device=torch.device("cpu"),
                           name="tiny-llama")


def _items(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi, k: torch.randint(lo, hi, (k,), generator=g).tolist()  # noqa: E731
    out = []
    for i in range(n):
        ctx = r(3, 128, 6 + 3 * i)
        ans = r(3, 128, 1 + i % 3) + [EOS]
        out.append(lat.Item(f"s{i}", tuple(ctx), tuple(r(3, 128, 3 + i % 2)), tuple(ans), (f"w{ans[0]}",), 10 * len(ctx)))
    return out


def _cfg(**kw):
    base = dict(m=4, d_z=32, n_heads=4, adapter_hidden=48, kd_weight=0.0, first_weight=1.0, batch_size=2,
                warmup_steps=1, checkpoint_every=1, lr=1e-3)
    return lat.LatentConfig(**{**base, **kw})


def _comp(lm, cfg):
    torch.manual_seed(1)
    return lat.Compressor(cfg, D, lat.embedding_rms(lm.model))


def test_teacher_forced_logits_equal_step_by_step_decoding(lm):
    items = _items(3)
    comp = _comp(lm, _cfg())
    with torch.no_grad():
        z = lat.encode(lm.model, BOS, comp, items)
    pre = [z[0], items[1].context_ids, items[2].context_ids[:2]]  # soft, full text, budget: one layout
    anchors, answers = [it.anchor_ids for it in items], [it.answer_ids for it in items]
    with torch.no_grad():
        b = lat.assemble(lm.model, BOS, pre, anchors, answers)
        tf = lat.answer_logits(lm.model, b)
    L = max(map(len, answers))
    forced = [list(a) + [EOS] * (L - len(a)) for a in answers]
    _, steps = lat.greedy(lm.model, BOS, EOS, pre, anchors, L, forced=forced)
    assert len(steps) == L
    for k in range(len(b.targets)):
        i, t = int(b.rows[k]), int(b.cols[k]) - b.prompt_lengths[int(b.rows[k])] + 1
        torch.testing.assert_close(tf[k], steps[t][i], atol=1e-4, rtol=1e-4)


def test_ce_equals_mean_answer_nll_single_shift(lm):
    """The CE (first_weight 1) equals HF's own shifted-label loss over answer tokens (EOS included)."""
    items = _items(3)
    comp = _comp(lm, _cfg())
    with torch.no_grad():
        ce = lat.losses(lm.model, BOS, comp, items)["ce"]
        z = lat.encode(lm.model, BOS, comp, items)
    tot, n = 0.0, 0
    for zi, it in zip(z, items):
        x = torch.cat([lat.embed(lm.model, [BOS]), zi, lat.embed(lm.model, it.anchor_ids + it.answer_ids)])[None]
        labels = torch.full((1, x.shape[1]), -100)
        labels[0, -len(it.answer_ids):] = torch.tensor(it.answer_ids)
        with torch.no_grad():
            loss = lm.model(inputs_embeds=x, labels=labels).loss  # HF shifts once, internally
        tot, n = tot + float(loss) * len(it.answer_ids), n + len(it.answer_ids)
    assert float(ce) == pytest.approx(tot / n, rel=1e-5)
    with torch.no_grad():  # the first-token weight changes the value (so it is applied)
        ce3 = lat.losses(lm.model, BOS, lat.Compressor(_cfg(first_weight=3.0), D, comp.target_rms).eval(), items)["ce"]
    assert float(ce3) != pytest.approx(float(ce), rel=1e-3)


def test_eos_is_supervised_and_pad_positions_change_nothing(lm):
    items = _items(4)
    pre = [it.context_ids for it in items]
    anchors, answers = [it.anchor_ids for it in items], [it.answer_ids for it in items]
    with torch.no_grad():
        b = lat.assemble(lm.model, BOS, pre, anchors, answers)
        batched = lat.answer_logits(lm.model, b)
        assert int((b.targets == EOS).sum()) == len(items)  # EOS (== PAD id) is a target in every row
        assert len(b.targets) == sum(map(len, answers))
        b.inputs_embeds[b.attention_mask == 0] = torch.randn_like(b.inputs_embeds[b.attention_mask == 0]) * 5
        noisy = lat.answer_logits(lm.model, b)
        single = torch.cat([lat.answer_logits(lm.model, lat.assemble(lm.model, BOS, [p], [a], [s]))
                            for p, a, s in zip(pre, anchors, answers)])
    assert (b.attention_mask == 0).any()
    torch.testing.assert_close(noisy, batched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    toks_b, _ = lat.greedy(lm.model, BOS, EOS, pre, anchors, 5)
    toks_s = [lat.greedy(lm.model, BOS, EOS, [p], [a], 5)[0][0] for p, a in zip(pre, anchors)]
    assert toks_b == toks_s
    assert all(1 <= len(t) <= 5 for t in toks_b)


def test_kd_positions_line_up_with_the_teacher(lm, monkeypatch):
    items = _items(3)
    anchors, answers = [it.anchor_ids for it in items], [it.answer_ids for it in items]
    with torch.no_grad():
        tb = lat.assemble(lm.model, BOS, [it.context_ids for it in items], anchors, answers)
        teacher = lat.answer_logits(lm.model, tb)
        for i, it in enumerate(items):  # the teacher's gathered logits are the plain forward's at L-1+t
            ids = [BOS, *it.context_ids, *it.anchor_ids, *it.answer_ids]
            full = lm.model(input_ids=torch.tensor([ids])).logits[0]
            L = 1 + len(it.context_ids) + len(it.anchor_ids)
            torch.testing.assert_close(teacher[tb.rows == i], full[L - 1:L - 1 + len(it.answer_ids)], atol=1e-4, rtol=1e-4)
    # a student whose prefix IS the passage embeddings matches the teacher: KD 0, CE = teacher NLL
    monkeypatch.setattr(lat, "encode", lambda model, bos, comp, its: [lat.embed(model, it.context_ids).float() for it in its])
    comp = _comp(lm, _cfg(kd_weight=1.0))
    with torch.no_grad():
        out = lat.losses(lm.model, BOS, comp, items)
    assert float(out["kd"]) == pytest.approx(0.0, abs=1e-6)
    t_nll = torch.nn.functional.cross_entropy(teacher, tb.targets)
    assert float(out["ce"]) == pytest.approx(float(t_nll), rel=1e-5)
    # and a one-token misalignment would show: teacher logits shifted by one position differ
    assert not torch.allclose(teacher[1:], teacher[:-1], atol=1e-3)


def test_calibration_and_only_encoder_adapter_train(lm):
    comp = _comp(lm, _cfg())
    items = _items(2)
    z = lat.encode(lm.model, BOS, comp, items)
    rms = z.pow(2).mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, comp.target_rms), atol=1e-5, rtol=1e-5)
    res = lat.train(lm, _items(4), _cfg(epochs=1))
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert len(res.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)


def test_checkpoint_resume_and_load_evaluate_round_trip(lm, tmp_path):
    items = _items(4)
    cfg = _cfg(epochs=2, kd_weight=0.5)
    full = lat.train(lm, items, cfg, tmp_path / "a.ckpt.pt")
    ck = tmp_path / "b.ckpt.pt"
    with pytest.raises(lat.Interrupted):
        lat.train(lm, items, cfg, ck, stop_after=2)
    resumed = lat.train(lm, items, cfg, ck)
    assert resumed.resumed_from_step == 2
    for a, b in zip(full.comp.state_dict().values(), resumed.comp.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="another run"):
        lat.train(lm, items, _cfg(epochs=3), ck)
    loaded = lat.load(ck)
    assert loaded.meta["config"]["m"] == 4 and loaded.meta["eos_id"] == EOS
    conds = ["latent", "latent_other", "latent_zero", "budget"]
    r1 = ev.evaluate(lm, items, conds, comp=resumed.comp, m=4, max_new_tokens=4, batch_size=3)
    r2 = ev.evaluate(lm, items, conds, comp=loaded.comp, m=4, max_new_tokens=4, batch_size=3)
    assert json.dumps(r1) == json.dumps(r2)


def test_evaluate_conditions_replay_matches_text(lm):
    items = _items(4)
    comp = _comp(lm, _cfg())
    rows = ev.evaluate(lm, items, list(lat.CONDITIONS), comp=comp, m=4, max_new_tokens=3, batch_size=3)
    by = {(r["sample_id"], r["condition"]): r for r in rows}
    for it in items:
        t, r = by[(it.sample_id, "text")], by[(it.sample_id, "replay")]
        assert r["pred"] == t["pred"] and r["first_rank"] == t["first_rank"]
        assert r["nll_sum"] == pytest.approx(t["nll_sum"], rel=1e-5)
        assert by[(it.sample_id, "budget")]["prefix_len"] == min(4, len(it.context_ids))
        assert by[(it.sample_id, "latent")]["prefix_len"] == 4
    lat_nll = [by[(it.sample_id, "latent")]["nll_sum"] for it in items]
    oth_nll = [by[(it.sample_id, "latent_other")]["nll_sum"] for it in items]
    with torch.no_grad():
        z1 = lat.encode(lm.model, BOS, comp, items[1:2])[0]
    assert oth_nll[0] == pytest.approx(  # latent_other of item 0 is item 1's latent
        float(torch.nn.functional.cross_entropy(lat.answer_logits(lm.model, lat.assemble(
            lm.model, BOS, [z1], [items[0].anchor_ids], [items[0].answer_ids])).detach(),
            torch.tensor(items[0].answer_ids), reduction="sum")), rel=1e-5)
    assert lat_nll != oth_nll
    summ = ev.summarize(rows, d_model=D)
    s = {x["condition"]: x for x in summ}
    assert s["latent"]["compression_tokens"] == pytest.approx(sum(len(i.context_ids) for i in items) / 4 / 4)
    assert s["latent"]["prefix_bytes_mean"] == 4 * D * 2
    assert s["text"]["nll_per_token"] == pytest.approx(s["replay"]["nll_per_token"], rel=1e-5)


def test_squad_metrics():
    assert squad.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert squad.exact_match("the Normans", ["Normans", "x"]) == 1.0
    assert squad.f1_score("x y y", ["y y z"]) == pytest.approx(2 / 3)  # token counts: overlap 2 of 3 each
    assert squad.f1_score("a y y", ["y y z"]) == pytest.approx(0.8)  # the article is dropped before counting
    assert squad.f1_score("b", ["b b c"]) == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert squad.f1_score("nothing", ["x", "nothing here"]) == pytest.approx(2 / 3)
    assert squad.f1_score("", ["b"]) == 0.0
    assert squad.f1_score("the", ["a"]) == 1.0  # both normalize to nothing (official script)
    with pytest.raises(ValueError, match="reference"):
        squad.f1_score("x", [])


def test_squad_v1_loader_local_file():
    path = Path(__file__).parent / "data" / "squad_v1.1_sample.jsonl"
    d = squad.load_squad_v1(3, split="train", source=str(path))
    assert [s.id for s in d.samples] == ["v0", "v1", "v3"]
    assert d.samples[0].answers == ("Normandy", "France")
    assert d.skip_counts() == {"empty_passage": 1}
    with pytest.raises(ValueError, match="split"):
        squad.load_squad_v1(1, split="dev", source=str(path))
    with pytest.raises(ValueError, match="found 3 eligible"):
        squad.load_squad_v1(5, split="train", source=str(path))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        lat.LatentConfig(m=4, d_z=30, n_heads=4)
    with pytest.raises(ValueError, match="m must be a positive int"):
        lat.LatentConfig(m=0)
    with pytest.raises(ValueError, match="answer_ids is empty"):
        lat.Item("x", (3,), (4,), (), ("a",))
    with pytest.raises(ValueError, match="query"):
        lat.make_items(FakeTok(), [], anchor="Answer:")
    with pytest.raises(ValueError, match="unknown condition"):
        ev.prefixes("nope", None, BOS, [])


def test_curves_legend_sits_outside_every_axes():
    """exp12's curves: one legend beside the panels, clear of the text/replay reference lines."""
    summary = [{"condition": c, "m": m, "f1": 0.1 * i, "nll_per_token": 5.0 - i, "first_tok_at1": 0.2}
               for i, c in enumerate(lat.CONDITIONS) for m in ((0,) if c in ("text", "replay") else (4, 16))]
    fig = ev._curves_figure(summary, "exp12 smollm2-135m-instruct synthetic train=400 eval=24")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    (leg,) = fig.legends
    assert [t.get_text() for t in leg.get_texts()] == list(lat.CONDITIONS)
    assert all(ax.get_legend() is None for ax in fig.axes)
    lb = leg.get_window_extent(r)
    assert not any(lb.overlaps(ax.get_window_extent(r)) for ax in fig.axes)
    assert fig.bbox.x0 <= lb.x0 and lb.x1 <= fig.bbox.x1 and fig.bbox.y0 <= lb.y0 and lb.y1 <= fig.bbox.y1


def test_exp12_article_splits_of_the_offline_squad_copy(tmp_path):
    import json

    from test_registry import _squad_doc

    from lib.studies.latent import evaluation as ev

    f = tmp_path / "squad.json"
    f.write_text(json.dumps(_squad_doc(n_articles=5, n_pars=2, n_q=3)))
    tr, te = ev.load_splits("squad_v1.1", 8, 4, train_split="articles", eval_split="articles", seed=1, source=str(f))
    assert (len(tr.samples), len(te.samples)) == (8, 4)
    assert not {s.meta["article"] for s in tr.samples} & {s.meta["article"] for s in te.samples}
    with pytest.raises(ValueError, match="articles"):
        ev.load_splits("synthetic", 8, 4, train_split="articles", eval_split="articles")

