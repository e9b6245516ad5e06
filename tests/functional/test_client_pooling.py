"""A client user reaches its database through a rendered PgBouncer 1.24, in every pool mode.

Real PostgreSQL 15 servers and a real PgBouncer on loopback, no Juju: the auth plumbing from
``postgres.auth.install_auth``, the client from ``postgres.clients.create_client`` (with the name
``relations.client_database`` gives it), the configuration from ``pgbouncer.config.render_ini``.
A second server plays the read-only endpoint: it holds the same database and the same role with
a byte-identical SCRAM verifier, as a streaming replica would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from harness.servers.backend import create_relation_user
from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, make_run_dirs
from harness.servers.system import free_port
from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    render_auth_file,
    render_ini,
)
from postgres.auth import AuthQuery, auth_username_for, install_auth
from postgres.clients import create_client, drop_client
from postgres.connection import BackendCredentials
from postgres.passwords import generate_password
from relations.client_database import client_username
from state.names import READONLY_KEY_SUFFIX
from state.tenants import app_hash, databases_role_for

pytestmark = pytest.mark.needs_root

POOL_MODES = ("session", "transaction", "statement")
RELATION_ID = 7


@dataclass
class Setup:
    """The backend as the charm leaves it once a client relation was answered."""

    primary: PostgresServer
    replica: PostgresServer
    creds: BackendCredentials
    owner_tag: str
    auth: AuthQuery
    auth_password: str
    client: str
    client_password: str
    database: str
    suffix: str


def _verifier(server: PostgresServer, role: str) -> str:
    rows = server.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    assert rows and rows[0][0].startswith("SCRAM-SHA-256$")
    return rows[0][0]


def _mirror_on_replica(setup_primary: PostgresServer, replica: PostgresServer, role: str, db: str):
    """The same role (byte-identical SCRAM verifier) and database on the read-only server."""
    verifier = sql.Literal(_verifier(setup_primary, role))
    rid, dbid = sql.Identifier(role), sql.Identifier(db)
    with replica.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(rid))
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(rid, verifier))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(dbid, rid))
    with replica.connect(db) as conn:
        conn.execute("CREATE TABLE served_by (name text)")
        conn.execute("INSERT INTO served_by VALUES ('replica')")
        conn.execute(sql.SQL("GRANT SELECT ON served_by TO {}").format(rid))
    assert _verifier(replica, role) == _verifier(setup_primary, role)


def _cleanup(server: PostgresServer, suffix: str, owner_tag: str = "") -> None:
    tag_hash = app_hash(owner_tag) if owner_tag else suffix
    with server.connect() as conn:
        for (db,) in conn.execute(
            "SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (suffix,)
        ).fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        for (role,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE strpos(rolname, %s) > 0"
            " OR (rolname LIKE 'pgbouncer\\_%%' AND strpos(rolname, %s) > 0)"
            " ORDER BY rolname LIKE 'pgbouncer\\_client\\_%%' DESC",
            (suffix, tag_hash),
        ).fetchall():
            rid = sql.Identifier(role)
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(rid))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(rid))
            conn.execute(sql.SQL("DROP ROLE {}").format(rid))


@pytest.fixture(scope="module")
def replica_server() -> Iterator[PostgresServer]:
    server = start_postgres(prefix="pgbk8s-ro-")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def setup(postgres: PostgresServer, replica_server: PostgresServer) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:10]
    # A model uuid whose hash gives this test its own client role name.
    owner_tag = f"{uuid.uuid4()}/pgbouncer-k8s"
    creds = create_relation_user(postgres, suffix)
    auth_password = generate_password()
    auth = install_auth(
        creds,
        auth_user=auth_username_for(creds.user),
        auth_password=auth_password,
        owner_tag=owner_tag,
    )
    client, client_password = client_username(RELATION_ID, owner_tag), generate_password()
    database = f"app_{suffix}"
    create_client(
        creds,
        username=client,
        password=client_password,
        database=database,
        extra_roles=[],
        owner_tag=owner_tag,
        relation_id=RELATION_ID,
    )
    with psycopg.connect(
        postgres.conninfo(database, user=client, password=client_password), autocommit=True
    ) as conn:
        conn.execute("CREATE TABLE served_by (name text)")
        conn.execute("INSERT INTO served_by VALUES ('primary')")
    _mirror_on_replica(postgres, replica_server, client, database)
    yield Setup(
        postgres,
        replica_server,
        creds,
        owner_tag,
        auth,
        auth_password,
        client,
        client_password,
        database,
        suffix,
    )
    # The client role carries the test's suffix only through the owner-tag hash: drop it by
    # name once the databases (which it may own) are gone.
    for server in (postgres, replica_server):
        _cleanup(server, suffix, owner_tag)
        with server.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (client,))
            if exists.fetchone():
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(client)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(client)))


def start_pooler(factory: PgBouncerFactory, s: Setup, pool_mode: str):
    """Render the configuration as the charm does for one process and start PgBouncer on it."""
    primary, replica = s.primary, s.replica
    cfg = PgBouncerConfig(
        listen_port=free_port(),
        pool_mode=pool_mode,
        max_db_connections=10,
        max_prepared_statements=100,
        processes=1,
        databases=(
            DatabaseTarget(AUTH_DATABASE_KEY, primary.host, primary.port, s.auth.dbname),
            DatabaseTarget(s.database, primary.host, primary.port, s.database),
            DatabaseTarget(
                s.database + READONLY_KEY_SUFFIX, replica.host, replica.port, s.database
            ),
        ),
        auth=AuthSettings(s.auth.auth_user, s.auth.auth_query, AUTH_DATABASE_KEY),
        listen_addr="127.0.0.1",
    )
    workdir = factory.workdir()
    make_run_dirs(workdir, [0])
    factory.write(workdir, "userlist.txt", render_auth_file(s.auth.auth_user, s.auth_password))
    text = render_ini(cfg, 0, base_dir=str(workdir))
    return factory.start(text, cfg.listen_port, workdir, name="pgbouncer_0.ini")


def via_pooler(port: int, s: Setup, dbname: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=s.client,
        password=s.client_password,
        dbname=dbname,
        connect_timeout=5,
        **kwargs,
    )


def _settings(pool_mode: str) -> list[dict]:
    """The psycopg defaults, and without automatic prepared statements.

    Statement pooling refuses transaction blocks, and psycopg's default is to open one: a
    statement-mode client must use autocommit (docs/client-database.md).
    """
    base = {"autocommit": True} if pool_mode == "statement" else {}
    return [base, {**base, "prepare_threshold": None}]


@pytest.mark.parametrize("pool_mode", POOL_MODES)
def test_client_reaches_its_database_and_the_read_only_target(setup, pgbouncer_factory, pool_mode):
    pgb = start_pooler(pgbouncer_factory, setup, pool_mode)
    for kwargs in _settings(pool_mode):
        # Two clients interleaving the same parameterised query well past psycopg's prepare
        # threshold (5): server-side prepared statements must survive connection sharing.
        with (
            via_pooler(pgb.port, setup, setup.database, **kwargs) as one,
            via_pooler(pgb.port, setup, setup.database, **kwargs) as two,
        ):
            for i in range(12):
                for conn in (one, two):
                    row = conn.execute(
                        "SELECT name, session_user, current_setting('port')::int, %s::int"
                        " FROM served_by",
                        (i,),
                    ).fetchone()
                    assert row == ("primary", setup.client, setup.primary.port, i)
                    if not kwargs.get("autocommit"):
                        conn.commit()
        with via_pooler(pgb.port, setup, setup.database + READONLY_KEY_SUFFIX, **kwargs) as ro:
            for _ in range(8):
                row = ro.execute(
                    "SELECT name, current_database(), current_setting('port')::int FROM served_by"
                ).fetchone()
                assert row == ("replica", setup.database, setup.replica.port)
    shown = psycopg.connect(
        host="127.0.0.1",
        port=pgb.port,
        user=setup.client,
        password=setup.client_password,
        dbname=setup.database,
        autocommit=True,
    )
    with shown:
        assert shown.execute("SELECT 1").fetchone() == (1,)
    assert pgb.alive()
    assert setup.client_password not in pgb.log()


def test_statement_mode_really_refuses_transaction_blocks(setup, pgbouncer_factory):
    pgb = start_pooler(pgbouncer_factory, setup, "statement")
    # psycopg's default opens a transaction block
    conn = via_pooler(pgb.port, setup, setup.database)
    with conn, pytest.raises(psycopg.Error, match="transaction blocks not allowed"):
        conn.execute("SELECT 1")


def test_a_wrong_password_is_refused_through_the_pooler(setup, pgbouncer_factory):
    pgb = start_pooler(pgbouncer_factory, setup, "transaction")
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=pgb.port,
            user=setup.client,
            password="x" + setup.client_password,
            dbname=setup.database,
            connect_timeout=5,
        )


def test_after_drop_client_the_user_is_gone_and_the_data_stays(setup, pgbouncer_factory):
    pgb = start_pooler(pgbouncer_factory, setup, "transaction")
    with via_pooler(pgb.port, setup, setup.database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM served_by").fetchone() == (1,)

    assert drop_client(setup.creds, username=setup.client, owner_tag=setup.owner_tag) is True

    with pytest.raises(psycopg.OperationalError):
        via_pooler(pgb.port, setup, setup.database, autocommit=True).execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            setup.primary.conninfo(
                setup.database, user=setup.client, password=setup.client_password
            )
        )
    assert (
        setup.primary.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (setup.client,)) == []
    )
    # the database and its data stay; the database object belongs to the NOLOGIN databases role
    # (never the relation user, never a tenant)
    assert setup.primary.execute("SELECT name FROM served_by", dbname=setup.database) == [
        ("primary",)
    ]
    assert setup.primary.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (setup.database,)
    ) == [(databases_role_for(setup.owner_tag),)]
    # idempotent: a second drop finds nothing to do
    assert drop_client(setup.creds, username=setup.client, owner_tag=setup.owner_tag) is False


def test_a_database_the_client_creates_itself_is_not_pooled(setup, pgbouncer_factory):
    """A database a client makes itself is not pooled (docs/client-database.md).

    Only databases the leader handed out get a ``[databases]`` entry. A client with
    ``CREATEDB`` (the one extra role the charm grants) makes its own database through the
    pooler; the pooler does not serve it, nor ``postgres`` or ``template1``; PostgreSQL itself
    does, to that client.
    """
    s = setup
    s.primary.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(s.client)))
    pgb = start_pooler(pgbouncer_factory, s, "transaction")
    made = f"made_{s.suffix}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(made))
    with via_pooler(pgb.port, s, s.database, autocommit=True) as conn:
        # In its database the client acts as the NOLOGIN owner role, which has no CREATEDB:
        # it must drop back to its login role first.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(create)
        conn.execute("SET ROLE NONE")
        conn.execute(create)
    for dbname in (made, "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError):
            via_pooler(pgb.port, s, dbname).close()
        log = pgb.log()
        # PgBouncer answers as for an unknown user (no pool, so no auth_query): "(nodb)".
        assert f"login attempt: db={dbname} user={s.client}" in log, log[-2000:]
        assert f" {dbname}/{s.client}@" not in log  # no pool was ever made for it
    direct = s.primary.conninfo(made, user=s.client, password=s.client_password)
    with psycopg.connect(direct, autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (
            made,
            s.client,
        )
