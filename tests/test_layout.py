"""The architecture rules of CONVENTIONS.md, checked on the source.

Everything here reads files with ``ast`` and ``tokenize``; no project module is imported, so
a broken import cannot hide a broken rule.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("simulator", "sites", "server")
DRIVER = "simulator.driver"
# The one module allowed to import Ray: the engine's Ray backend keeps Ray behind it.
RAY_MODULE = "simulator/driver/engine/ray_actors.py"
DIFFUSERS_PACKAGE = "simulator/smd/"
MAX_LINES = 400
GRAB_BAGS = frozenset({"utils.py", "misc.py", "helpers.py"})
DESIGN_REF = re.compile(r"DESIGN(\.md)?\s+section")


def files(*pkgs: str) -> list[Path]:
    """Every .py file under the given top-level folders."""
    return sorted(p for pkg in pkgs for p in (ROOT / pkg).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    """``simulator/driver/cli.py`` -> ``simulator.driver.cli``; an ``__init__`` -> its package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in files(*PACKAGES))


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_names(path: Path) -> set[str]:
    """Every module a file names in an import, at any depth (inside functions too).

    ``from X import Y`` gives ``X.Y`` where that is a project module, else ``X``; relative
    imports are resolved against the file's package.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in project_modules() else base)
    return out


def top_level_imports(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Project module -> the project modules it imports."""
    mods = project_modules()
    graph = {}
    for p in files(*PACKAGES):
        name = module_name(p)
        graph[name] = frozenset(m for m in imported_names(p) if m in mods and m != name)
    return graph


def find_cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """One cycle per back edge met by a depth-first search, each as ``[a, b, ..., a]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def layer(path: Path) -> str:
    """``driver``, ``core`` (simulator/ outside the driver), ``sites`` or ``server``."""
    name = module_name(path)
    if name == DRIVER or name.startswith(DRIVER + "."):
        return "driver"
    return {"simulator": "core"}.get(name.split(".")[0], name.split(".")[0])


def imports_driver(path: Path) -> set[str]:
    return {m for m in imported_names(path) if m == DRIVER or m.startswith(DRIVER + ".")}


# -- the checker itself ------------------------------------------------------------------------


def test_the_sources_are_found():
    names = project_modules()
    assert {"simulator.config", "simulator.driver.engine", "sites.site", "server.learner"} <= names


def test_from_import_of_a_submodule_resolves_to_the_submodule():
    graph = import_graph()
    assert "server.methods.smg" in graph["server.methods"]


def test_find_cycles_reports_a_planted_cycle():
    circle = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles({k: frozenset(v) for k, v in circle.items()}) == [["a", "b", "c", "a"]]
    # a package importing its own submodules, which import each other, is no circle
    tree_ = {"p": {"p.x", "p.y"}, "p.x": {"p.y"}, "p.y": set()}
    assert find_cycles({k: frozenset(v) for k, v in tree_.items()}) == []


# -- the rules ---------------------------------------------------------------------------------


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_diffusers_only_in_smd():
    users = [
        rel(p)
        for p in files(*PACKAGES)
        if "diffusers" in top_level_imports(p) and not rel(p).startswith(DIFFUSERS_PACKAGE)
    ]
    assert not users, f"diffusers imported outside {DIFFUSERS_PACKAGE}: {users}"


def test_ray_only_in_its_backend():
    users = {rel(p) for p in files(*PACKAGES) if "ray" in top_level_imports(p)}
    assert users == {RAY_MODULE}, (
        f"ray imported outside {RAY_MODULE}: {sorted(users - {RAY_MODULE})}"
    )


def test_the_stage_loop_speaks_only_the_engine_protocol():
    """No engine-specific branch in the loop: no grid, no Ray, no Flower server, no test of which
    backend runs (an ``isinstance``), in code (comments may speak of a comparison grid)."""
    for name in ("loop.py", "calls.py", "smd_steps.py"):
        path = ROOT / "simulator" / "driver" / "engine" / name
        nodes = list(ast.walk(tree(path)))
        names = {n.id for n in nodes if isinstance(n, ast.Name)}
        names |= {n.attr for n in nodes if isinstance(n, ast.Attribute)}
        names |= {n.arg for n in nodes if isinstance(n, ast.arg)}
        bad = names & {"grid", "Grid", "ray", "isinstance"}
        assert not bad, f"engine/{name} names {sorted(bad)}"
        imports = imported_names(path)
        assert not any(m == "ray" or m.startswith(("ray.", "flwr.server")) for m in imports)


def test_a_site_actor_has_one_method_besides_its_constructor():
    """What a Ray actor of a site exposes is its entry point (Ray adds its built-ins)."""
    cls = next(
        n
        for n in ast.walk(tree(ROOT / RAY_MODULE))
        if isinstance(n, ast.ClassDef) and n.name == "SiteActor"
    )
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert methods == {"__init__", "handle"}


@pytest.mark.parametrize(
    "this_layer, forbidden",
    [
        ("core", {"sites", "server"}),
        ("sites", {"server"}),
        ("server", {"sites"}),
    ],
)
def test_only_the_driver_wires_sites_and_server(this_layer, forbidden):
    offenders = {
        rel(p): sorted(bad)
        for p in files(*PACKAGES)
        if layer(p) == this_layer and (bad := top_level_imports(p) & forbidden)
    }
    assert not offenders, f"{this_layer} imports {sorted(forbidden)}: {offenders}"


@pytest.mark.parametrize("this_layer", ["core", "sites", "server"])
def test_nothing_below_imports_the_driver(this_layer):
    offenders = {
        rel(p): sorted(imports_driver(p))
        for p in files(*PACKAGES)
        if layer(p) == this_layer and imports_driver(p)
    }
    assert not offenders, f"{this_layer} imports the driver: {offenders}"


def test_files_stay_small():
    long = {
        rel(p): n
        for p in files(*PACKAGES, "tests")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_grab_bag_modules():
    bags = [rel(p) for p in files(*PACKAGES) if p.name in GRAB_BAGS]
    assert not bags


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring in a file."""
    out = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                out.append((node.body[0].lineno, doc))
    return out


def test_no_references_to_design_sections():
    refs = [
        f"{rel(p)}:{line + text[: m.start()].count(chr(10))}"
        for p in files(*PACKAGES)
        for line, text in comments_and_docstrings(p)
        if (m := DESIGN_REF.search(text))
    ]
    assert not refs, f"comments or docstrings citing a DESIGN section: {refs}"


# -- the driver grouped by concern -------------------------------------------------------------
#: each sub-package of the driver, and the driver modules it may import besides its own
DRIVER_GROUPS = {
    # the one-run DP audit builds a phantom site from the plan's spec and method tables
    "audit": {"simulator.driver.ledger", "simulator.driver.runfolder", "simulator.driver.plan"},
    "compare": {
        "simulator.driver.api",
        "simulator.driver.commands",
        "simulator.driver.plots",
        "simulator.driver.runfolder",
    },
}
#: the Flower modules that run an app or a simulation, and the packages allowed to import them
FLOWER_APPS = ("flwr.clientapp", "flwr.serverapp", "flwr.simulation", "flwr.superlink")
FLOWER_HOMES = ("simulator/driver/flower/", "simulator/driver/engine/")
#: the most modules the driver's top folder may hold (a new concern gets a sub-package)
MAX_DRIVER_TOP = 24


def test_the_driver_has_its_sub_packages():
    for pkg in ("engine", "flower", "audit", "compare"):
        assert (ROOT / "simulator" / "driver" / pkg / "__init__.py").exists(), pkg
    top = sorted(p.name for p in (ROOT / "simulator" / "driver").glob("*.py"))
    assert len(top) <= MAX_DRIVER_TOP, f"{len(top)} modules in simulator/driver/: {top}"


@pytest.mark.parametrize("group", sorted(DRIVER_GROUPS))
def test_a_driver_group_imports_only_what_its_concern_needs(group):
    own = f"{DRIVER}.{group}"
    offenders = {}
    for p in files(f"simulator/driver/{group}"):
        bad = {
            m
            for m in imports_driver(p)
            if not (m == own or m.startswith(own + ".")) and m not in DRIVER_GROUPS[group]
        }
        if bad:
            offenders[rel(p)] = sorted(bad)
    assert not offenders, f"driver/{group} reaches outside its concern: {offenders}"


def test_flower_apps_are_imported_only_by_the_flower_and_engine_packages():
    users = sorted(
        rel(p)
        for p in files(*PACKAGES)
        if any(m == f or m.startswith(f + ".") for m in imported_names(p) for f in FLOWER_APPS)
        and not rel(p).startswith(FLOWER_HOMES)
    )
    assert not users, f"Flower's app and simulation modules imported elsewhere: {users}"
