"""A ``listen_port`` change, end to end: the new port serves and the old one keeps its clients.

The charm hands each PgBouncer process over to its twin service (``pgbouncer.workload``): the
twin starts on the new port in the hook that changed it; the old process keeps serving the old
port (clients learn the new endpoints only once that hook has ended) until the first hook after
``DRAIN_GRACE_S``, which stops it (SIGTERM: PgBouncer >= 1.23 closes its listener and serves its
remaining clients for Pebble's kill-delay). Driven through the charm on one unit whose Pebble
calls are replayed on real PgBouncer 1.24 processes in front of a real PostgreSQL 15. No timed
assertion: order and counts only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import pytest

from harness.servers.pg import PostgresServer
from harness.servers.system import free_port
from harness.story import Deployment, connect_at
from pgbouncer.drain import DRAIN_GRACE_S

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]


@dataclass
class Seen:
    """What the client threads saw, in order (shared, guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[str] = field(default_factory=list)
    new_port_errors: list[str] = field(default_factory=list)

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def first(self, event: str) -> int:
        with self.lock:
            return self.events.index(event) if event in self.events else -1


def test_a_port_change_keeps_the_old_port_serving_until_clients_could_move(
    make_deployment: MakeDeployment, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
):
    d = make_deployment(1)
    d.deploy()
    d.relate_backend("dpcharmlibs")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    unit = d.app.leader
    old_port, new_port = int(d.app.config["listen_port"]), free_port()
    old_address, new_address = unit.address(old_port), unit.address(new_port)
    with d.connect(unit, creds) as conn:
        conn.execute("CREATE TABLE moved (n int)")

    # Before the change: a transaction left open on the old port, and a client idle there.
    held = connect_at(old_address, creds)
    held.execute("INSERT INTO moved VALUES (1)")  # psycopg opened a transaction
    idle = connect_at(old_address, creds, autocommit=True)
    seen = Seen()
    stop = threading.Event()

    def connector() -> None:
        """New clients go to the new port, as an application told of it would."""
        while not stop.is_set():
            try:
                with connect_at(new_address, creds, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                seen.add("new port served")
            except psycopg.OperationalError as exc:
                if seen.first("new port served") >= 0:
                    seen.new_port_errors.append(str(exc).splitlines()[0])
                stop.wait(0.02)

    thread = threading.Thread(target=connector)
    thread.start()
    try:
        d.app.set_config(listen_port=new_port)
        unit.config_changed()  # replayed here: the twin starts; the old process is left alone
        wait_until(lambda: seen.first("new port served") >= 0)
    finally:
        stop.set()
        thread.join(timeout=30)
    report = unit.last_report
    assert report is not None and report.started == ["pgbouncer_0_twin"] and not report.stopped
    assert seen.new_port_errors == []

    # The hook has ended: the client side now reads the new port. Those still on the old one
    # were not touched: the open transaction commits, the idle session queries, and a client
    # that has not read the new endpoints yet still gets in on the old port.
    idle.execute("SELECT 1")
    held.execute("INSERT INTO moved VALUES (2)")
    held.commit()
    with connect_at(old_address, creds, autocommit=True) as late:
        assert late.execute("SELECT 1").fetchone() == (1,)
    assert unit.runner is not None
    assert unit.runner.running() == {"pgbouncer_0", "pgbouncer_0_twin"}

    # Clients leave the old port at their own pace; the first hook after the grace period
    # stops the old process, which has nobody left to wait for.
    held.close()
    idle.close()
    later = time.time() + DRAIN_GRACE_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    unit.update_status()
    monkeypatch.undo()
    assert unit.runner.running() == {"pgbouncer_0_twin"}
    assert unit.runner.exited() == {}
    with pytest.raises(psycopg.OperationalError):
        connect_at(old_address, creds).close()
    assert d.query(unit, creds, "SELECT array_agg(n ORDER BY n) FROM moved") == ([1, 2],)
    # The serving slot's file has the new port; the stopped slot's keeps what it ran with.
    assert f"listen_port = {new_port}" in (unit.mount_dir / "pgbouncer_0_twin.ini").read_text()
    assert f"listen_port = {old_port}" in (unit.mount_dir / "pgbouncer_0.ini").read_text()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _port_of(endpoints: str) -> int:
    return int(endpoints.rsplit(":", 1)[1])


def test_two_units_publish_the_new_port_only_when_both_listen_on_it(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Units move one hook at a time: clients are told a port every unit serves."""
    d = make_deployment(2)
    d.deploy()
    d.relate_backend("dpcharmlibs")
    client = d.relate_client("app-one", "appdb")
    leader, follower = d.app.leader, next(u for u in d.app.units if u is not d.app.leader)
    old_port, new_port = int(d.app.config["listen_port"]), free_port()
    assert _port_of(d.credentials(client).endpoints) == old_port

    d.app.set_config(listen_port=new_port)
    leader.config_changed()  # the leader moves first; the follower has not run its hook yet
    creds = d.credentials(client)
    assert _port_of(creds.endpoints) == old_port  # still what every unit serves
    for unit in (leader, follower):  # and both serve it: the leader from its draining process
        with connect_at(unit.address(old_port), creds, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

    follower.config_changed()
    d.settle_peers()  # the leader's peer relation-changed sees the follower's new port
    creds = d.credentials(client)
    assert _port_of(creds.endpoints) == new_port
    for unit in (leader, follower):
        with connect_at(unit.address(new_port), creds, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # the old port still answers for clients that have not read the new endpoints yet
        with connect_at(unit.address(old_port), creds, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
