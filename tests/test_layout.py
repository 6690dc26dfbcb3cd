"""The architecture rules of CONVENTIONS.md, checked on the source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def files(pkg: str):
    return sorted((ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg, forbidden", [("sites", "server"), ("server", "sites")])
def test_sites_and_server_do_not_import_each_other(pkg, forbidden):
    offenders = [str(p) for p in files(pkg) if forbidden in imports(p)]
    assert not offenders


def test_ray_only_in_engine():
    users = [p.relative_to(ROOT).as_posix() for pkg in ("simulator", "sites", "server")
             for p in files(pkg) if "ray" in imports(p)]
    assert users == ["simulator/engine.py"]


def test_no_grab_bag_modules():
    names = {p.name for pkg in ("simulator", "sites", "server") for p in files(pkg)}
    assert not names & {"utils.py", "misc.py", "helpers.py"}
