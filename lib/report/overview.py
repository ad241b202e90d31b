"""Every run side by side: the logic of ``experiments/overview/overview.ipynb`` (no model needed).

    rows = overview.runs()                                   # one row per results/**/results.json
    rows = overview.select(rows, experiment="exp01", kind="real")
    show.table(overview.index_rows(rows), columns=overview.INDEX_COLUMNS)
    overview.cross_model_figures(rows, out_dir)              # one figure per experiment with >= 2 runs
    overview.run_figures(row); overview.top_comparisons(row, k=10)

``kind`` is "pipeline check" when the run's data is synthetic (its passages and keywords contain the
answer) or its model is random-init, else "real". The findings table is ``results/FINDINGS.md``
when it exists. Rows come from ``lib.report.index.collect``, so the overview and ``results/INDEX.md``
list the same runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from lib.report import index

KINDS = ("all", "real", "pipeline check")
FINDINGS = "FINDINGS.md"
INDEX_COLUMNS = ["experiment", "run", "kind", "model", "dataset", "n", "smoke", "headline", "commit", "date"]


def _kind(result: dict) -> str:
    cfg = result.get("config", {})
    data = " ".join(str(cfg.get(k) or "") for k in ("DATASET", "DATASETS", "TEXT"))
    data = data or str((result.get("data") or {}).get("name", ""))
    synthetic = any(tok.strip().startswith("synthetic") for tok in data.replace(",", " ").split())
    random_init = bool(cfg.get("random_init") or result.get("random_init"))
    return "pipeline check" if synthetic or random_init else "real"


def runs(results_root=None) -> list[dict]:
    """``index.collect`` rows plus ``kind``, ``smoke``, ``folder`` (absolute) and ``figures`` (existing PNG paths)."""
    root = Path(results_root or index.ROOT / "results")
    out = []
    for r in index.collect(root):
        folder = root / r["run"]
        result = json.loads((folder / "results.json").read_text())
        names = result.get("figures") or sorted(p.name for p in folder.glob("*.png"))
        out.append({**r, "kind": _kind(result), "smoke": bool(result.get("config", {}).get("SMOKE")),
                    "folder": folder, "figures": [folder / n for n in names if (folder / n).is_file()],
                    "summary": result.get("summary", {})})
    return out


def _choose(name: str, value: str, have: list[str], match) -> None:
    if value and not any(match(value, h) for h in have):
        raise ValueError(f"{name} {value!r} matches no run; choices: {sorted(set(have))}")


def select(rows: list[dict], experiment: str = "", model: str = "", data: str = "", kind: str = "all") -> list[dict]:
    """The rows that pass every filter: ``experiment`` exact (e.g. exp01), ``model`` and ``data``
    case-insensitive substrings, ``kind`` one of ``KINDS``. An empty filter passes all; a filter
    that matches no row raises ``ValueError`` naming it and the choices."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} not in {KINDS}")
    sub = lambda v, h: v.lower() in str(h).lower()  # noqa: E731
    _choose("experiment", experiment, [r["experiment"] for r in rows], lambda v, h: v == h)
    _choose("model", model, [str(r["model"]) for r in rows], sub)
    _choose("data", data, [str(r["dataset"]) for r in rows], sub)
    return [r for r in rows if (not experiment or r["experiment"] == experiment) and (not model or sub(model, r["model"]))
            and (not data or sub(data, r["dataset"])) and (kind == "all" or r["kind"] == kind)]


def _headline(h: list[dict]) -> str:
    num = lambda x: "n/a" if x is None or x != x else f"{x:+.2f}"  # noqa: E731
    return "; ".join(f"{e['label']} {num(e.get('d'))} [{num(e.get('ci_low'))}, {num(e.get('ci_high'))}]" for e in h)


def index_rows(rows: list[dict]) -> list[dict]:
    """One flat row per run for ``show.table(..., columns=INDEX_COLUMNS)``."""
    return [{**{k: r[k] for k in INDEX_COLUMNS if k in r}, "headline": _headline(r["headline"])} for r in rows]


def findings(results_root=None) -> str | None:
    """The findings table (``results/FINDINGS.md``) as Markdown, or None while it does not exist."""
    f = Path(results_root or index.ROOT / "results") / FINDINGS
    return f.read_text() if f.is_file() else None


def cross_model_figures(rows: list[dict], out_dir) -> list[Path]:
    """``index.cross_model_figure`` for every experiment with at least two runs among ``rows``."""
    exps = sorted({r["experiment"] for r in rows})
    many = [e for e in exps if sum(r["experiment"] == e and bool(r["effects"]) for r in rows) >= 2]
    return [index.cross_model_figure(rows, e, Path(out_dir) / f"cross_model_{e}.png") for e in many]


def find(rows: list[dict], run: str) -> dict:
    """The row whose ``run`` folder (relative to results/) is ``run``."""
    for r in rows:
        if r["run"] == run:
            return r
    raise ValueError(f"run {run!r} not found; choices: {[r['run'] for r in rows]}")


def run_figures(row: dict) -> list[Path]:
    return list(row["figures"])


def top_comparisons(row: dict, k: int = 10) -> list[dict]:
    """The ``k`` comparisons with the largest |d| of one run, with every column the run stored:
    ``summary.comparisons`` when the run has them, else the experiment's primary effects (``lib.report.index``)."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    s = row["summary"]
    comps = s.get("comparisons") or [{"label": e["label"], "d": e["d"], "ci_low": e.get("ci_low"),
                                      "ci_high": e.get("ci_high")} for e in row["effects"]]
    comps = [c for c in comps if c.get("d") is not None and c["d"] == c["d"]]
    return sorted(comps, key=lambda c: -abs(c["d"]))[:k]
