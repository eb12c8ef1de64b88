"""The layers import only downward: engine <- wire <- services <- clients, load tests, benchmarks."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each layer and the project packages it must never import (those above it).
FORBIDDEN = {
    "scoring_engine": {"wire", "services", "clients", "loadtests", "benchmarks", "cvh"},
    "wire": {"services", "clients", "loadtests", "benchmarks"},
    "services": {"clients", "loadtests", "benchmarks"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    upward = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        reached = imported_packages(path) & FORBIDDEN[layer]
        if reached:
            upward[str(path.relative_to(ROOT))] = sorted(reached)
    assert upward == {}, f"{layer} imports a layer above it: {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom clients.client import CvhClient\n")
    assert imported_packages(module) & FORBIDDEN["services"] == {"clients"}
