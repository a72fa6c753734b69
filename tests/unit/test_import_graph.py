"""The import graph of ``pipeline/``, ``operators/`` and ``benchmarks/``, read from the source with ``ast``.

The arrows point one way: no import cycle (module-level imports, those under ``if TYPE_CHECKING:`` included);
the product never imports its benchmarks at module level; ``operators/`` knows no Kafka and no runtime;
``pipeline/kafka/`` knows nothing of the live runtime; the message formats (``pipeline/wire/``) depend on the
operator alone; a benchmark module imports no other benchmark module's private names.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "operators", "benchmarks")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``: dotted name -> file."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def _statements(tree: ast.Module, everywhere: bool):
    """Import statements: module level only (descending into if/try/with blocks, never into a function or a
    class body), or ``everywhere``."""
    if everywhere:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo[:0] = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                        *(s for h in getattr(node, "handlers", []) for s in h.body)]


def imports(source: str, module: str, is_package: bool, known: set[str], everywhere: bool = False) -> set[tuple]:
    """What ``module`` imports: (target module, imported name or None). A ``from X import y`` whose ``X.y`` is a
    known module is an import of that module (``from . import x`` too); relative forms are resolved."""
    found = set()
    for node in _statements(ast.parse(source), everywhere):
        if isinstance(node, ast.Import):
            found |= {(alias.name, None) for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            found.add((sub, None) if sub in known else (base, alias.name))
    return found


def graph(root: Path = ROOT, everywhere: bool = False) -> dict[str, set[tuple]]:
    """Module -> its imports (see ``imports``), for every module of PACKAGES."""
    mods = modules(root)
    return {m: imports(p.read_text(), m, p.name == "__init__.py", set(mods), everywhere) for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph, as the path ``[a, b, ..., a]``, or None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _arrows(g: dict[str, set[tuple]], source: str, targets: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, imps in g.items() if _inside(m, source)
                  for t, _ in imps if any(_inside(t, x) for x in targets))


# The finder and the reader, on graphs and sources made up here: the checks below can fail.

@given(st.dictionaries(st.integers(0, 7), st.sets(st.integers(0, 7), max_size=4), max_size=8))
def test_find_cycle_finds_a_real_cycle_exactly_when_the_graph_has_one(raw):
    edges = {str(a): {str(b) for b in bs} for a, bs in raw.items()}
    cycle = find_cycle(edges)
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    assert (cycle is None) == acyclic
    if cycle is not None:
        assert cycle[0] == cycle[-1] and len(cycle) >= 2
        assert all(b in edges.get(a, ()) for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_reports_the_cycle_it_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_reads_module_level_relative_and_type_checking_imports_but_not_function_bodies():
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import pkg.a\n"
        "from . import b\n"
        "from .c import thing\n"
        "from ..top import name\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.sub.d import D\n"
        "try:\n"
        "    import pkg.e\n"
        "except ImportError:\n"
        "    pass\n"
        "def later():\n"
        "    import pkg.lazy\n"
        "class K:\n"
        "    from pkg import f\n"
    )
    known = {"pkg", "pkg.a", "pkg.sub", "pkg.sub.b", "pkg.sub.c", "pkg.sub.d", "pkg.e", "pkg.lazy", "pkg.f"}
    got = imports(source, "pkg.sub.mod", False, known)
    assert {t for t, _ in got} == {"__future__", "typing", "pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.top",
                                   "pkg.sub.d", "pkg.e"}
    assert ("pkg.sub.c", "thing") in got and ("pkg.top", "name") in got
    assert {t for t, _ in imports(source, "pkg.sub.mod", False, known, everywhere=True)} >= {"pkg.lazy", "pkg.f"}
    assert ("pkg.sub.b", None) in imports("from . import b\n", "pkg.sub", True, {"pkg.sub.b"})


def test_the_rules_catch_a_cycle_and_an_upward_arrow_in_a_tree_made_for_it(tmp_path):
    for name, text in {"pipeline/__init__.py": "", "pipeline/kafka/__init__.py": "",
                       "pipeline/kafka/topics.py": "from pipeline.live.clients import make_clients\n",
                       "pipeline/live/__init__.py": "",
                       "pipeline/live/clients.py": "from pipeline.kafka import topics\n",
                       "pipeline/cli.py": "import benchmarks.suite\n",
                       "operators/__init__.py": "import kafka\n", "benchmarks/__init__.py": "",
                       "benchmarks/suite.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    g = graph(tmp_path)
    cycle = find_cycle({m: {t for t, _ in imps if t in g} for m, imps in g.items()})
    assert cycle is not None and set(cycle) == {"pipeline.kafka.topics", "pipeline.live.clients"}
    assert _arrows(g, "pipeline.kafka", ("pipeline.live",)) == ["pipeline.kafka.topics -> pipeline.live.clients"]
    assert _arrows(g, "pipeline", ("benchmarks",)) == ["pipeline.cli -> benchmarks.suite"]
    assert _arrows(g, "operators", ("kafka",)) == ["operators -> kafka"]


# The rules, on the code.

@pytest.fixture(scope="module")
def module_level():
    g = graph()
    assert {"pipeline.live.runner", "pipeline.kafka.topics", "operators.forecaster", "benchmarks.suite",
            "pipeline.wire.ticks"} <= set(g)  # the walk found the tree
    assert any(t == "pipeline.wire.ticks" for t, _ in g["pipeline.live.batch"])
    return g


@pytest.fixture(scope="module")
def everywhere():
    return graph(everywhere=True)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(module_level, package):
    edges = {m: {t for t, _ in imps if t in module_level and _inside(t, package)}
             for m, imps in module_level.items() if _inside(m, package)}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_across_the_packages(module_level):
    cycle = find_cycle({m: {t for t, _ in imps if t in module_level} for m, imps in module_level.items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_product_never_imports_its_benchmarks_at_module_level(module_level):
    assert _arrows(module_level, "pipeline", ("benchmarks",)) == []
    assert _arrows(module_level, "operators", ("benchmarks",)) == []


def test_operators_know_no_kafka_and_no_runtime(everywhere):
    assert _arrows(everywhere, "operators", ("pipeline", "benchmarks", "kafka", "confluent_kafka")) == []


def test_the_kafka_package_knows_nothing_of_the_live_runtime(everywhere):
    assert _arrows(everywhere, "pipeline.kafka", ("pipeline.live",)) == []


def test_the_message_formats_depend_on_the_operator_alone(everywhere):
    others = ("pipeline.live", "pipeline.kafka", "pipeline.files", "pipeline.evaluation", "pipeline.config",
              "pipeline.cli", "benchmarks", "kafka", "confluent_kafka")
    assert _arrows(everywhere, "pipeline.wire", others) == []


def test_benchmarks_share_public_names_only(everywhere):
    private = sorted(f"{m} imports {t}.{name}" for m, imps in everywhere.items() if _inside(m, "benchmarks")
                     for t, name in imps if name and name.startswith("_") and _inside(t, "benchmarks") and t != m)
    assert private == []
