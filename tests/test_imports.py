"""No import cycle between vitkit's modules: each layer imports only from the layers below it.

The graph is read from the source with ``ast``, without importing anything: an edge for every import at module
level (inside ``if``/``try`` blocks too), none for imports inside functions, which run only when called, or under
``if TYPE_CHECKING:``, which never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: not in function bodies, not under TYPE_CHECKING."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            pending += node.orelse if is_type_checking(node.test) else node.body + node.orelse
        elif isinstance(node, ast.ClassDef):
            pending += node.body
        elif isinstance(node, (ast.Try, ast.With)):
            pending += [stmt for field in ("body", "orelse", "finalbody") for stmt in getattr(node, field, [])]
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return found


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The vitkit modules ``node`` imports: ``from package import submodule`` names the submodule."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    targets = {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in targets if name in known} | ({base} if base in known and not targets <= known else set())


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the vitkit modules it imports at module level, for every module under ``root``/vitkit."""
    files = {module_name(path, root): path for path in sorted((root / "vitkit").rglob("*.py"))}
    known = set(files)
    return {
        module: set().union(
            *(
                imported_modules(node, module, path.name == "__init__.py", known)
                for node in module_level_imports(ast.parse(path.read_text(), filename=str(path)))
            )
        )
        - {module}
        for module, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search that meets a module still on its path."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_between_vitkit_modules() -> None:
    cycle = find_cycle(import_graph(SRC))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
