"""Shared pytest fixtures: the three bundled real models, loaded once per session (float32, CPU, sdpa).

Tests that use them are marked ``slow`` (first use converts the bundled GGUFs into the model
cache, ~2-3 min once; later loads take seconds).
"""
import pytest

from lib.kv.models import load_model


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real (bundled) model; takes more than ~5 s")


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu", attn_implementation="sdpa")


@pytest.fixture(scope="session")
def gemma3():
    return load_model("gemma-3-270m", dtype="float32", device="cpu", attn_implementation="sdpa")


@pytest.fixture(scope="session")
def qwen2():
    return load_model("qwen2.5-coder-0.5b-instruct", dtype="float32", device="cpu", attn_implementation="sdpa")
