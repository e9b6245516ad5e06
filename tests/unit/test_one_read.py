"""Each hook reads the world once: Juju's inputs and the container, whatever it then does.

The charm's single read is ``_read_world`` (config, backend databag and secret, peer data, TLS
material) with ``Workload.observe`` (services, plan, files); what the hook's own effects change
is carried into the state, not read again. These tests count both reads for every kind of hook,
on the leader and on a follower, and check that a quiet hook (stop) reads nothing and leaves the
status as it was.
"""

from __future__ import annotations

from collections import Counter

import pytest
from ops import testing

from charm import PgBouncerK8sCharm
from pgbouncer.workload import Workload
from tests.unit.conftest import backend_relation, make_container
from tests.unit.test_client_database import (  # noqa: F401 (fake_clients is a fixture)
    V0_REQUEST,
    client_relation,
    fake_clients,
    state_with,
)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How often each read ran (the real methods run; they are only counted)."""
    counter: Counter = Counter()
    for owner, name in ((PgBouncerK8sCharm, "_read_world"), (Workload, "observe")):
        real = getattr(owner, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            counter[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return counter


def _events(ctx, state: testing.State):
    client = next(r for r in state.relations if r.endpoint == "database")
    backend = next(r for r in state.relations if r.endpoint == "backend-database")
    container = next(iter(state.containers))
    return {
        "config-changed": ctx.on.config_changed(),
        "update-status": ctx.on.update_status(),
        "leader-elected": ctx.on.leader_elected(),
        "pebble-ready": ctx.on.pebble_ready(container),
        "client relation-changed": ctx.on.relation_changed(client, remote_unit=0),
        "backend relation-changed": ctx.on.relation_changed(backend, remote_unit=0),
        "client relation-broken": ctx.on.relation_broken(client),
        "backend relation-departed": ctx.on.relation_departed(
            backend, remote_unit=0, departing_unit=0
        ),
    }


@pytest.mark.parametrize("leader", [True, False], ids=["leader", "follower"])
@pytest.mark.parametrize(
    "hook",
    [
        "config-changed",
        "update-status",
        "leader-elected",
        "pebble-ready",
        "client relation-changed",
        "backend relation-changed",
        "client relation-broken",
        "backend relation-departed",
    ],
)
def test_every_hook_reads_juju_and_the_container_once(
    ctx,
    dirs,
    fake_sql,
    fake_clients,  # noqa: F811 (the fixture)
    reads,
    hook,
    leader,
):
    state = state_with(client_relation(V0_REQUEST), dirs=dirs, leader=leader)
    ctx.run(_events(ctx, state)[hook], state)
    assert reads == Counter({"_read_world": 1, "observe": 1})


def test_a_quiet_hook_reads_nothing_and_keeps_the_status(ctx, dirs, reads):
    before = testing.State(
        leader=True,
        relations={backend_relation()},
        containers={make_container(dirs)},
        unit_status=testing.ActiveStatus("as it was"),
    )
    out = ctx.run(ctx.on.stop(), before)
    assert reads == Counter()
    assert out.unit_status == testing.ActiveStatus("as it was")
