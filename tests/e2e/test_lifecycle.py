"""The charm's whole life, end to end: real PostgreSQL 15, real PgBouncer 1.24, Juju by Scenario.

Every scenario deploys two units of pgbouncer-k8s (:class:`~harness.story.Deployment`),
each running its real PgBouncer processes from the Pebble plan it produced, in a network
namespace of its own (as each pod has), so that a client can query through *each* unit on the
same ``listen_port``. The PostgreSQL charm is played by
:class:`~harness.postgresql_charm.FakePostgresqlCharm` on a real server, answering in
one of three ways: the seed's plain ``username``/``password`` fields (``plain``), a hand-written
``secret-user`` (``secret``) or dpcharmlibs-interfaces' real provider (``dpcharmlibs``).

The charm publishes ``pgbouncer-k8s.<model>.svc.cluster.local:<listen_port>`` to clients; there
is no Kubernetes service here, so the tests connect to ``127.0.0.1`` at the port where the
harness relays into each unit's pod network (:meth:`Unit.address`), with the published username,
password and database. Every assertion reads a real effect: PostgreSQL's catalogs, the files the
charm wrote, the running processes, a client's query.
"""

from __future__ import annotations

from collections.abc import Callable

import ops
import psycopg
import pytest
from ops import testing

from harness.network import host_listeners
from harness.servers.pg import PostgresServer
from harness.story import (
    ClientCredentials,
    Deployment,
    auth_functions,
    auth_roles,
    auth_schemas,
    promoted_copy,
    role_names,
)

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
WHO = "SELECT session_user, current_database(), inet_server_port()"
NO_BACKEND = testing.BlockedStatus("waiting for a backend-database relation")
ACTIVE = testing.ActiveStatus("1 PgBouncer process")


def ini(unit) -> str:
    """The configuration unit's PgBouncer process 0 reads (the real file in its mount)."""
    return (unit.mount_dir / "pgbouncer_0.ini").read_text()


def assert_all(d: Deployment, status: ops.StatusBase) -> None:
    """Every unit shows ``status``."""
    assert d.statuses() == {u.name: status for u in d.app.units}


def assert_processes_healthy(d: Deployment) -> None:
    """Every unit runs its PgBouncer and none died behind the test's back."""
    for unit in d.app.units:
        assert unit.runner is not None
        assert unit.runner.running() == {"pgbouncer_0"}, unit.name
        assert unit.runner.exited() == {}, unit.runner.logs("pgbouncer_0")[-2000:]


def assert_served_by_each_unit(
    d: Deployment, creds: ClientCredentials, server: PostgresServer
) -> None:
    """A query through each unit reaches ``server`` as the client's user, in its database."""
    for unit in d.app.units:
        assert d.query(unit, creds, WHO) == (creds.username, creds.database, server.port), (
            unit.name
        )
        assert unit.runner is not None
        login = f"{creds.database}/{creds.username}@"
        assert login in unit.runner.logs("pgbouncer_0"), f"{unit.name} did not serve the client"


def assert_refused_by_each_unit(d: Deployment, creds: ClientCredentials) -> None:
    """Each unit's PgBouncer refuses the client's login."""
    for unit in d.app.units:
        with pytest.raises(psycopg.OperationalError):
            d.query(unit, creds, "SELECT 1")


def test_deploy_relate_backend_and_client_then_query_through_each_unit(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 1: deploy, relate the backend (dpcharmlibs' provider), relate a client, query.

    Each unit's PgBouncer answers in its own pod network; the host sees only loopback relays.
    """
    d = make_deployment()
    d.deploy()
    assert_all(d, NO_BACKEND)
    assert auth_roles(pg) == []

    rid = d.relate_backend("dpcharmlibs")

    assert "secret-user" in d.provider_data() and "password" not in d.provider_data()
    auth_user = f"pgbouncer_auth_relation_{rid}"
    assert auth_roles(pg) == [(auth_user, True, False), (f"{auth_user}_definer", False, False)]
    assert auth_functions(pg) == [f"{auth_user}.get_auth"]
    assert_all(d, ACTIVE)
    for unit in d.app.units:
        assert f"auth_user = {auth_user}" in ini(unit)
        assert (unit.mount_dir / "userlist.txt").stat().st_mode & 0o777 == 0o600

    client = d.relate_client("app-one", "appdb")
    creds = d.credentials(client)

    port = d.app.config["listen_port"]
    assert creds.endpoints == f"pgbouncer-k8s.{d.app.model.name}.svc.cluster.local:{port}"
    assert creds.database == "appdb"
    assert_all(d, ACTIVE)
    assert_served_by_each_unit(d, creds, pg)
    assert_processes_healthy(d)
    # listen_addr = * stayed inside the pods: on the host, only loopback relays listen.
    for unit in d.app.units:
        assert set(host_listeners(unit.address()[1])) == {"127.0.0.1"}
    assert host_listeners(port) == []


def test_pebble_ready_after_the_backend_relation_still_sets_up_auth(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 2: the backend answers before Pebble is up (plain seed fields).

    The created chart returns without deferring while PgBouncer is not running; the set-up must
    not be lost: pebble-ready installs the auth plumbing once PgBouncer runs.
    """
    d = make_deployment()
    d.deploy(pebble_ready=False)
    rid = d.relate_backend("plain")

    assert "password" in d.provider_data(), "the seed's plain provider"
    leader = d.app.leader
    assert leader.runner is not None and leader.runner.running() == set()
    assert auth_roles(pg) == [], "nothing installed while PgBouncer is not running"
    assert [e for e in leader.state.deferred if "database_created" in e.name] == []

    d.pebble_ready()

    auth_user = f"pgbouncer_auth_relation_{rid}"
    assert [r[0] for r in auth_roles(pg)] == [auth_user, f"{auth_user}_definer"]
    assert auth_functions(pg) == [f"{auth_user}.get_auth"]
    assert_all(d, ACTIVE)
    for unit in d.app.units:
        assert f"auth_user = {auth_user}" in ini(unit)
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    assert_served_by_each_unit(d, creds, pg)
    assert_processes_healthy(d)


def test_failover_to_a_new_primary_moves_queries_there(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 3: PostgreSQL fails over (``secret-user`` written by hand).

    The new primary is a ``pg_basebackup`` copy of the old one (roles with their SCRAM
    verifiers, the auth function, the client's data), as a promoted replica holds; the old
    primary stops; the PostgreSQL charm publishes the new ``endpoints``.
    """
    d = make_deployment()
    d.deploy()
    rid = d.relate_backend("secret")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    with d.connect(d.app.units[0], creds) as conn:
        conn.execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (42)")
    assert_served_by_each_unit(d, creds, pg)

    new_primary = promoted_copy(pg)
    try:
        pg.stop()
        d.fail_over(new_primary)

        for unit in d.app.units:
            assert f"port={new_primary.port}" in ini(unit)
            assert f"port={pg.port}" not in ini(unit)
        assert_served_by_each_unit(d, creds, new_primary)
        for unit in d.app.units:
            assert d.query(unit, creds, "SELECT id FROM orders") == (42,)
        auth_user = f"pgbouncer_auth_relation_{rid}"
        assert [r[0] for r in auth_roles(new_primary)] == [auth_user, f"{auth_user}_definer"]
        assert_all(d, ACTIVE)
        assert_processes_healthy(d)
    finally:
        new_primary.destroy()


def test_removing_one_client_drops_its_user_and_spares_the_other(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 4: two clients (dpcharmlibs backend); one relation is removed."""
    d = make_deployment()
    d.deploy()
    d.relate_backend("dpcharmlibs")
    gone, kept = d.relate_client("app-one", "appdb"), d.relate_client("app-two", "otherdb")
    gone_creds, kept_creds = d.credentials(gone), d.credentials(kept)
    assert_served_by_each_unit(d, gone_creds, pg)
    assert_served_by_each_unit(d, kept_creds, pg)
    assert gone_creds.username in role_names(pg)

    d.remove_client(gone)

    assert gone_creds.username not in role_names(pg)
    assert kept_creds.username in role_names(pg)
    assert pg.execute("SELECT 1 FROM pg_database WHERE datname = 'appdb'") == [(1,)], (
        "the client's database and data stay"
    )
    for unit in d.app.units:
        assert "\nappdb = " not in ini(unit)
        assert "\notherdb = " in ini(unit)
    assert_refused_by_each_unit(d, gone_creds)
    assert_served_by_each_unit(d, kept_creds, pg)
    assert_all(d, ACTIVE)
    assert_processes_healthy(d)


def test_scale_down_keeps_auth_and_the_remaining_unit_serves(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 5: pgbouncer-k8s scales 2 → 1 (plain seed fields).

    Driven as Juju does on Kubernetes: the highest unit leaves; it runs relation-departed with
    itself as the departing unit (``JUJU_DEPARTING_UNIT=pgbouncer-k8s/1`` while
    ``JUJU_REMOTE_UNIT=postgresql-k8s/0``: the harness sets the variable Scenario cannot), then
    relation-broken; its pod goes; the leader runs pgb-peers-relation-departed.
    """
    d = make_deployment()
    d.deploy()
    rid = d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    before = auth_roles(pg)
    leaving_runner = d.app.units[1].runner

    leaving = d.scale_down()

    assert leaving.name == "pgbouncer-k8s/1"
    peers = leaving.relation(d.app.peer_relation_id)
    assert isinstance(peers, testing.PeerRelation)
    assert peers.local_unit_data.get(f"backend-database_{rid}_departing") == "true"
    assert leaving_runner is not None and leaving_runner.running() == set()
    assert [u.name for u in d.app.units] == ["pgbouncer-k8s/0"]
    assert auth_roles(pg) == before and before, "auth untouched by a partial scale-down"
    auth_user = f"pgbouncer_auth_relation_{rid}"
    assert auth_functions(pg) == [f"{auth_user}.get_auth"]
    assert creds.username in role_names(pg)
    assert f"auth_user = {auth_user}" in ini(d.app.units[0])
    assert_all(d, ACTIVE)
    assert_served_by_each_unit(d, creds, pg)
    assert_processes_healthy(d)


def test_removing_the_backend_relation_removes_auth_and_strips_config(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 6: ``juju remove-relation`` of the backend (``secret-user`` by hand).

    Every unit runs departed for the PostgreSQL unit, then broken; then the PostgreSQL charm
    drops its relation user.
    """
    d = make_deployment()
    d.deploy()
    rid = d.relate_backend("secret")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    assert_served_by_each_unit(d, creds, pg)
    assert auth_roles(pg) and auth_schemas(pg) and auth_functions(pg)

    d.remove_backend()

    assert auth_roles(pg) == []
    assert auth_schemas(pg) == []
    assert auth_functions(pg) == []
    assert f"relation_{rid}" not in role_names(pg)
    for unit in d.app.units:
        text = ini(unit)
        for key in ("auth_user", "auth_query", "auth_dbname", "pgb_authdb", "appdb ="):
            assert key not in text, (unit.name, key)
        # Only the stats user's and the console admin's SCRAM verifiers stay (show-pools and
        # pause of one database; neither has a PostgreSQL role).
        lines = (unit.mount_dir / "userlist.txt").read_text().splitlines()
        assert [line.split(" ")[0] for line in lines] == ['"pgbouncer_stats"', '"pgbouncer_admin"']
        assert all(line.split(" ")[1].startswith('"SCRAM-SHA-256$') for line in lines)
    assert_all(d, NO_BACKEND)
    assert_refused_by_each_unit(d, creds)
    assert_processes_healthy(d)


def test_relating_again_after_removal_works(make_deployment: MakeDeployment, pg: PostgresServer):
    """Scenario 7: remove the backend (plain), relate again (dpcharmlibs): all works again."""
    d = make_deployment()
    d.deploy()
    first = d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    d.remove_backend()
    assert auth_roles(pg) == []
    assert_all(d, NO_BACKEND)

    second = d.relate_backend("dpcharmlibs")

    assert second != first
    auth_user = f"pgbouncer_auth_relation_{second}"
    assert [r[0] for r in auth_roles(pg)] == [auth_user, f"{auth_user}_definer"]
    assert auth_functions(pg) == [f"{auth_user}.get_auth"]
    assert d.credentials(d.clients["app-one"]) == creds, "the client keeps its credentials"
    assert_all(d, ACTIVE)
    assert_served_by_each_unit(d, creds, pg)
    assert_processes_healthy(d)


def test_relating_again_after_a_failed_removal_cleans_up_and_recovers(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Scenario 7b: a removal that failed is cleaned up by the next relation.

    PostgreSQL drops its relation user before our hooks run (Juju orders nothing between the
    two applications), so our removal fails and says so; relating again removes the leftovers
    (they carry our mark) and the units recover.
    """
    d = make_deployment()
    d.deploy()
    first = d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    d.remove_backend(postgresql_first=True)

    stale = f"pgbouncer_auth_relation_{first}"
    assert [r[0] for r in auth_roles(pg)] == [stale, f"{stale}_definer"], "left behind"
    assert d.statuses()["pgbouncer-k8s/0"] == testing.BlockedStatus(
        "failed to remove auth user when disconnecting from postgres application."
    )

    second = d.relate_backend("dpcharmlibs")

    auth_user = f"pgbouncer_auth_relation_{second}"
    assert [r[0] for r in auth_roles(pg)] == [auth_user, f"{auth_user}_definer"]
    assert auth_schemas(pg) == [auth_user]
    assert_served_by_each_unit(d, creds, pg)
    assert_all(d, ACTIVE)
    assert_processes_healthy(d)
