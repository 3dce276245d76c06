"""The package's shape: small modules, imports that run one way, a loop short enough to teach.

These read the source with ``ast``; they fail when a module grows past the limit, when two
modules import each other (directly or around a circle, counting imports inside functions), or
when a ``tlcourse`` import hides inside a function to dodge such a circle.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from tlcourse.train import evaluate, train_one_epoch

PACKAGE = Path(__file__).resolve().parents[1] / "tlcourse"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """``(imported tlcourse module, inside a function?)`` for every import in ``path`` (those under
    ``if TYPE_CHECKING:`` included: a cycle for the type checker is a cycle for the reader)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom) and node.module in known:  # from pkg import submodule
            names += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        inner, up = False, node
        while up in parents:
            up = parents[up]
            inner = inner or isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef))
        found += [(n, inner) for n in names if n in known]
    return found


def graph() -> dict[str, set[str]]:
    mods = sources()
    return {m: {t for t, _ in imports(p, set(mods)) if t != m} for m, p in mods.items()}


def test_no_module_is_over_the_line_limit():
    long = {m: n for m, p in sources().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules at their seams (limit {MAX_LINES} lines): {long}"


def test_no_tlcourse_import_hides_inside_a_function():
    mods = sources()
    hidden = [(m, t) for m, p in mods.items() for t, inner in imports(p, set(mods)) if inner]
    assert hidden == [], "import these at module top (only heavy optional libraries may be lazy)"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # A package's __init__ re-exports its submodules; a submodule importing its own package's
    # __init__ would close a circle, and is counted as one.
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_training_does_not_import_the_multi_process_plug_in():
    edges = graph()
    train_modules = [m for m in edges if m == "tlcourse.train" or m.startswith("tlcourse.train.")]
    assert all("tlcourse.experiments.distributed" not in edges[m] for m in train_modules)
    assert "tlcourse.train" in edges["tlcourse.experiments.distributed"]


def test_the_fresh_process_that_checks_fits_exports_stays_light():
    """``fit`` checks its exports in a fresh ``python -m tlcourse.inference`` (a few seconds of imports
    for every run): that module must not reach the applications (the own-data pipeline, the advisor)."""
    edges, seen, todo = graph(), set(), ["tlcourse.inference"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}  # importing a.b.c runs a and a.b first
        for nxt in (edges.get(module, set()) | parents) - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert not [m for m in seen if m.startswith("tlcourse.experiments")], sorted(seen)


@pytest.mark.parametrize("function, max_params", [(train_one_epoch, 7), (evaluate, 7)])
def test_the_taught_loop_fits_on_one_screen(function, max_params):
    lines = inspect.getsource(function).splitlines()
    assert len(lines) <= 30, f"{function.__name__} is {len(lines)} lines"
    assert len(inspect.signature(function).parameters) <= max_params
