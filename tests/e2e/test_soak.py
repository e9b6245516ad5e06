"""Lifecycle soak: 20 cycles of relate / unrelate on a real PostgreSQL leave nothing behind.

Each cycle: relate the backend (the PostgreSQL charm alternating plain and ``secret-user``
answers), relate a client and query through it, remove the client, remove the backend. A steady
client (one client relation kept for the whole soak) runs ``SELECT 1`` through the pooler in a
thread, with a fresh login each time (so every query goes through ``auth_query`` and the auth role
of the current cycle). It must never fail while a backend is related; its failures while no
backend is related are expected and counted apart.

At the end (after the steady client and the last backend relation are removed, and the
PostgreSQL charm dropped what it made) the cluster's catalog is the one we started with: the same
roles, the same schemas and functions in every database; the only new databases are the clients'
own, which are kept by design (SPEC §6: drop the user, not the data).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import pytest
from ops import testing

from harness.servers.pg import PostgresServer
from harness.story import Deployment, auth_roles

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
CYCLES = 20
ACTIVE = testing.ActiveStatus("1 PgBouncer process")


def catalog(pg: PostgresServer) -> dict[str, object]:
    """Roles, databases, and each database's non-system schemas and functions."""
    roles = [r[0] for r in pg.execute("SELECT rolname FROM pg_roles ORDER BY 1")]
    databases = [
        r[0] for r in pg.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
    ]
    snapshot: dict[str, object] = {"roles": roles, "databases": databases}
    for db in databases:
        snapshot[f"{db}: schemas"] = [
            r[0]
            for r in pg.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%'"
                " AND nspname <> 'information_schema' ORDER BY 1",
                dbname=db,
            )
        ]
        snapshot[f"{db}: functions"] = [
            r[0]
            for r in pg.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
                dbname=db,
            )
        ]
    return snapshot


@dataclass
class Steady:
    """Counts of the steady client's queries, split by whether a backend was related."""

    related: threading.Event = field(default_factory=threading.Event)
    ok: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    failed: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    errors: list[str] = field(default_factory=list)


def test_twenty_relate_unrelate_cycles_leave_the_catalog_as_it_was(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    started = time.monotonic()
    d = make_deployment(num_units=1)
    d.deploy()
    unit = d.app.leader
    before = catalog(pg)

    d.relate_backend("plain")
    steady_client = d.relate_client("steady", "steadydb")
    steady_creds = d.credentials(steady_client)
    steady = Steady()
    steady.related.set()
    stop = threading.Event()

    def run_steady() -> None:
        while not stop.is_set():
            related_at_start = steady.related.is_set()
            error = ""
            try:
                d.query(unit, steady_creds, "SELECT 1")
                good = True
            except psycopg.Error as exc:
                good = False
                error = f"{type(exc).__name__}: {str(exc).strip()[:120]}"
            # Counted as "related" only if the backend was related the whole time.
            related = related_at_start and steady.related.is_set()
            if good:
                steady.ok[related] += 1
            else:
                steady.failed[related] += 1
                if related:
                    steady.errors.append(error)
            stop.wait(0.02)

    thread = threading.Thread(target=run_steady, daemon=True)
    thread.start()
    try:
        for cycle in range(CYCLES):
            if cycle:
                rid = d.relate_backend("secret" if cycle % 2 else "plain")
                steady.related.set()
            else:
                rid = d.backend_id
            assert unit.state.unit_status == ACTIVE, (cycle, unit.state.unit_status)
            auth_user = f"pgbouncer_auth_relation_{rid}"
            assert [r[0] for r in auth_roles(pg)] == [auth_user, f"{auth_user}_definer"], cycle

            # The same application each cycle: a database left by one application goes back
            # only to that application (docs/tenancy.md).
            client = d.relate_client("cycle-app", "cycledb")
            creds = d.credentials(client)
            assert d.query(unit, creds, "SELECT current_database()") == ("cycledb",)
            d.remove_client(client)
            assert creds.username not in [r[0] for r in pg.execute("SELECT rolname FROM pg_roles")]

            steady.related.clear()
            d.remove_backend()
            assert auth_roles(pg) == [], cycle
    finally:
        stop.set()
        thread.join(15)

    # Leave as a user would: the backend comes back to drop the steady client's user, then goes.
    d.relate_backend("plain")
    d.remove_client(steady_client)
    d.remove_backend()
    d.postgresql.cleanup()
    after = catalog(pg)
    elapsed = time.monotonic() - started

    print(
        f"\nsoak: {CYCLES} cycles in {elapsed:.1f}s; steady client while related: "
        f"{steady.ok[True]} ok, {steady.failed[True]} failed; while unrelated: "
        f"{steady.ok[False]} ok, {steady.failed[False]} failed"
    )
    assert steady.failed[True] == 0, steady.errors[:5]
    assert steady.ok[True] >= CYCLES, "the steady client ran in every related window"
    kept = {"cycledb", "steadydb"}
    # The data stays, owned by NOLOGIN roles with no attribute (one per database), the
    # orphan role and the role holding the database objects (docs/tenancy.md); nothing else.
    new_roles = sorted(set(after["roles"]) - set(before["roles"]))  # type: ignore[arg-type]
    assert set(before["roles"]) <= set(after["roles"])  # type: ignore[arg-type]
    assert len(new_roles) == 4, new_roles
    assert all(
        r.startswith(("pgbouncer_owner_", "pgbouncer_orphans_", "pgbouncer_databases_"))
        for r in new_roles
    )
    for role in new_roles:
        assert pg.execute(
            "SELECT rolcanlogin OR rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication"
            " OR rolbypassrls FROM pg_roles WHERE rolname = %s",
            (role,),
        ) == [(False,)], role
    assert after["databases"] == sorted([*before["databases"], *kept])  # type: ignore[list-item]
    for key, value in before.items():
        if key not in ("databases", "roles"):
            assert after[key] == value, key
    for db in kept:
        assert after[f"{db}: schemas"] == ["public"]
        assert after[f"{db}: functions"] == []
