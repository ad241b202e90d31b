"""exp12 LatentWire on two tiny random LMs with different (fake) tokenizers and BOS policies: the single-model
path unchanged, budget cuts, byte cap, joint step, exact resume of training and of evaluation (SIGKILL),
bad knobs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib.data.schema import Sample
from lib.studies import latent as lat
from lib.studies.latent import wire as W
from lib.studies.latent import wire_eval as WE
from lib.studies.latent.wire_model import WireConfig, byte_inputs, make_wire_items
from tests.tiny import build

ROOT = Path(__file__).resolve().parents[1]
EOS = 2


class _Enc(list):
    @property
    def input_ids(self):
        return list(self)


class CharTok:
    """One token per character."""
    eos_token_id = EOS
    pad_token_id = EOS

    def __call__(self, s, add_special_tokens=False):
        return SimpleNamespace(input_ids=[3 + ord(c) % 120 for c in s])

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i in (0, 1, EOS)))


class PairTok(CharTok):
    """One token per two characters: another tokenizer, other lengths."""

    def __call__(self, s, add_special_tokens=False):
        return SimpleNamespace(input_ids=[3 + (ord(s[i]) * 7 + (ord(s[i + 1]) if i + 1 < len(s) else 0)) % 120
                                          for i in range(0, len(s), 2)])


def lms():
    a = SimpleNamespace(model=build("llama"), tokenizer=CharTok(), arch=SimpleNamespace(bos_id=1),
                        device=torch.device("cpu"), name="tiny-llama")
    b = SimpleNamespace(model=build("qwen2"), tokenizer=PairTok(), arch=SimpleNamespace(bos_id=None),
                        device=torch.device("cpu"), name="tiny-qwen")
    return [a, b]


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def samples(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (4 + 2 * i,), generator=g)]
        out.append(Sample(f"s{i}", f"which {w[0]}?", " ".join(w) + (" café" if i == 1 else ""), w[-1]))
    return out


def cfg(**kw):
    base = dict(m=4, d_z=32, n_heads=4, adapter_hidden=48, kd_weight=0.5, first_weight=2.0, batch_size=2,
                warmup_steps=1, checkpoint_every=1, lr=1e-3, epochs=1)
    return WireConfig(**{**base, **kw})


def items(models, latent_input="prompt", n=4):
    return [make_wire_items(lm.tokenizer, samples(n), latent_input) for lm in models]


@pytest.fixture(scope="module")
def two():
    return lms()


# ----------------------------------------------------------------------------- (i) the single-model path
def test_single_model_tokens_passage_is_the_old_path(two):
    lm = two[0]
    old_cfg = lat.LatentConfig(**{k: v for k, v in vars(cfg()).items() if k in lat.LatentConfig.__dataclass_fields__})
    old_items = lat.make_items(lm.tokenizer, samples())
    new_items = make_wire_items(lm.tokenizer, samples(), "passage")
    assert [(a.context_ids, a.anchor_ids, a.answer_ids) for a in old_items] == \
        [(b.context_ids, b.anchor_ids, b.answer_ids) for b in new_items]
    torch.manual_seed(old_cfg.seed)
    comp = lat.Compressor(old_cfg, 64, lat.embedding_rms(lm.model))
    wire = W.build([lm], cfg(encoder="tokens", latent_input="passage"))
    assert [torch.equal(a, b) for a, b in zip(comp.parameters(), wire.parameters(), strict=True)] == \
        [True] * len(list(comp.parameters()))   # the same initial weights, in the same order
    old = lat.losses(lm.model, 1, comp, old_items)
    new = W.losses([lm], wire, [new_items])
    for k in ("loss", "ce", "kd", "first_acc"):
        assert torch.equal(old[k].detach(), new[k]), k
    # and whole training runs: identical histories and weights (bitwise)
    a = lat.train(lm, old_items, old_cfg)
    b = W.train([lm], [new_items], cfg(encoder="tokens", latent_input="passage"))
    for ha, hb in zip(a.history, b.history, strict=True):
        assert {k: v for k, v in ha.items() if k != "prefix_norm"} == hb
    assert all(torch.equal(x, y) for x, y in zip(a.comp.parameters(), b.wire.parameters(), strict=True))


def test_k_tokens_restricts_ce_and_kd_to_the_first_k_positions(two):
    lm = two[0]
    its = make_wire_items(lm.tokenizer, samples(), "prompt")
    assert max(len(i.answer_ids) for i in its) > 2
    wire = W.build([lm], cfg(k_tokens=1, first_weight=1.0))
    z = wire.adapters[0](wire.latent(lm, [its])).detach()
    got = W.model_loss(lm.model, 1, z, its, wire.cfg)
    short = [lat.Item(i.sample_id, i.context_ids, i.anchor_ids, i.answer_ids[:1], i.answers) for i in its]
    ref = W.model_loss(lm.model, 1, z, short, cfg(k_tokens=0, first_weight=1.0))
    for k in ("ce", "kd", "loss"):
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- (ii) budget cuts the WHOLE prompt
@pytest.mark.parametrize("latent_input", ["prompt", "passage"])
def test_budget_is_the_whole_prompt_cut_to_m_tokens_of_each_tokenizer(two, latent_input):
    for lm in two:
        its = make_wire_items(lm.tokenizer, samples(), latent_input)
        for m in (1, 3, 7, 10_000):
            pre, anchors = WE.prefixes("budget", lm, its, m=m)
            for p, a, it, s in zip(pre, anchors, its, samples(), strict=True):
                whole = tuple(lm.tokenizer(s.passage).input_ids) + tuple(lm.tokenizer(f"\nQuestion: {s.query}").input_ids)
                assert it.prompt_ids == whole and len(whole) > 7
                assert p == whole[:m] and len(p) == min(m, len(whole))
                assert a == tuple(lm.tokenizer("\nAnswer:").input_ids)
            slot, sa = WE.prefixes("budget_slot", lm, its, m=3)
            assert all(x == it.context_ids[:3] and y == it.anchor_ids for x, y, it in zip(slot, sa, its))
    # the two tokenizers cut at different text lengths: that is the point of per-model budgets
    a = make_wire_items(two[0].tokenizer, samples(), "prompt")[0].prompt_ids
    b = make_wire_items(two[1].tokenizer, samples(), "prompt")[0].prompt_ids
    assert len(a) != len(b)


# ----------------------------------------------------------------------------- (iii) bytes
def test_byte_inputs_cap_and_truncation_flag():
    its = make_wire_items(CharTok(), samples(), "prompt")
    assert "café" in its[1].text and len(its[1].text.encode()) == len(its[1].text) + 1
    ids, mask, cut = byte_inputs(its, 10_000)
    assert cut == [False] * 4 and ids.shape[1] == max(len(i.text.encode()) for i in its)
    for r, it in enumerate(its):
        raw = list(it.text.encode())
        assert ids[r, : len(raw)].tolist() == raw and int(mask[r].sum()) == len(raw)
    short = min(len(i.text.encode()) for i in its)
    ids, mask, cut = byte_inputs(its, short)
    assert ids.shape == (4, short) and bool(mask.all())
    assert cut == [len(i.text.encode()) > short for i in its] and cut.count(False) >= 1 and any(cut)
    assert ids[1].tolist() == list(its[1].text.encode()[:short])


# ----------------------------------------------------------------------------- (iv) the joint step
@pytest.mark.parametrize("encoder", ["bytes", "tokens"])
def test_joint_step_trains_encoder_and_both_adapters_only(two, encoder):
    its = items(two)
    before = [{k: v.clone() for k, v in lm.model.state_dict().items()} for lm in two]
    c = cfg(encoder=encoder, batch_size=4, encoder_source=1)
    init = W.build(two, c)
    res = W.train(two, its, c)
    assert len(res.history) == 1
    for name, p in res.wire.named_parameters():
        assert not torch.equal(p, dict(init.named_parameters())[name]), f"{name} did not move"
    for lm, b in zip(two, before):
        assert all(torch.equal(v, b[k]) for k, v in lm.model.state_dict().items())
        assert not any(p.requires_grad for p in lm.model.parameters())
    h = res.history[0]
    assert {"0/tiny-llama/loss", "1/tiny-qwen/loss"} <= set(h)
    assert h["loss"] == pytest.approx((h["0/tiny-llama/loss"] + h["1/tiny-qwen/loss"]) / 2, rel=1e-6)
    # the per-model backward gives the gradient of the MEAN of the two losses
    w1, w2 = W.build(two, c), W.build(two, c)
    W.losses(two, w1, its, backward=True)
    z = w2.latent(two[1], its)
    tot = sum(W.model_loss(lm.model, lm.arch.bos_id, w2.adapters[j](z), its[j], c)["loss"] for j, lm in enumerate(two)) / 2
    tot.backward()
    for (n1, p1), (_, p2) in zip(w1.named_parameters(), w2.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-6, rtol=1e-5, msg=n1)


@pytest.mark.parametrize("k_tokens", [0, 2])
def test_micro_batches_give_the_batch_losses_and_gradient(k_tokens):
    """Each model's forward and backward over 1 or 3 examples at a time (``losses(micro_batch=...)``) gives the
    whole batch's losses and gradient: exact in float64 (answers of unequal length, KD on, so a micro-batch
    weighted by its own token count instead of the batch's would fail), to rounding in float32."""
    models = lms()
    for lm in models:
        lm.model.double()
    its = [make_wire_items(lm.tokenizer, samples(5), "prompt") for lm in models]
    assert len({len(i.answer_ids) for i in its[0]}) > 1
    c = cfg(encoder="bytes", kd_weight=0.5, k_tokens=k_tokens, batch_size=5)
    results = {}
    for micro in (0, 1, 3):
        torch.manual_seed(0)
        w = W.build(models, c).double()
        out = W.losses(models, w, its, backward=True, micro_batch=micro)
        results[micro] = (out, {n: p.grad.clone() for n, p in w.named_parameters()})
    ref_out, ref_grad = results[0]
    for micro in (1, 3):
        out, grad = results[micro]
        for k in ("loss", "ce", "kd", "nll", "first_acc"):
            torch.testing.assert_close(out[k].double(), ref_out[k].double(), atol=1e-12, rtol=1e-10, msg=f"{micro} {k}")
        for j in range(2):
            for k in ("loss", "ce", "kd", "nll"):
                torch.testing.assert_close(out["per_model"][j][k], ref_out["per_model"][j][k], atol=1e-12, rtol=1e-10)
        for n in ref_grad:
            torch.testing.assert_close(grad[n], ref_grad[n], atol=1e-12, rtol=1e-9, msg=f"{micro} {n}")


def test_micro_batched_training_follows_the_batch_trajectory(two):
    its = items(two)
    c = cfg(encoder="bytes", epochs=2, batch_size=4)
    a = W.train(two, its, c)
    b = W.train(two, its, c, micro_batch=1)
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha.keys() == hb.keys()
        for k in ha:
            assert hb[k] == pytest.approx(ha[k], rel=1e-4, abs=1e-6), k
    with pytest.raises(ValueError, match="micro_batch"):
        W.train(two, its, c, micro_batch=-1)


# ----------------------------------------------------------------------------- (v) exact resume
def test_training_resume_after_interrupt_is_bit_identical(two, tmp_path):
    its = items(two)
    c = cfg(encoder="bytes", epochs=2)
    full = W.train(two, its, c, tmp_path / "a.pt")
    with pytest.raises(W.Interrupted):
        W.train(two, its, c, tmp_path / "b.pt", stop_after=3)
    got = W.train(two, its, c, tmp_path / "b.pt")
    assert got.resumed_from_step == 3 and got.history == full.history
    assert all(torch.equal(x, y) for x, y in zip(full.wire.state_dict().values(), got.wire.state_dict().values()))
    loaded = W.load(tmp_path / "b.pt")
    assert loaded.meta["models"] == ["tiny-llama", "tiny-qwen"] and len(loaded.wire.adapters) == 2
    assert all(torch.equal(x, y) for x, y in zip(full.wire.state_dict().values(), loaded.wire.state_dict().values()))
    with pytest.raises(ValueError, match="another run"):
        W.train(two, its, cfg(encoder="bytes", epochs=3), tmp_path / "b.pt")


CONDS = list(WE.CONDITIONS)


def eval_setup(ckpt):
    models = lms()
    its = items(models, n=5)
    tw = W.load(ckpt) if Path(ckpt).exists() else W.train(models, its, cfg(encoder="bytes"), ckpt)
    return models, its, tw


def run_eval(models, its, tw, out, on_chunk=None):
    store = WE.open_store(out, {"k": 1})
    WE.evaluate(models, [lm.name for lm in models], its, ["text"], store, m=0, chunk=2, max_new_tokens=3)
    WE.evaluate(models, [lm.name for lm in models], its, CONDS[1:], store, tw=tw, m=4, chunk=2, max_new_tokens=3,
                on_chunk=on_chunk)
    return store


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from tests.test_wire import eval_setup, run_eval
models, its, tw = eval_setup({ckpt!r})
run_eval(models, its, tw, {out!r}, on_chunk=lambda key: time.sleep(0.3))
"""


def test_evaluation_sigkilled_resumes_without_losing_or_duplicating_a_row(tmp_path):
    ckpt = tmp_path / "w.pt"
    models, its, tw = eval_setup(ckpt)
    ref = run_eval(models, its, tw, tmp_path / "ref")
    n_chunks = 3  # 5 examples, chunk 2
    assert len(ref) == 2 * n_chunks + 2 * len(CONDS[1:]) * n_chunks + n_chunks  # text, per-M, joint
    p = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT), ckpt=str(ckpt), out=str(tmp_path / "b"))],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    items_file = tmp_path / "b" / "items.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:  # kill in the middle of the per-M conditions
        if items_file.exists() and len(items_file.read_text().splitlines()) >= 2 * n_chunks + 3:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    partial = len(WE.open_store(tmp_path / "b", {"k": 1}))
    assert 2 * n_chunks + 3 <= partial < len(ref)
    got = run_eval(models, its, tw, tmp_path / "b")
    assert len(got) == len(ref)
    key = lambda r: (r["model"], r["condition"], r["m"], r["chunk"])  # noqa: E731
    assert json.dumps(sorted(got.rows(), key=key)) == json.dumps(sorted(ref.rows(), key=key))
    rows = WE.rows(got)
    assert len({(r["model"], r["condition"], r["m"], r["sample_id"]) for r in rows}) == len(rows)
    # summaries and verdicts from the rows
    for name in ("tiny-llama", "tiny-qwen"):
        summ = lat.evaluation.summarize(WE.rows(got, name), d_model=64)
        assert {s["condition"] for s in summ} == set(CONDS) and all(s["n"] == 5 for s in summ)
        v = WE.verdicts(summ)
        assert len(v) == 1 and set(v[0]["checks"]) == set(WE.CRITERIA)
        assert "M=4" in WE.verdict_lines(name, v)[0]
    joint = WE.summarize_joint(WE.rows(got, WE.JOINT), ["tiny-llama", "tiny-qwen"])
    assert joint[0]["n"] == 5 and joint[0]["picked_tiny-llama"] + joint[0]["picked_tiny-qwen"] == pytest.approx(1)
    assert joint[0]["f1"] <= joint[0]["oracle_f1"] + 1e-12


def test_joint_rescoring_picks_the_lowest_summed_per_token_nll(two, tmp_path):
    its = items(two, n=3)
    tw = W.train(two, its, cfg(encoder="bytes", batch_size=3))
    store = WE.open_store(tmp_path, {"k": 2})
    WE.evaluate(two, ["a", "b"], its, ["latent"], store, tw=tw, m=4, chunk=3, max_new_tokens=3)
    lat_all = WE.latents(tw, two, its, 3)
    for r in WE.rows(store, WE.JOINT):
        i = [it.sample_id for it in its[0]].index(r["sample_id"])
        cands = [next(x["pred"] for x in WE.rows(store, nm) if x["sample_id"] == r["sample_id"]) for nm in ("a", "b")]
        expect = []
        for c in cands:  # one candidate at a time, alone: the sum over models of its mean per-token NLL
            tot = 0.0
            for j, lm in enumerate(two):
                ids = WE._candidate_ids(lm.tokenizer, c, EOS)
                b = lat.assemble(lm.model, lm.arch.bos_id, [lat_all[j][i]], [its[j][i].anchor_ids], [ids])
                with torch.no_grad():
                    tot += float(torch.nn.functional.cross_entropy(lat.answer_logits(lm.model, b), b.targets))
            expect.append(tot)
        assert r["scores"] == pytest.approx(expect, rel=1e-5, abs=1e-5)
        assert r["pred"] == cands[min(range(2), key=lambda k: (expect[k], k))]


# ----------------------------------------------------------------------------- (vi) bad knobs
def test_bad_knobs_raise_naming_the_value(two):
    with pytest.raises(ValueError, match="encoder 'nope' unknown"):
        cfg(encoder="nope")
    with pytest.raises(ValueError, match="latent_input 'question' unknown"):
        cfg(latent_input="question")
    with pytest.raises(ValueError, match="m must be a positive int, got 0"):
        cfg(m=0)
    with pytest.raises(ValueError, match="byte_max must be an int >= 1, got 0"):
        cfg(byte_max=0)
    with pytest.raises(ValueError, match="models list is empty"):
        W.build([], cfg())
    with pytest.raises(ValueError, match="models list is empty"):
        W.train([], [], cfg())
    with pytest.raises(ValueError, match="encoder_source 2"):
        W.build(two, cfg(encoder_source=2))
    with pytest.raises(ValueError, match="enc_layer=1 needs encoder 'tokens'"):
        cfg(encoder="bytes", enc_layer=1)
    with pytest.raises(ValueError, match="different samples"):
        W.train(two, [items(two)[0], items(two, n=3)[1]], cfg())
    with pytest.raises(ValueError, match="unknown condition 'nope'"):
        WE.prefixes("nope", two[0], [])
    with pytest.raises(ValueError, match="latent_input 'x' unknown"):
        make_wire_items(CharTok(), samples(), "x")
    from lib.studies.latent.wire_model import parse_models, source_index
    assert parse_models(" a, b ,") == ["a", "b"] and source_index("", ["a", "b"]) == 0 and source_index("b", ["a", "b"]) == 1
    with pytest.raises(ValueError, match="models list is empty"):
        parse_models(" , ")
    with pytest.raises(ValueError, match="repeat"):
        parse_models("a,a")
    with pytest.raises(ValueError, match="encoder model 'c' is not in the models list"):
        source_index("c", ["a", "b"])


def test_parse_anchors_one_entry_per_model_or_none():
    from lib.studies.latent.wire_model import parse_anchors
    assert parse_anchors("", ["a", "b"]) == [None, None] and parse_anchors(None, ["a"]) == [None]
    assert parse_anchors(",<|im_start|>", ["a", "b"]) == [None, "<|im_start|>"]
    assert parse_anchors(" <|endoftext|> , ", ["a", "b"]) == ["<|endoftext|>", None]
    with pytest.raises(ValueError, match=r"ANCHORS='<\|im_start\|>' has 1 entries for 2 models"):
        parse_anchors("<|im_start|>", ["a", "b"])


# ----------------------------------------------------------------------------- the bundled models
@pytest.mark.slow
def test_bundled_smollm2_and_qwen_train_one_step_and_evaluate(tmp_path):
    """Both bundled models (different tokenizers and BOS ids) through one joint step and every condition."""
    from lib.data import load_samples
    from tests.real_env import load

    models = [load("smollm2-135m-instruct"), load("qwen2.5-coder-0.5b-instruct")]
    names = [lm.name for lm in models]
    data = load_samples("synthetic", 2, seed=0, max_passage_words=90)
    its = [make_wire_items(lm.tokenizer, data.samples, "prompt") for lm in models]
    assert its[0][0].text == its[1][0].text and its[0][0].prompt_ids != its[1][0].prompt_ids
    before = [next(lm.model.parameters()).detach().clone() for lm in models]
    tw = W.train(models, its, cfg(encoder="bytes", batch_size=2, adapter_hidden=32), tmp_path / "w.pt")
    assert len(tw.history) == 1 and all(torch.isfinite(torch.tensor(v)) for k, v in tw.history[0].items()
                                         if k.endswith("loss"))
    assert all(torch.equal(b, next(lm.model.parameters())) for b, lm in zip(before, models))
    store = WE.open_store(tmp_path / "e", {"k": 1})
    WE.evaluate(models, names, its, list(WE.CONDITIONS), store, tw=tw, m=4, chunk=2, max_new_tokens=3)
    for n, lm, x in zip(names, models, its):
        rows = {(r["condition"], r["sample_id"]): r for r in WE.rows(store, n)}
        for it in x:
            assert rows[("budget", it.sample_id)]["prefix_len"] == 4 == rows[("latent", it.sample_id)]["prefix_len"]
            assert rows[("text", it.sample_id)]["nll_sum"] > 0
    assert len(WE.rows(store, WE.JOINT)) == 2
