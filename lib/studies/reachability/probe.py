"""Probes beside exp08 that are not part of its notebook: ``part1_long`` runs part 1 (real targets)
alone for more steps, to check whether the design's step count is plausible.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m lib.studies.reachability.probe part1-long \\
        --out results/exp08_smollm2_probe/part1_long.json

The defaults reproduce ``results/exp08_smollm2_probe/part1_long.json``: the first 3 real targets of
``results/exp08_smollm2`` (the same windows and seed), 800 steps. It used to be a script committed
under results/; results/ holds results only. With ``--text wiki --n-texts 1000 --per-text 4`` the targets are
part 1's in ``sweeps/real.toml``'s exp08 cell; ``--restarts`` and ``--report-steps`` give best-of-restarts
relative MSEs and the number of targets reached at each reported step (``best_relative_mse_at_step``,
``reached_at_step``; reached as in ``report.summarize``: best restart's MSE at that step <= reach_frac x the mean
initial MSE).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def part1_long(*, model: str = "smollm2-135m-instruct", text: str = "synthetic", n_texts: int = 600,
               seq_len: int = 20, n_targets: int = 3, per_text: int = 4, steps: int = 800, restarts: int = 1,
               lr: float = 0.01, init_std: float = 1.0, seed: int = 0, reach_frac: float = 0.01,
               report_steps: tuple[int, ...] = (90, 200, 400, 600, 800), out=None, store=None,
               checkpoint_every: int = 200, progress: bool = False, on_checkpoint=None) -> dict:
    """Part 1 of exp08 on ``n_targets`` real residual targets for ``steps`` steps; the relative MSE
    (to step 0) of every target at ``report_steps``, ``reachability_report.summarize`` and
    provenance. Written atomically to ``out`` when given.

    ``store``: a folder for a ``ChunkStore`` (default with ``out``: ``_store_<out stem>`` beside it, git-ignored;
    False: none). The optimization is checkpointed every ``checkpoint_every`` steps there, so a killed probe
    rerun with the same arguments resumes with the same numbers; other arguments for that store are refused."""
    from lib.data.jsonio import write_json_atomic
    from lib.kv.models import load_model
    from lib.lab import codestate
    from lib.lab.records import provenance
    from lib.studies import reachability as R
    from lib.studies.reachability import report as RR
    from lib.studies.reachability import store as RS
    from tqdm.auto import tqdm

    bad = [k for k in report_steps if not 0 <= k <= steps]
    if bad:
        raise ValueError(f"report_steps {bad} outside 0..steps ({steps})")
    codestate.mark_start()  # provenance then names the code that ran, not the tree at the end of a long run
    lm = load_model(model, dtype="float32")
    reader = R.ResidualReader(lm.model)
    texts, data = R.load_texts_recorded(text, n_texts, seed=seed)
    ids, windows = R.token_windows(lm.tokenizer, texts, seq_len, n_targets, per_text=per_text)
    args = {"model": model, "text": text, "n_texts": n_texts, "seq_len": seq_len, "n_targets": n_targets,
            "per_text": per_text, "steps": steps, "restarts": restarts, "lr": lr, "init_std": init_std, "seed": seed}
    if store is None and out is not None:
        store = Path(out).parent / f"_store_{Path(out).stem}"
    chunks = RS.ChunkStore(store, RS.store_config(args, lm), every=checkpoint_every) if store else None
    t0 = time.time()
    with tqdm(total=n_targets * restarts * steps, desc="part 1 prompt-steps", disable=not progress) as bar:
        fit = R.optimize(reader, reader.of_ids(ids), restarts=restarts, steps=steps, lr=lr, init_std=init_std, seed=seed,
                         store=chunks, part="1", progress=bar.update, on_checkpoint=on_checkpoint)
    summary = RR.summarize(fit, reach_frac=reach_frac, curve_every=10)
    rel = fit.curves / fit.curves[:, :1]                      # [targets x restarts, steps + 1], target-major
    init = np.array([t["initial_mse"] for t in summary["targets"]])  # mean over restarts at step 0
    best_rel = fit.curves.reshape(n_targets, restarts, -1).min(1) / init[:, None]  # [targets, steps + 1]: best restart at k
    result = {"what": f"exp08 part 1 only: the first {n_targets} real windows of {text} (n_texts={n_texts}, "
                      f"per_text={per_text}, seed {seed}: the notebook's part-1 targets under the same knobs), "
                      f"{restarts} restart(s), {steps} steps",
              "seconds": time.time() - t0,
              "store": {"chunks": fit.chunks, "resumed_chunks": fit.resumed_chunks},
              "data": data, "windows": windows,
              "relative_mse_at_step": {str(k): rel[:, k].tolist() for k in report_steps},
              "best_relative_mse_at_step": {str(k): best_rel[:, k].tolist() for k in report_steps},
              "reached_at_step": {str(k): int((best_rel[:, k] <= reach_frac).sum()) for k in report_steps},
              "summary": summary,
              "provenance": provenance(seeds={"seed": seed}, extra={
                  "command": "python -m lib.studies.reachability.probe part1-long",
                  "args": {"model": model, "text": text, "n_texts": n_texts, "seq_len": seq_len, "n_targets": n_targets,
                           "per_text": per_text, "steps": steps, "restarts": restarts, "lr": lr, "init_std": init_std,
                           "reach_frac": reach_frac}})}
    if out is not None:
        write_json_atomic(out, result)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lib.studies.reachability.probe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("part1-long", help="exp08 part 1 (real targets) alone, for more steps")
    p.add_argument("--out", default="results/exp08_smollm2_probe/part1_long.json")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--text", default="synthetic")
    p.add_argument("--n-texts", type=int, default=600)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--n-targets", type=int, default=3)
    p.add_argument("--per-text", type=int, default=4)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--init-std", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-steps", default="90,200,400,600,800",
                   help="comma-separated steps at which relative MSEs are reported (those past --steps are dropped; "
                        "the last step is always reported)")
    p.add_argument("--store", default=None, help="checkpoint folder (default: _store_<out stem> beside --out)")
    p.add_argument("--no-store", action="store_true", help="no checkpoints (a kill loses the run)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--progress", action="store_true", help="a progress bar on stderr")
    a = ap.parse_args(argv)
    try:
        asked = [int(k) for k in a.report_steps.split(",") if k.strip()]
    except ValueError:
        ap.error(f"--report-steps must be comma-separated ints, got {a.report_steps!r}")
    steps = tuple(sorted({k for k in asked if 0 <= k <= a.steps} | {a.steps}))
    res = part1_long(model=a.model, text=a.text, n_texts=a.n_texts, seq_len=a.seq_len, n_targets=a.n_targets,
                     per_text=a.per_text, steps=a.steps, restarts=a.restarts, lr=a.lr, init_std=a.init_std,
                     seed=a.seed, report_steps=steps, out=a.out, store=False if a.no_store else a.store,
                     checkpoint_every=a.checkpoint_every, progress=a.progress)
    print(f"{res['seconds']:.0f} s ({res['store']['resumed_chunks']} of {res['store']['chunks']} chunks resumed); "
          f"targets reached by step: {res['reached_at_step']}; share reached {res['summary']['share_reached']:.2f}")


if __name__ == "__main__":
    main()
