"""The package's shape, pinned: a lower layer never imports an upper one, and no function is longer than 80 lines.

Layers, lowest first: core (data, model, selection, trainer, ...) < artifacts (record, packs, checkpoint, ...) <
report (tables, claims, figures) < run (experiment, cli, predict, rerun, bank, bank_run) < bench. The top-level `python -m` shims
(tables.py, benchmark.py, ...) are entry points over all of them.
"""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bitfit_experiments")
RANK = {"core": 0, "artifacts": 1, "report": 2, "run": 3, "bench": 4, "entry": 5}
RUN_MODULES = {"experiment", "cli", "predict", "rerun", "bank", "bank_run", "__init__"}


def modules():
    for root, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                yield os.path.relpath(path, PKG), path


def layer_of(rel):
    """'core/data.py' -> core; 'experiment.py' -> run; 'tables.py' (a shim) -> entry."""
    parts = rel.replace(os.sep, "/").split("/")
    if len(parts) > 1:
        return parts[0]
    return "run" if parts[0][:-3] in RUN_MODULES else "entry"


def imported_layers(path, rel):
    """The layers a module imports from (relative imports resolved against its own place in the package)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    here = rel.replace(os.sep, "/").split("/")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            names = target or [a.name for a in node.names]
            first = names[0] if names else ""
            if first in ("core", "artifacts", "report", "bench"):
                out.add(first)
            elif first:
                out.add("run" if first in RUN_MODULES else "entry")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitfit_experiments."):
            out.add(node.module.split(".")[1])
    return out


@pytest.mark.parametrize("rel,path", list(modules()))
def test_no_module_imports_an_upper_layer(rel, path):
    mine = layer_of(rel)
    upper = {layer for layer in imported_layers(path, rel) if layer in RANK and RANK[layer] > RANK[mine]}
    assert not upper, f"{rel} ({mine}) imports the upper layer(s) {sorted(upper)}"


def test_every_module_docstring_names_its_layer():
    missing = [rel for rel, path in modules() if layer_of(rel) not in ("entry",) and not rel.endswith("__init__.py")
               and "Layer:" not in (ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())) or "")]
    assert not missing, f"module docstrings without a 'Layer:' line: {missing}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for rel, path in modules():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions longer than 80 lines: " + "; ".join(long)


def test_the_layer_check_sees_a_violation(tmp_path):
    """The checker itself: a core module importing from report is caught."""
    bad = tmp_path / "core" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from ..report.tables import TASKS\n")
    assert imported_layers(str(bad), "core/bad.py") == {"report"}
