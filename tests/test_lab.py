"""JupyterLab verified, not assumed: a headless server on a free port with a token lists the
notebooks' kernel, serves exp01 through the contents API, and runs its SMOKE cells through a kernel
the server started (websocket channels, as JupyterLab does); tqdm.auto picks the widget bar there
without the "IProgress not found" warning; figures and tables come back as image/png and HTML."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = "experiments/exp01/exp01_back_to_basics.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, log: Path):
        self.port, self.token = _free_port(), uuid.uuid4().hex
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={ROOT}", "--ServerApp.port_retries=0"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def api(self, path: str, method: str = "GET", body: dict | None = None, raw: bool = False):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        return data.decode() if raw else (json.loads(data) if data else None)

    def wait_ready(self, timeout: float = 120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {self.log.read_text()[-3000:]}")
            try:
                return self.api("/api/status")
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(self.log.read_text()[-3000:])


async def _execute(ws, code: str, timeout: float = 600) -> tuple[dict, list[dict]]:
    """Send one execute_request on the shell channel; return (execute_reply content, iopub messages)."""
    msg_id = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": "s", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}}))
    reply, iopub, idle = None, [], False
    deadline = time.time() + timeout
    while reply is None or not idle:
        raw = await asyncio.wait_for(ws.read_message(), max(1.0, deadline - time.time()))
        if raw is None:
            raise RuntimeError("kernel websocket closed")
        if isinstance(raw, bytes):  # binary frames carry widget buffers; not needed here
            continue
        m = json.loads(raw)
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if m["channel"] == "shell" and m["msg_type"] == "execute_reply":
            reply = m["content"]
        elif m["channel"] == "iopub":
            iopub.append(m)
            idle = idle or (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle")
    return reply, iopub


def _text(msgs, kind: str) -> str:
    return "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == kind)


def _data(msgs) -> list[dict]:
    return [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "execute_result")]


@pytest.mark.slow
def test_jupyterlab_server_runs_exp01_smoke_through_its_kernel(tmp_path):
    from tornado.websocket import websocket_connect

    srv = Server(tmp_path / "lab.log")
    try:
        srv.wait_ready()
        assert "@jupyter-widgets/jupyterlab-manager" in srv.api("/lab", raw=True)  # the widget frontend is installed
        model = srv.api(f"/api/contents/{NB}")
        assert model["type"] == "notebook"
        nb = nbformat.from_dict(model["content"])
        kernel = nb.metadata["kernelspec"]["name"]
        assert kernel == "directed-kv"  # the project's kernel (conftest installs it when missing), not the user's python3
        assert kernel in srv.api("/api/kernelspecs")["kernelspecs"]
        session = srv.api("/api/sessions", "POST", {"path": NB, "type": "notebook", "name": Path(NB).name,
                                                    "kernel": {"name": kernel}})
        kid = session["kernel"]["id"]
        params = {"SMOKE": True, "DATASET": "synthetic", "N_SAMPLES": 6, "N_BOOT": 50, "CHUNK": 3, "N_DISTRACTORS": 1,
                  "OUT_DIR": str(tmp_path / "exp01"), "PROGRESS": True}
        cells = []
        for c in nb.cells:
            if c.cell_type == "code":
                cells.append(c.source)
                if "parameters" in c.metadata.get("tags", []):  # what papermill injects, sent to the server's kernel
                    cells.append("\n".join(f"{k} = {v!r}" for k, v in params.items()))

        async def run():
            ws = await websocket_connect(f"ws://127.0.0.1:{srv.port}/api/kernels/{kid}/channels?token={srv.token}")
            probe = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
                     "    import tqdm.auto, tqdm.notebook\n"
                     "print(issubclass(tqdm.auto.tqdm, tqdm.notebook.tqdm_notebook), [str(x.message) for x in w if 'IProgress' in str(x.message)])")
            out = [await _execute(ws, probe)]
            for src in cells:
                out.append(await _execute(ws, src))
            ws.close()
            return out

        results = asyncio.run(run())
        (reply, probe), cell_msgs = results[0], results[1:]
        assert reply["status"] == "ok" and _text(probe, "stdout").strip() == "True []", _text(probe, "stdout")
        for (rep, msgs), src in zip(cell_msgs, cells):
            assert rep["status"] == "ok", (src[:200], rep.get("ename"), rep.get("evalue"))
            assert "IProgress" not in _text(msgs, "stderr")
        data = [d for _, msgs in cell_msgs for d in _data(msgs)]
        assert any("application/vnd.jupyter.widget-view+json" in d for d in data)  # the engine's bar is a widget
        html = [d["text/html"] for d in data if "text/html" in d]
        assert any("<table" in h and "p_wilcoxon" in h and "D_trunc_oracle vs B_full_oracle" in h for h in html)
        r = json.loads((tmp_path / "exp01" / "results.json").read_text())
        assert r["data"]["name"] == "synthetic" and r["summary"]["n_samples"] == 6
        assert len(r["figures"]) >= 3 and sum("image/png" in d for d in data) == len(r["figures"])  # every saved figure, inline
        srv.api(f"/api/sessions/{session['id']}", "DELETE")
        assert srv.api("/api/kernels") == []
    finally:
        try:
            srv.api("/api/shutdown", "POST")
        except OSError:
            pass
        try:
            srv.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
    assert srv.proc.returncode == 0, srv.log.read_text()[-3000:]
