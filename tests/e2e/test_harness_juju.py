"""The multi-unit Scenario application keeps peer data, app secrets and relations in step."""

from __future__ import annotations

import json
from collections.abc import Iterator

import ops
import pytest
from ops import testing

from harness.juju import Application

pytestmark = pytest.mark.needs_root

META = {
    "name": "peerish",
    "containers": {"pgbouncer": {}},
    "peers": {"pgb-peers": {"interface": "pgb_peers"}},
    "requires": {"backend-database": {"interface": "postgresql_client", "limit": 1}},
}


class Peerish(ops.CharmBase):
    """Leader publishes through the peer relation and an app secret; followers report back."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.leader_elected, self._on_leader_elected)
        framework.observe(self.on.update_status, self._on_update_status)
        framework.observe(self.on.config_changed, self._on_config_changed)

    @property
    def _peers(self) -> ops.Relation:
        relation = self.model.get_relation("pgb-peers")
        assert relation is not None
        return relation

    def _on_leader_elected(self, _: ops.EventBase) -> None:
        secret = self.app.add_secret({"password": "first-revision"}, label="auth")
        self._peers.data[self.app].update({"auth_secret_id": secret.id or "", "k": "v"})
        self._peers.data[self.unit]["unit"] = self.unit.name
        backend = self.model.get_relation("backend-database")
        if backend is not None:
            backend.data[self.app]["database"] = "pgbouncer"

    def _on_config_changed(self, _: ops.EventBase) -> None:
        if self.unit.is_leader():
            secret = self.model.get_secret(label="auth")
            secret.set_content({"password": "second-revision"})

    def _on_update_status(self, _: ops.EventBase) -> None:
        app_data = self._peers.data[self.app]
        secret = self.model.get_secret(id=app_data["auth_secret_id"])
        seen = {
            "k": app_data.get("k"),
            "tracked": secret.get_content()["password"],
            "latest": secret.peek_content()["password"],
            "peers": {u.name: self._peers.data[u].get("unit") for u in self._peers.units},
        }
        self._peers.data[self.unit]["seen"] = json.dumps(seen, sort_keys=True)


@pytest.fixture
def app() -> Iterator[Application]:
    """Two units of the peer stand-in, no processes."""
    with Application(Peerish, name="peerish", meta=META, processes=()) as application:
        yield application


def test_peer_data_and_app_secrets_reach_the_follower(app: Application):
    leader, follower = app.units
    backend_id = app.add_relation(
        testing.Relation("backend-database", remote_app_name="postgresql-k8s")
    )
    assert leader.is_leader and not follower.is_leader
    peer_id = app.peer_relation_id
    assert follower.relation(peer_id).id == peer_id

    leader.leader_elected()

    seen_by_follower = follower.relation(peer_id)
    assert isinstance(seen_by_follower, testing.PeerRelation)
    assert seen_by_follower.local_app_data["k"] == "v"
    assert seen_by_follower.peers_data[0]["unit"] == "peerish/0"
    secret_id = seen_by_follower.local_app_data["auth_secret_id"]
    assert follower.secret(secret_id).owner == "app"
    assert app.relation_data(backend_id) == {"database": "pgbouncer"}
    assert follower.relation(backend_id).local_app_data == {"database": "pgbouncer"}

    follower.update_status()
    seen = json.loads(follower.relation(peer_id).local_unit_data["seen"])
    assert seen == {
        "k": "v",
        "latest": "first-revision",
        "peers": {"peerish/0": "peerish/0"},
        "tracked": "first-revision",
    }
    seen_by_leader = leader.relation(peer_id)
    assert isinstance(seen_by_leader, testing.PeerRelation)
    assert "seen" in seen_by_leader.peers_data[1]

    # A new revision: the follower keeps tracking the old one until it refreshes, as in Juju.
    leader.config_changed()
    follower.update_status()
    seen = json.loads(follower.relation(peer_id).local_unit_data["seen"])
    assert (seen["tracked"], seen["latest"]) == ("first-revision", "second-revision")


def test_can_connect_is_controllable_and_mounts_are_per_unit(app: Application):
    leader, follower = app.units
    follower.can_connect = False
    assert not follower.container.can_connect and leader.container.can_connect
    assert leader.mount_dir != follower.mount_dir
    assert leader.mount_dir.owner() == "postgres"
    mount = next(iter(leader.container.mounts.values()))
    assert (mount.location, mount.source) == ("/var/lib/pgbouncer", leader.mount_dir)
