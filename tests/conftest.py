"""Fixtures shared by every tier: a real PostgreSQL 15 and a PgBouncer process factory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory
from harness.servers.system import is_root, pgbouncer_version

# The property tests draw the same inputs on every run of `make test` (a red CI is then a change
# of ours, never a new draw); HYPOTHESIS_PROFILE=explore draws new ones, for a search session.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

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


@pytest.fixture(autouse=True)
def _fresh_hook_budget() -> Iterator[None]:
    """Each test is a fresh process as far as the hook budget goes.

    Juju runs each hook in a process of its own, and the charm starts a 60 s budget for its
    PostgreSQL work when it is constructed (``postgres.deadline``). In one pytest process a
    charm built by one test would otherwise spend the budget of every later test.
    """
    from postgres.deadline import start_hook_budget

    start_hook_budget(None)
    yield
    start_hook_budget(None)


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
