"""The house rules a reader relies on, checked over the source (docs/ARCHITECTURE-style promises
that would otherwise rot): imports go one way (profiles -> simulator -> planner -> executor ->
dashboard) with no cycle between modules, no function runs over 80 lines, and no function takes
more than 6 positional parameters (builders take the rest by keyword)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = ("profiles", "simulator", "planner", "executor", "dashboard")
#: product code and the benchmarks (the tests are held to none of these)
CHECKED = (*LAYERS, "bench")
MAX_LINES = 80
MAX_POSITIONAL = 6


def _sources() -> dict[str, Path]:
    """Dotted module name -> file, for the checked folders."""
    out = {}
    for top in CHECKED:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


SOURCES = _sources()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in SOURCES.items()}


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The checked modules ``name`` imports (anywhere in the file, lazy imports included; not those
    under ``if TYPE_CHECKING:``, which never run)."""
    package = name if SOURCES[name].name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in SOURCES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, tree) for name, tree in TREES.items()}


def _layer(name: str) -> int:
    return LAYERS.index(name.split(".")[0])


def test_the_sources_are_found():
    assert {"planner.plan", "simulator.costs", "executor.runtime", "profiles.contract"} <= set(SOURCES)
    assert "simulator.costs" in GRAPH["planner.plan"]


def test_imports_go_one_way():
    back = [
        f"{a} imports {b}"
        for a, deps in GRAPH.items()
        if not a.startswith("bench")
        for b in deps
        if b.startswith("bench") or _layer(b) > _layer(a)
    ]
    assert not back, "imports against the layering profiles -> simulator -> planner -> executor -> dashboard:\n" + (
        "\n".join(back)
    )


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(a: str) -> list[str] | None:
        state[a] = 1
        path.append(a)
        for b in sorted(GRAPH[a]):
            if state.get(b) == 1:
                return path[path.index(b) :] + [b]
            if b not in state and (cycle := visit(b)):
                return cycle
        path.pop()
        state[a] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _functions(trees: dict[str, ast.Module]):
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{name}:{node.lineno} {node.name}", node


def _positional(n: ast.FunctionDef) -> int:
    return len([a for a in (*n.args.posonlyargs, *n.args.args) if a.arg not in ("self", "cls")])


def _long(trees: dict[str, ast.Module]) -> list[str]:
    spans = ((w, n.end_lineno - n.lineno + 1) for w, n in _functions(trees))
    return [f"{w} ({lines} lines)" for w, lines in spans if lines > MAX_LINES]


def _wide(trees: dict[str, ast.Module]) -> list[str]:
    return [f"{w} ({_positional(n)})" for w, n in _functions(trees) if _positional(n) > MAX_POSITIONAL]


def test_no_function_over_80_lines():
    assert not _long(TREES), "functions over 80 lines:\n" + "\n".join(_long(TREES))


def test_no_function_takes_more_than_6_positional_parameters():
    wide = _wide(TREES)
    assert not wide, "functions with more than 6 positional parameters (take the rest by keyword):\n" + "\n".join(wide)


def test_the_checks_catch_what_they_forbid():
    """Each rule fails on a source that breaks it (a check that cannot fail checks nothing)."""
    body = "    x = 1\n" * MAX_LINES
    method = body.replace("    ", "        ")
    source = f"def f(a, b, c, d, e, f, g):\n{body}\nclass C:\n    def g(self, a, b, c, d, e, f):\n{method}"
    bad = {"m": ast.parse(source)}
    assert _wide(bad) == ["m:1 f (7)"]
    assert _long(bad) == ["m:1 f (81 lines)", f"m:{MAX_LINES + 4} g (81 lines)"]
    ok = {"m": ast.parse("def f(a, b, c, d, e, f, *, g, h):\n    return 1\n")}
    assert not _wide(ok) and not _long(ok)
    assert _layer("executor.runtime") > _layer("planner.plan")  # planner importing executor is back
