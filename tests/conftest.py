"""Shared pytest fixtures: the three bundled real models, loaded once per session (float32, CPU, sdpa;
another device / dtype / nf4 through the environment: ``tests/real_env.py``).

Tests that use them are marked ``slow`` (first use converts the bundled GGUFs into the model
cache, ~2-3 min once; later loads take seconds).
"""
import pytest

import real_env


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real (bundled) model; takes more than ~5 s")


@pytest.fixture(scope="session")
def smollm2():
    return real_env.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3():
    return real_env.load("gemma-3-270m")


@pytest.fixture(scope="session")
def qwen2():
    return real_env.load("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session", autouse=True)
def directed_kv_kernel():
    """The notebooks' kernel ("directed-kv", `lib.lab.notebook.KERNEL_NAME`) for papermill and the
    JupyterLab test: installed for this interpreter when missing or pointing at another one, so
    `pytest` alone works on a fresh machine (`make setup` installs the same kernel)."""
    import subprocess
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from lib.lab.notebook import KERNELSPEC

    name = KERNELSPEC["name"]
    try:
        argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
        ok = argv0 == sys.executable  # not resolved: a venv's python is a symlink to the system one
    except NoSuchKernel:
        ok = False
    if not ok:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", name,
                        "--display-name", KERNELSPEC["display_name"]], check=True, capture_output=True)
    return name
