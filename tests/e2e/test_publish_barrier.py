"""A new client on a 3-unit application: the answer is readable only once every unit serves it.

Juju runs a new relation's hooks on each unit in an order of its choosing, and a unit learns of
another's progress through peer data. The leader must not publish the client's credentials
before every unit's PgBouncer can serve the client's database (the publish barrier,
``docs/client-database.md``): the first login, to any unit, made as soon as the secret is
readable, must succeed. Played in three hook orders (leader first, followers first,
interleaved), with Juju's peer delivery after every hook, on three units each in its own pod
network with real PgBouncer processes in front of a real PostgreSQL 15. (Bench part 6 measured
this as its row 7; the behaviour is asserted here.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from ops import testing

from harness.juju import Unit
from harness.servers.pg import PostgresServer
from harness.story import CLIENT, ClientApp, Deployment

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
HOOKS = ("created", "joined", "changed")


def _sequence(order: str, leader: Unit, followers: list[Unit]) -> list[tuple[Unit, str]]:
    if order == "leader first":
        return [(u, h) for u in [leader, *followers] for h in HOOKS]
    if order == "followers first":
        return [(u, h) for u in [*followers, leader] for h in HOOKS]
    return [(u, h) for h in HOOKS for u in [*followers, leader]]  # interleaved


def test_the_first_login_to_each_unit_succeeds_whatever_the_hook_order(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    d = make_deployment(3)
    d.deploy()
    d.relate_backend("secret")
    app = d.app
    peer_id = app.peer_relation_id

    def peer_data(unit: Unit) -> tuple[dict[str, str], dict[str, str]]:
        rel = unit.relation(peer_id)
        return dict(rel.local_unit_data), dict(rel.local_app_data)

    outcomes: dict[str, list[str]] = {}
    for n, order in enumerate(("leader first", "followers first", "interleaved"), start=1):
        name, database = f"barrier-client-{n}", f"barrierdb{n}"
        request = {
            "database": database,
            "requested-secrets": json.dumps(["username", "password"]),
        }
        rid = app.add_relation(
            testing.Relation(
                CLIENT, remote_app_name=name, remote_app_data=request, remote_units_data={0: {}}
            )
        )
        client = ClientApp(name, rid, database)
        leader = app.leader
        followers = [u for u in app.units if u is not leader]
        queue: list[tuple[Unit, str, Any]] = [
            (u, h, None) for u, h in _sequence(order, leader, followers)
        ]
        answered = False
        while queue:
            unit, hook, remote = queue.pop(0)
            before = peer_data(unit)
            if hook == "created":
                unit.relation_created(rid)
            elif hook == "joined":
                unit.relation_joined(rid, remote_unit=0)
            elif hook == "changed":
                unit.relation_changed(rid, remote_unit=0)
            else:
                unit.relation_changed(peer_id, remote_unit=remote)
            if peer_data(unit) != before:
                # Juju tells every other unit that this unit's (or the app's) peer data moved.
                queue[:0] = [
                    (other, "peer", unit.unit_id) for other in app.units if other is not unit
                ]
            if answered or "secret-user" not in app.relation_data(rid):
                continue
            answered = True
            creds = d.credentials(client)  # readable as soon as it is published
            seen = []
            for target in app.units:
                try:
                    with d.connect(target, creds) as conn:
                        conn.execute("SELECT 1")
                    seen.append(f"unit {target.unit_id}: ok")
                except psycopg.Error as exc:
                    seen.append(f"unit {target.unit_id}: {str(exc).strip()[:120]}")
            outcomes[order] = seen
        assert answered, f"{order}: no answer after every hook"
    assert outcomes == {
        order: [f"unit {u.unit_id}: ok" for u in app.units]
        for order in ("leader first", "followers first", "interleaved")
    }
