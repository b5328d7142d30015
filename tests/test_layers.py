"""The package's shape, pinned: a lower layer never imports an upper one, and no function is longer than 80 lines.

Layers, lowest first: core (data, model, selection, trainer, ...) < artifacts (record, packs, checkpoint, ...) <
report (tables, claims, figures) < run (experiment, cli, predict, rerun, bank, bank_run) < bench. The top-level `python -m` shims
(tables.py, benchmark.py, ...) are entry points over all of them.
"""
import ast
import os
import re

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bitfit_experiments")
RANK = {"core": 0, "artifacts": 1, "report": 2, "run": 3, "bench": 4, "entry": 5}


def declared_layer(path):
    """The first word of the module docstring's 'Layer:' line, None without one."""
    doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())) or ""
    m = re.search(r"^Layer: (\w+)", doc, re.M)
    return m.group(1) if m else None


# The top-level modules that declare themselves "run" (the rest there are `python -m` shims: entry points). Read from
# the docstrings, so that a new run module is held to its layer without being listed here; the package's
# __init__ (a docstring and a version) sits with them.
RUN_MODULES = {f[:-3] for f in os.listdir(PKG) if f.endswith(".py")
               and declared_layer(os.path.join(PKG, f)) == "run"} | {"__init__"}


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


def test_the_run_layer_is_read_from_the_docstrings():
    assert {"experiment", "cli", "predict", "rerun", "bank", "bank_run", "instruct", "instruct_cli",
            "bank_plan"} <= RUN_MODULES
    assert "tables" not in RUN_MODULES  # a shim


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


def test_every_command_line_flag_has_help_text():
    """Hugging Face examples' rule: `-h` documents every flag of every command (run_glue, predict, the reports, the
    benchmarks). Read from the source, so a flag added without help fails here."""
    bare = []
    for rel, path in modules():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument" and not any(k.arg == "help" for k in node.keywords)):
                bare.append(f"{rel}:{node.lineno}")
    assert not bare, "add_argument without help=: " + ", ".join(bare)
