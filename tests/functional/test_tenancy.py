"""The tenant boundary, attacked on a real PostgreSQL 15 (and through the real PgBouncer 1.24).

Each test plays a hostile client (or a hostile earlier tenant) against the charm's own SQL
(``postgres.clients``, ``postgres.auth``) and its record (``state.tenants``), then asserts what
was *not* gained. docs/tenancy.md describes the model; docs/security.md maps each line here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql

from harness.servers.pg import PostgresServer
from postgres.auth import install_auth
from postgres.clients import RefusedDatabaseError, TrapError, grant_database, revoke_client
from postgres.connection import ForeignObjectError
from postgres.passwords import generate_password
from state.tenants import (
    TenantRecord,
    client_username,
    databases_role_for,
    group_role_for,
    owner_role_for,
)
from tests.functional.test_auth_sql import (
    REFUSED,
    Backend,
    cleanup,
    make_backend,
    role_connect,
    start_auth_pooler,
)

pytestmark = pytest.mark.needs_root

DENIED = psycopg.errors.InsufficientPrivilege


@dataclass
class Tenants:
    """The charm's leader, reduced to its SQL: grants and revokes through the record."""

    b: Backend
    record: TenantRecord = field(default_factory=TenantRecord)
    passwords: dict[int, str] = field(default_factory=dict)
    live: set[int] = field(default_factory=set)
    consent: dict[str, frozenset[str]] = field(default_factory=dict)

    def grant(self, rel: int, app: str, db: str, extra: tuple[str, ...] = ()) -> tuple[str, str]:
        user = client_username(rel, self.b.owner_tag)
        password = self.passwords.setdefault(rel, generate_password())
        self.record = grant_database(
            self.b.creds,
            self.record,
            username=user,
            password=password,
            database=db,
            extra_roles=list(extra),
            owner_tag=self.b.owner_tag,
            relation_id=rel,
            app=app,
            live=self.live,
            consent=self.consent,
        )
        self.live.add(rel)
        return user, password

    def revoke(self, rel: int) -> None:
        self.live.discard(rel)
        self.record = revoke_client(
            self.b.creds,
            self.record,
            username=client_username(rel, self.b.owner_tag),
            owner_tag=self.b.owner_tag,
        )

    def connect(self, rel: int, db: str) -> psycopg.Connection:
        return role_connect(
            self.b, client_username(rel, self.b.owner_tag), self.passwords[rel], db
        )

    def owner(self, db: str) -> str:
        return owner_role_for(db, self.b.owner_tag)


@pytest.fixture
def t(postgres: PostgresServer) -> Iterator[Tenants]:
    suffix = uuid.uuid4().hex[:10]
    b = make_backend(postgres, suffix)
    yield Tenants(b)
    cleanup(postgres, suffix, b.owner_tag)


def su(t: Tenants, query: str, params: tuple = (), db: str = "postgres") -> list[tuple]:
    return t.b.server.execute(query, params, dbname=db)


def is_superuser(t: Tenants, role: str) -> bool:
    return su(t, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)) == [(True,)]


# -- 1. a SECURITY DEFINER function reassigned to a superuser ----------------------------------


def test_reassigned_definer_function_and_authid_view_never_run_as_superuser(t):
    db = t.b.name("orders")
    t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        # One planted as the owner role (the session default), one as the login role itself.
        for as_login in (False, True):
            if as_login:
                conn.execute("SET ROLE NONE")
            name = "escalate_login" if as_login else "escalate"
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION public.{}(r text) RETURNS void LANGUAGE plpgsql "
                    "SECURITY DEFINER AS $$ BEGIN EXECUTE format('ALTER ROLE %I SUPERUSER', r); "
                    "END $$"
                ).format(sql.Identifier(name))
            )
            conn.execute(
                sql.SQL("GRANT EXECUTE ON FUNCTION public.{}(text) TO PUBLIC").format(
                    sql.Identifier(name)
                )
            )
        conn.execute("CREATE VIEW public.secrets AS SELECT rolname, rolpassword FROM pg_authid")
        conn.execute("GRANT SELECT ON public.secrets TO PUBLIC")
    t.revoke(1)
    # Everything the tenant made now belongs to the database's owner role, not a superuser.
    owners = su(
        t,
        """SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc
            WHERE proname IN ('escalate', 'escalate_login')""",
        db=db,
    )
    assert owners == [(t.owner(db),)]
    assert not is_superuser(t, t.owner(db))

    user2, _ = t.grant(2, "shop", db)  # the same application re-relates
    with t.connect(2, db) as conn:
        for name in ("escalate", "escalate_login"):
            with pytest.raises(DENIED):
                conn.execute(
                    sql.SQL("SELECT public.{}(session_user)").format(sql.Identifier(name))
                )
        with pytest.raises(DENIED, match="pg_authid"):
            conn.execute("SELECT rolpassword FROM public.secrets")
    assert not is_superuser(t, user2)
    assert not is_superuser(t, t.owner(db))


# -- 2. a forged mark on a database the client made itself --------------------------------------


def test_a_database_with_a_forged_mark_is_never_handed_out(t):
    db, trap_db = t.b.name("mine"), t.b.name("orders")
    attacker, _ = t.grant(1, "mallory", db, extra=("CREATEDB",))
    mark = f"pgbouncer-k8s owner={t.b.owner_tag} kind=client relation=1"
    with t.connect(1, db) as conn:
        conn.execute("SET ROLE NONE")  # CREATEDB belongs to the login role
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(trap_db)))
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(trap_db), sql.Literal(mark)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = trap, public, pg_catalog").format(
                sql.Identifier(trap_db)
            )
        )
    with pytest.raises(ForeignObjectError, match="not created by this application"):
        t.grant(2, "victim", trap_db)
    # Nothing was granted or created: no role for the victim, no owner role for the database,
    # the database is still the attacker's, and the record never learnt of it.
    victim = client_username(2, t.b.owner_tag)
    assert (
        su(t, "SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s)", (victim, t.owner(trap_db)))
        == []
    )
    assert su(
        t, "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (trap_db,)
    ) == [(attacker,)]
    assert trap_db not in t.record.databases


# -- 3. leftover data --------------------------------------------------------------------------


def test_leftover_data_goes_back_only_to_the_application_that_left_it(t):
    db = t.b.name("ledger")
    t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE TABLE cards (number text)")
        conn.execute("INSERT INTO cards VALUES ('4111-1111')")
        conn.execute("GRANT SELECT ON cards TO PUBLIC")
    t.revoke(1)
    with pytest.raises(RefusedDatabaseError, match="data left by application shop"):
        t.grant(2, "intruder", db)
    # Refused before any SQL: no role was even made for the intruder.
    intruder = client_username(2, t.b.owner_tag)
    assert su(t, "SELECT 1 FROM pg_roles WHERE rolname = %s", (intruder,)) == []
    t.grant(3, "shop", db)
    with t.connect(3, db) as conn:
        assert conn.execute("SELECT number FROM cards").fetchall() == [("4111-1111",)]


# -- 4. the lookup is an allow-list, through the real PgBouncer ---------------------------------


def test_pooler_refuses_roles_that_reach_files_programs_or_superusers(t, pgbouncer_factory):
    auth_password = generate_password()
    aq = install_auth(
        t.b.creds, auth_user=t.b.auth_user(), auth_password=auth_password, owner_tag=t.b.owner_tag
    )
    db = t.b.name("app")
    _user, password = t.grant(1, "shop", db)
    group = group_role_for(t.b.owner_tag)
    pw = generate_password()
    hostile = {
        "program": "GRANT pg_execute_server_program TO {r}",
        "files": "GRANT pg_read_server_files TO {r}",
        "alldata": "GRANT pg_read_all_data TO {r}",
        "susub": "GRANT {s} TO {r}",
        "createrole": "ALTER ROLE {r} CREATEROLE",
        "bypass": "ALTER ROLE {r} BYPASSRLS",
        "stranger": None,  # a plain login role nobody enrolled
    }
    superior = t.b.name("superior")
    su(t, sql.SQL("CREATE ROLE {} NOLOGIN SUPERUSER").format(sql.Identifier(superior)).as_string())
    for key, grant in hostile.items():
        role = t.b.name(key)
        su(
            t,
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            .format(sql.Identifier(role), sql.Literal(pw))
            .as_string(),
        )
        su(
            t,
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}")
            .format(sql.Identifier(db), sql.Identifier(role))
            .as_string(),
        )
        if grant is not None:
            su(
                t,
                sql.SQL(grant)
                .format(r=sql.Identifier(role), s=sql.Identifier(superior))
                .as_string(),
            )
            su(
                t,
                sql.SQL("GRANT {} TO {}")
                .format(sql.Identifier(group), sql.Identifier(role))
                .as_string(),
            )
    pgb, through = start_auth_pooler(pgbouncer_factory, t.b, aq, auth_password, {db: db})

    def via(user: str, password: str) -> psycopg.Connection:
        return through(user, password, db)

    with via(client_username(1, t.b.owner_tag), password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for key in hostile:
        with pytest.raises(psycopg.OperationalError, match=REFUSED):
            via(t.b.name(key), pw)
    assert pgb.alive()


# -- 5. what the auth role can do where PUBLIC may connect ---------------------------------------


def test_auth_role_is_bounded_where_it_can_connect(t):
    auth_password = generate_password()
    aq = install_auth(
        t.b.creds, auth_user=t.b.auth_user(), auth_password=auth_password, owner_tag=t.b.owner_tag
    )
    db = t.b.name("app")
    t.grant(1, "shop", db)
    for closed in (db, "template0"):
        with pytest.raises(psycopg.OperationalError, match=r"not|denied"):
            role_connect(t.b, aq.auth_user, auth_password, closed)
    # postgres and template1 keep the PostgreSQL charm's CONNECT for PUBLIC (docs/security.md).
    with role_connect(t.b, aq.auth_user, auth_password, "postgres") as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SHOW temp_file_limit").fetchone() == ("0",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE t (x int)")
        with pytest.raises(DENIED):
            conn.execute("SELECT rolpassword FROM pg_authid")
        with pytest.raises(DENIED):
            conn.execute("SELECT pg_read_file('postgresql.conf')")
        with pytest.raises(DENIED):
            conn.execute(
                sql.SQL("SET ROLE {}").format(sql.Identifier(group_role_for(t.b.owner_tag)))
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET temp_file_limit = -1")  # superuser-only: it cannot lift it
        # Residual, documented: a session can turn read-only off and make a temporary table.
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("CREATE TEMP TABLE t (x int)")
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)


# -- 6. clean-up a tenant cannot block ---------------------------------------------------------


def test_tenant_settings_and_locks_cannot_block_the_clean_up(t):
    db = t.b.name("sticky")
    user, _ = t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE TABLE t (x int)")
    holder = t.connect(1, db)
    holder.autocommit = False
    holder.execute("LOCK TABLE public.t IN ACCESS EXCLUSIVE MODE")  # held until its session ends
    settings = (
        "default_transaction_read_only = on",
        "statement_timeout = 1",
        "lock_timeout = 1",
        "search_path = trap",
        f"role = {t.owner(db)}",
    )
    # The tenant does not own its database object: it cannot plant these any more...
    with t.connect(1, db) as conn, pytest.raises(DENIED, match="must be owner of database"):
        conn.execute(sql.SQL("ALTER DATABASE {} SET lock_timeout = 1").format(
                sql.Identifier(db)))  # fmt: skip
    for setting in settings:
        # ... but a database from before that change (or an operator) could have them.
        su(t, f"ALTER DATABASE {db} SET {setting}")
    t.revoke(1)
    assert su(t, "SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)) == []
    # (This check's own session must override the planted settings too.)
    with t.b.server.connect(db, options="-c statement_timeout=0") as conn:
        owner = conn.execute(
            "SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class "
            "WHERE relname = 't'"
        ).fetchall()
    assert owner == [(t.owner(db),)]
    holder.close()


# -- 7. sharing ---------------------------------------------------------------------------------


def test_two_relations_share_a_database_and_each_keeps_access_when_the_other_goes(t):
    db = t.b.name("shared")
    t.grant(1, "shop", db)
    t.consent = {db: frozenset({"integrator"})}  # the operator allows it (database_sharing)
    t.grant(2, "integrator", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE TABLE items (x int)")
        conn.execute("INSERT INTO items VALUES (1)")
    with t.connect(2, db) as conn:
        conn.execute("INSERT INTO items VALUES (2)")
        conn.execute("CREATE TABLE notes (y text)")
    t.revoke(2)
    with t.connect(1, db) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
        conn.execute("INSERT INTO notes VALUES ('kept')")
    t.grant(3, "integrator", db)  # re-relates while shop still holds it
    with t.connect(3, db) as conn:
        assert conn.execute("SELECT y FROM notes").fetchall() == [("kept",)]


# -- variants of our own ------------------------------------------------------------------------


def test_a_client_cannot_take_its_database_object_over(t):
    db = t.b.name("grab")
    user, _ = t.grant(1, "shop", db, extra=("CREATEDB",))
    with t.connect(1, db) as conn:
        for as_login in (False, True):
            if as_login:
                conn.execute("SET ROLE NONE")
            with pytest.raises(DENIED, match="must be owner of database"):
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(db), sql.Identifier(user)))  # fmt: skip
    t.revoke(1)
    assert su(t, "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (db,)) == [
        (databases_role_for(t.b.owner_tag),)
    ]
    assert not is_superuser(t, databases_role_for(t.b.owner_tag))


def test_one_tenant_cannot_reach_another_tenants_database(t):
    a_db, b_db = t.b.name("alpha"), t.b.name("beta")
    t.grant(1, "alpha-app", a_db)
    t.grant(2, "beta-app", b_db)
    with t.connect(2, b_db) as conn:
        conn.execute("CREATE TABLE secret (x int)")
        conn.execute("GRANT ALL ON secret TO PUBLIC")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        t.connect(1, b_db)
    with t.connect(1, a_db) as conn:
        with pytest.raises(DENIED):
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(t.owner(b_db))))
        with pytest.raises(DENIED):
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(t.owner(a_db)),
                    sql.Identifier(client_username(2, t.b.owner_tag)),
                )
            )
        with pytest.raises(DENIED):
            conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(t.owner(a_db))))


def test_an_object_owned_by_another_tenant_login_refuses_the_hand_over(t):
    db = t.b.name("bait")
    t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("SET ROLE NONE")  # planted as the login role, not the owner role
        conn.execute(
            "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql SECURITY DEFINER "
            "AS 'SELECT pg_catalog.now()'"
        )
    t.consent = {db: frozenset({"newcomer"})}
    with pytest.raises(TrapError, match=r"function public\.now"):
        t.grant(2, "newcomer", db)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        t.connect(2, db)


def test_a_database_wide_search_path_trap_is_reset_for_the_next_holder(t):
    db = t.b.name("path")
    t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE SCHEMA trap")
        conn.execute("CREATE FUNCTION trap.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'")
        with pytest.raises(DENIED, match="must be owner of database"):
            conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = trap, public").format(
                sql.Identifier(db)))  # fmt: skip
    # As a database from before tenants lost the database object (or an operator) may have it.
    su(t, f"ALTER DATABASE {db} SET search_path = trap, public")
    t.revoke(1)
    t.grant(2, "shop", db)
    with t.connect(2, db) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert conn.execute("SELECT lower('ABC')").fetchone() == ("abc",)


def test_a_connection_to_a_stopped_server_gives_up_within_the_deadline(t, monkeypatch):
    """SIGSTOP'd backend: neither TCP nor the server's timeouts fire; the watchdog does."""
    import os
    import signal
    import time

    import postgres.connection as connection

    monkeypatch.setattr(connection, "CONNECTION_DEADLINE_SECONDS", 3.0)
    elapsed: float | None = None
    with (
        pytest.raises(connection.BackendUnreachable, match="did not answer in time"),
        connection.connect(t.b.creds) as conn,
    ):
        (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        try:
            conn.execute("SELECT 1")
        finally:
            elapsed = time.monotonic() - start
            os.kill(pid, signal.SIGCONT)
    assert elapsed is not None and elapsed < 6


def test_a_stopped_postmaster_fails_the_grant_within_the_deadline(t, monkeypatch):
    """A server that accepts TCP but never answers the start-up: the grant gives up."""
    import os
    import signal
    import time

    import postgres.connection as connection

    monkeypatch.setattr(connection, "CONNECTION_DEADLINE_SECONDS", 3.0)
    postmaster = int(t.b.server.datadir.joinpath("postmaster.pid").read_text().split()[0])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            t.grant(2, "other", t.b.name("later"))
        except BaseException as exc:
            errors.append(exc)

    os.kill(postmaster, signal.SIGSTOP)
    try:
        start = time.monotonic()
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(timeout=15)
        elapsed = time.monotonic() - start
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert not worker.is_alive(), "the grant still hangs on a stopped server"
    assert elapsed < 6
    assert errors and isinstance(errors[0], connection.BackendUnreachable)
