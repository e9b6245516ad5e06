"""Fixtures shared by every tier: a real PostgreSQL 15 and a PgBouncer process factory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory
from harness.servers.system import is_root, pgbouncer_version

ROOT_REASON = "needs root: starts PostgreSQL and PgBouncer as the postgres OS user"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which PgBouncer the real-process tiers run against."""
    try:
        return [f"pgbouncer: {pgbouncer_version()}"]
    except Exception as exc:  # the header must never break collection
        return [f"pgbouncer: unavailable ({exc})"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip real-process tests, with a clear reason, when not running as root."""
    if is_root():
        return
    skip = pytest.mark.skip(reason=ROOT_REASON)
    for item in items:
        if "needs_root" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Count how many real-process tests ran, per tier."""
    counts: dict[str, list[int]] = {}
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []
    ):
        if report.when != "call" or "needs_root" not in report.keywords:
            continue
        tier = report.nodeid.split("/")[1] if report.nodeid.startswith("tests/") else "?"
        counts.setdefault(tier, [0, 0])[0 if report.passed else 1] += 1
    if counts:
        terminalreporter.write_sep("-", "real PostgreSQL/PgBouncer tests")
        for tier, (ok, bad) in sorted(counts.items()):
            terminalreporter.write_line(
                f"{tier}: {ok} passed, {bad} failed (against {pgbouncer_version()})"
            )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 cluster for the session; tests keep to their own databases and roles."""
    if not is_root():
        pytest.skip(ROOT_REASON)
    server = start_postgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pgbouncer_factory() -> Iterator[PgBouncerFactory]:
    """Start PgBouncer processes from config text; all are stopped when the test ends."""
    if not is_root():
        pytest.skip(ROOT_REASON)
    factory = PgBouncerFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(autouse=True)
def no_hook_budget_left_by_another_test() -> Iterator[None]:
    """Each test starts without a hook budget (``postgres.deadline``).

    The budget is process-wide: in Juju every hook is a fresh process, but here a charm built
    by one test (Scenario) starts a 60 s budget that the next tests, which build no charm,
    would share; a tier that outlives it then fails with "time budget … is spent". A test
    that builds the charm starts its own budget, as a hook does.
    """
    from postgres.deadline import start_hook_budget

    start_hook_budget(None)
    yield
    start_hook_budget(None)
