"""results/ holds results only (issue 15, item 4): no run store and no code is committed there;
probes that produced committed results are lib calls (``python -m lib.studies.reachability.probe``)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_git_tracks_no_store_and_no_code_under_results():
    files = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert files, "git ls-files results listed nothing"
    stores = [f for f in files if any(part.startswith("_store") or part == "_submitit" for part in Path(f).parts)]
    code = [f for f in files if f.endswith(".py")]
    assert not stores, f"run stores committed under results/ (git rm -r --cached them): {stores[:10]}"
    assert not code, f"code committed under results/ (move it into lib/ or a builder): {code}"
    for probe in ("results/exp10/_store_decoder/items.jsonl", "results/x/_store_old-1/config.json", "results/x/_submitit/log"):
        assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT).returncode == 0, f"{probe} not ignored"


def test_reachability_probe_cli_documents_part1_long():
    res = subprocess.run([sys.executable, "-m", "lib.studies.reachability.probe", "part1-long", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--steps" in res.stdout and "--out" in res.stdout
    assert "-m lib.studies.reachability.probe part1-long" in (ROOT / "EXPERIMENT_PLAN.md").read_text()
