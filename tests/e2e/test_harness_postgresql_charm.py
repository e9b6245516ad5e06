"""The fake PostgreSQL charm makes real users on a real server and answers as the seed shows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from harness.postgresql_charm import FakePostgresqlCharm
from harness.servers.pg import PostgresServer, start_postgres

pytestmark = pytest.mark.needs_root

# The seed's provider column, plus `database` and `uris` that the published interface adds.
SEED_PROVIDER_KEYS = {"endpoints", "username", "password", "version"}
REQUIRER_DATABAG = {
    "database": "pgbouncer",
    "extra-user-roles": "SUPERUSER",
    "requested-secrets": json.dumps(["username", "password"]),
}


@pytest.fixture
def fake(postgres: PostgresServer) -> Iterator[FakePostgresqlCharm]:
    """A fake PostgreSQL charm on the session server; its users and databases are dropped after."""
    charm = FakePostgresqlCharm(postgres)
    try:
        yield charm
    finally:
        charm.cleanup()


def login(server: PostgresServer, username: str, password: str, dbname: str) -> psycopg.Connection:
    """Connect over TCP with SCRAM as a relation user."""
    return psycopg.connect(
        server.conninfo(dbname, user=username, password=password), autocommit=True
    )


def role(server: PostgresServer, name: str) -> tuple | None:
    """``(rolsuper, rolcanlogin)`` of a role, None when it does not exist."""
    rows = server.execute(
        "SELECT rolsuper, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = %s", (name,)
    )
    return rows[0] if rows else None


def test_plain_answer_has_the_seed_keys_and_working_credentials(
    fake: FakePostgresqlCharm, postgres: PostgresServer
):
    data, secret = fake.provide("pgb_plain", "SUPERUSER", relation_id=18, use_secret=False)

    assert secret is None
    assert set(data) >= SEED_PROVIDER_KEYS
    assert set(data) == SEED_PROVIDER_KEYS | {"database", "uris"}
    assert data["username"] == "relation_18"
    assert data["endpoints"] == f"127.0.0.1:{postgres.port}"
    assert data["database"] == "pgb_plain"
    server_version = postgres.execute("SHOW server_version")[0][0]
    assert data["version"] == server_version.split()[0] and data["version"].startswith("15.")
    assert role(postgres, "relation_18") == (True, True)
    with login(postgres, data["username"], data["password"], "pgb_plain") as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "relation_18",
            "pgb_plain",
        )
    with psycopg.connect(data["uris"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("relation_18",)
    with pytest.raises(psycopg.OperationalError):
        login(postgres, data["username"], data["password"] + "x", "pgb_plain").close()


def test_secret_answer_keeps_credentials_out_of_the_databag(
    fake: FakePostgresqlCharm, postgres: PostgresServer
):
    data, secret = fake.provide("pgb_secret", None, relation_id=19, use_secret=True)

    assert secret is not None
    assert secret.owner is None, "owned by the remote application, not by us"
    assert data["secret-user"] == secret.id
    assert set(data) == {"database", "endpoints", "version", "secret-user"}
    content = secret.tracked_content
    assert content["username"] == "relation_19"
    assert all(content["password"] not in value for value in data.values())
    assert role(postgres, "relation_19") == (False, True), "no SUPERUSER unless asked"
    with login(postgres, content["username"], content["password"], "pgb_secret") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("pgb_secret",)


def test_read_only_endpoint_and_revoke(fake: FakePostgresqlCharm, postgres: PostgresServer):
    replica = start_postgres(prefix="pgbk8s-pg-ro-")
    try:
        fake.read_only = replica
        data, _ = fake.provide("pgb_ro", "SUPERUSER", relation_id=20, use_secret=False)
        assert data["read-only-endpoints"] == f"127.0.0.1:{replica.port}"
        with login(replica, data["username"], data["password"], "pgb_ro") as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone() == (replica.port,)
        with login(postgres, data["username"], data["password"], "pgb_ro") as conn:
            conn.execute("CREATE TABLE owned_by_relation_user (x int)")

        fake.revoke(20)

        assert role(postgres, "relation_20") is None
        assert role(replica, "relation_20") is None
        owner = postgres.execute(
            "SELECT tableowner FROM pg_catalog.pg_tables WHERE tablename = 'owned_by_relation_user'",
            dbname="pgb_ro",
        )
        assert owner == [("postgres",)], "REASSIGN OWNED keeps the data, now the superuser's"
        fake.cleanup()
    finally:
        fake.read_only = None
        replica.destroy()


def test_dpcharmlibs_provider_answers_with_secret_user_and_working_credentials(
    fake: FakePostgresqlCharm, postgres: PostgresServer
):
    data, secret = fake.provide_with_dpcharmlibs(REQUIRER_DATABAG, relation_id=21)

    assert secret is not None and data["secret-user"] == secret.id
    assert "username" not in data and "password" not in data
    assert data["endpoints"] == postgres.endpoint
    assert data["database"] == "pgbouncer"
    assert data["version"] == postgres.execute("SHOW server_version")[0][0].split()[0]
    content = secret.tracked_content
    assert {"username", "password"} <= set(content)
    assert all(content["password"] not in value for value in data.values())
    assert role(postgres, content["username"]) == (True, True)
    with login(postgres, content["username"], content["password"], "pgbouncer") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (content["username"],)


def test_a_hot_standby_replica_gets_users_by_replication_and_refuses_writes(
    postgres: PostgresServer,
):
    from harness.story import hot_standby

    standby = hot_standby(postgres)
    charm = FakePostgresqlCharm(postgres, read_only=standby)
    try:
        assert charm.standby and charm.servers == [postgres]
        data, _ = charm.provide("pgb_standby", "SUPERUSER", relation_id=21, use_secret=False)
        assert data["read-only-endpoints"] == standby.endpoint
        # provide() returned only once the standby had replayed the new role and database.
        with login(standby, data["username"], data["password"], "pgb_standby") as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), inet_server_port()").fetchone()
            assert row == (True, standby.port)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("CREATE TABLE written_on_a_replica (x int)")
        charm.revoke(21)
        assert role(standby, "relation_21") is None
    finally:
        charm.cleanup()
        standby.destroy()
    assert not postgres.execute(
        "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'pgb_standby'"
    )
