"""What a notebook shows: figures inline, result tables as DataFrames.

In a Jupyter kernel (JupyterLab, or papermill headless: the executed notebook keeps the outputs)
``figures`` displays each saved PNG/SVG inline and ``table`` displays a pandas DataFrame (HTML for
JupyterLab, text for logs and plain viewers). Outside a kernel (plain python, pytest) both degrade
to printed text. The numbers shown are the ones written to results.json; nothing is computed here.

    show.figures(figs)                                  # after saving them
    show.table(summary["comparisons"], title="effects") # the comparison columns that are present

Progress bars come from ``tqdm.auto`` in ``lib`` (a widget in a kernel with ipywidgets, the text
bar elsewhere); nothing here changes that choice.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# the comparison columns, in display order; ``table`` shows the ones present in at least one row
COLUMNS = ("label", "cond", "ref", "n", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "pct_of_ref",
           "pct_ci_low", "pct_ci_high", "d", "ci_low", "ci_high", "p_t", "p_holm", "p_wilcoxon", "p_holm_wilcoxon",
           "win_rate", "verdict")
FLOAT_FORMAT = "{:.4g}".format


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where rich outputs are recorded), False in plain Python or IPython's terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _with_verdict(row: Mapping) -> Mapping:
    """The row plus ``verdict`` (``lib.report.verdicts``: null only when neither Holm test rejects) when it
    carries what the rule needs; other rows unchanged."""
    if "verdict" in row or not all(k in row for k in ("p_holm", "p_holm_wilcoxon", "mean_delta")):
        return row
    from lib.report import verdicts

    return {**row, "verdict": verdicts.verdict(row)}


def frame(rows, columns=None, keys=()):
    """A DataFrame of ``rows`` (dicts): first the ``keys`` columns (e.g. a length or a bin), then with
    ``columns=None`` the ``COLUMNS`` present in any row, in that order, else exactly ``columns``. A named
    key or column that is in no row raises ``ValueError``; missing cells are NaN, never invented."""
    import pandas as pd

    rows = list(rows)
    bad = [type(r).__name__ for r in rows if not isinstance(r, Mapping)]
    if bad:
        raise ValueError(f"rows must be dicts, got {bad[0]}")
    rows = [_with_verdict(r) for r in rows]
    have = {k for r in rows for k in r}
    keys = list(keys)
    if columns is None:
        columns = [c for c in COLUMNS if c in have and c not in keys]
        if rows and not columns:
            raise ValueError(f"rows have none of the comparison columns {list(COLUMNS)}; their keys: "
                             f"{sorted(have)}; pass columns=")
    columns = keys + [c for c in columns if c not in keys]
    missing = [c for c in columns if c not in have]
    if rows and missing:
        raise ValueError(f"columns {missing} are in no row; available: {sorted(have)}")
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    return df


def table(rows, columns=None, title: str | None = None, keys=()) -> None:
    """Display ``frame(rows, columns, keys)``: a rendered table in a kernel, ``to_string`` text elsewhere."""
    import pandas as pd

    df = frame(rows, columns, keys)
    if not in_kernel():
        if title:
            print(title)
        print(df.to_string(float_format=FLOAT_FORMAT) if len(df) else "(no rows)")
        return
    from IPython.display import display

    if title:
        _caption(f"**{title}**", title)
    with pd.option_context("display.float_format", FLOAT_FORMAT, "display.max_rows", 500,
                           "display.max_columns", 50, "display.width", 250, "display.max_colwidth", None):
        display(df)


def figures(paths) -> None:
    """Display every saved figure inline (PNG, SVG) under its file name; other formats are listed.
    A path that does not exist raises ``ValueError`` naming it."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"figure files not found: {missing}")
    if not in_kernel():
        print("\n".join(str(p) for p in paths))
        return
    from IPython.display import SVG, Image, display

    for p in paths:
        _caption(f"`{p.name}` ({p})", str(p))
        suffix = p.suffix.lower()
        if suffix == ".png":
            display(Image(filename=str(p)))
        elif suffix == ".svg":
            display(SVG(filename=str(p)))


def _caption(markdown: str, text: str) -> None:
    """Markdown in JupyterLab, plain text in text viewers and logs."""
    from IPython.display import display

    display({"text/markdown": markdown, "text/plain": text}, raw=True)


def discrimination(summary: Mapping) -> None:
    """The contrastive-margin tables of ``summary["discrimination"]`` (``lib.kv.margin``), when present:
    per condition the mean margin, gold rank and top-1; per comparison d(margin) beside d(nll) and the
    entropy gap. Prints a line saying so when the run scored no distractors."""
    disc = summary.get("discrimination")
    if not disc:
        print("no distractors scored (N_DISTRACTORS=0): likelihood only, no discrimination measure")
        return
    k = ", ".join(map(str, disc["n_distractors"]))
    table([{"condition": n, "mean_margin": m, "mean_gold_rank": disc["mean_gold_rank"][n], "top1": disc["top1"][n]}
           for n, m in disc["mean_margin"].items()], columns=["condition", "mean_margin", "mean_gold_rank", "top1"],
          title=f"discrimination per condition (gold answer vs {k} distractors on the same cache; margin in nats)")
    cols = [c for c in ("label", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high", "d", "ci_low", "ci_high",
                        "d_nll", "entropy_gap", "p_holm", "p_holm_wilcoxon", "verdict")
            if any(c in r for r in disc["comparisons"]) or c == "verdict"]
    table(disc["comparisons"], columns=cols,
          title="d(margin) beside d(nll): positive = the condition separates gold from distractors better; "
                "entropy gap = d(nll) - d(margin)")
