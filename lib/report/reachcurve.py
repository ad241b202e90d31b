"""exp08 part 4's curve read the design's way, shared by the interpretation table
(``lib.studies.reachability.report.interpret``) and the findings table (``lib.report.findings``)."""
from __future__ import annotations

import math

import numpy as np

SHARP_SHARE = 0.5         # part 4 sharp: one step between adjacent f carries >= half the total rise
MIN_RISE_DECADES = 0.5    # part 4: a rise below this (f_min -> f_max) is neither sharp nor gradual


def _l10(x: float) -> float:
    return math.log10(max(x, 1e-30))


def transition(part4_by_fraction: dict) -> dict | None:
    """Part 4's curve read the design's way: the median relative MSE (log10) per fraction f of
    replaced dimensions, its rise from the smallest to the largest f, the largest step between
    adjacent fractions (``f_star`` its midpoint) and that step's share of the rise; ``sharp`` and
    ``gradual`` by ``MIN_RISE_DECADES`` and ``SHARP_SHARE``. None with fewer than two fractions."""
    g4 = sorted((float(k), v["median_relative_mse"]) for k, v in part4_by_fraction.items())
    if len(g4) < 2:
        return None
    fs, ys = [f for f, _ in g4], [_l10(v) for _, v in g4]
    rise = ys[-1] - ys[0]
    steps = np.diff(ys)
    j = int(np.argmax(steps))
    share = float(steps[j] / rise) if rise > 0 else 0.0
    sharp = rise >= MIN_RISE_DECADES and share >= SHARP_SHARE
    return {"f_first": fs[0], "f_last": fs[-1], "rise": float(rise), "step_from": fs[j], "step_to": fs[j + 1],
            "f_star": (fs[j] + fs[j + 1]) / 2, "share": share, "sharp": bool(sharp), "gradual": bool(rise >= MIN_RISE_DECADES and not sharp)}
