"""The tenant fuzzer: hostile tenants and the charm's events, interleaved, on a real PostgreSQL 15.

A hypothesis state machine. Tenants draw actions from a catalogue of what a login role can do
with its own published credentials (settings and flags on its database and on itself, grants
and default privileges to other logins, SECURITY DEFINER code, triggers that act as whoever
fires them, password changes, locks held in open transactions, idle sessions anywhere PUBLIC
may connect, databases of their own, forged comments); the charm relates and unrelates clients,
changes leader (the record re-read from peer data), loses and regains its backend, and runs
update-status. After every charm event the invariants of docs/tenancy.md are checked on the real
server: the audit (``postgres.audit``, the same checker the operator gets) finds no breach, and
after update-status no drift either; no login reaches a recorded database it does not hold; no
role of a removed relation is left. Every charm event must also *finish*: a tenant's lock or
setting that made it wait or fail would fail the test.

Bound and seed: ``@seed(SEED)`` (20261207: every run draws the same sequences),
:data:`EXAMPLES` examples of 2 to 4 relations then :data:`STEPS` weighted steps (tenant
actions most often). Raise them locally with ``TENANT_FUZZ_EXAMPLES`` / ``TENANT_FUZZ_STEPS``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable

import psycopg
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

from harness.servers.pg import PostgresServer
from postgres.audit import BREACH, DRIFT, audit_tenancy
from postgres.auth import install_auth
from postgres.clients import RefusedDatabaseError, drop_gone, repair_tenancy
from postgres.connection import ForeignObjectError
from postgres.passwords import generate_password
from state.tenants import TenantRecord, client_username, owner_role_for
from tests.functional.test_auth_sql import cleanup, make_backend
from tests.functional.test_tenancy import Tenants

pytestmark = pytest.mark.needs_root

EXAMPLES = int(os.environ.get("TENANT_FUZZ_EXAMPLES", "6"))
STEPS = int(os.environ.get("TENANT_FUZZ_STEPS", "16"))
SEED = 20261207
APPS = ("alpha", "beta", "gamma")
DATABASES = ("d1", "d2", "d3")
CONSENT = {"d2": frozenset({"beta"})}  # the operator lets beta share d2, nothing else

RUNS: list[tuple[str, ...]] = []
"""The rule sequence of every example run (the closing note counts the distinct ones)."""


def _quiet(conn: psycopg.Connection, statement: sql.Composable | str) -> bool:
    """Run a tenant's statement; a refusal is an expected outcome, not a failure."""
    try:
        conn.execute(statement)  # type: ignore[arg-type]
    except psycopg.Error:
        return False
    return True


class TenantMachine:
    """One backend per example; tenants and the charm take turns (``run``)."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.suffix = uuid.uuid4().hex[:10]
        self.b = make_backend(self.server, self.suffix)
        install_auth(
            self.b.creds,
            auth_user=self.b.auth_user(),
            auth_password=generate_password(),
            owner_tag=self.b.owner_tag,
        )
        self.t = Tenants(self.b, consent={self.db(d): v for d, v in CONSENT.items()})
        self.next_rel = 1
        self.meta: dict[int, tuple[str, str, bool]] = {}
        self.gone: set[int] = set()
        self.held_open: list[psycopg.Connection] = []
        self.steps: list[str] = []

    def db(self, stem: str) -> str:
        return self.b.name(stem)

    def teardown(self) -> None:
        RUNS.append(tuple(self.steps))
        for conn in self.held_open:
            conn.close()
        cleanup(self.server, self.suffix, self.b.owner_tag)

    # -- the charm --------------------------------------------------------------------------
    def _grant(self, rel: int) -> None:
        app, stem, createdb = self.meta[rel]
        try:
            self.t.grant(rel, app, self.db(stem), extra=("CREATEDB",) if createdb else ())
        except (RefusedDatabaseError, ForeignObjectError):
            # Refused (another application holds it, or a trap): a Blocked status, others served.
            self.t.live.discard(rel)

    def relate(self, data: st.DataObject) -> None:
        app = data.draw(st.sampled_from(APPS))
        stem = data.draw(st.sampled_from(DATABASES))
        createdb = data.draw(st.booleans())
        rel, self.next_rel = self.next_rel, self.next_rel + 1
        self.steps.append(f"relate {app} {stem}")
        self.meta[rel] = (app, stem, createdb)
        self._grant(rel)
        self.check()

    def unrelate(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(sorted(self.t.live)))
        self.steps.append("unrelate")
        self.t.live.discard(rel)
        # The leader's clean-up (reconcile's): it must finish, whatever the tenants did.
        self.t.record, failures = drop_gone(
            self.b.creds, self.t.record, self.t.live, owner_tag=self.b.owner_tag
        )
        assert failures == {}
        self.gone.add(rel)
        self.check()

    def update_status(self, data: st.DataObject) -> None:
        self.steps.append("update-status")
        repair_tenancy(self.b.creds, self.t.record, self.t.live, owner_tag=self.b.owner_tag)
        self.check(drift=True)

    def leader_change(self, data: st.DataObject) -> None:
        self.steps.append("leader-change")
        self.t.record = TenantRecord.from_json(self.t.record.to_json())
        self.check()

    def backend_cycle(self, data: st.DataObject) -> None:
        """The backend relation goes (every login dropped) and comes back (each re-created)."""
        self.steps.append("backend-cycle")
        self.t.record, failures = drop_gone(
            self.b.creds, self.t.record, set(), owner_tag=self.b.owner_tag
        )
        assert failures == {}
        for rel in sorted(self.t.live):
            self._grant(rel)
        self.check()

    def run(self, data: st.DataObject) -> None:
        """A few tenants relate, then charm events and tenant actions interleave."""
        for _ in range(data.draw(st.integers(2, 4))):
            self.relate(data)
        for _ in range(STEPS):
            kind = data.draw(st.sampled_from(WEIGHTED))
            if kind in ("unrelate", "tenant_acts") and not self.t.live:
                kind = "relate"
            getattr(self, kind)(data)
        self.update_status(data)

    # -- the tenants ------------------------------------------------------------------------
    def tenant_acts(self, data: st.DataObject) -> None:
        rel = data.draw(st.sampled_from(sorted(self.t.live)))
        name = data.draw(st.sampled_from(sorted(ACTIONS)))
        others = sorted(self.t.live - {rel}) or [rel]
        other = client_username(data.draw(st.sampled_from(others)), self.b.owner_tag)
        self.steps.append(f"tenant {name}")
        # A tenant that changed its own password (or had it changed) is locked out of its
        # direct connection until update-status: its action then does nothing.
        with contextlib.suppress(psycopg.OperationalError):
            ACTIONS[name](self, rel, other)

    def session(self, rel: int, dbname: str | None = None) -> psycopg.Connection:
        """The tenant's own connection (bounded: a tenant waiting on another is not the test)."""
        stem = self.meta[rel][1]
        return psycopg.connect(
            host=self.b.server.host,
            port=self.b.server.port,
            user=client_username(rel, self.b.owner_tag),
            password=self.t.passwords[rel],
            dbname=dbname or self.db(stem),
            connect_timeout=5,
            autocommit=True,
            options="-c lock_timeout=1000 -c statement_timeout=5000",
        )

    # -- the invariants ---------------------------------------------------------------------
    def check(self, drift: bool = False) -> None:
        found = audit_tenancy(self.b.creds, self.t.record, self.t.live, owner_tag=self.b.owner_tag)
        bad = [v for v in found if v.severity == BREACH or (drift and v.severity == DRIFT)]
        assert bad == [], bad
        for rel in self.gone:
            user = client_username(rel, self.b.owner_tag)
            assert (
                self.b.server.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)) == []
            ), f"{user} outlived its relation"
        for rel in self.t.live:
            user = client_username(rel, self.b.owner_tag)
            held = self.t.record.roles[user].databases
            for database in self.t.record.databases:
                reach = self.b.server.execute(
                    "SELECT has_database_privilege(%s, %s, 'CONNECT')", (user, database)
                )
                assert reach == [(database in held,)], (user, database, held)

        if drift:
            # Whatever tenants changed about themselves is put back: each live login's issued
            # password opens its own database again.
            for rel in sorted(self.t.live):
                with self.session(rel) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)


Action = Callable[[TenantMachine, int, str], None]


def _db_statement(template: str) -> Action:
    def act(m: TenantMachine, rel: int, other: str) -> None:
        stem = m.meta[rel][1]
        owner = owner_role_for(m.db(stem), m.b.owner_tag)
        with m.session(rel) as conn:
            for as_login in (False, True):
                if as_login:
                    conn.execute("SET ROLE NONE")
                _quiet(conn, sql.SQL(template).format(  # type: ignore[arg-type]
                    db=sql.Identifier(m.db(stem)), other=sql.Identifier(other),
                    owner=sql.Identifier(owner),
                    me=sql.Identifier(client_username(rel, m.b.owner_tag)),
                ))  # fmt: skip

    return act


def _hold(template: str, dbname: str | None = None) -> Action:
    """Leave a session open in a transaction that did ``template`` (its locks stay held)."""

    def act(m: TenantMachine, rel: int, other: str) -> None:
        stem = m.meta[rel][1]
        owner = owner_role_for(m.db(stem), m.b.owner_tag)
        try:
            conn = m.session(rel, dbname)
        except psycopg.Error:
            return
        m.held_open.append(conn)
        conn.autocommit = False
        _quiet(conn, sql.SQL(template).format(  # type: ignore[arg-type]
            owner=sql.Identifier(owner), me=sql.Identifier(client_username(rel, m.b.owner_tag)),
        ))  # fmt: skip

    return act


def _visit(m: TenantMachine, rel: int, other: str) -> None:
    with m.session(rel) as conn:
        _quiet(conn, "INSERT INTO public.visits VALUES (current_user)")


def _steal(m: TenantMachine, rel: int, other: str) -> None:
    with m.session(rel) as conn:
        _quiet(conn, "CREATE TABLE IF NOT EXISTS public.visits (who text)")
        _quiet(
            conn,
            """CREATE OR REPLACE FUNCTION public.steal() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 SET LOCAL ROLE NONE;
                 EXECUTE format('ALTER ROLE %I PASSWORD %L', session_user, 'stolen');
                 EXECUTE format('ALTER ROLE %I SET search_path = evil', session_user);
                 RETURN NEW;
               END $$""",
        )
        _quiet(
            conn,
            "CREATE TRIGGER steal BEFORE INSERT ON public.visits FOR EACH ROW "
            "EXECUTE FUNCTION public.steal()",
        )


def _own_database(m: TenantMachine, rel: int, other: str) -> None:
    with m.session(rel) as conn:
        conn.execute("SET ROLE NONE")
        name = m.b.name(f"own{rel}")
        _quiet(conn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        _quiet(conn, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(name), sql.Identifier(other)))  # fmt: skip


def _template1(m: TenantMachine, rel: int, other: str) -> None:
    with contextlib.suppress(psycopg.Error):
        m.held_open.append(m.session(rel, "template1"))


ACTIONS: dict[str, Action] = {
    "db-search-path": _db_statement("ALTER DATABASE {db} SET search_path = evil, pg_catalog"),
    "db-role": _db_statement("ALTER DATABASE {db} SET role = {owner}"),
    "db-closed": _db_statement("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
    "db-template": _db_statement("ALTER DATABASE {db} IS_TEMPLATE true"),
    "db-owner": _db_statement("ALTER DATABASE {db} OWNER TO {me}"),
    "db-connect-other": _db_statement("GRANT CONNECT ON DATABASE {db} TO {other}"),
    "db-connect-public": _db_statement("GRANT ALL ON DATABASE {db} TO PUBLIC"),
    "db-comment": _db_statement(
        "COMMENT ON DATABASE {db} IS 'pgbouncer-k8s owner=x/y kind=client relation=1'"
    ),
    "default-privileges-other": _db_statement(
        "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO {other}"
    ),
    "table-grant-other": _db_statement(
        "CREATE TABLE IF NOT EXISTS public.shared_{me} (x int); GRANT ALL ON ALL TABLES IN "
        "SCHEMA public TO {other}"
    ),
    "definer-function": _db_statement(
        "CREATE OR REPLACE FUNCTION public.f() RETURNS int LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT 1'"
    ),
    "grant-owner-to-other": _db_statement("GRANT {owner} TO {other}"),
    "self-settings": _db_statement("ALTER ROLE {me} SET search_path = evil"),
    "self-settings-in-db": _db_statement("ALTER ROLE {me} IN DATABASE {db} RESET ALL"),
    "self-password": _db_statement("ALTER ROLE {me} PASSWORD 'changed-inside'"),
    "owner-password": _db_statement("ALTER ROLE {owner} PASSWORD 'x'"),
    "hold-self": _hold("SET ROLE NONE; ALTER ROLE {me} PASSWORD 'held'"),
    "hold-owner": _hold("ALTER ROLE {owner} PASSWORD 'held'"),
    "hold-table": _hold(
        "CREATE TABLE IF NOT EXISTS public.locked (x int); "
        "LOCK TABLE public.locked IN ACCESS EXCLUSIVE MODE"
    ),
    "idle-template1": _template1,
    "steal-trigger": _steal,
    "visit": _visit,
    "own-database": _own_database,
}


WEIGHTED = (
    ("relate",) * 3 + ("unrelate",) * 2 + ("tenant_acts",) * 7 + ("update_status",) * 2
    + ("leader_change", "backend_cycle")
)  # fmt: skip


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_tenants_cannot_break_the_boundary(postgres: PostgresServer, data: st.DataObject) -> None:
    machine = TenantMachine(postgres)
    try:
        machine.run(data)
    finally:
        machine.teardown()


def test_the_fuzzer_ran_varied_sequences() -> None:
    """Runs after the fuzzer (file order): what it tried, for the closing note."""
    if not RUNS:
        pytest.skip("the fuzzer did not run")
    distinct = len(set(RUNS))
    steps = sum(len(r) for r in RUNS)
    print(
        f"\ntenant fuzzer: {len(RUNS)} examples, {distinct} distinct action sequences, {steps} steps"
    )
    for run in RUNS:
        print("  ", " / ".join(run))
    # Hypothesis may replay an example (the simplest one first); most must differ.
    assert distinct * 2 >= len(RUNS), "the fuzzer kept drawing the same sequence"
