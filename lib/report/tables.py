"""Tables read from per-item rows: NLLs per condition in sample order, and the discrimination summary
when the rows carry margins (used by every study's analysis and by ``lib.tools.reanalyse``)."""
from __future__ import annotations

import numpy as np

from lib.report import discrimination


def nll_table(rows: list[dict], names: list[str], sample_ids: list[str]) -> dict[str, np.ndarray]:
    """{condition: NLL array in ``sample_ids`` order}; raises if any (sample, condition) is missing."""
    got = {(r["sample_id"], r["condition"]): r["nll"] for r in rows}
    missing = [(s, n) for s in sample_ids for n in names if (s, n) not in got]
    if missing:
        raise ValueError(f"{len(missing)} (sample, condition) items have no row, e.g. {missing[:3]}")
    return {n: np.array([got[(s, n)] for s in sample_ids]) for n in names}


def discrimination_summary(rows, sample_ids, names, **kw) -> dict:
    """``{"discrimination": discrimination.discrimination(...)}`` when the rows carry margins, else ``{}``."""
    if not discrimination.has_margins([r for r in rows if r["condition"] in names]):
        return {}
    return {"discrimination": discrimination.discrimination(rows, sample_ids, names, **kw)}
