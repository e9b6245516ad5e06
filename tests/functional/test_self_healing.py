"""Plumbing that heals itself (issue 15's defect 3), with Scenario playing Juju and a real server.

The charm sets the auth plumbing up on a real PostgreSQL 15; then a DBA (or a restore, or a new
primary) breaks it in one of several ways; one update-status on the leader finds it with a real
login as the auth role, puts it back with the same password, and says so in the status. A
PgBouncer that kept its auth file then logs clients in again.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops import testing
from psycopg import sql

from charm import PgBouncerK8sCharm
from harness.servers.pg import PostgresServer
from postgres.auth import check_auth
from postgres.connection import BackendCredentials
from postgres.passwords import generate_password
from state.tenants import group_role_for
from tests.unit.conftest import Dirs, backend_relation, make_container, peer_relation

pytestmark = pytest.mark.needs_root

MODEL = testing.Model(name="heal", uuid=str(uuid.uuid4()))
OWNER_TAG = f"{MODEL.uuid}/pgbouncer-k8s"


@pytest.fixture
def backend(postgres: PostgresServer) -> Iterator[tuple[PostgresServer, str, str, str]]:
    suffix = uuid.uuid4().hex[:8]
    user, database, password = f"heal_{suffix}", f"heal_db_{suffix}", generate_password()
    postgres.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}")
        .format(sql.Identifier(user), sql.Literal(password))
        .as_string()
    )
    postgres.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)).as_string())
    yield postgres, user, database, password
    postgres.execute(
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        .format(sql.Identifier(database))
        .as_string()
    )
    for role in (
        f"pgbouncer_auth_{user}",
        f"pgbouncer_auth_{user}_definer",
        group_role_for(OWNER_TAG),
        user,
    ):
        postgres.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)).as_string()
        )


BREAKAGES = {
    "function dropped": "DROP FUNCTION {schema}.get_auth(text)",
    "grant revoked": "REVOKE EXECUTE ON FUNCTION {schema}.get_auth(text) FROM {auth}",
    "password changed": "ALTER ROLE {auth} PASSWORD 'changed-by-a-dba-1234567890'",
    "definer lost pg_authid": "REVOKE SELECT (rolpassword) ON pg_catalog.pg_authid FROM {definer}",
    "client group dropped": "DROP ROLE {group}",
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_one_update_status_finds_and_repairs_broken_plumbing(backend, breakage):
    server, user, database, password = backend
    auth = f"pgbouncer_auth_{user}"
    remote = {
        "endpoints": server.endpoint,
        "username": user,
        "password": password,
        "database": database,
        "version": "15.0",
    }
    with tempfile.TemporaryDirectory() as tmp:
        dirs = Dirs(Path(tmp, "pgb"), Path(tmp, "cgroup"))
        dirs.pgb.mkdir()
        dirs.cgroup.mkdir()
        ctx = testing.Context(PgBouncerK8sCharm)
        rel = backend_relation(remote=remote)
        state = testing.State(
            leader=True,
            model=MODEL,
            relations={rel, peer_relation()},
            containers={make_container(dirs)},
        )
        out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
        assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")
        secret = next(s for s in out.secrets if s.label == "pgbouncer-auth")
        auth_password = secret.latest_content["password"]
        creds = BackendCredentials(server.host, server.port, user, password, database)
        assert (
            check_auth(creds, auth_user=auth, auth_password=auth_password, owner_tag=OWNER_TAG)
            is None
        )

        statement = BREAKAGES[breakage].format(
            schema=f'"{auth}"', auth=f'"{auth}"', definer=f'"{auth}_definer"',
            group=f'"{group_role_for(OWNER_TAG)}"',
        )  # fmt: skip
        server.execute(statement, dbname=database)
        assert check_auth(creds, auth_user=auth, auth_password=auth_password, owner_tag=OWNER_TAG)

        healed = ctx.run(ctx.on.update_status(), out)
        assert healed.unit_status.name == "active", healed.unit_status
        assert "repaired the auth plumbing" in healed.unit_status.message
        assert (
            check_auth(creds, auth_user=auth, auth_password=auth_password, owner_tag=OWNER_TAG)
            is None
        )
        # Nothing rotated: the same secret content, so PgBouncer's auth file is still right.
        again = next(s for s in healed.secrets if s.label == "pgbouncer-auth")
        assert again.latest_content["password"] == auth_password
        # A second update-status finds nothing to repair.
        calm = ctx.run(ctx.on.update_status(), healed)
        assert calm.unit_status == testing.ActiveStatus("1 PgBouncer process")
