"""A ``listen_port`` change, end to end: the new port serves before the old process stops.

The charm hands each PgBouncer process over to its twin service (``pgbouncer.workload``): the
twin starts on the new port, then the old process gets SIGTERM and drains (PgBouncer >= 1.23
closes its listener and keeps serving its connected clients until they leave or Pebble's
kill-delay ends). Driven through the charm (``config-changed``) on one unit whose Pebble calls
are replayed on real PgBouncer 1.24 processes in front of a real PostgreSQL 15, while clients
keep working on both ports. No timed assertion: what is asserted is order (both ports served at
once) and counts (no failed connection once the new port answered, no lost transaction).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import pytest

from harness.servers.pg import PostgresServer
from harness.servers.system import free_port
from harness.story import ClientCredentials, Deployment

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]


def _connect(address: tuple[str, int], creds: ClientCredentials, **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host=address[0],
        port=address[1],
        dbname=creds.database,
        user=creds.username,
        password=creds.password,
        connect_timeout=5,
        **kwargs,
    )


@dataclass
class Seen:
    """What the client threads saw, in order (shared, guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[str] = field(default_factory=list)
    new_port_errors: list[str] = field(default_factory=list)
    old_port_errors: list[str] = field(default_factory=list)

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def first(self, event: str) -> int:
        with self.lock:
            return self.events.index(event) if event in self.events else -1


def test_a_port_change_serves_the_new_port_before_the_old_process_stops(
    make_deployment: MakeDeployment, pg: PostgresServer
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

    # Before the change: a transaction left open on the old port, and a client looping there.
    held = _connect(old_address, creds)
    held.execute("INSERT INTO moved VALUES (1)")  # psycopg opened a transaction
    looping = _connect(old_address, creds, autocommit=True)
    seen = Seen()
    stop = threading.Event()

    def connector() -> None:
        """New clients go to the new port, as an application told of it would."""
        while not stop.is_set():
            try:
                with _connect(new_address, creds, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                seen.add("new port served")
            except psycopg.OperationalError as exc:
                if seen.first("new port served") >= 0:
                    seen.new_port_errors.append(str(exc).splitlines()[0])
                stop.wait(0.02)

    def old_port_client() -> None:
        """Keeps querying on the old port, then finishes its transaction and leaves.

        It leaves once the new port serves (as a pool recycling its connections does), so that
        the old process can exit before its kill-delay.
        """
        try:
            while not stop.is_set():
                looping.execute("SELECT 1")
                if seen.first("new port served") >= 0:
                    seen.add("old port served after the new one")
                    held.execute("INSERT INTO moved VALUES (2)")
                    held.commit()
                    seen.add("held transaction committed")
                    break
                stop.wait(0.02)
        except psycopg.Error as exc:
            seen.old_port_errors.append(str(exc).splitlines()[0])
        finally:
            held.close()
            looping.close()

    threads = [threading.Thread(target=connector), threading.Thread(target=old_port_client)]
    for thread in threads:
        thread.start()
    try:
        d.app.set_config(listen_port=new_port)
        unit.config_changed()  # replayed here: the twin starts, then the old process drains
        report = unit.last_report
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert seen.old_port_errors == []
    assert seen.first("new port served") < seen.first("old port served after the new one")
    assert seen.first("held transaction committed") >= 0
    assert seen.new_port_errors == []
    assert d.query(unit, creds, "SELECT array_agg(n ORDER BY n) FROM moved") == ([1, 2],)
    assert unit.runner is not None and unit.runner.running() == {"pgbouncer_0_twin"}
    with pytest.raises(psycopg.OperationalError):
        _connect(old_address, creds).close()
    assert f"listen_port = {new_port}" in (unit.mount_dir / "pgbouncer_0.ini").read_text()
    assert report is not None
    assert report.started == ["pgbouncer_0_twin"] and report.stopped == ["pgbouncer_0"]
