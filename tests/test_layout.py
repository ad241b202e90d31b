"""Packages by layer, imports pointing one way only (issue 15).

Every module under ``lib/`` is parsed with ``ast``; every ``Import`` / ``ImportFrom`` node counts,
including the ones inside functions (lazy imports). Layers, lowest first:
kv, data, report, lab, studies, tools. A module imports only its own package and lower layers; a
study imports another study only through the shared modules ``lib.studies.priming`` and
``lib.studies.conditions`` (modules of one sub-package, e.g. ``studies/latent/``, are one family);
the module graph has no cycle.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
LAYERS = ("kv", "data", "report", "lab", "studies", "tools")
SHARED_STUDIES = ("lib.studies.priming", "lib.studies.conditions")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The lib module ``name`` refers to (a module, or a package's ``__init__``), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str) -> set[str]:
    """The lib modules ``mod`` imports anywhere in its body (``from pkg import submodule`` counts as
    the submodule)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for n in names:
            if n == "lib" or n.startswith("lib."):
                target = _resolve(n)
                if target and target != mod:
                    out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _family(mod: str) -> str:
    """``lib.studies.<family>``: a study module, or the sub-package it belongs to."""
    return ".".join(mod.split(".")[:3])


def test_every_module_is_in_a_layer():
    loose = [m for m in MODULES if m != "lib" and _layer(m) is None]
    assert not loose, f"modules outside the layer packages {LAYERS}: {loose}"


def test_imports_point_down_only():
    bad = [(m, t) for m, ts in GRAPH.items() if _layer(m) is not None for t in ts
           if _layer(t) is None or _layer(t) > _layer(m)]
    assert not bad, "imports from a higher layer (or from lib's root):\n" + "\n".join(f"  {m} -> {t}" for m, t in bad)


def test_studies_share_only_priming_and_conditions():
    bad = [(m, t) for m, ts in GRAPH.items() if m.startswith("lib.studies.") for t in ts
           if t.startswith("lib.studies.") and _family(t) != _family(m) and _family(t) not in SHARED_STUDIES]
    assert not bad, "a study imports another study other than through priming/conditions:\n" + \
        "\n".join(f"  {m} -> {t}" for m, t in bad)


def test_no_import_cycles():
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.startswith("lib.studies.")))
def test_study_docstring_names_its_experiments(mod):
    doc = ast.get_docstring(ast.parse(MODULES[mod].read_text())) or ""
    assert re.search(r"exp\d{2}", doc), f"{mod}: its docstring names no expNN"


def test_the_checker_sees_lazy_imports(tmp_path):
    """The walk includes imports inside functions (a lazy import is still a dependency)."""
    assert "lib.kv.engine" in GRAPH["lib.studies.priming"]  # imported inside priming's functions only
