"""exp08 reachability kernels on tiny random models: the residual read-out, the optimizer path,
batched restarts == one-by-one restarts, target constructions, summaries and the interpretation."""
import math

import numpy as np
import pytest
import torch

from lib.studies import reachability as R
from lib.studies.reachability import report as RR
from tests.tiny import VOCAB, build


@pytest.fixture(scope="module")
def llama():
    return R.ResidualReader(build("llama"))


def _ids(n, t=8, seed=0):
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["llama", "neox", "gemma3"])
def test_norm_check_detects_final_norm_and_pre_norm_reads_its_input(kind):
    model = build(kind)
    reader = R.ResidualReader(model)
    info = reader.norm_check(_ids(2))
    assert info["hidden_states_includes_final_norm"] is True and info["target_includes_final_norm"] is True
    assert info["max_abs_diff_to_norm_output"] <= 1e-6 < info["max_abs_diff_to_norm_input"]
    pre = R.ResidualReader(model, "pre_norm")
    ids = _ids(2)
    with torch.no_grad():
        out = model.base_model(input_ids=ids, output_hidden_states=True)
        final_norm = getattr(model.base_model, info["final_norm_module"])
        torch.testing.assert_close(final_norm(pre.of_ids(ids)), out.hidden_states[-1])
        torch.testing.assert_close(reader.of_ids(ids), out.last_hidden_state)  # embeds path == ids path
    assert pre.norm_check(ids)["target_includes_final_norm"] is False


def test_optimizing_toward_a_real_target_drives_loss_far_below_initial(llama):
    target = llama.of_ids(_ids(2))
    fit = R.optimize(llama, target, restarts=2, steps=150, lr=0.05)
    s = RR.summarize(fit, reach_frac=0.01)
    assert fit.curves.shape == (4, 151) and s["n_targets"] == 2
    assert np.all(fit.final_mse < 1e-2 * fit.curves[:, 0]), fit.final_mse / fit.curves[:, 0]
    assert s["share_reached"] == 1.0
    assert min(s["cosine_by_position"]["mean"]) > 0.99


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_restarts_equal_one_by_one(dtype):
    reader = R.ResidualReader(build("llama").to(dtype))
    targets = reader.of_ids(_ids(3, seed=1)) + 0.1 * torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(2))
    kw = dict(restarts=2, steps=25, lr=0.02, seed=7)
    batched = R.optimize(reader, targets, chunk=64, **kw)
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for i in range(3):
        single = R.optimize(reader, targets[i:i + 1], chunk=1, **{**kw, "seed": 7 + i})
        np.testing.assert_allclose(batched.curves[2 * i:2 * i + 2], single.curves, rtol=tol, atol=tol)
        torch.testing.assert_close(batched.prompts[2 * i:2 * i + 2], single.prompts, rtol=tol, atol=tol)
    # one prompt per forward (chunk=1) gives the same as all six in one forward
    chunked = R.optimize(reader, targets, chunk=1, **kw)
    np.testing.assert_allclose(chunked.final_mse, batched.final_mse, rtol=tol, atol=tol)


def test_extension_rule_extends_falling_curves_and_not_flat_ones(llama):
    target = llama.of_ids(_ids(1))
    fit = R.optimize(llama, target, restarts=1, steps=10, max_steps=14, lr=0.05)
    assert fit.extension["still_falling"] and fit.steps == 14 and fit.curves.shape[1] == 15
    slow = R.optimize(llama, target, restarts=1, steps=10, max_steps=14, lr=0.01, rule=R.ExtendRule(0.1, 0.05))
    assert not slow.extension["still_falling"] and slow.steps == slow.extension["steps_run"] == 10
    assert slow.curves.shape[1] == 11
    flat = R.ExtendRule(0.1, 0.01).decide(np.ones((3, 11)), np.zeros(3, bool))
    assert flat["still_falling"] is False and flat["median_relative_drop"] == 0.0
    reached = R.ExtendRule(0.1, 0.01).decide(np.linspace(1, 0.001, 11)[None].repeat(3, 0), np.ones(3, bool))
    assert reached["still_falling"] is False


def test_targets_have_the_designed_statistics():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4000, 3, 5, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + 7.0
    stats = R.RealStats.fit(real)
    a = R.matched_gaussian(stats, 4000, seed=1)
    torch.testing.assert_close(a.mean(0), stats.mu, atol=0.3, rtol=0)
    torch.testing.assert_close(a.std(0), real.std(0), atol=0.25, rtol=0.05)
    b = R.raw_gaussian(stats, 10, seed=2)
    torch.testing.assert_close(b.norm(dim=-1), stats.norms.expand(10, 3))
    A, B = real[:2], real[2:4]
    mix = R.interpolate(A, B, [0.0, 1.0, 2.0]).reshape(2, 3, 3, 5)
    torch.testing.assert_close(mix[:, 0], B)
    torch.testing.assert_close(mix[:, 1], A)
    torch.testing.assert_close(mix[:, 2], 2 * A - B)
    rep, counts = R.replace_dims(real[:2], [0.0, 0.4, 1.0], stats.dim_std, seed=3)
    assert counts == [0, 2, 5] * 2
    changed = (rep.reshape(2, 3, 3, 5) != real[:2, None]).all(dim=2)   # [n, f, d]: same dims at all positions
    assert changed.sum(-1).tolist() == [[0, 2, 5], [0, 2, 5]]
    assert bool((changed[:, 1] <= changed[:, 2]).all())                 # nested across fractions


def test_bad_input_raises_value_error_naming_the_value(llama):
    with pytest.raises(ValueError, match="'middle'"):
        R.ResidualReader(build("llama"), "middle")
    with pytest.raises(ValueError, match="1.5"):
        R.replace_dims(torch.zeros(1, 2, 3), [1.5], torch.ones(3), 0)
    with pytest.raises(ValueError, match="pairs=3"):
        R.choose_pairs(5, 3, 0)
    with pytest.raises(ValueError, match="ALPHAS='a,b'"):
        R.parse_floats("a,b", "ALPHAS")
    with pytest.raises(ValueError, match="max_steps=5"):
        R.optimize(llama, torch.zeros(1, 4, 64), restarts=1, steps=10, max_steps=5)
    with pytest.raises(ValueError, match="'nope.csv'"):
        R.load_texts("nope.csv", 3)


def test_load_texts_recorded_names_the_file_and_the_texts(tmp_path):
    """A results.json says which texts exp08 read: the source, the file's sha256 and a hash of the texts used,
    which changes when the texts do."""
    import hashlib

    f = tmp_path / "prose.txt"
    f.write_text("first line\n\nsecond line\nthird line\n")
    texts, data = R.load_texts_recorded(str(f), 2)
    assert texts == ["first line", "second line"] == R.load_texts(str(f), 2)
    assert data["name"] == str(f) and data["n_texts"] == 2
    assert data["provenance"] == {"local": str(f), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    assert data["content_sha256"] != R.load_texts_recorded(str(f), 3)[1]["content_sha256"]
    syn = R.load_texts_recorded("synthetic", 3, seed=1)[1]
    assert syn["provenance"]["synthetic"] and syn["provenance"]["seed"] == 1


def test_token_windows_are_distinct_and_counted():
    class Tok:
        def __call__(self, text):
            return {"input_ids": [ord(c) for c in text]}
    ids, st = R.token_windows(Tok(), ["abcdefgh", "abcdxyzw", "ab"], 4, 3, per_text=2)
    assert ids.tolist() == [[97, 98, 99, 100], [101, 102, 103, 104], [120, 121, 122, 119]]
    assert st == {"texts_read": 2, "too_short": 0, "duplicates": 1}
    with pytest.raises(ValueError, match="n=9"):
        R.token_windows(Tok(), ["abcdefgh"], 4, 9)


def _summary(rel_by_label: dict, n_per: int = 2) -> dict:
    labels, final, init = [], [], []
    for lab, rel in rel_by_label.items():
        labels += [lab] * n_per
        final += [rel] * n_per
        init += [1.0] * n_per
    fit = R.Fit(1, np.stack([np.array(init), np.array(final)], 1), np.array(final), np.ones((len(final), 2)), 1)
    return RR.summarize(fit, labels=labels, reach_frac=0.01)


def test_interpretation_rows_follow_the_measured_numbers():
    parts = {"1": _summary({0: 1e-3}), "2a": _summary({0: 2e-3}), "2b": _summary({0: 0.5}),
             "3": _summary({0.0: 1e-3, 0.5: 1.5e-3, 1.0: 1e-3, 2.0: 0.2}),
             "4": _summary({0.0: 1e-3, 0.1: 1.2e-3, 0.2: 0.3, 0.3: 0.4})}
    rows = {r["observation"].split(" (")[0]: r["holds"] for r in RR.interpret(parts)}
    assert rows == {"Exp 1 all converge to ~0": True, "Exp 1 some don't converge": False, "Exp 2a ~ Exp 1": True,
                    "Exp 2b much worse than 2a": True, "Exp 2b ~ Exp 2a": False,
                    "Exp 3 smooth across alpha in [0,1]": True, "Exp 3 sharp degradation at alpha > 1": True,
                    "Exp 4 sharp transition": True, "Exp 4 gradual degradation": False}
    assert "f ~ 0.15" in RR.interpret(parts)[-2]["observation"]
    assert not any("caveat" in r for r in RR.interpret(parts))
    unconverged = {**parts, "1": _summary({0: 0.2})}
    rows = RR.interpret(unconverged)
    assert [("caveat" in r) for r in rows[:3]] == [False, False, True] and all("caveat" in r for r in rows[2:])
    parts["4"] = _summary({0.0: 1e-3, 0.1: 3e-3, 0.2: 1e-2, 0.3: 3e-2})     # even rise: gradual
    rows = {r["observation"].split(" (")[0]: r["holds"] for r in RR.interpret(parts)}
    assert rows["Exp 4 gradual degradation"] and not rows["Exp 4 sharp transition"]
    md = RR.interpretation_markdown(RR.interpret(parts))
    assert md.count("\n") == 10 and math.isfinite(parts["4"]["relative_mse"]["median"])
    with pytest.raises(ValueError, match="2b"):
        RR.interpret({k: v for k, v in parts.items() if k != "2b"})


def test_part1_probe_best_of_restarts_agrees_with_the_part_summary(tmp_path):
    """The probe's per-step best-of-restarts figures end where ``report.summarize`` ends: the last reported step's
    relative MSEs are the summary's, and its reached count is the summary's."""
    from lib.studies.reachability.probe import part1_long

    out = tmp_path / "p.json"
    r = part1_long(text="synthetic", n_texts=40, n_targets=2, restarts=3, steps=4, report_steps=(0, 2, 4),
                   reach_frac=0.5, out=out)
    assert out.is_file() and r["data"]["name"] == "synthetic"
    # the code state at the start is recorded beside the one at the end (a long probe may outlive several commits)
    assert r["provenance"]["start"] is not None and r["provenance"]["code_changed_during_run"] is False
    s = r["summary"]
    assert np.allclose(r["best_relative_mse_at_step"]["4"], [t["relative_mse"] for t in s["targets"]], rtol=1e-6)
    assert r["reached_at_step"]["4"] == sum(t["reached"] for t in s["targets"])
    rel0 = np.array(r["relative_mse_at_step"]["0"])
    assert rel0.shape == (6,) and np.allclose(rel0, 1.0)


def test_part1_probe_resumes_from_its_store_after_a_kill(tmp_path):
    """A probe killed at a checkpoint and rerun with the same arguments ends with the uninterrupted run's numbers;
    other arguments for the same store are refused."""
    from lib.studies.reachability.probe import part1_long
    from lib.studies.reachability.store import PartMismatch

    kw = dict(text="synthetic", n_texts=40, n_targets=2, restarts=2, steps=6, report_steps=(3, 6), checkpoint_every=2)
    whole = part1_long(**kw, store=False)

    class Kill(Exception):
        pass

    def kill(part, chunk, step):
        if step == 4:
            raise Kill

    out = tmp_path / "p.json"
    with pytest.raises(Kill):
        part1_long(**kw, out=out, on_checkpoint=kill)
    assert (tmp_path / "_store_p").is_dir() and not out.exists()
    again = part1_long(**kw, out=out)
    assert again["store"] == {"chunks": 1, "resumed_chunks": 1}
    assert again["relative_mse_at_step"] == whole["relative_mse_at_step"]
    assert again["best_relative_mse_at_step"] == whole["best_relative_mse_at_step"]
    with pytest.raises((PartMismatch, ValueError), match="lr"):
        part1_long(**{**kw, "lr": 0.02}, out=out)
