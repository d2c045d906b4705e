"""The package's layout rules (docs/design.md): imports go down only, every argument check
of the core lives in diffeig/_checks.py, the recipe's rooms do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "diffeig"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
COMPILED = {"diffeig._C"}  # the native extension: no Python imports of its own


def _target(name: str) -> str | None:
    """The module of diffeig that an imported name resolves to (the longest prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Modules of diffeig that ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # "from pkg import mod" imports the submodule pkg.mod where there is one, and
            # otherwise a name defined by pkg itself
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [n if n in MODULES or n in COMPILED else base for n in subs]
        for n in names:
            t = None if n in COMPILED else _target(n)
            if t and t != module:
                found.add(t)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_reader_sees_the_imports():
    assert "diffeig._checks" in GRAPH["diffeig._eigh"]
    assert "diffeig.ncut._dense" in GRAPH["diffeig.ncut"]
    assert "diffeig.dncut.train.loop" in GRAPH["diffeig.dncut.train"]


def test_no_import_circles():
    assert _circles() == []


def test_checks_is_the_floor_under_ops():
    floor0 = {"diffeig._extension", "diffeig._reference", "diffeig._scaling", "diffeig._tolerances"}
    assert GRAPH["diffeig._checks"] <= floor0
    assert GRAPH["diffeig._extension"] <= {"diffeig._build_info"}  # written by setup.py
    # the numbers every solver and twin share, and exact rescaling, import nothing
    assert GRAPH["diffeig._tolerances"] == set()
    assert GRAPH["diffeig._scaling"] == set()
    assert GRAPH["diffeig._reference"] <= {"diffeig._tolerances"}


def test_the_library_never_imports_the_recipe():
    core = [m for m in MODULES if not m.startswith("diffeig.dncut")]
    for m in core:
        assert not any(t.startswith("diffeig.dncut") for t in GRAPH[m]), m


@pytest.mark.parametrize(("room", "other"), [("train", "eval"), ("eval", "train")])
def test_recipe_rooms_do_not_import_each_other(room, other):
    for m in MODULES:
        if m.startswith(f"diffeig.dncut.{room}"):
            bad = [t for t in GRAPH[m] if t.startswith(f"diffeig.dncut.{other}")]
            assert bad == [], (m, bad)


# The floor of checks (the dense and the sparse half); op-contract mirrors (the reference
# twins' checks of csrc/checks.h) and the extension's build-time torch check are not
# argument checks of public functions.
NOT_ARGUMENT_CHECKS = {
    "diffeig._checks",
    "diffeig._sparse_checks",
    "diffeig._reference",
    "diffeig._extension",
}


def test_argument_checks_live_in_the_floor_of_checks():
    offenders = []
    for m, path in MODULES.items():
        if m.startswith("diffeig.dncut") or m in NOT_ARGUMENT_CHECKS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in ("ValueError", "TypeError"):
                    offenders.append(f"{m}:{node.lineno}")
    assert offenders == []


def test_every_module_says_what_it_is_for():
    missing = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
