"""Show the figures and tables of runs executed before notebooks displayed them (issue 19).

Notebooks executed before 2026-12-01 printed their figure paths (``['.../effects.png', ...]``)
instead of displaying the figures. This tool attaches, to each cell whose output names PNG files of
the run's own folder, one ``display_data`` output per figure (the PNG the run saved, unchanged),
preceded by a line saying that the figures were attached after the run and by what. Nothing the
run computed changes; the cell's original output stays. Idempotent (a cell that already shows
images is left alone); a named figure missing from the folder is reported, never skipped silently.

Tables: a notebook that rendered no table (no HTML output: its tables were fixed-width prints)
gets one markdown cell at the end, marked as added after the run, holding the run's tables as the
log renders them from the folder's results.json (``lib.report.logblocks.render``: absolute effect,
% of the reference NLL, d, CIs and both tests). Idempotent too.

    python -m lib.tools.attach_figures results/exp02_gemma3_270m/exp02_surrogate_priming.executed.ipynb ...
    python -m lib.tools.attach_figures --all        # every executed notebook under results/
"""
from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARK = "directed_kv_attached_figures"
_PNG = re.compile(r"[\w./\\-]+\.png")


def _text(out: dict) -> str:
    if "text" in out:
        return "".join(out["text"])
    return "".join(out.get("data", {}).get("text/plain", ""))


def attach(nb_path) -> dict:
    """Attach the run folder's PNGs to every cell that only printed their paths; returns
    {"attached": [names], "missing": [names]} and rewrites the notebook when something was attached."""
    nb_path = Path(nb_path)
    nb = json.loads(nb_path.read_text())
    folder = nb_path.parent
    attached, missing = [], []
    for cell in nb.get("cells", []):
        outs = cell.get("outputs", [])
        if not outs or any("image/png" in o.get("data", {}) for o in outs) or cell.get("metadata", {}).get(MARK):
            continue
        names = []
        for o in outs:
            for p in _PNG.findall(_text(o)):
                name = Path(p.replace("\\", "/")).name
                if name not in names:
                    names.append(name)
        if not names:
            continue
        have = [n for n in names if (folder / n).is_file()]
        missing += [n for n in names if n not in have]
        if not have:
            continue
        outs.append({"output_type": "stream", "name": "stdout",
                     "text": [f"[figures attached after the run by lib.tools.attach_figures from {folder.name}/: "
                              f"{', '.join(have)}; the run printed their paths]\n"]})
        for n in have:
            png = base64.b64encode((folder / n).read_bytes()).decode()
            outs.append({"output_type": "display_data", "metadata": {}, "data": {"image/png": png, "text/plain": [f"<{n}>"]}})
        cell.setdefault("metadata", {})[MARK] = have
        attached += have
    if attached:
        nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return {"attached": attached, "missing": missing}


TABLES_MARK = "directed_kv_attached_tables"


def attach_tables(nb_path) -> bool:
    """Append the run's tables (from its results.json) as one marked markdown cell when the notebook
    rendered none; True when the notebook was rewritten."""
    from lib.report import logblocks

    nb_path = Path(nb_path)
    folder = nb_path.parent
    nb = json.loads(nb_path.read_text())
    cells = nb.get("cells", [])
    html = any("text/html" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    if html or any(c.get("metadata", {}).get(TABLES_MARK) for c in cells) or not (folder / "results.json").is_file():
        return False
    try:
        run, root = str(folder.resolve().relative_to(ROOT)), None
    except ValueError:
        run, root = folder.name, folder.parent
    body = logblocks.render(run, root)
    text = (f"**Tables attached after the run** by `lib.tools.attach_figures` from `{folder.name}/results.json` "
            f"(the run printed fixed-width tables above; these are the same numbers as the log renders them).\n\n{body}")
    cell = {"cell_type": "markdown", "metadata": {TABLES_MARK: True}, "source": text}
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5):
        cell["id"] = "attached-tables"  # cell ids exist from nbformat 4.5 on
    cells.append(cell)
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("--all", action="store_true", help="every *.executed.ipynb / executed.ipynb under results/")
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.notebooks]
    if a.all:
        paths += sorted(p for p in (ROOT / "results").rglob("*.ipynb") if "_store" not in p.parts)
    if not paths:
        ap.error("name notebooks or pass --all")
    bad = 0
    for p in paths:
        r = attach(p)
        if r["attached"] or r["missing"]:
            print(f"{p}: attached {r['attached']}" + (f"; MISSING from the folder: {r['missing']}" if r["missing"] else ""))
        if attach_tables(p):
            print(f"{p}: attached the tables of results.json")
        bad += bool(r["missing"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
