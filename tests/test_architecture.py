"""The layout holds: imports point down (estimators -> inference -> models), loops over data live in
inference/, and functions fit on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bayesclust"
LAYERS = {"estimators": 2, "inference": 1, "models": 0}
MAX_LINES = 60  # body lines of a function, its docstring not counted


def _modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).glob("*.py"))


def _imported_layers(path: Path) -> set[str]:
    """The package layers a module under bayesclust/<layer>/ imports from (relative or absolute)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts: list[str] = []
            if node.level == 1:
                parts = [path.parent.name] + (node.module or "").split(".")
            elif node.level == 2:
                parts = (node.module or "").split(".")
            elif node.module and node.module.startswith("bayesclust."):
                parts = node.module.split(".")[1:]
            if parts and parts[0] in LAYERS:
                out.add(parts[0])
            if parts == [""] or (node.level == 2 and not node.module):
                out.update(a.name for a in node.names if a.name in LAYERS)
    return out


@pytest.mark.parametrize("layer", ["models", "inference"])
def test_imports_point_down(layer):
    wrong = {
        f"{p.name} -> {other}"
        for p in _modules(layer)
        for other in _imported_layers(p)
        if LAYERS[other] > LAYERS[layer]
    }
    assert not wrong, f"{layer}/ imports a layer above it: {sorted(wrong)}"


def _function_lengths():
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    n -= first.end_lineno - first.lineno + 1
                yield f"{path.relative_to(PKG)}:{node.lineno} {node.name}", n


def test_functions_fit_on_a_screen():
    long = [f"{name} ({n} lines)" for name, n in _function_lengths() if n > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def _loops_over_data(path: Path) -> list[str]:
    """``for`` loops over chunks / batches / slices of the data, or over range(start, stop, step)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.For | ast.comprehension):
            continue
        it = node.iter
        if isinstance(it, ast.Call):
            fn = it.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in {"slices", "chunks", "batches"} or (name == "range" and len(it.args) == 3):
                found.append(f"{path.relative_to(PKG)}:{getattr(node, 'lineno', it.lineno)}")
    return found


@pytest.mark.parametrize("layer", ["estimators", "models"])
def test_no_loop_over_data_outside_inference(layer):
    loops = [hit for p in _modules(layer) for hit in _loops_over_data(p)]
    assert not loops, f"loops over data belong in inference/: {loops}"
