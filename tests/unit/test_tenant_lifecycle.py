"""Tenant clean-up and refusals through the charm's reconcile (Scenario; SQL faked at its boundary).

The SQL itself is attacked on a real server in ``tests/functional/test_tenancy.py``; these pin
when the charm runs it: client roles go before the auth plumbing when the backend relation is
removed (issue 11, item 6), and a request that could not be rendered later is refused when it
is asked for, naming the client, while the others keep being served (issue 15, defect 2).
"""

from __future__ import annotations

from ops import testing

from state.tenants import client_username
from tests.unit.conftest import (
    OUR_REQUEST,
    SEED_PROVIDER,
    auth_secret,
    backend_relation,
    make_container,
    peer_relation,
)
from tests.unit.test_client_database import (  # noqa: F401 (fake_clients is a fixture)
    MODEL,
    OWNER_TAG,
    V0_REQUEST,
    client_relation,
    fake_clients,
    peer_tenants,
    tenants,
)


def test_removing_the_backend_drops_every_client_role_before_the_auth_plumbing(
    ctx,
    dirs,
    fake_sql,
    fake_clients,  # noqa: F811 (the fixture)
):
    live = client_relation(V0_REQUEST, app="shop")
    secret = auth_secret()
    backend = backend_relation(local={**OUR_REQUEST, "data": "{}"}, remote_units=())
    record = tenants({"myapp": (live.id, "shop")})
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={live, backend, peer_relation(secret, {"myapp": live.id}, tenants=record)},
        containers={make_container(dirs)},
        secrets={secret},
        planned_units=2,
    )
    out = ctx.run(ctx.on.relation_departed(backend, remote_unit=0, departing_unit=0), state)

    assert fake_clients.dropped == [client_username(live.id, OWNER_TAG)]
    assert fake_sql.removed == ["pgbouncer_auth_relation_18"]
    after = peer_tenants(out)
    assert after.roles == {}  # no login role outlives the backend relation...
    assert set(after.databases) == {"myapp"}  # ...and the data stays recorded for its owner


def test_a_name_whose_readonly_twin_cannot_fit_is_refused_and_the_others_served(
    ctx,
    dirs,
    fake_clients,  # noqa: F811 (the fixture)
):
    long_name = "d" * 55  # valid as a database, but "<name>_readonly" passes 63 bytes
    bad = client_relation({**V0_REQUEST, "database": long_name}, app="long")
    good = client_relation(V0_REQUEST, app="shop")
    secret = auth_secret()
    with_replicas = backend_relation(remote=SEED_PROVIDER)  # the seed has read-only endpoints
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={bad, good, with_replicas, peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
    )
    out = ctx.run(ctx.on.relation_changed(good, remote_unit=0), state)

    assert [c["database"] for c in fake_clients.created] == ["myapp"]
    assert out.unit_status.name == "blocked"
    assert f"client relation {bad.id}: invalid database name" in out.unit_status.message
    assert "_readonly twin" in out.unit_status.message
    text = (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert "myapp = host=" in text and "myapp_readonly = host=" in text
    assert long_name not in text
