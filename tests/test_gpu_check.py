"""`make gpu-check` (``lib.tools.gpu_check``) refuses at once, with a clear message, where there is no CUDA device."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def test_without_cuda_exits_at_once_with_a_message(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    r = subprocess.run([sys.executable, "-m", "lib.tools.gpu_check", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("no CUDA device: ") and "bfloat16 and 4-bit nf4" in r.stderr
    assert r.stdout == "" and not out.exists()  # nothing ran, nothing written


def test_unknown_step_is_refused():
    with pytest.raises(ValueError, match=r"unknown steps \['bogus'\]"):
        gpu_check.main(["--steps", "exactness,bogus"])


def test_junit_figures(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a" time="1.5"/>'
                   '<testcase classname="t" name="b" time="2"><failure message="assert 0.3 &lt;= 0.25"/></testcase>'
                   '</testsuite></testsuites>')
    got = gpu_check.junit_figures(xml)
    assert (got["passed"], got["failed"]) == (1, 1)
    assert got["tests"]["t::b"] == {"outcome": "failed", "seconds": 2.0, "message": "assert 0.3 <= 0.25"}


def test_prepared_runs_name_real_notebooks_parameters_and_tests():
    """What a GPU run would execute exists: each family's notebook and its papermill parameters, each test id."""
    import papermill

    for family, (nb, extra) in gpu_check.FAMILIES.items():
        params = papermill.inspect_notebook(str(ROOT / "experiments" / nb))
        for name in ["SMOKE", "OUT_DIR", *extra[::2], "LOAD_IN_4BIT"] if family == "priming" else ["SMOKE", "OUT_DIR", *extra[::2]]:
            assert name in params, (family, name)
    for test_id in gpu_check.EXACTNESS_TESTS:
        path, _, func = test_id.partition("::")
        assert (ROOT / path).is_file() and (not func or f"def {func}(" in (ROOT / path).read_text()), test_id
