"""Nothing written when nothing changed (issue 23), over a whole steady state.

Two units on a real PostgreSQL with real PgBouncer processes, the backend related (credentials
in a secret), three clients answered (two v0 clients reading a secret, one v0 client without
``requested-secrets`` answered in plain fields), settled. Then every hook Juju runs in a steady
state, on the leader and on the follower, twice each: update-status (the leader's check of the
backend included: each ops.testing run has a fresh charm directory, so the check is always due),
config-changed, each relation's relation-changed (clients, backend, peers), pebble-ready,
upgrade-charm and leader-elected. After every hook: no databag we write (our application and
unit data in every relation), no secret (content or revision) and no file in the container
(content, mode or modification time: a rewrite with the same bytes counts) may differ from
before, and PgBouncer was neither signalled nor restarted.

Run twice: with a fresh charm directory per hook (every hook reconciles in full) and with each
unit's charm directory kept between hooks, as Juju keeps it (update-status, config-changed and
the clients' relation-changed then end on the settled record, src/settled.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ops import testing

from harness.juju import Unit
from harness.story import Deployment

pytestmark = pytest.mark.needs_root

ACTIVE = testing.ActiveStatus("1 PgBouncer process")


def _written(unit: Unit) -> dict[str, Any]:
    """Everything of this unit's that a hook of ours could write."""
    state = unit.state
    databags = {}
    for rel in state.relations:
        databags[rel.id] = (dict(rel.local_app_data), dict(rel.local_unit_data))
    secrets = {
        s.id: (s.label, s.owner, dict(s.tracked_content), dict(s.latest_content or {}))
        for s in state.secrets
    }
    files = {}
    for path in sorted(Path(unit.mount_dir).rglob("*")):
        if path.is_file():
            st = path.stat()
            files[str(path.relative_to(unit.mount_dir))] = (
                path.read_bytes(),
                st.st_mode,
                st.st_mtime_ns,
            )
    return {"databags": databags, "secrets": secrets, "files": files}


def _plain_client(d: Deployment, name: str, database: str) -> int:
    """A v0 client that sent no ``requested-secrets``: answered in plain databag fields."""
    rid = d.app.add_relation(
        testing.Relation(
            "database",
            remote_app_name=name,
            remote_app_data={"database": database},
            remote_units_data={0: {}},
        )
    )
    for unit in sorted(d.app.units, key=lambda u: not u.is_leader):
        unit.relation_created(rid)
        unit.relation_joined(rid, remote_unit=0)
        unit.relation_changed(rid, remote_unit=0)
    d.settle_peers()
    return rid


@pytest.mark.parametrize(
    "charm_dirs",
    [False, True],
    ids=["every hook whole", "charm directory kept (settled hooks)"],
)
def test_a_steady_state_writes_nothing(
    make_deployment: Callable[..., Deployment], charm_dirs: bool
) -> None:
    d = make_deployment(charm_dirs=charm_dirs)
    d.deploy()
    backend = d.relate_backend("secret")
    clients = [d.relate_client("app-a", "alpha").relation_id]
    clients.append(d.relate_client("app-b", "beta").relation_id)
    clients.append(_plain_client(d, "app-c", "gamma"))
    for _ in range(2):
        for unit in sorted(d.app.units, key=lambda u: not u.is_leader):
            unit.update_status()
        d.settle_peers()
    assert d.statuses() == {u.name: ACTIVE for u in d.app.units}
    answer = d.app.relation_data(clients[2])
    assert answer["database"] == "gamma" and answer["password"]  # the plain v0 answer

    peer = d.app.peer_relation_id
    hooks: list[tuple[str, Callable[[Unit, Unit], Any]]] = [
        ("update-status", lambda u, _: u.update_status()),
        ("config-changed", lambda u, _: u.config_changed()),
        *[
            (f"client relation-changed {rid}", lambda u, _, rid=rid: u.relation_changed(rid, 0))
            for rid in clients
        ],
        ("backend relation-changed", lambda u, _: u.relation_changed(backend, 0)),
        ("peer relation-changed", lambda u, other: u.relation_changed(peer, other.unit_id)),
        ("pebble-ready", lambda u, _: u.pebble_ready()),
        ("upgrade-charm", lambda u, _: u.run(lambda on, _: on.upgrade_charm())),
    ]
    leader = d.app.leader
    follower = next(u for u in d.app.units if u is not leader)
    for _ in range(2):
        for unit, other in ((leader, follower), (follower, leader)):
            steps = [*hooks]
            if unit is leader:
                steps.append(("leader-elected", lambda u, _: u.leader_elected()))
            for name, run in steps:
                before = {u.name: _written(u) for u in d.app.units}
                run(unit, other)
                after = {u.name: _written(u) for u in d.app.units}
                for who in before:
                    for kind in ("databags", "secrets", "files"):
                        assert after[who][kind] == before[who][kind], (
                            f"{name} on {unit.name} wrote to {who}'s {kind}: "
                            + json.dumps(_diff(before[who][kind], after[who][kind]), default=str)
                        )
                actions = [(c.action, c.signal) for c in unit.last_calls]
                assert not [a for a in actions if a[0] in ("signal", "restart", "stop")], (
                    f"{name} on {unit.name}: {actions}"
                )
                assert unit.state.unit_status == ACTIVE, f"{name} on {unit.name}"


def _diff(before: dict, after: dict) -> dict[str, str]:
    """Which keys changed (values left out: they may hold secrets)."""
    keys = set(before) | set(after)
    out = {}
    for key in sorted(keys, key=str):
        if before.get(key) != after.get(key):
            out[str(key)] = "changed" if key in before and key in after else "added or removed"
            if isinstance(before.get(key), tuple) and isinstance(after.get(key), tuple):
                b, a = before[key], after[key]
                if all(isinstance(x, dict) for x in b[:2]):
                    out[str(key)] = str(
                        sorted(
                            k
                            for x, y in zip(b, a, strict=False)
                            if isinstance(x, dict)
                            for k in set(x) | set(y)
                            if x.get(k) != y.get(k)
                        )
                    )
    return out
