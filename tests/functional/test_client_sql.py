"""Client relation users and databases on a real PostgreSQL 15."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from harness.servers.pg import PostgresServer
from harness.servers.system import free_port
from postgres.auth import generate_password
from postgres.clients import (
    ForbiddenRoleError,
    backend_version,
    create_client,
    drop_client,
    grant_database,
    revoke_client,
)
from postgres.connection import BackendCredentials, ForeignObjectError
from state.names import InvalidNameError
from state.tenants import TenantRecord, databases_role_for, owner_role_for
from tests.functional.test_auth_sql import Backend, cleanup, make_backend, role_connect

pytestmark = pytest.mark.needs_root


@pytest.fixture
def backend(postgres: PostgresServer) -> Iterator[Backend]:
    suffix = uuid.uuid4().hex[:10]
    b = make_backend(postgres, suffix)
    yield b
    cleanup(postgres, suffix, b.owner_tag)


RECORDS: dict[str, TenantRecord] = {}


def create(b: Backend, user: str, db: str, password: str, extra=(), relation_id: int = 5) -> None:
    """Grant as the charm does: decided from (and recorded in) this backend's tenant record."""
    record = RECORDS.get(b.suffix, TenantRecord())
    RECORDS[b.suffix] = grant_database(
        b.creds,
        record,
        username=user,
        password=password,
        database=db,
        extra_roles=list(extra),
        owner_tag=b.owner_tag,
        relation_id=relation_id,
        app="app",
        live={r.relation for r in record.roles.values()},
    )


def drop(b: Backend, user: str) -> None:
    RECORDS[b.suffix] = revoke_client(
        b.creds, RECORDS.get(b.suffix, TenantRecord()), username=user, owner_tag=b.owner_tag
    )


def client_snapshot(b: Backend, user: str, db: str) -> dict[str, list[tuple]]:
    with b.server.connect() as conn:
        return {
            "role": conn.execute(
                """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                          rolreplication, rolbypassrls, rolpassword,
                          shobj_description(oid, 'pg_authid')
                     FROM pg_authid WHERE rolname = %s""",
                (user,),
            ).fetchall(),
            "database": conn.execute(
                """SELECT datname, datdba::regrole::text, datacl::text[],
                          shobj_description(oid, 'pg_database')
                     FROM pg_database WHERE datname = %s""",
                (db,),
            ).fetchall(),
        }


def test_create_gives_a_scram_login_role_owning_a_closed_database(backend):
    user, db, password = backend.name("app"), backend.name("appdb"), generate_password()
    create(backend, user, db, password, relation_id=12)
    snap = client_snapshot(backend, user, db)
    mark = f"pgbouncer-k8s owner={backend.owner_tag} kind=client relation=12"
    ((_name, su, inherit, createrole, createdb, login, repl, bypass, verifier, comment),) = snap[
        "role"
    ]
    assert (su, createrole, createdb, repl, bypass) == (False,) * 5
    assert inherit and login and comment == mark
    assert verifier.startswith("SCRAM-SHA-256$")
    ((_, owner, acl, db_comment),) = snap["database"]
    # The database object belongs to the databases role (no member, no login), never a tenant;
    # the tenants' owner role may connect, create schemas and temporary tables; PUBLIC nothing.
    assert owner == databases_role_for(backend.owner_tag) and db_comment == mark
    assert not any(entry.startswith("=") for entry in acl), acl
    assert f"{owner_role_for(db, backend.owner_tag)}=CTc/{owner}" in acl, acl
    with role_connect(backend, user, password, db) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    other = backend.name("other")
    backend.server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'o-1234567890'")
        .format(sql.Identifier(other))
        .as_string()
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        role_connect(backend, other, "o-1234567890", db)


def test_create_twice_is_idempotent_and_resets_the_password(backend):
    user, db, password = backend.name("app"), backend.name("appdb"), generate_password()
    create(backend, user, db, password)
    first = client_snapshot(backend, user, db)
    create(backend, user, db, password)
    assert client_snapshot(backend, user, db) == first
    new_password = generate_password()
    create(backend, user, db, new_password, extra=["createdb"])
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        role_connect(backend, user, password, db)
    with role_connect(backend, user, new_password, db) as conn:
        assert conn.execute(
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = session_user"
        ).fetchone() == (True,)
    create(backend, user, db, new_password)
    assert client_snapshot(backend, user, db)["role"][0][4] is False  # NOCREATEDB again


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["SUPERUSER"], ["SUPERUSER"]),
        (["createdb", "replication"], ["REPLICATION"]),
        (["CREATEROLE", "BYPASSRLS"], ["BYPASSRLS", "CREATEROLE"]),
        (["pg_read_all_data"], ["PG_READ_ALL_DATA"]),
    ],
)
def test_forbidden_extra_roles_are_refused_before_any_sql(backend, extra, named):
    user, db = backend.name("app"), backend.name("appdb")
    with pytest.raises(ForbiddenRoleError) as info:
        create(backend, user, db, generate_password(), extra=extra)
    assert list(info.value.roles) == named
    for role in named:
        assert role in str(info.value)
    assert client_snapshot(backend, user, db) == {"role": [], "database": []}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "bad name"),
        ("username", 'x"; DROP ROLE postgres; --'),
        ("username", "u" * 64),
        ("database", "pgbouncer"),
        ("database", "orders_readonly"),
        ("database", "db;drop"),
        ("database", ""),
    ],
)
def test_invalid_names_are_refused_before_any_sql(backend, field, value):
    """Credentials pointing at a closed port: any SQL attempt would raise BackendUnreachable."""
    c = backend.creds
    nowhere = BackendCredentials(c.host, free_port(), c.user, c.password, c.dbname)
    args = {"username": backend.name("app"), "database": backend.name("appdb"), field: value}
    with pytest.raises(InvalidNameError) as info:
        create_client(
            nowhere,
            password=generate_password(),
            extra_roles=[],
            owner_tag=backend.owner_tag,
            relation_id=1,
            **args,
        )
    assert info.value.field == field
    if field == "username":
        with pytest.raises(InvalidNameError):
            drop_client(nowhere, username=value, owner_tag=backend.owner_tag)


def test_drop_keeps_the_database_and_its_data_and_ends_the_login(backend):
    user, db, password = backend.name("app"), backend.name("appdb"), generate_password()
    create(backend, user, db, password)
    with role_connect(backend, user, password, db) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'pooler'), (2, 'charm')")
        conn.execute("CREATE SCHEMA app")
        conn.execute("CREATE TABLE app.more (x int)")
    live = role_connect(backend, user, password, db)
    owners = {db: owner_role_for(db, backend.owner_tag)}
    assert (
        drop_client(backend.creds, username=user, owner_tag=backend.owner_tag, owners=owners)
        is True
    )
    with pytest.raises(psycopg.OperationalError):
        live.execute("SELECT 1")
    live.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        role_connect(backend, user, password, db)
    assert client_snapshot(backend, user, db)["role"] == []
    with backend.server.connect(db) as conn:
        assert conn.execute("SELECT item FROM orders ORDER BY id").fetchall() == [
            ("pooler",),
            ("charm",),
        ]
        owners = conn.execute(
            """SELECT DISTINCT r.rolname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
                WHERE c.relname IN ('orders', 'more')"""
        ).fetchall()
        # Never the relation user (a superuser): the database's unprivileged owner role.
        assert owners == [(owner_role_for(db, backend.owner_tag),)]
        assert conn.execute(
            "SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()"
        ).fetchone() == (databases_role_for(backend.owner_tag),)
    assert drop_client(backend.creds, username=user, owner_tag=backend.owner_tag) is False
    # The same application re-relating (a new relation id) takes its database back, with the
    # tables it made.
    RECORDS[backend.suffix] = RECORDS[backend.suffix].without_role(user)
    user2, password2 = backend.name("app2"), generate_password()
    create(backend, user2, db, password2, relation_id=9)
    with role_connect(backend, user2, password2, db) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2,)
        conn.execute("CREATE TABLE fresh (x int)")


def test_foreign_roles_and_databases_are_left_alone(backend):
    user, db = backend.name("app"), backend.name("appdb")
    foreign_db = backend.name("foreigndb")
    with backend.server.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(foreign_db)))
    with pytest.raises(ForeignObjectError):
        drop_client(backend.creds, username=user, owner_tag=backend.owner_tag)
    with pytest.raises(ForeignObjectError):
        create(backend, user, db, generate_password())
    assert client_snapshot(backend, user, db)["role"][0][9] is None  # untouched
    user2 = backend.name("app2")
    for taken in (foreign_db, "postgres", "template1", backend.creds.dbname):
        with pytest.raises(ForeignObjectError):
            create(backend, user2, taken, generate_password())
    assert backend.server.execute(
        "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (foreign_db,)
    ) == [("postgres",)]
    # Another application's client role is not ours either.
    create(backend, user2, db, generate_password())
    with pytest.raises(ForeignObjectError):
        drop_client(backend.creds, username=user2, owner_tag=f"{uuid.uuid4()}/other")
    assert client_snapshot(backend, user2, db)["role"] != []


def test_backend_version(backend):
    version = backend_version(backend.creds)
    assert version.startswith("15.") and " " not in version
