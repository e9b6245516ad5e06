"""A ``pool_mode`` change, end to end: no query of a connected client fails.

psycopg 3 prepares a statement on the server (a protocol-level named statement) once it has run
five times. In transaction mode PgBouncer >= 1.21 keeps those statements for the client and
prepares them on whichever server it gets; in session mode it leaves them alone. Switched in
place, a client's next execution of such a statement fails ("prepared statement ... does not
exist"). The charm instead hands each process over to its twin slot on the same port: the twin
takes new clients in the new mode, the old process gets SIGTERM (PgBouncer >= 1.23 stops
accepting and serves its clients, in their mode, until they leave).

Driven through the charm on one unit whose Pebble calls are replayed on real PgBouncer 1.24
processes in front of a real PostgreSQL 15. Order and counts only, no timed assertion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from harness.juju import Unit, as_older_charm_left_it, limit_cpus
from harness.servers.pg import PostgresServer
from harness.servers.system import pgbouncer_version_tuple
from harness.story import ClientCredentials, Deployment, connect_at
from pgbouncer.drain import SAME_PORT_DRAIN_S

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]


class PreparingClient(threading.Thread):
    """One connection, opened before the change, running prepared statements until stopped."""

    def __init__(self, conn: psycopg.Connection, number: int):
        super().__init__(daemon=True)
        self.conn, self.number = conn, number
        self.stop = threading.Event()
        self.done, self.errors = 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.conn.transaction():
                    self.conn.execute("SELECT %s::int + 1", (self.number,), prepare=True)
                    self.conn.execute("SELECT count(*) FROM modes WHERE n = %s", (self.number,))
                self.done += 1
            except psycopg.Error as exc:
                self.errors.append(str(exc).splitlines()[0])
                return
            time.sleep(0.005)


def _wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _deployed(
    make_deployment: MakeDeployment,
) -> tuple[Deployment, Unit, ClientCredentials, tuple[str, int]]:
    """One unit in transaction mode with a client relation and a table ``modes``."""
    d = make_deployment(1)
    d.app.set_config(pool_mode="transaction")
    d.deploy()
    d.relate_backend("dpcharmlibs")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    unit = d.app.leader
    with d.connect(unit, creds) as conn:
        conn.execute("CREATE TABLE modes (n int)")
    return d, unit, creds, unit.address(int(d.app.config["listen_port"]))


def _warm(clients: list[PreparingClient]) -> None:
    """Until every client has prepared its statements on a server (10 rounds each)."""
    while min(c.done for c in clients) < 10 and not any(c.errors for c in clients):
        time.sleep(0.01)


def _run_on(clients: list[PreparingClient], rounds: int = 20) -> None:
    """Until every client has done ``rounds`` more; fails at the first error any client saw."""
    mark = [c.done for c in clients]
    while any(c.done < m + rounds for c, m in zip(clients, mark, strict=True)):
        assert not any(c.errors for c in clients), [c.errors for c in clients]
        time.sleep(0.01)


@contextlib.contextmanager
def _looping(clients: list[PreparingClient]) -> Iterator[None]:
    """The clients loop, warm, through the block and 20 rounds after it, and saw no error."""
    for client in clients:
        client.start()
    try:
        _warm(clients)
        yield
        _run_on(clients)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(timeout=30)
    assert [c.errors for c in clients] == [[]] * len(clients)


def _assert_handed_over(unit: Unit, old: str, new: str) -> None:
    """The hook's Pebble calls, as replayed: ``new`` started, ``old`` sent SIGTERM, no restart."""
    report = unit.last_report
    assert report is not None
    assert report.started == [new] and report.restarted == []
    assert (old, "SIGTERM") in report.signalled


def _serves_in_session_mode(address: tuple[str, int], creds: ClientCredentials) -> bool:
    """Whether a new client's temporary table outlives its transaction.

    Another client takes the server it used meanwhile: only in session mode does the server
    stay the client's.
    """
    with (
        connect_at(address, creds, autocommit=True) as mine,
        connect_at(address, creds, autocommit=True) as other,
    ):
        mine.execute("CREATE TEMP TABLE mine (x int)")
        with other.transaction():
            other.execute("SELECT 1")  # holds a server while ``mine`` queries again
            try:
                mine.execute("SELECT * FROM mine")
            except psycopg.errors.UndefinedTable:
                return False
        return True


def test_a_pool_mode_change_fails_no_query_of_a_client_with_prepared_statements(
    make_deployment: MakeDeployment, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
):
    d, unit, creds, address = _deployed(make_deployment)
    assert not _serves_in_session_mode(address, creds)

    clients = [PreparingClient(connect_at(address, creds), n) for n in range(4)]
    held = connect_at(address, creds)  # a transaction left open across the change
    held.execute("INSERT INTO modes VALUES (100)")
    with _looping(clients):
        d.app.set_config(pool_mode="session")
        unit.config_changed()
        _assert_handed_over(unit, "pgbouncer_0", "pgbouncer_0_twin")
    held.execute("INSERT INTO modes VALUES (101)")
    held.commit()  # the open transaction commits on the old process
    # New clients get the new mode; the old process takes none (it closed its listener).
    assert _serves_in_session_mode(address, creds)
    assert unit.runner is not None
    assert unit.runner.running() == {"pgbouncer_0", "pgbouncer_0_twin"}
    assert "old processes draining (pool_mode)" in unit.state.unit_status.message

    # Cancelling the old process's clients. PgBouncer 1.24 closes its unix socket with its TCP
    # listener on SIGTERM, so the twin cannot forward their cancel requests through [peers]:
    # the query runs to its end. 1.25 keeps the unix socket open while it shuts down (its NEWS,
    # #1305), and the twin's forwarded cancel reaches it (docs/workload.md).
    old_client = clients[0].conn
    canceller = threading.Timer(0.3, old_client.cancel_safe)
    canceller.start()
    if pgbouncer_version_tuple() >= (1, 25):
        with pytest.raises(psycopg.errors.QueryCanceled):
            old_client.execute("SELECT pg_sleep(1.5), 'ran to its end'")
    else:
        assert old_client.execute("SELECT pg_sleep(1.5), 'ran to its end'").fetchone() == (
            "",
            "ran to its end",
        )
    canceller.join()
    old_client.rollback()

    # The old process ends by itself once its last client leaves: exit 0, never restarted.
    for client in clients:
        client.conn.close()
    held.close()
    deadline = time.monotonic() + 15
    while "pgbouncer_0" in unit.runner.running():
        assert time.monotonic() < deadline, "the old process kept running without clients"
        time.sleep(0.05)
    assert unit.runner.exited() == {"pgbouncer_0": 0}
    unit.update_status()
    assert "draining" not in unit.state.unit_status.message
    assert unit.runner.running() == {"pgbouncer_0_twin"}
    assert d.query(unit, creds, "SELECT count(*) FROM modes WHERE n >= 100") == (2,)


def test_a_change_and_its_revert_fail_no_query_of_either_generation(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Transaction -> session -> transaction within the bound.

    Clients from before the first change and clients that came between the two keep their
    modes; the third slot serves the new ones.
    """
    d, unit, creds, address = _deployed(make_deployment)

    before = [PreparingClient(connect_at(address, creds), n) for n in range(3)]
    with _looping(before):
        d.app.set_config(pool_mode="session")
        unit.config_changed()
        between = [PreparingClient(connect_at(address, creds), n) for n in range(3, 6)]
        with _looping(between):
            d.app.set_config(pool_mode="transaction")  # the revert
            unit.config_changed()
            _assert_handed_over(unit, "pgbouncer_0_twin", "pgbouncer_0_twin2")
    assert unit.runner is not None
    assert unit.runner.running() == {"pgbouncer_0", "pgbouncer_0_twin", "pgbouncer_0_twin2"}
    assert not _serves_in_session_mode(address, creds)  # new clients: transaction mode again
    for client in before + between:
        client.conn.close()


class ReconnectingClient(threading.Thread):
    """Prepared statements in transactions; after an error, a new connection (as a pool does)."""

    def __init__(self, connect: Callable[[], psycopg.Connection], number: int):
        super().__init__(daemon=True)
        self.connect, self.number = connect, number
        self.stop = threading.Event()
        self.done, self.errors = 0, []

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                with conn.transaction():
                    conn.execute("SELECT %s::int + 1", (self.number,), prepare=True)
                    conn.execute("SELECT count(*) FROM modes WHERE n = %s", (self.number,))
                self.done += 1
            except psycopg.Error as exc:
                self.errors.append(str(exc).splitlines()[0])
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(0.005)
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("first", ["transaction", "session"])
def test_a_third_change_within_the_bound_cuts_each_client_once_at_most(
    make_deployment: MakeDeployment, pg: PostgresServer, first: str
):
    """With no slot free the change is made in place, by restarting the serving process.

    A reload would switch the mode under the clients that came since the last change, and each
    of their prepared queries would then fail (116 to 455 per change, seen from outside). A
    restart closes each connection once; a client that reconnects is served in the new mode.
    """
    d, unit, creds, address = _deployed(make_deployment)
    other = "session" if first == "transaction" else "transaction"
    if first == "session":
        d.app.set_config(pool_mode="session")
        unit.config_changed()
        _wait_until(lambda: "pgbouncer_0" not in unit.runner.running(), 15)  # type: ignore[union-attr]
        unit.update_status()
    held = []
    for mode in (other, first):  # two hand-overs: every slot of index 0 is taken
        held.append(connect_at(address, creds))  # a client that keeps the old process draining
        held[-1].execute("SELECT 1")
        d.app.set_config(pool_mode=mode)
        unit.config_changed()
    assert unit.runner is not None
    assert len(unit.runner.running()) == 3
    clients = [ReconnectingClient(lambda: connect_at(address, creds), n) for n in range(4)]
    for client in clients:
        client.start()
    try:
        _wait_until(lambda: min(c.done for c in clients) >= 10, 30)
        d.app.set_config(pool_mode=other)
        unit.config_changed()
        report = unit.last_report
        marks = [c.done for c in clients]
        _wait_until(lambda: all(c.done >= m + 20 for c, m in zip(clients, marks, strict=True)), 60)
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(timeout=30)
    # Each established connection is cut once at most. A reconnect that lands while the only
    # serving process restarts may be refused or reset too (more often on a loaded machine):
    # those are connection attempts, counted apart, and every client is served again after.
    cuts = [[e for e in c.errors if not e.startswith("connection failed")] for c in clients]
    assert all(len(errors) <= 1 for errors in cuts), [c.errors for c in clients]
    assert _serves_in_session_mode(address, creds) == (other == "session")
    assert report is not None and len(report.restarted) == 1
    for conn in held:  # the draining processes were left alone
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.close()


def test_clients_that_never_leave_are_cut_only_at_the_bound(
    make_deployment: MakeDeployment, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch
):
    d, unit, creds, address = _deployed(make_deployment)
    stays = connect_at(address, creds, autocommit=True)
    d.app.set_config(pool_mode="session")
    unit.config_changed()
    unit.update_status()  # any hook before the bound leaves the old process serving
    assert stays.execute("SELECT 1").fetchone() == (1,)
    assert unit.runner is not None and "pgbouncer_0" in unit.runner.running()

    later = time.time() + SAME_PORT_DRAIN_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    unit.update_status()
    monkeypatch.undo()
    assert unit.runner.running() == {"pgbouncer_0_twin"}
    with pytest.raises(psycopg.OperationalError):
        stays.execute("SELECT 1")
    stays.close()
    assert "draining" not in unit.state.unit_status.message


def test_a_client_removed_while_it_drains_on_an_old_process_is_cut_there_too(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """Removing the relation ends a client's access on a draining process too.

    That process keeps its old file, [databases] entry included; the role loses LOGIN and its
    backends end, so neither the held connection nor a new one gets through.
    """
    d, unit, creds, address = _deployed(make_deployment)
    stays = connect_at(address, creds, autocommit=True)
    assert stays.execute("SELECT 1").fetchone() == (1,)
    d.app.set_config(pool_mode="session")
    unit.config_changed()
    assert unit.runner is not None and "pgbouncer_0" in unit.runner.running()  # draining
    assert stays.execute("SELECT 1").fetchone() == (1,)  # still served, on the old process

    d.remove_client(d.clients["app-one"])
    with pytest.raises(psycopg.OperationalError):
        stays.execute("SELECT 1")
        stays.execute("SELECT 1")  # a pooled server may answer once before PgBouncer sees it
    stays.close()
    with pytest.raises(psycopg.OperationalError):
        connect_at(address, creds).close()


def test_a_refresh_with_the_same_layer_leaves_the_processes_alone(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """``upgrade-charm`` that changes nothing: no process signalled, stopped or started.

    Clients with prepared statements keep querying through it (bench part 6 measured this row
    under load; the behaviour is asserted here).
    """
    _, unit, creds, address = _deployed(make_deployment)
    assert unit.runner is not None
    pids = {name: p.pid for name, p in unit.runner.processes.items()}
    mark = len(unit.runner.history)
    clients = [PreparingClient(connect_at(address, creds), n) for n in range(4)]
    with _looping(clients):
        unit.run(lambda on, _: on.upgrade_charm())
    assert unit.last_calls == []
    assert unit.runner.history[mark:] == []
    assert {name: p.pid for name, p in unit.runner.processes.items()} == pids
    assert "draining" not in unit.state.unit_status.message


def test_an_upgrade_that_changes_the_service_definition_cuts_no_client(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """The running process was started from an older charm's definition (no ``on-success``).

    ``upgrade-charm`` hands it over on the same port instead of restarting it in place.
    """
    _, unit, creds, address = _deployed(make_deployment)
    older = as_older_charm_left_it(unit.container, "on-success")
    unit.state = dataclasses.replace(unit.state, containers={older})
    assert unit.runner is not None
    started = unit.runner.pebble.started  # ...and its processes were started so
    for name, spec in started.items():
        started[name] = dataclasses.replace(spec, on_success="restart")

    clients = [PreparingClient(connect_at(address, creds), n) for n in range(4)]
    with _looping(clients):
        unit.run(lambda on, _: on.upgrade_charm())
        _assert_handed_over(unit, "pgbouncer_0", "pgbouncer_0_twin")
    assert "old processes draining (restart)" in unit.state.unit_status.message
    with connect_at(address, creds, autocommit=True) as late:  # new clients: the new process
        assert late.execute("SELECT 1").fetchone() == (1,)
    for client in clients:
        client.conn.close()
    # Its last client gone, the old process exits 0. Pebble applies the definition it was
    # started with (restart on success): it must not come back serving from its old file.
    _wait_until(lambda: "pgbouncer_0" not in unit.runner.running(), 15)  # type: ignore[union-attr]
    unit.run(lambda on, _: on.update_status())
    assert unit.runner.running() == {"pgbouncer_0_twin"}
    assert "draining" not in unit.state.unit_status.message
    for _ in range(8):  # every new login lands on the new process
        with connect_at(address, creds, autocommit=True) as late:
            assert late.execute("SELECT 1").fetchone() == (1,)


def test_fewer_processes_let_the_retiring_one_serve_its_clients(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path
):
    """Two processes (a 2-CPU pod), then ``max_db_connections`` 1 leaves one.

    The retiring process gets SIGTERM and serves the clients the kernel gave it until they leave.
    """
    d = make_deployment(1)
    unit = d.app.leader
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    limit_cpus(unit, cgroup, 2)
    d.app.set_config(pool_mode="transaction")
    d.deploy()
    d.relate_backend("dpcharmlibs")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    address = unit.address(int(d.app.config["listen_port"]))
    assert unit.runner is not None
    assert unit.runner.running() == {"pgbouncer_0", "pgbouncer_1"}
    with d.connect(unit, creds) as conn:
        conn.execute("CREATE TABLE modes (n int)")

    clients = [PreparingClient(connect_at(address, creds), n) for n in range(8)]
    with _looping(clients):
        d.app.set_config(max_db_connections=1)
        unit.config_changed()
        report = unit.last_report
        assert report is not None and report.stopped == []
        assert ("pgbouncer_1", "SIGTERM") in report.signalled
    assert unit.runner.running() == {"pgbouncer_0", "pgbouncer_1"}
    assert "old processes draining (processes)" in unit.state.unit_status.message
    for client in clients:
        client.conn.close()
    deadline = time.monotonic() + 15
    while "pgbouncer_1" in unit.runner.running():
        assert time.monotonic() < deadline, "the retired process kept running without clients"
        time.sleep(0.05)
    unit.update_status()
    assert unit.runner.running() == {"pgbouncer_0"}
    assert "draining" not in unit.state.unit_status.message
