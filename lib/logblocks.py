"""Generated number blocks in EXPERIMENT_PLAN.md: one per run, written from its results.json.

A block is the text between ``<!-- RUN-BLOCK results/<run> -->`` and ``<!-- /RUN-BLOCK -->``;
``python -m lib.index`` (``make index``) rewrites every block, so a number in a block is always the
file's number and prose around it cites the block. A block holds one line of identity (model,
data and its sha256, N, real data or pipeline check, commit, date) and a table of the run's
``summary.comparisons``: the mean delta in nats and as % of the reference NLL (95% bootstrap CIs),
Cohen's d with its CI, win rate, Holm-adjusted t and Wilcoxon p, and the verdict under the
declared primary test (``lib.verdicts``: "null" only when neither test rejects).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from lib import verdicts

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- RUN-BLOCK (\S+) -->\n)(.*?)(<!-- /RUN-BLOCK -->)", re.S)


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def _p(x) -> str:
    return "n/a" if x is None or x != x else ("<1e-300" if x == 0 else f"{x:.2g}")


def _identity(run: str, r: dict) -> str:
    cfg, prov, data = r.get("config", {}), r.get("provenance", {}), r.get("data", {})
    model = cfg.get("MODEL") or cfg.get("model", "?")
    name = data.get("name", cfg.get("DATASET", "?"))
    kind = "pipeline check (synthetic data)" if name == "synthetic" else "real data"
    sha = (data.get("provenance") or {}).get("sha256")
    commit = (prov.get("commit") or "?")[:8] + ("+dirty" if prov.get("dirty") else "")
    bits = [f"`{run}/results.json`", f"model {model} ({cfg.get('dtype', '?')})",
            f"data {name} N={data.get('n_samples', '?')}", kind]
    if sha:
        bits.append(f"file sha256 {sha[:12]}")
    if data.get("content_sha256"):
        bits.append(f"samples sha256 {data['content_sha256'][:12]}")
    bits += [f"primary test {r.get('summary', {}).get('primary_test') or 't (undeclared)'}",
             f"commit {commit}", (prov.get("date") or "?")[:10]]
    return "; ".join(bits) + "."


def render(run: str, results_root: Path | None = None) -> str:
    """The block body for ``run`` (a path like ``results/exp01_x``, relative to the repo root)."""
    path = (results_root or ROOT) / run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"RUN-BLOCK names {run!r} but {path} does not exist")
    r = json.loads(path.read_text())
    s = r.get("summary", {})
    lines = [_identity(run, r), ""]
    if "mean_nll" in s:
        lines.append("Mean answer NLL: " + ", ".join(f"{k} {_f(v, '.4f')}" for k, v in s["mean_nll"].items()) + ".")
        lines.append("")
    lines += ["| comparison | mean delta, nats [95% CI] | % of ref NLL [95% CI] | d [95% CI] | win | Holm p (t) | "
              "Holm p (Wilcoxon) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in s.get("comparisons", []):
        label = c.get("label") or f"{c.get('cond')} vs {c.get('ref')}"
        md = f"{_f(c.get('mean_delta'), '+.4f')} [{_f(c.get('mean_delta_ci_low'), '+.4f')}, {_f(c.get('mean_delta_ci_high'), '+.4f')}]"
        pct = f"{_f(c.get('pct_of_ref'), '+.2f')} [{_f(c.get('pct_ci_low'), '+.2f')}, {_f(c.get('pct_ci_high'), '+.2f')}]"
        d = f"{_f(c.get('d'), '+.3f')} [{_f(c.get('ci_low'), '+.3f')}, {_f(c.get('ci_high'), '+.3f')}]"
        try:
            v = verdicts.verdict(c)
        except ValueError:
            v = "n/a (pre-verdict file)"
        lines.append(f"| {label} | {md} | {pct} | {d} | {_f(c.get('win_rate'), '.2f')} | {_p(c.get('p_holm'))} | "
                     f"{_p(c.get('p_holm_wilcoxon'))} | {v} |")
    return "\n".join(lines) + "\n"


def update(text: str, results_root: Path | None = None) -> str:
    """``text`` with every RUN-BLOCK rewritten from its results.json."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2), results_root) + m.group(4), text)


def update_plan(plan=None) -> Path:
    plan = Path(plan or ROOT / "EXPERIMENT_PLAN.md")
    plan.write_text(update(plan.read_text()))
    return plan
