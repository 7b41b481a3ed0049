"""The runtime's layering: no module under ``runtime/onex`` imports, even lazily, a module that imports it back,
and none grows past a size a newcomer can read.

Imports are read with ``ast`` from the source, so an import inside a function (the usual way a circle hides) counts
as much as one at the top of the file, and nothing is imported to find out. One under ``if TYPE_CHECKING:`` counts
too: it cannot fail at run time, but the layering it states is the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "runtime" / "onex"

MAX_LINES = 1_200


def module_name(path: Path) -> str:
    parts = ("onex", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``onex`` modules ``path`` (module ``name``) imports anywhere in its body, as names in ``known``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            # `from onex import store` imports the module onex.store; `from onex.store import Store` imports onex.store.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # The nearest module that exists: `onex.contracts.Contract` is the module onex.contracts.
            while target and target not in known:
                target = target.rpartition(".")[0]
            # Importing `onex.contracts.models` runs `onex.contracts` (its __init__) first, so an import from outside
            # a package reaches its __init__ too. From inside it does not count: the package's own __init__ is
            # already running, and importing `onex` (the facade over everything) is implied for every module.
            while target and target != "onex" and not name.startswith(target + "."):
                if target != name:
                    found.add(target)
                target = target.rpartition(".")[0]
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(path, name, known) for name, path in found.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    frontier = [start]
    while frontier:
        for target in edges.get(frontier.pop(), ()):
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def group(edges: dict[str, set[str]], node: str) -> set[str]:
    """The modules that import ``node`` and that it imports, each through the other's imports."""
    return {other for other in reachable(edges, node) if node in reachable(edges, other)}


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """One circle per group of modules that import each other: the shortest through the group's first module.

    A group (a strongly connected component) can hold many circles; one is enough to show where to cut, and
    listing them all grows exponentially with the group.
    """
    reach = {node: reachable(edges, node) for node in edges}
    found: list[tuple[str, ...]] = []
    grouped: set[str] = set()
    for node in sorted(edges):
        if node in grouped or node not in reach[node]:
            continue
        group = {other for other in reach[node] if node in reach.get(other, set())}
        grouped |= group
        # Breadth first inside the group, so the circle printed is a shortest one.
        paths: list[tuple[str, ...]] = [(node,)]
        while paths:
            path = paths.pop(0)
            targets = sorted(edges[path[-1]] & group)
            if node in targets:
                found.append(path)
                break
            paths += [(*path, target) for target in targets if target not in path]
    return found


def test_the_graph_sees_top_level_function_level_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from onex.contracts.models import Step\nimport onex.envelope\n\n\n"
        "def f() -> None:\n    from onex import store\n    from . import fsm\n"
    )
    known = {"onex", "onex.contracts", "onex.contracts.models", "onex.envelope", "onex.store", "onex.fsm"}

    # From outside onex.contracts, importing its models module runs the package's __init__ too.
    assert imported(source, "onex.m", known) == {
        "onex.contracts",
        "onex.contracts.models",
        "onex.envelope",
        "onex.store",
        "onex.fsm",
    }
    # From inside, the package's own __init__ is already running; `from . import fsm` is onex.contracts.fsm.
    assert imported(source, "onex.contracts.m", known) == {"onex.contracts.models", "onex.envelope", "onex.store"}
    edges = graph()
    assert "onex._sqlite" in edges["onex.stores"]  # imported inside open_store
    assert "onex.store" in edges["onex._sqlite"]
    assert "onex.contracts" in edges["onex.nodes"]


def test_the_cycle_finder_shows_one_shortest_circle_per_group_of_modules_importing_each_other() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "b"}, "d": {"e"}, "e": {"d", "f"}, "f": set(), "g": {"a"}}

    assert cycles(edges) == [("a", "b", "c"), ("d", "e")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    edges = graph()
    found = cycles(edges)
    shown = [
        f"{' -> '.join((*cycle, cycle[0]))}\n  (one circle among: {', '.join(sorted(group(edges, cycle[0])))})"
        for cycle in found
    ]
    assert found == [], "import cycles:\n" + "\n".join(shown)


def test_contracts_sit_below_everything_that_runs_them() -> None:
    """The contract language depends on the envelope's names, the error tree, the declared settings (a contract's
    ``${ONEX_...}`` may name only those) and its models' base (``onex._model_reads``) only: nodes, the FSM and the
    runtime import it, never the other way round (the orchestrator's step planning lives in
    ``onex.contracts.checks``)."""
    edges = graph()
    inside = {name for name in edges if name == "onex.contracts" or name.startswith("onex.contracts.")}
    outside = set().union(*(edges[name] for name in inside)) - inside

    assert outside == {"onex._model_reads", "onex.envelope", "onex.exceptions", "onex.settings"}


def test_the_meters_every_layer_counts_with_import_nothing_of_onex() -> None:
    assert graph()["onex.meters"] == set()


def test_no_module_is_longer_than_a_newcomer_can_read() -> None:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}

    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
