"""Hostile backend databags against the REAL PostgreSQL: the catalog gets only what is implied.

The charm runs in Scenario with the real ``postgres.*`` functions (no fake): the provider's
databag points at the session's real server, and hypothesis varies each field between the right
value, a well-formed wrong one (a role that does not exist, a wrong password, a database that does
not exist, a closed port) and hostile text. The catalog (roles, databases, and the schemas and
functions of the databases involved) is compared before and after each hook:

- every field right: Active, and exactly the auth role, its definer role, the schema and the
  ``get_auth(text)`` function appeared (then removed again with ``remove_auth``);
- anything else: not Active, the status names the problem, and nothing at all appeared.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ops import testing
from psycopg import sql

from charm import PgBouncerK8sCharm
from harness.servers.pg import PostgresServer
from harness.servers.system import free_port
from postgres.auth import remove_auth
from postgres.connection import BackendCredentials
from postgres.passwords import generate_password
from state.tenants import group_role_for
from tests.unit.conftest import Dirs, backend_relation, make_container, peer_relation

pytestmark = pytest.mark.needs_root

USER, DATABASE = "hygiene_rel", "hygiene_db"
AUTH_USER = f"pgbouncer_auth_{USER}"
HOSTILE = st.sampled_from(
    [
        "x';DROP ROLE postgres;--",
        'a"b',
        "new\nline",
        "nul\x00",
        "é" * 40,
        "Upper_Case",
        "x" * 70,
        "",
        "{json",
        "pg_read_all_data",
    ]
)


@pytest.fixture(scope="module")
def relation_user(postgres: PostgresServer) -> Iterator[tuple[PostgresServer, str]]:
    """What the PostgreSQL charm makes for us: a superuser and a database, dropped afterwards."""
    password = generate_password()
    postgres.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}")
        .format(sql.Identifier(USER), sql.Literal(password))
        .as_string()
    )
    postgres.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)).as_string())
    try:
        yield postgres, password
    finally:
        postgres.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            .format(sql.Identifier(DATABASE))
            .as_string()
        )
        postgres.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(USER)).as_string()
        )


def catalog(server: PostgresServer) -> dict[str, set[str]]:
    """Roles and databases of the cluster; schemas and functions of the databases we touch."""
    snap = {
        "roles": {r[0] for r in server.execute("SELECT rolname FROM pg_roles")},
        "databases": {r[0] for r in server.execute("SELECT datname FROM pg_database")},
    }
    for db in ("postgres", DATABASE):
        snap[f"{db} schemas"] = {
            r[0] for r in server.execute("SELECT nspname FROM pg_namespace", dbname=db)
        }
        snap[f"{db} functions"] = {
            r[0]
            for r in server.execute(
                "SELECT p.oid::regprocedure::text FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname <> 'pg_catalog'",
                dbname=db,
            )
        }
    return snap


def diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, set[str]]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]} | {
        f"{k} gone": before[k] - after[k] for k in before if before[k] - after[k]
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    username=st.one_of(st.just("right"), st.just("hygiene_nobody"), HOSTILE),
    password=st.one_of(st.just("right"), st.just("wrong-" + "w" * 30), HOSTILE),
    database=st.one_of(st.just("right"), st.just("hygiene_nodb"), HOSTILE),
    endpoint=st.one_of(st.just("right"), st.just("closed"), HOSTILE),
)
@example(username="right", password="right", database="right", endpoint="right")
@example(username="hygiene_nobody", password="right", database="right", endpoint="right")
@example(username="right", password="right", database="hygiene_nodb", endpoint="right")
@example(username="Upper_Case", password="right", database="right", endpoint="right")
def test_catalog_changes_only_as_a_valid_databag_implies(
    relation_user: tuple[PostgresServer, str],
    username: str,
    password: str,
    database: str,
    endpoint: str,
):
    server, real_password = relation_user
    values = {
        "username": USER if username == "right" else username,
        "password": real_password if password == "right" else password,
        "database": DATABASE if database == "right" else database,
        "endpoints": {"right": server.endpoint, "closed": f"127.0.0.1:{free_port()}"}.get(
            endpoint, endpoint
        ),
        "version": "15.0",
    }
    all_right = {username, password, database, endpoint} == {"right"}
    before = catalog(server)

    with tempfile.TemporaryDirectory() as tmp:
        dirs = Dirs(Path(tmp, "pgb"), Path(tmp, "cgroup"))
        dirs.pgb.mkdir()
        dirs.cgroup.mkdir()
        ctx = testing.Context(PgBouncerK8sCharm)
        rel = backend_relation(remote=values)
        state = testing.State(
            leader=True, relations={rel, peer_relation()}, containers={make_container(dirs)}
        )
        out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)

    after = catalog(server)
    status = out.unit_status
    if not all_right:
        assert status.name in ("blocked", "waiting"), (values, status)
        assert status.message, status
        assert diff(before, after) == {}, values
        return
    assert status == testing.ActiveStatus("1 PgBouncer process"), status
    owner_tag = f"{out.model.uuid}/pgbouncer-k8s"
    assert diff(before, after) == {
        "roles": {AUTH_USER, f"{AUTH_USER}_definer", group_role_for(owner_tag)},
        f"{DATABASE} schemas": {AUTH_USER},
        f"{DATABASE} functions": {f"{AUTH_USER}.get_auth(text)"},
    }
    creds = BackendCredentials(server.host, server.port, USER, real_password, DATABASE)
    remove_auth(creds, auth_user=AUTH_USER, owner_tag=owner_tag)
    assert diff(before, catalog(server)) == {}
