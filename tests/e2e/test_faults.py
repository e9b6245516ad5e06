"""Faults of the real PostgreSQL during backend and client hooks, and the way back to Active.

Each test breaks the backend between the PostgreSQL charm's answer and our hook: the server
stopped, our relation user refused (password changed, ``NOLOGIN``), our DDL stuck behind another
session's lock until ``lock_timeout`` or ``statement_timeout``, the server restarted between two
hooks. What must hold every time (SPEC §3.1, §6): no hook raises; the status says what is wrong;
the backend set-up is deferred (Scenario carries ``deferred`` into the next run, as Juju re-emits
it) and a client request is left for the next refresh; once the fault clears, the next hook
converges to Active and a client queries through the real PgBouncer.

One unit, a PostgreSQL cluster per test (``tests/e2e/conftest.py``): stopping the server touches
no other test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import LiteralString

import psycopg
import pytest
from ops import testing
from psycopg import sql

import postgres.connection as connection_module
from harness.servers.pg import PostgresServer
from harness.story import POSTGRESQL_APP, Deployment, auth_roles

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
ACTIVE = testing.ActiveStatus("1 PgBouncer process")


def answered_but_not_seen(d: Deployment) -> int:
    """``juju integrate`` up to the PostgreSQL charm's answer; our relation-changed not yet run."""
    rid = d.app.add_relation(
        testing.Relation(
            "backend-database", remote_app_name=POSTGRESQL_APP, remote_units_data={0: {}}
        )
    )
    d.backend_id, d.backend_mode = rid, "plain"
    d.app.leader.relation_created(rid)
    d.provider_answers()
    return rid


def backend_changed(d: Deployment) -> testing.State:
    unit = d.app.leader
    assert d.backend_id is not None
    unit.relation_joined(d.backend_id, remote_unit=0)
    return unit.relation_changed(d.backend_id, remote_unit=0)


def deferred_names(d: Deployment) -> list[str]:
    return [e.name for e in d.app.leader.state.deferred]


def converge_and_query(d: Deployment, pg: PostgresServer, database: str = "appdb") -> None:
    """The next hook (update-status) re-emits what was deferred; then a client is served."""
    out = d.app.leader.update_status()
    assert out.unit_status == ACTIVE, out.unit_status
    assert deferred_names(d) == []
    rid = d.backend_id
    assert [r[0] for r in auth_roles(pg)] == [
        f"pgbouncer_auth_relation_{rid}",
        f"pgbouncer_auth_relation_{rid}_definer",
    ]
    creds = d.credentials(d.relate_client("app", database))
    assert d.query(d.app.leader, creds, "SELECT session_user, current_database()") == (
        creds.username,
        database,
    )


@contextmanager
def lock_held_on(pg: PostgresServer, role: str) -> Iterator[None]:
    """Another session creates ``role`` in an open transaction: our ``CREATE ROLE`` waits on it."""
    conn = pg.connect()
    try:
        conn.execute("BEGIN")
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, int], None]:
    """Shorten the server-side timeouts every backend connection sets (5 s / 15 s in production)."""

    def set_timeouts(lock_ms: int, statement_ms: int) -> None:
        monkeypatch.setattr(connection_module, "LOCK_TIMEOUT_MS", lock_ms)
        monkeypatch.setattr(connection_module, "STATEMENT_TIMEOUT_MS", statement_ms)

    return set_timeouts


def test_server_stopped_during_created_defers_then_converges(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    d = make_deployment(num_units=1)
    d.deploy()
    answered_but_not_seen(d)
    pg.stop()
    try:
        out = backend_changed(d)
        assert out.unit_status.name == "waiting"
        assert out.unit_status.message.startswith("backend unreachable: cannot reach PostgreSQL")
        assert deferred_names(d) == ["database_created"]
        # still down at the next hook: still deferred, still saying why
        out = d.app.leader.update_status()
        assert out.unit_status.message.startswith("backend unreachable:")
        assert deferred_names(d) == ["database_created"]
    finally:
        pg.start()
    converge_and_query(d, pg)


@pytest.mark.parametrize(
    ("fault", "undo", "says"),
    [
        (
            "ALTER ROLE {} PASSWORD 'changed-behind-our-back'",
            "ALTER ROLE {} PASSWORD {}",
            "refused role",
        ),
        ("ALTER ROLE {} NOLOGIN", "ALTER ROLE {} LOGIN", "refused role"),
    ],
    ids=["password-changed", "nologin"],
)
def test_server_refusing_our_user_defers_then_converges(
    make_deployment: MakeDeployment,
    pg: PostgresServer,
    fault: LiteralString,
    undo: LiteralString,
    says: str,
):
    d = make_deployment(num_units=1)
    d.deploy()
    rid = answered_but_not_seen(d)
    creds = d.postgresql.users[rid]
    user = sql.Identifier(creds.username)
    pg.execute(sql.SQL(fault).format(user).as_string())

    out = backend_changed(d)

    assert out.unit_status.name == "waiting"
    assert says in out.unit_status.message and creds.username in out.unit_status.message
    assert creds.password not in out.unit_status.message
    assert deferred_names(d) == ["database_created"]
    assert auth_roles(pg) == []
    pg.execute(sql.SQL(undo).format(user, sql.Literal(creds.password)).as_string())
    converge_and_query(d, pg)


@pytest.mark.parametrize(
    ("lock_ms", "statement_ms", "says"),
    [(300, 20_000, "lock timeout"), (0, 300, "statement timeout")],
    ids=["lock_timeout", "statement_timeout"],
)
def test_ddl_stuck_behind_another_session_times_out_defers_then_converges(
    make_deployment: MakeDeployment,
    pg: PostgresServer,
    short_timeouts: Callable[[int, int], None],
    lock_ms: int,
    statement_ms: int,
    says: str,
):
    d = make_deployment(num_units=1)
    d.deploy()
    rid = answered_but_not_seen(d)
    short_timeouts(lock_ms, statement_ms)

    with lock_held_on(pg, f"pgbouncer_auth_relation_{rid}"):
        out = backend_changed(d)
        assert out.unit_status.name == "waiting"
        assert says in out.unit_status.message, out.unit_status
        assert deferred_names(d) == ["database_created"]
    # the failed transaction left nothing half-done
    assert auth_roles(pg) == []
    # Back to production timeouts: a 300 ms statement timeout would also cut the client's
    # CREATE DATABASE on a loaded machine, which is not what this test is about.
    short_timeouts(
        connection_module.LOCK_TIMEOUT_MS_DEFAULT, connection_module.STATEMENT_TIMEOUT_MS_DEFAULT
    )
    converge_and_query(d, pg)


def test_server_restarted_between_hooks_serves_old_and_new_clients(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    d = make_deployment(num_units=1)
    d.deploy()
    d.relate_backend("secret")
    unit = d.app.leader
    first = d.credentials(d.relate_client("first", "firstdb"))
    assert d.query(unit, first, "SELECT 1") == (1,)

    pg.stop()
    pg.start()

    second = d.credentials(d.relate_client("second", "seconddb"))
    assert unit.state.unit_status == ACTIVE
    assert d.query(unit, second, "SELECT current_database()") == ("seconddb",)
    # PgBouncer's pooled server connection to the old server died; a new client is served
    # once PgBouncer notices (at most one failed attempt).
    failures = 0
    for _ in range(3):
        try:
            assert d.query(unit, first, "SELECT current_database()") == ("firstdb",)
            break
        except psycopg.OperationalError:
            failures += 1
    assert failures <= 1


def test_server_stopped_during_client_request_waits_then_answers(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    d = make_deployment(num_units=1)
    d.deploy()
    d.relate_backend("plain")
    pg.stop()
    try:
        client = d.relate_client("late", "latedb")
        out = d.app.leader.state
        assert out.unit_status.name == "waiting"
        assert out.unit_status.message.startswith(f"client relation {client.relation_id}: ")
        assert "cannot reach PostgreSQL" in out.unit_status.message
        with pytest.raises(LookupError):
            d.credentials(client)
    finally:
        pg.start()
    out = d.app.leader.update_status()  # refresh answers what was left waiting
    assert out.unit_status == ACTIVE, out.unit_status
    creds = d.credentials(client)
    assert d.query(d.app.leader, creds, "SELECT current_database()") == ("latedb",)
