"""The layout: every module imports on its own, and the project's import graph has no cycle.

A cycle among modules works or fails depending on which module a program happens to import
first (``pipeline`` and ``evaluation`` once dodged theirs with a function-level import), so
both checks cover function-level imports as well as the ones at the top of a file.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("anomaly", "baselines")


# --------------------------------------------------------------------------- the import graph
def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``, by dotted name (a package by its own)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _prefixes(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that importing ``name`` needs initialised, from every ``import``
    statement in the file, at any depth (function bodies included).

    ``import a.b.c`` and ``from a.b.c import x`` need ``a``, ``a.b`` and ``a.b.c``; in
    ``from a.b import c`` the module ``a.b.c`` when it exists, else the attribute ``c`` of
    ``a.b``. A package the importer lives in is already being imported when the importer runs,
    so passing through it is no dependency; taking an attribute from it is.
    """
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    own_packages = set(_prefixes(name)[:-1]) | ({name} if is_package else set())
    needed: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                needed.update(p for p in _prefixes(alias.name) if p not in own_packages)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            needed.update(p for p in _prefixes(source) if p not in own_packages)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                needed.add(submodule if submodule in modules else source)
    return (needed & set(modules)) - {name}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: the project modules it imports}`` for every module of ``packages``."""
    modules = project_modules(root, packages)
    return {name: module_imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[m0, m1, ..., m0]`` of ``graph`` (depth-first), or ``None`` when it has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, pending = [start], [iter(sorted(graph[start]))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                done.add(path.pop())
                pending.pop()
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                pending.append(iter(sorted(graph.get(following, ()))))
    return None


def _write_package(root: Path, listing: str) -> Path:
    """Write the files of ``listing`` under ``root``: each file is a ``--- path`` line followed
    by its source."""
    for block in textwrap.dedent(listing).split("--- ")[1:]:
        relative, _, source = block.partition("\n")
        path = root / relative.strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


FUNCTION_LEVEL = """
    --- pkg/__init__.py
    from pkg.a import f
    --- pkg/a.py
    def f():
        from pkg.b import g
        return g
    --- pkg/b.py
    import pkg.a
    g = 1
"""
PACKAGE_ATTRIBUTE = """
    --- pkg/__init__.py
    from pkg.a import f
    VERSION = 1
    --- pkg/a.py
    from pkg import VERSION
    f = VERSION
"""
RELATIVE = """
    --- pkg/__init__.py
    --- pkg/sub/__init__.py
    --- pkg/sub/a.py
    from . import b
    --- pkg/sub/b.py
    from ..sub.a import x
"""
NO_CYCLE = """
    --- pkg/__init__.py
    from pkg.a import f
    from pkg.b import g
    --- pkg/a.py
    from pkg.b import g
    import pkg.c
    f = g
    --- pkg/b.py
    import os
    g = os.sep
    --- pkg/c.py
"""


@pytest.mark.parametrize(
    ("listing", "cycle"),
    [
        (FUNCTION_LEVEL, ["pkg.a", "pkg.b", "pkg.a"]),
        (PACKAGE_ATTRIBUTE, ["pkg", "pkg.a", "pkg"]),
        (RELATIVE, ["pkg.sub.a", "pkg.sub.b", "pkg.sub.a"]),
        (NO_CYCLE, None),  # a package importing its modules, which import each other
    ],
    ids=["function-level import", "package attribute", "relative imports", "no cycle"],
)
def test_cycle_check_on_a_small_package(tmp_path, listing, cycle):
    root = _write_package(tmp_path, listing)
    assert find_cycle(import_graph(root, ("pkg",))) == cycle


def test_import_graph_resolves_modules_attributes_and_packages(tmp_path):
    root = _write_package(tmp_path, NO_CYCLE)
    assert import_graph(root, ("pkg",)) == {
        "pkg": {"pkg.a", "pkg.b"},
        "pkg.a": {"pkg.b", "pkg.c"},  # "from pkg.b import g": the module, not the package
        "pkg.b": set(),  # standard-library imports are not project modules
        "pkg.c": set(),
    }


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph(ROOT, PACKAGES)
    # The graph is read for real: a model imports the contract, a command the bundle code.
    assert "anomaly.models.base" in graph["anomaly.models.patchcore"]
    assert "anomaly.artifacts.bundle" in graph["anomaly.commands.fit"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# --------------------------------------------------------------------------- imports on its own
# A fresh interpreter imports the third-party packages the project uses (their top level only,
# never a project module), then forks one child per project module, which imports that module
# and nothing else of the project. A child is a fresh interpreter as far as the project's own
# modules go, which is what an import-order bug or a cycle depends on; starting a new Python
# and importing torch and timm again for every module would take minutes on two cores.
_IMPORT_EACH = r"""
import importlib, json, os, sys, traceback
modules, project, third_party = json.loads(sys.stdin.read())
assert not [m for m in sys.modules if m.split(".")[0] in project], "project module preloaded"
for name in third_party:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # an optional package: the module that needs it reports it below
failures = {}
for name in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(2, 1)  # the parent's stdout carries the result only
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            with os.fdopen(write, "w") as pipe:
                pipe.write(traceback.format_exc())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status:
        failures[name] = message or f"exit status {status}"
print(json.dumps(failures))
"""


def _third_party_packages(modules: dict[str, Path], project: tuple[str, ...]) -> list[str]:
    """Top-level names of the non-standard packages the project's modules import."""
    names: set[str] = set()
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return sorted(names - set(sys.stdlib_module_names) - set(project) - {"__future__"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_on_its_own():
    modules = project_modules(ROOT, PACKAGES)
    request = [sorted(modules), list(PACKAGES), _third_party_packages(modules, PACKAGES)]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{text}" for name, text in failures.items())
