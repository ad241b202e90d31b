"""Cell formatting shared by the generated log blocks (``lib.report.logblocks``, ``lib.report.blockkinds``)."""
from __future__ import annotations

from lib.report import verdicts


def num(x, fmt: str) -> str:
    """``x`` in ``fmt``, or "n/a" for a missing or NaN value."""
    return "n/a" if x is None or x != x else format(x, fmt)


def pval(x) -> str:
    return "n/a" if x is None or x != x else ("<1e-300" if x == 0 else f"{x:.2g}")


def commit(prov: dict) -> str:
    """Short commit, ``+dirty`` when the tree had uncommitted changes."""
    return (prov.get("commit") or "?")[:8] + ("+dirty" if prov.get("dirty") else "")


def comparisons(rows: list[dict], title: str | None = None, *, unit: str = "nats", pct: str = "% of ref NLL") -> list[str]:
    """A table of paired comparisons (``stats.compare_conditions`` rows): mean delta in ``unit`` and as
    ``pct`` with CIs, d with its CI, win rate, both Holm p-values and the verdict."""
    out = ["", f"{title}:", ""] if title else []
    out += [f"| comparison | mean delta, {unit} [95% CI] | {pct} [95% CI] | d [95% CI] | win | Holm p (t) | "
            "Holm p (Wilcoxon) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        label = c.get("label") or f"{c.get('cond')} vs {c.get('ref')}"
        md = f"{num(c.get('mean_delta'), '+.4f')} [{num(c.get('mean_delta_ci_low'), '+.4f')}, {num(c.get('mean_delta_ci_high'), '+.4f')}]"
        pc = f"{num(c.get('pct_of_ref'), '+.2f')} [{num(c.get('pct_ci_low'), '+.2f')}, {num(c.get('pct_ci_high'), '+.2f')}]"
        d = f"{num(c.get('d'), '+.3f')} [{num(c.get('ci_low'), '+.3f')}, {num(c.get('ci_high'), '+.3f')}]"
        try:
            v = verdicts.verdict(c)
        except (ValueError, KeyError):
            v = "n/a (pre-verdict file)"
        out.append(f"| {label} | {md} | {pc} | {d} | {num(c.get('win_rate'), '.2f')} | {pval(c.get('p_holm'))} | "
                   f"{pval(c.get('p_holm_wilcoxon'))} | {v} |")
    return out
