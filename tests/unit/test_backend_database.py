"""Every decision branch of the seed's three backend-database charts, one event per test.

Branch names match ``docs/backend-database.md``.
"""

from __future__ import annotations

import json

from ops import testing

from relations.backend_database import CREATED_RETURN, REMOVE_AUTH_FAILED, created_chart
from state.backend import BackendDatabase, Endpoint
from tests.unit.conftest import (
    AUTH_PASSWORD,
    AUTH_USER,
    OUR_REQUEST,
    SEED_PROVIDER,
    auth_secret,
    backend_relation,
    make_container,
    peer_relation,
)

BACKEND = BackendDatabase("pgbouncer", (Endpoint("10.1.1.1"),), (), "relation_18", "pw")


def _created(ctx, state, relation):
    """Run relation-changed: our requirer turns a first complete databag into "created"."""
    return ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)


def _ini(dirs) -> str:
    return (dirs.pgb / "pgbouncer_0.ini").read_text()


def _secret_content(out, label="pgbouncer-auth"):
    secret = next((s for s in out.secrets if s.label == label), None)
    return None if secret is None else secret.latest_content


# -- created ---------------------------------------------------------------------------------


def test_created_not_leader_returns(ctx, dirs, fake_sql):
    rel = backend_relation(local={})
    state = testing.State(
        leader=False, relations={rel, peer_relation()}, containers={make_container(dirs)}
    )
    out = _created(ctx, state, rel)
    assert fake_sql.installed == {}
    assert out.deferred == []
    assert _secret_content(out) is None


def test_created_pgbouncer_not_running_returns_without_defer():
    assert (
        created_chart(
            leader=True, running=False, refused=False, backend=BACKEND, request_written=True
        )
        == CREATED_RETURN
    )


def test_created_returned_while_stopped_is_completed_by_the_same_reconcile(ctx, dirs, fake_sql):
    """Issue 15's defect 1: the chart returns ("not running"); the reconcile completes it.

    The reconcile starts PgBouncer and then runs the set-up in the same hook: nothing waits
    for a later event.
    """
    rel = backend_relation()
    state = testing.State(
        leader=True,
        relations={rel, peer_relation()},
        containers={make_container(dirs, running=False)},
    )
    out = _created(ctx, state, rel)
    assert out.deferred == []
    assert json.loads(out.get_relation(rel.id).local_app_data["data"])["endpoints"]
    assert "pgbouncer_auth_relation_18" in fake_sql.installed
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_a_set_up_lost_by_an_earlier_hook_completes_on_update_status(ctx, dirs, fake_sql):
    """A set-up nothing ran (the backend answered while PgBouncer was down) is not lost.

    The next update-status (or any hook) on the leader does it.
    """
    rel = backend_relation()  # our `data` already records the provider's answer
    state = testing.State(
        leader=True, relations={rel, peer_relation()}, containers={make_container(dirs)}
    )
    out = ctx.run(ctx.on.update_status(), state)
    assert "pgbouncer_auth_relation_18" in fake_sql.installed
    assert _secret_content(out) is not None
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def _set_up_leader(dirs) -> testing.State:
    """A leader whose auth plumbing was set up for the seed's backend."""
    secret = auth_secret()
    return testing.State(
        leader=True,
        relations={backend_relation(), peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
    )


def test_update_status_repairs_broken_plumbing_and_says_so(ctx, dirs, fake_sql):
    """Issue 15's defect 3: the check (a real login as the auth role, faked here) fails."""
    fake_sql.broken.append("the lookup fails: function does not exist")
    out = ctx.run(ctx.on.update_status(), _set_up_leader(dirs))
    assert fake_sql.checked == [AUTH_USER]
    assert fake_sql.installed == {AUTH_USER: AUTH_PASSWORD}  # same password: nothing rotates
    assert out.unit_status == testing.ActiveStatus(
        "1 PgBouncer process; repaired the auth plumbing (the lookup fails: function does not "
        "exist)"
    )


def test_update_status_with_working_plumbing_changes_nothing(ctx, dirs, fake_sql):
    out = ctx.run(ctx.on.update_status(), _set_up_leader(dirs))
    assert fake_sql.checked == [AUTH_USER]
    assert fake_sql.installed == {}
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_created_backend_not_ready_without_our_request_defers(ctx, dirs, fake_sql):
    rel = backend_relation(local={})  # our own `database` field is missing
    state = testing.State(
        leader=True, relations={rel, peer_relation()}, containers={make_container(dirs)}
    )
    out = _created(ctx, state, rel)
    assert fake_sql.installed == {}
    assert [e.name for e in out.deferred] == ["database_created"]


def test_created_backend_refusing_connections_defers_and_says_why(ctx, dirs, fake_sql):
    fake_sql.fail = True
    rel = backend_relation()
    state = testing.State(
        leader=True, relations={rel, peer_relation()}, containers={make_container(dirs)}
    )
    out = _created(ctx, state, rel)
    assert [e.name for e in out.deferred] == ["database_created"]
    assert out.unit_status == testing.WaitingStatus(
        "backend unreachable: connection to the backend refused"
    )


def test_created_ready_installs_auth_and_configures_pgbouncer(ctx, dirs, fake_sql):
    rel = backend_relation()
    peers = peer_relation()
    state = testing.State(leader=True, relations={rel, peers}, containers={make_container(dirs)})
    out = _created(ctx, state, rel)

    password = fake_sql.installed[AUTH_USER]
    assert len(password) >= 32
    assert fake_sql.leftovers_checked == [AUTH_USER]
    # auth data: an app secret, referenced from the peer databag; no password in any databag
    assert _secret_content(out) == {"username": AUTH_USER, "password": password}
    peer_app = out.get_relation(peers.id).local_app_data
    assert peer_app["auth_secret_id"].startswith("secret:")
    for relation in out.relations:
        for databag in (relation.local_app_data, relation.local_unit_data):
            assert password not in json.dumps(dict(databag))
    assert "password" not in json.loads(out.get_relation(rel.id).local_app_data["data"])
    # PgBouncer configuration and auth file in the container
    ini = _ini(dirs)
    assert f"auth_user = {AUTH_USER}" in ini
    assert "auth_dbname = pgb_authdb" in ini
    assert f'"{AUTH_USER}".get_auth($1)' in ini
    assert "postgresql-k8s-primary.dev.svc.cluster.local" in ini
    userlist = dirs.pgb / "userlist.txt"
    # The auth role's plain password, then the stats user's SCRAM verifier (show-pools), then
    # the admin user's (pause/resume of one database).
    auth_line, stats_line, admin_line = userlist.read_text().splitlines()
    assert auth_line == f'"{AUTH_USER}" "{password}"'
    assert stats_line.startswith('"pgbouncer_stats" "SCRAM-SHA-256$')
    assert admin_line.startswith('"pgbouncer_admin" "SCRAM-SHA-256$')
    assert "admin_users = pgbouncer_admin" in ini
    assert userlist.stat().st_mode & 0o777 == 0o600
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_created_through_secret_user(ctx, dirs, fake_sql):
    creds = testing.Secret(
        {"username": "relation_7", "password": "p" * 40}, owner=None, remote_grants={}
    )
    remote = {
        "endpoints": "10.1.2.3:5432",
        "secret-user": creds.id,
        "version": "15.18",
        "database": "pgbouncer",
    }
    rel = backend_relation(remote=remote)
    state = testing.State(
        leader=True,
        relations={rel, peer_relation()},
        containers={make_container(dirs)},
        secrets={creds},
    )
    out = _created(ctx, state, rel)
    assert "pgbouncer_auth_relation_7" in fake_sql.installed
    assert "host=10.1.2.3 port=5432" in _ini(dirs)
    assert out.unit_status.name == "active"


def test_created_with_invalid_provider_data_blocks_naming_the_field(ctx, dirs, fake_sql):
    rel = backend_relation(remote={**SEED_PROVIDER, "endpoints": "evil host;:5432"})
    state = testing.State(
        leader=True, relations={rel, peer_relation()}, containers={make_container(dirs)}
    )
    out = _created(ctx, state, rel)
    assert fake_sql.installed == {}
    assert out.deferred == []
    assert out.unit_status == testing.BlockedStatus(
        "invalid backend-database endpoints: a host may hold only letters, digits, '.', ':' "
        "and '-'"
    )


def test_endpoints_changed_rerenders_without_reinstalling(ctx, dirs, fake_sql):
    secret = auth_secret()
    old = json.dumps({"endpoints": SEED_PROVIDER["endpoints"], "version": "15.18"}, sort_keys=True)
    moved = {**SEED_PROVIDER, "endpoints": "10.9.9.9:5433"}
    rel = backend_relation(remote=moved, local={**OUR_REQUEST, "data": old})
    state = testing.State(
        leader=True,
        relations={rel, peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
    )
    _created(ctx, state, rel)
    assert fake_sql.installed == {}
    assert "host=10.9.9.9 port=5433" in _ini(dirs)


def test_pebble_ready_performs_the_setup_skipped_while_not_running(ctx, dirs, fake_sql):
    rel = backend_relation(local={**OUR_REQUEST, "data": "{}"})
    container = make_container(dirs, running=False)
    state = testing.State(leader=True, relations={rel, peer_relation()}, containers={container})
    out = ctx.run(ctx.on.pebble_ready(container), state)
    # Scenario's replan marks the services active, so PgBouncer "runs" after pebble-ready.
    assert AUTH_USER in fake_sql.installed
    assert f"auth_user = {AUTH_USER}" in _ini(dirs)
    assert out.unit_status.name == "active"


def test_follower_renders_auth_from_peer_secret(ctx, dirs, fake_sql):
    secret = auth_secret()
    peers = testing.PeerRelation(
        "pgb-peers",
        local_app_data=peer_relation(secret).local_app_data,
        peers_data={1: {}},
    )
    state = testing.State(
        leader=False,
        relations={backend_relation(local={}), peers},
        containers={make_container(dirs)},
        secrets={secret},
    )
    out = ctx.run(ctx.on.relation_changed(peers, remote_unit=1), state)
    assert fake_sql.installed == {} and fake_sql.connects == 0
    assert (dirs.pgb / "userlist.txt").read_text() == f'"{AUTH_USER}" "{AUTH_PASSWORD}"\n'
    assert f"auth_user = {AUTH_USER}" in _ini(dirs)
    assert out.unit_status.name == "active"


# -- departed --------------------------------------------------------------------------------


def _departed_state(dirs, *, leader=True, remote_units=(0,), planned_units=2):
    secret = auth_secret()
    rel = backend_relation(local={**OUR_REQUEST, "data": "{}"}, remote_units=remote_units)
    state = testing.State(
        leader=leader,
        relations={rel, peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
        planned_units=planned_units,
    )
    return rel, state


def _run_self_departing(ctx, dirs, *, planned_units: int):
    """Run departed with this very unit (pgbouncer-k8s/0) as the departing unit.

    Scenario names the departing unit after the relation's remote app; naming that app like
    ours makes the departing unit this unit, as Juju does on our own scale-down. ops then reads
    the provider's fields from this same databag, so it carries both sides.
    """
    secret = auth_secret()
    rel = testing.Relation(
        "backend-database",
        remote_app_name="pgbouncer-k8s",
        local_app_data={**OUR_REQUEST, **SEED_PROVIDER, "data": "{}"},
        remote_units_data={0: {}},
    )
    state = testing.State(
        leader=True,
        relations={rel, peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
        planned_units=planned_units,
    )
    out = ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    peers = next(r for r in out.relations if r.endpoint == "pgb-peers")
    return peers.local_unit_data.get(f"backend-database_{rel.id}_departing")


def test_departed_this_unit_departing_sets_flag_and_keeps_auth(ctx, dirs, fake_sql):
    assert _run_self_departing(ctx, dirs, planned_units=1) == "true"
    assert fake_sql.removed == []


def test_departed_leader_departing_while_app_scales_to_zero_removes_auth(ctx, dirs, fake_sql):
    assert _run_self_departing(ctx, dirs, planned_units=0) == "true"
    assert fake_sql.removed == [AUTH_USER]


def test_departed_partial_postgresql_scale_down_removes_nothing(ctx, dirs, fake_sql):
    rel, state = _departed_state(dirs, remote_units=(1, 2))  # unit 0 left, 1 and 2 remain
    out = ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    assert fake_sql.removed == []
    assert out.unit_status.name == "active"


def test_departed_not_leader_removes_nothing(ctx, dirs, fake_sql):
    rel, state = _departed_state(dirs, leader=False, remote_units=())
    ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    assert fake_sql.removed == []


def test_departed_whole_application_leaving_removes_auth(ctx, dirs, fake_sql):
    rel, state = _departed_state(dirs, remote_units=())  # the last remote unit left
    ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    assert fake_sql.removed == [AUTH_USER]


def test_departed_removal_failure_blocks(ctx, dirs, fake_sql):
    fake_sql.fail = True
    rel, state = _departed_state(dirs, remote_units=())
    out = ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    assert out.unit_status == testing.BlockedStatus(REMOVE_AUTH_FAILED)


# -- broken ----------------------------------------------------------------------------------


def _broken_state(dirs, *, leader=True, flagged=False, can_connect=True):
    secret = auth_secret()
    rel = backend_relation(local={**OUR_REQUEST, "data": "{}"}, remote_units=())
    flag = {f"backend-database_{rel.id}_departing": "true"} if flagged else {}
    state = testing.State(
        leader=leader,
        relations={rel, peer_relation(secret, local_unit=flag)},
        containers={make_container(dirs, can_connect=can_connect)},
        secrets={secret},
    )
    return rel, state


def _configure_auth(ctx, dirs, state):
    """Run config-changed first so that the container holds an auth configuration."""
    return ctx.run(ctx.on.config_changed(), state)


def test_broken_not_leader_returns(ctx, dirs, fake_sql):
    rel, state = _broken_state(dirs, leader=False)
    out = ctx.run(ctx.on.relation_broken(rel), state)
    assert _secret_content(out) == {"username": AUTH_USER, "password": AUTH_PASSWORD}
    assert out.deferred == []


def test_broken_flagged_departing_unit_returns(ctx, dirs, fake_sql):
    rel, state = _broken_state(dirs, flagged=True)
    out = ctx.run(ctx.on.relation_broken(rel), state)
    assert _secret_content(out) == {"username": AUTH_USER, "password": AUTH_PASSWORD}
    peers = next(r for r in out.relations if r.endpoint == "pgb-peers")
    assert "auth_secret_id" in peers.local_app_data


def test_broken_without_pgbouncer_config_defers(ctx, dirs, fake_sql):
    rel, state = _broken_state(dirs, can_connect=False)
    out = ctx.run(ctx.on.relation_broken(rel), state)
    assert [e.name for e in out.deferred] == ["backend_database_relation_broken"]


def test_broken_strips_auth_and_blocks(ctx, dirs, fake_sql):
    rel, state = _broken_state(dirs)
    configured = _configure_auth(ctx, dirs, state)
    assert f"auth_user = {AUTH_USER}" in _ini(dirs)
    out = ctx.run(ctx.on.relation_broken(rel), configured)
    ini = _ini(dirs)
    assert "auth_user" not in ini and "auth_query" not in ini and "pgb_authdb" not in ini
    assert AUTH_PASSWORD not in (dirs.pgb / "userlist.txt").read_text()
    peers = next(r for r in out.relations if r.endpoint == "pgb-peers")
    assert "auth_secret_id" not in peers.local_app_data
    assert _secret_content(out) is None
    assert out.unit_status == testing.BlockedStatus("waiting for a backend-database relation")
