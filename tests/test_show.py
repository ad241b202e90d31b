"""lib.report.show: which comparison columns a table shows, loud failures, and what a kernel records."""
import nbformat
import pytest
from nbclient import NotebookClient

from lib.report import show

ROWS = [
    {"label": "B vs A", "cond": "B", "ref": "A", "mean_delta": 0.05, "pct_of_ref": 2.5, "d": 0.31, "ci_low": 0.1,
     "ci_high": 0.5, "p_t": 0.002, "p_holm": 0.004, "p_wilcoxon": 0.003, "win_rate": 0.6, "mean_cond": 1.9},
    {"label": "C vs A", "cond": "C", "ref": "A", "d": -0.2, "ci_low": -0.4, "ci_high": 0.0, "p_t": 0.2, "win_rate": 0.4},
]


def test_frame_shows_present_comparison_columns_in_order_and_never_invents():
    df = show.frame(ROWS)
    assert list(df.columns) == ["label", "cond", "ref", "mean_delta", "pct_of_ref", "d", "ci_low", "ci_high", "p_t",
                                "p_holm", "p_wilcoxon", "win_rate"]
    assert "mean_cond" not in df.columns  # not a comparison column
    assert df["d"].tolist() == [0.31, -0.2]
    assert df["mean_delta"].isna().tolist() == [False, True]  # missing in row 2: NaN, not 0
    only_d = show.frame([{"cond": "B", "d": 0.1}])
    assert list(only_d.columns) == ["cond", "d"]  # absent columns are skipped


def test_frame_keys_and_explicit_columns():
    rows = [{"cutoff": 5, **ROWS[0]}, {"cutoff": 10, **ROWS[1]}]
    assert list(show.frame(rows, keys=("cutoff",)).columns)[:3] == ["cutoff", "label", "cond"]
    assert list(show.frame(rows, columns=["d", "cond"], keys=("cutoff",)).columns) == ["cutoff", "d", "cond"]


def test_frame_bad_input_raises_naming_the_value():
    with pytest.raises(ValueError, match="'nope'"):
        show.frame(ROWS, columns=["d", "nope"])
    with pytest.raises(ValueError, match="'bin'"):
        show.frame(ROWS, keys=("bin",))
    with pytest.raises(ValueError, match="none of the comparison columns"):
        show.frame([{"foo": 1}])
    with pytest.raises(ValueError, match="rows must be dicts, got tuple"):
        show.frame([("B", 0.1)])
    with pytest.raises(ValueError, match="missing.png"):
        show.figures(["missing.png"])


def test_outside_a_kernel_tables_and_figures_degrade_to_text(tmp_path, capsys):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    show.table(ROWS, title="effects")
    show.figures([png])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "effects" and "B vs A" in out and "0.004" in out and str(png) in out
    assert not show.in_kernel()


@pytest.mark.slow
def test_in_a_kernel_figures_are_png_outputs_and_tables_html(tmp_path):
    """What an executed notebook stores: image/png for each figure, text/html + text/plain for each table."""
    from lib.report import plots

    png = plots.plot_effects([{"p_holm": 0.2, **r} for r in ROWS], tmp_path / "effects.png", title="t")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"from lib.report import show\nshow.figures([{str(png)!r}])\n"
                                          f"show.table({ROWS!r}, title='effects')")]
    from lib.lab.notebook import KERNELSPEC

    nb.metadata["kernelspec"] = dict(KERNELSPEC)  # the project's kernel, as in every generated notebook
    from pathlib import Path

    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(Path(__file__).resolve().parents[1])}}).execute()
    outs = nb.cells[0].outputs
    kinds = [k for o in outs for k in o.get("data", {})]
    assert kinds.count("image/png") == 1 and kinds.count("text/html") >= 1
    html = next(o["data"]["text/html"] for o in outs if "text/html" in o.get("data", {}))
    assert "<table" in html and "p_wilcoxon" in html and "0.004" in html
    assert not [o for o in outs if o.output_type == "stream" and o.name == "stderr"]
