"""Our requirer against real providers: dpcharmlibs' own provider, and the seed's plain fields.

The PostgreSQL charm is played on a real PostgreSQL 15 (harness/postgresql_charm.py);
our charm runs one relation-changed in Scenario with the real SQL (no fake), so the created
chart's effects are checked in the real catalog and in the files the charm wrote.
"""

from __future__ import annotations

import pytest
from ops import testing

from charm import PgBouncerK8sCharm
from harness.postgresql_charm import FakePostgresqlCharm
from postgres.auth import remove_auth
from postgres.connection import BackendCredentials
from tests.unit.conftest import OUR_REQUEST, Dirs, make_container, peer_relation

pytestmark = pytest.mark.needs_root


@pytest.fixture
def dirs(tmp_path) -> Dirs:
    (tmp_path / "pgb").mkdir()
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "cpu.max").write_text("100000 100000\n")
    return Dirs(tmp_path / "pgb", tmp_path / "cgroup")


@pytest.fixture
def provider(postgres):
    fake = FakePostgresqlCharm(postgres)
    try:
        yield fake
    finally:
        fake.cleanup()


def _auth_objects(postgres, auth_user: str, dbname: str) -> tuple[bool, bool]:
    role = postgres.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (auth_user,))
    func = postgres.execute(
        "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = %s AND p.proname = 'get_auth'",
        (auth_user,),
        dbname=dbname,
    )
    return bool(role), bool(func)


@pytest.mark.parametrize("variant", ["dpcharmlibs", "plain"])
def test_created_branch_with_a_real_provider(postgres, provider, dirs, variant):
    rel = testing.Relation(
        "backend-database",
        remote_app_name="postgresql-k8s",
        local_app_data=dict(OUR_REQUEST),
        remote_units_data={0: {}},
    )
    if variant == "dpcharmlibs":
        data, secret = provider.provide_with_dpcharmlibs(dict(OUR_REQUEST), relation_id=rel.id)
        assert secret is not None and "secret-user" in data
        assert "password" not in data
    else:
        data, secret = provider.provide(
            "pgbouncer", "SUPERUSER", relation_id=rel.id, use_secret=False
        )
        assert secret is None and data["password"]
    rel = testing.Relation(
        "backend-database",
        id=rel.id,
        remote_app_name="postgresql-k8s",
        local_app_data=dict(OUR_REQUEST),
        remote_app_data=data,
        remote_units_data={0: {}},
    )
    ctx = testing.Context(PgBouncerK8sCharm)
    state = testing.State(
        leader=True,
        relations={rel, peer_relation()},
        containers={make_container(dirs)},
        secrets={secret} if secret else set(),
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)

    relation_user = (secret.tracked_content if secret else data)["username"]
    auth_user = "pgbouncer_auth_" + relation_user.replace("-", "_")
    dbname = data.get("database", "pgbouncer")
    try:
        assert _auth_objects(postgres, auth_user, dbname) == (True, True)
        assert f"auth_user = {auth_user}" in (dirs.pgb / "pgbouncer_0.ini").read_text()
        assert (
            f"host={postgres.host} port={postgres.port}"
            in (dirs.pgb / "pgbouncer_0.ini").read_text()
        )
        auth = next(s for s in out.secrets if s.label == "pgbouncer-auth")
        assert auth.latest_content is not None and auth.latest_content["username"] == auth_user
        assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")
    finally:
        creds = secret.tracked_content if secret else data
        remove_auth(
            BackendCredentials(
                postgres.host, postgres.port, creds["username"], creds["password"], dbname
            ),
            auth_user=auth_user,
        )
    assert _auth_objects(postgres, auth_user, dbname) == (False, False)
