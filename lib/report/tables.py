"""Tables read from per-item rows: one field per condition in sample order (NLLs, margins, ranks),
used by every study's analysis, by ``lib.report.discrimination`` and by ``lib.tools.reanalyse``."""
from __future__ import annotations

import numpy as np


def field_table(rows: list[dict], names: list[str], sample_ids: list[str], field: str) -> dict[str, np.ndarray]:
    """{condition: ``field`` as a float array in ``sample_ids`` order}; raises naming what is missing
    (a (sample, condition) without a row, or a row without ``field``)."""
    got = {(r["sample_id"], r["condition"]): r for r in rows}
    no_row = [(s, n) for s in sample_ids for n in names if (s, n) not in got]
    if no_row:
        raise ValueError(f"{len(no_row)} (sample, condition) items have no row, e.g. {no_row[:3]}")
    no_field = [(s, n) for s in sample_ids for n in names if field not in got[(s, n)]]
    if no_field:
        raise ValueError(f"{len(no_field)} (sample, condition) items have no {field!r}, e.g. {no_field[:3]}")
    return {n: np.array([float(got[(s, n)][field]) for s in sample_ids]) for n in names}


def nll_table(rows: list[dict], names: list[str], sample_ids: list[str]) -> dict[str, np.ndarray]:
    """{condition: NLL array in ``sample_ids`` order}; raises if any (sample, condition) is missing."""
    return field_table(rows, names, sample_ids, "nll")
