"""The dependency direction of ``src/`` (docs/architecture.md), checked on the imports themselves.

``charm → reconcile → relations, pgbouncer, postgres → state``: nothing below the charm imports
it; relations never import ``postgres`` (they run no SQL); ``state`` and the renderer import no
ops, no driver and nothing above them. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package", ["relations", "pgbouncer", "postgres", "state"])
def test_nothing_below_the_charm_imports_it(package):
    for path in modules(package):
        assert not {top(n) for n in imports_of(path)} & {"charm", "reconcile"}, path


def test_relations_run_no_sql():
    for path in modules("relations"):
        found = {top(n) for n in imports_of(path)} & {"postgres", "psycopg", "reconcile"}
        assert not found, (path, found)


def test_state_is_pure():
    for path in modules("state"):
        found = {top(n) for n in imports_of(path)} & {
            "ops", "psycopg", "pydantic", "relations", "pgbouncer", "postgres", "charm",
        }  # fmt: skip
        assert not found, (path, found)


@pytest.mark.parametrize(
    "module",
    ["config.py", "desired.py", "ini.py", "slots.py", "plan.py", "drain.py"],
)
def test_the_renderer_and_the_plan_import_no_ops_or_driver(module):
    """Rendering and planning are pure: no Juju, no Pebble client, no SQL driver."""
    found = {top(n) for n in imports_of(SRC / "pgbouncer" / module)}
    assert not found & {"ops", "psycopg", "relations", "postgres", "charm"}, found


def test_the_status_calls_nothing():
    """The status is a function of what the hook saw and did: it imports no effect."""
    found = imports_of(SRC / "status.py")
    effects = ("postgres", "psycopg", "pgbouncer.workload", "relations.tls")
    assert not [name for name in found if name.startswith(effects)], found


def test_no_module_of_the_renderer_imports_another_back():
    """Config ← desired, config ← plan: the renderer never imports what decides from it."""
    for module in ("config.py", "ini.py", "slots.py"):
        found = set(imports_of(SRC / "pgbouncer" / module))
        assert not found & {"pgbouncer.desired", "pgbouncer.plan", "pgbouncer.workload"}, module


def test_the_check_itself_sees_an_import_circle(tmp_path):
    """The check can fail: a module importing the charm is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from charm import PgBouncerK8sCharm\n")
    assert "charm" in imports_of(bad)
