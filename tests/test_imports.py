"""The modules of src/quillgpt import one way: no import cycle, at module level or inside a function.

An import inside a function still runs (the first time the function is called), so a cycle hidden
in a function is still a cycle: it only moves the failure from import time to call time, and a
reader of either module can no longer tell which one sits above the other. This test builds the
graph from the source with ``ast`` (nothing is imported) and prints the first cycle it finds.

Not counted, on purpose:
- ``if TYPE_CHECKING:`` blocks, which never run (they exist for type hints only);
- the implicit import of a package's ``__init__`` when one of its submodules is imported
  (``from quillgpt.models.gpt import GPT`` runs ``models/__init__``): every package's
  ``__init__`` imports its own submodules, so counting it would make every package a "cycle".
  ``from quillgpt.models import build_model`` (a name defined in the ``__init__``) is an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "quillgpt"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level, in functions, in classes; not TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:  # only the else branch runs
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the quillgpt modules it imports (resolved to the most specific module that exists)."""
    files = {module_name(path, src): path for path in sorted((src / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                candidates = bases
            else:
                if node.level:  # relative: from . import x / from ..y import z
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from a.b import c` imports module a.b.c when it exists, else the name c of a.b
                candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                              for alias in node.names]
            for target in candidates:
                while target and target not in files:  # `import a.b.c` of a name: fall back to a.b
                    target = target.rpartition(".")[0]
                if target and target != name and (target == package or target.startswith(package + ".")):
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search that keeps the current path."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_src_modules_import_one_way() -> None:
    graph = import_graph()
    assert len(graph) > 50, f"found only {len(graph)} modules under {SRC / PACKAGE}: wrong path?"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among src/quillgpt modules: " + " -> ".join(cycle or [])


def test_the_cli_root_is_imported_by_no_module() -> None:
    """quillgpt.cli sits on top: the command modules never reach back into it."""
    importers = sorted(name for name, targets in import_graph().items() if "quillgpt.cli" in targets)
    assert importers == ["quillgpt.__main__"], importers


def test_command_modules_import_only_the_shared_ones() -> None:
    """quillgpt.commands: each command group is a leaf; common.py and training.py are what they share."""
    shared = {"quillgpt.commands.common", "quillgpt.commands.training"}
    graph = import_graph()
    leaves = [name for name in graph if name.startswith("quillgpt.commands.") and name not in shared]
    assert len(leaves) >= 9, leaves
    reached = {name: sorted(t for t in graph[name] if t.startswith("quillgpt.commands") and t not in shared)
               for name in leaves}
    assert not any(reached.values()), {name: targets for name, targets in reached.items() if targets}


def test_the_walk_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The checker itself: a cycle made only of a function-level import is found and printed."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from quillgpt.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("def g():\n    from quillgpt import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from quillgpt import a\n")
    graph = import_graph(tmp_path)
    assert graph["quillgpt.a"] == {"quillgpt.sub.b"}
    assert graph["quillgpt.sub.b"] == {"quillgpt.a"}
    assert graph["quillgpt.c"] == set()  # TYPE_CHECKING only
    assert find_cycle(graph) == ["quillgpt.a", "quillgpt.sub.b", "quillgpt.a"]
