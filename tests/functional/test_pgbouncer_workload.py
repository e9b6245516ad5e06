"""The rendered configuration on a real PgBouncer 1.24 and PostgreSQL 15.

Every ini here comes from ``pgbouncer.config.render_files`` (rendered for a temporary base
directory and loopback instead of ``/var/lib/pgbouncer`` and ``*``). Where a test is about what
the charm does to running processes (``paused_reload``), :class:`pgbouncer.workload.Workload`
itself does it, through the Pebble stand-in with real processes (``workload_group``); the plain
groups (``start_group``) show PgBouncer's own behaviour under single signals. Numbers that
depend on the kernel's choices (cancels lost without ``[peers]``, connection errors at the
instant a process stops) are printed and recorded in ``docs/workload.md``, never asserted.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess, first_slots, make_run_dirs
from harness.servers.system import free_port, pgbouncer_version_tuple, stop_process
from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    DatabaseTarget,
    PgBouncerConfig,
    render_auth_file,
    render_files,
)
from pgbouncer.ini import NO_RELOAD_KEYS, needs_restart
from pgbouncer.plan import KILL_DELAY
from pgbouncer.slots import run_dir
from tests.functional.conftest import PebbleGroup

pytestmark = pytest.mark.needs_root

DEADLINE = 30.0
"""Upper bound for waiting on a precondition; reaching it fails the test, it is not a measure."""


def wait_until(condition, what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Group:
    """N PgBouncer processes started from one rendered configuration."""

    factory: PgBouncerFactory
    workdir: Path
    cfg: PgBouncerConfig
    processes: list[PgBouncerProcess] = field(default_factory=list)

    def files(self, cfg: PgBouncerConfig | None = None) -> dict[str, str]:
        return first_slots(render_files(cfg or self.cfg, base_dir=str(self.workdir)))

    def start(self, index: int, text: str, port: int | None = None) -> PgBouncerProcess:
        make_run_dirs(self.workdir, [index])
        port = port or self.cfg.listen_port
        pgb = self.factory.start(text, port, self.workdir, name=f"pgbouncer_{index}.ini")
        if index < len(self.processes):
            self.processes[index] = pgb
        else:
            self.processes.append(pgb)
        return pgb

    def stop_like_pebble(self, index: int) -> None:
        """SIGTERM, then SIGKILL after the layer's kill-delay, as Pebble stops a service."""
        grace = float(KILL_DELAY.removesuffix("s"))
        stop_process(self.processes[index].proc, signal.SIGTERM, grace=grace)


def start_group(
    factory: PgBouncerFactory,
    postgres: PostgresServer,
    cfg: PgBouncerConfig,
    edit=None,
) -> Group:
    """Render ``cfg`` for a fresh work directory and start every process of it."""
    workdir = factory.workdir()
    factory.write(workdir, "userlist.txt", render_auth_file("postgres", postgres.password))
    group = Group(factory, workdir, cfg)
    for index, text in enumerate(group.files().values()):
        group.start(index, edit(text) if edit else text)
    return group


def config(postgres: PostgresServer, **kwargs) -> PgBouncerConfig:
    values = {
        "listen_port": free_port(),
        "listen_addr": "127.0.0.1",
        "pool_mode": "session",
        "max_db_connections": 0,
        "max_prepared_statements": 100,
        "processes": 2,
        "databases": (DatabaseTarget("appdb", postgres.host, postgres.port, "postgres"),),
    }
    values.update(kwargs)
    return PgBouncerConfig(**values)  # type: ignore[arg-type]


def connect(port: int, password: str, dbname: str = "appdb", **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=dbname,
        user="postgres",
        password=password,
        connect_timeout=5,
        autocommit=True,
        **kwargs,
    )


# -- a rendered configuration boots, and PgBouncer agrees on what reloads -------------------
def test_rendered_config_with_every_section_boots_and_serves(postgres, pgbouncer_factory):
    cfg = config(
        postgres,
        max_db_connections=5,
        pool_mode="transaction",
        databases=(
            DatabaseTarget("appdb", postgres.host, postgres.port, "postgres"),
            DatabaseTarget("appdb_readonly", postgres.host, postgres.port, "postgres"),
            DatabaseTarget(AUTH_DATABASE_KEY, postgres.host, postgres.port, "postgres"),
        ),
    )
    group = start_group(pgbouncer_factory, postgres, cfg)
    for key in ("appdb", "appdb_readonly", AUTH_DATABASE_KEY):
        with connect(cfg.listen_port, postgres.password, key) as conn:
            assert conn.execute("SELECT current_setting('port')::int").fetchone() == (
                postgres.port,
            )
    for pgb in group.processes:
        assert pgb.alive()
        assert "ERROR" not in pgb.log(), pgb.log()


def test_no_reload_keys_match_what_pgbouncer_reports(postgres, pgbouncer_factory):
    cfg = config(postgres, processes=1)
    start_group(pgbouncer_factory, postgres, cfg, edit=with_admin)
    with connect(cfg.listen_port, postgres.password, "pgbouncer", prepare_threshold=None) as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
    fixed = {row[0] for row in rows if row[3] == "no"}
    known = {row[0] for row in rows}
    assert fixed, "SHOW CONFIG reported no fixed setting"
    assert fixed <= NO_RELOAD_KEYS, f"reload ignores {sorted(fixed - NO_RELOAD_KEYS)}"
    # Keys of other platforms or releases (service_name on Windows) may be missing here.
    assert NO_RELOAD_KEYS & known == fixed
    rendered = {line.split(" = ")[0] for line in group_ini(cfg).splitlines() if " = " in line}
    assert {"listen_port", "listen_addr", "unix_socket_dir", "so_reuseport"} <= rendered & fixed
    # No pidfile: the two services of a process run side by side across a port change.
    assert "pidfile" in fixed and "pidfile" not in rendered


def group_ini(cfg: PgBouncerConfig) -> str:
    return next(iter(render_files(cfg).values()))


def test_auth_file_quoting_works_for_a_password_with_quotes(postgres, pgbouncer_factory):
    role, password = "pgbk8s_quote_user", 'pa"ss w""rd "quoted"'
    postgres.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
        .format(sql.Identifier(role), sql.Literal(password))
        .as_string()
    )
    try:
        cfg = config(postgres, processes=1)
        group = start_group(pgbouncer_factory, postgres, cfg)
        pgbouncer_factory.write(group.workdir, "userlist.txt", render_auth_file(role, password))
        group.processes[0].reload()
        wait_until(lambda: group.processes[0].log().count("re-reading config") >= 1, "the reload")
        conn = psycopg.connect(
            host="127.0.0.1",
            port=cfg.listen_port,
            dbname="appdb",
            user=role,
            password=password,
            connect_timeout=5,
        )
        with conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                host="127.0.0.1",
                port=cfg.listen_port,
                dbname="appdb",
                user=role,
                password=password.replace('"', ""),
                connect_timeout=5,
            )
    finally:
        postgres.execute(
            sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)).as_string()
        )


# -- a. cancellations through the shared port ------------------------------------------------
def run_cancels(port: int, password: str, postgres: PostgresServer, count: int = 20) -> int:
    """Start ``count`` pg_sleep queries through ``port``, cancel each; how many were cancelled."""
    marker = f"pgbk8s-cancel-{port}"
    outcomes: dict[int, str] = {}
    conns = [connect(port, password) for _ in range(count)]

    def sleep(k: int) -> None:
        try:
            # As bytes: the marker is not a literal string, and holds no SQL of its own.
            conns[k].execute(f"SELECT pg_sleep(8) /* {marker}-{k} */".encode())
            outcomes[k] = "finished"
        except errors.QueryCanceled:
            outcomes[k] = "cancelled"
        except psycopg.Error as exc:
            outcomes[k] = f"error: {exc}"

    threads = [threading.Thread(target=sleep, args=(k,)) for k in range(count)]
    try:
        for thread in threads:
            thread.start()

        def all_running() -> bool:
            rows = postgres.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f"%{marker}-%",),
            )
            return rows[0][0] == count

        wait_until(all_running, "every pg_sleep to run on the server")
        for conn in conns:
            conn.cancel_safe(timeout=5)
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for conn in conns:
            conn.close()
    assert len(outcomes) == count
    assert not [o for o in outcomes.values() if o.startswith("error")], outcomes
    return sum(1 for o in outcomes.values() if o == "cancelled")


def strip_peering(text: str) -> str:
    text = re.sub(r"\[peers\]\n(?:\d+ = [^\n]*\n)*", "", text)
    return re.sub(r"^peer_id = \d+\n", "", text, flags=re.MULTILINE)


def test_cancels_reach_the_right_process_through_peers(postgres, pgbouncer_factory):
    cfg = config(postgres, processes=2)
    start_group(pgbouncer_factory, postgres, cfg)
    cancelled = run_cancels(cfg.listen_port, postgres.password, postgres)
    print(f"\ncancels with [peers], 2 processes: {cancelled}/20 took effect")
    assert cancelled == 20

    bare = config(postgres, processes=2)
    start_group(pgbouncer_factory, postgres, bare, edit=strip_peering)
    lost = 20 - run_cancels(bare.listen_port, postgres.password, postgres)
    # Recorded, not asserted: which process the kernel picks for each cancel is chance.
    print(f"cancels without [peers], 2 processes: {lost}/20 lost")


# -- b. reload keeps clients connected and moves them to the new target -------------------
@dataclass
class LoopingClient:
    conn: psycopg.Connection
    ports: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                row = self.conn.execute("SELECT current_setting('port')::int").fetchone()
                assert row is not None
                self.ports.append(row[0])
            except psycopg.Error as exc:
                self.errors.append(str(exc))
                return


@pytest.fixture
def second_postgres(postgres) -> Iterator[PostgresServer]:
    """Another cluster whose superuser has the same password (PgBouncer logs in with it)."""
    server = start_postgres()
    try:
        server.execute(
            sql.SQL("ALTER ROLE postgres PASSWORD {}")
            .format(sql.Literal(postgres.password))
            .as_string()
        )
        server.password = postgres.password
        yield server
    finally:
        server.destroy()


def with_admin(text: str) -> str:
    """The rendered ini plus an admin user, for tests that read SHOW POOLS / SHOW CONFIG."""
    return text + "admin_users = postgres\n"  # [pgbouncer] is the last section


def pools_settled(group: Group, password: str) -> bool:
    """Every process's ``appdb`` pool has a server for each client and no login in flight.

    Asked of each process through its own unix socket (TCP would reach a random process).
    """
    for index in range(len(group.processes)):
        with psycopg.connect(
            host=run_dir(index, str(group.workdir)),
            port=group.cfg.listen_port,
            dbname="pgbouncer",
            user="postgres",
            password=password,
            autocommit=True,
            prepare_threshold=None,
        ) as admin:
            cur = admin.execute("SHOW POOLS")
            names = [col.name for col in cur.description or ()]
            for row in cur.fetchall():
                pool = dict(zip(names, row, strict=True))
                if pool["database"] != "appdb":
                    continue
                servers = pool["sv_active"] + pool["sv_idle"] + pool["sv_used"]
                clients = pool["cl_active"] + pool["cl_waiting"]
                if pool["sv_login"] or servers < clients:
                    return False
    return True


def reload_to(group: Group, target: PostgresServer) -> None:
    """Write the configuration pointing ``appdb`` at ``target`` and SIGHUP every process.

    PgBouncer's plain reload, the baseline: the charm holds it in PAUSE (``paused_reload``).
    """
    new_cfg = config(
        target,
        processes=group.cfg.processes,
        pool_mode=group.cfg.pool_mode,
        listen_port=group.cfg.listen_port,
    )
    old_files, new_files = group.files(), group.files(new_cfg)
    for path, text in new_files.items():
        # PgBouncer applies a [databases] change on reload, without a restart.
        assert text != old_files[path]
        assert not needs_restart(old_files[path], text)
        group.factory.write(group.workdir, Path(path).name, with_admin(text))
    for pgb in group.processes:
        pgb.reload()


def start_clients(port: int, password: str, count: int = 10):
    clients = [LoopingClient(connect(port, password)) for _ in range(count)]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
    for thread in threads:
        thread.start()
    return clients, stop, threads


def test_reload_keeps_clients_and_moves_transactions_to_the_new_target(
    postgres, second_postgres, pgbouncer_factory
):
    cfg = config(postgres, processes=2, pool_mode="transaction")
    group = start_group(pgbouncer_factory, postgres, cfg, edit=with_admin)
    clients, stop, threads = start_clients(cfg.listen_port, postgres.password)
    try:
        wait_until(lambda: all(len(c.ports) >= 5 for c in clients), "queries on the old target")
        # PgBouncer 1.24 drops the clients waiting on a pool whose server login is in flight
        # when the target changes (see the next test): reload once the pools are warm.
        wait_until(lambda: pools_settled(group, postgres.password), "warm pools")
        reload_to(group, second_postgres)
        wait_until(
            lambda: all(second_postgres.port in c.ports for c in clients) or any_failed(clients),
            "every client to reach the new target",
        )
        seen = [len(c.ports) for c in clients]
        wait_until(
            lambda: (
                all(len(c.ports) >= n + 5 for c, n in zip(clients, seen, strict=True))
                or any_failed(clients)
            ),
            "more queries on the new target",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    errors_seen = [e for c in clients for e in c.errors]
    total = sum(len(c.ports) for c in clients)
    print(f"\nreload, warm pools: {total} queries, 10 clients, {len(errors_seen)} client errors")
    assert errors_seen == []
    for client in clients:
        assert not client.conn.closed
        first_new = client.ports.index(second_postgres.port)
        # Old target until the reload, the new one from then on: never back.
        assert set(client.ports[:first_new]) == {postgres.port}
        assert set(client.ports[first_new:]) == {second_postgres.port}
        assert client.conn.execute("SELECT 1").fetchone() == (1,)
        client.conn.close()
    assert all(pgb.alive() for pgb in group.processes)


def paused_reload(group: PebbleGroup, target: PostgresServer, **changes) -> float:
    """Point ``appdb`` at ``target`` through the charm's own workload code.

    :meth:`Workload.apply` gets the files for ``target`` (and ``changes`` to the other
    settings); the test checks that it held the processes in PAUSE around the reload (PAUSE,
    reload, RESUME, with its own delays). Returns when ``apply`` returned, RESUME sent
    (monotonic time).
    """
    values = {
        "processes": group.cfg.processes,
        "pool_mode": group.cfg.pool_mode,
        "listen_port": group.cfg.listen_port,
        "max_db_connections": group.cfg.max_db_connections,
        **changes,
    }
    serving = {p.name for p in group.processes}
    signalled = len(group.runner.history)
    result = group.apply(config(target, **values))
    assert set(result.paused) == set(result.reloaded) == serving, result
    assert not (result.started or result.restarted or result.stopped), result
    sent = [sig for sig, _ in group.runner.history[signalled:]]
    assert sent == ["SIGUSR1"] * len(serving) + ["SIGHUP"] * len(serving) + ["SIGUSR2"] * len(
        serving
    ), sent
    return time.monotonic()


def test_target_change_while_pools_grow_drops_no_client(postgres, second_postgres, workload_group):
    """Cold pools: server logins in flight when the target changes.

    A plain reload here dropped 3, 3 and 0 of 10 clients on PgBouncer 1.24 ("server login has
    been failing, cached error: connect string changed"): the login in flight was killed and
    cached as a failure. Under PAUSE the login is closed as a pause, not a failure, and the
    clients wait for RESUME instead of failing.
    """
    cfg = config(postgres, processes=2, pool_mode="transaction")
    group = workload_group(postgres, cfg, edit=with_admin)
    clients, stop, threads = start_clients(cfg.listen_port, postgres.password)
    # New clients too: a login PAUSE closed is cached as a failure for server_login_retry, and
    # new clients of that pool get the cached error until it ends (it must end before RESUME).
    newcomer = ConnectLoop(cfg.listen_port, postgres.password)
    threads.append(threading.Thread(target=newcomer.run, args=(stop,)))
    threads[-1].start()
    try:
        wait_until(lambda: all(c.ports for c in clients), "a first query from every client")
        begun = time.monotonic()
        newcomer.phase = "switch"
        resumed = paused_reload(group, second_postgres)
        wait_until(
            lambda: all(second_postgres.port in c.ports or c.errors for c in clients),
            "every client to reach the new target or fail",
        )
        moved = time.monotonic() - begun
        wait_until(lambda: time.monotonic() > resumed + 2, "2 s of new clients after RESUME")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    dropped = [e for c in clients for e in c.errors]
    print(
        f"\ntarget change, cold pools, paused: {len(dropped)}/10 dropped, moved in {moved:.2f}s;"
        f" new clients: {newcomer.ok.get('switch', 0)} ok, {newcomer.failed.get('switch', [])}"
    )
    assert dropped == []
    assert newcomer.failed.get("switch", []) == [] and newcomer.ok.get("switch", 0) > 0
    for client in clients:
        first_new = client.ports.index(second_postgres.port)
        assert set(client.ports[first_new:]) == {second_postgres.port}
        assert not client.conn.closed
        client.conn.close()


def any_failed(clients: list[LoopingClient]) -> bool:
    return any(c.errors for c in clients)


# -- c. a listen_port change rolls one process at a time -----------------------------------
SHUTTING_DOWN = "pooler is shutting down"
REFUSES_LOGINS_IN_FLIGHT = pgbouncer_version_tuple() >= (1, 25)
"""PgBouncer >= 1.25 refuses, with FATAL ``pooler is shutting down``, a client whose login was
in flight (startup sent, authentication not finished) when the process got SIGTERM; 1.24 served
it. Its listener still closes at SIGTERM: no later connection reaches it (docs/image.md)."""


RESET_HANDSHAKE = "server closed the connection unexpectedly"
"""What libpq reports for a connection the kernel reset from the accept queue of a listener
that closed (net.ipv4.tcp_migrate_req = 0 here: so_reuseport does not hand it to another)."""

STOPPING = "moving"
"""The phase a ConnectLoop's owner sets just before it sends a process SIGTERM."""


@dataclass
class ConnectLoop:
    """Connects to a port again and again; counts outcomes per phase.

    An attempt belongs to the phase it started in, except one that failed after the phase
    changed to a ``moving`` one under it: it was being made when a process got SIGTERM. Such an
    attempt is the stop's cost, kept apart in ``in_flight`` and only for the two ways a stop
    cuts it: its handshake reset from the closing listener's queue (every version; 11 of 132
    runs of the port roll on 1.26.1 and 1 of 60 on 1.24.1 had one, docs/image.md), or its
    login refused as ``pooler is shutting down`` (1.25+). Any other failure stays in its phase.
    """

    port: int
    password: str
    phase: str = "start"
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)

    in_flight: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            phase = self.phase
            try:
                with connect(self.port, self.password) as conn:
                    conn.execute("SELECT 1")
                self.ok[phase] = self.ok.get(phase, 0) + 1
            except psycopg.Error as exc:
                message = str(exc).splitlines()[0]
                if self._cut_by_a_stop(phase, message):
                    self.in_flight.append(f"{phase} -> {self.phase}: {message}")
                else:
                    self.failed.setdefault(phase, []).append(message)

    def _cut_by_a_stop(self, started_in: str, message: str) -> bool:
        """Whether a failed attempt was in flight at a SIGTERM and failed the way that cuts."""
        if self.phase == started_in or not self.phase.startswith(STOPPING):
            return False
        return RESET_HANDSHAKE in message or (
            REFUSES_LOGINS_IN_FLIGHT and SHUTTING_DOWN in message
        )

    def successes(self, phase: str) -> int:
        return self.ok.get(phase, 0)


def all_connect(port: int, password: str, count: int = 20) -> bool:
    for _ in range(count):
        with connect(port, password) as conn:
            conn.execute("SELECT 1")
    return True


def test_listen_port_change_rolls_one_process_at_a_time(postgres, pgbouncer_factory):
    processes = 2
    cfg = config(postgres, processes=processes)
    group = start_group(pgbouncer_factory, postgres, cfg)
    new_cfg = config(postgres, processes=processes, listen_port=free_port())
    old_files, new_files = group.files(), group.files(new_cfg)
    assert all(needs_restart(old_files[p], new_files[p]) for p in new_files)

    loop = ConnectLoop(cfg.listen_port, postgres.password)
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: loop.successes("start") >= 5, "the loop to connect")
        for index, text in enumerate(new_files.values()):
            loop.phase = f"moving {index}"
            group.stop_like_pebble(index)
            group.start(index, text, new_cfg.listen_port)
            # A listener leaving a so_reuseport group resets the handshakes the kernel had
            # queued on it (unless net.ipv4.tcp_migrate_req=1); one such reset has been seen
            # just after a move on this 2-core machine under load. Those are "settling" errors:
            # recorded and printed, not asserted. Once the old port has served 20 connections
            # again over at least a second, it must serve every one (a reset handshake was seen
            # up to about 5 connections after a move when the machine ran two test suites).
            loop.phase = f"settling {index}"
            if index < processes - 1:
                settled_from = time.monotonic()
                wait_until(
                    lambda i=index, t0=settled_from: (
                        loop.successes(f"settling {i}") >= 20 and time.monotonic() - t0 >= 1.0
                    ),
                    "the old port",
                )
                loop.phase = f"moved {index}"
                # The processes not moved yet still serve the old port, every time.
                wait_until(lambda i=index: loop.successes(f"moved {i}") >= 5, "the old port")
                assert all_connect(cfg.listen_port, postgres.password)
            else:
                loop.phase = f"moved {index}"
            assert all_connect(new_cfg.listen_port, postgres.password)
    finally:
        stop.set()
        thread.join(timeout=30)
    last = f"moved {processes - 1}"
    steady = {p: f for p, f in loop.failed.items() if p.startswith("moved") and p != last}
    transitions = {p: f for p, f in loop.failed.items() if p.startswith(("moving", "settling"))}
    counts = {p: len(f) for p, f in transitions.items()}
    print(f"\nlisten_port roll: successes {loop.ok}; errors while a process stopped {counts}")
    assert steady == {}, steady
    # At most the one attempt in flight when each old-port process got SIGTERM (the loop makes
    # one at a time): its handshake reset, or (1.25+) its login refused.
    print(f"  attempts in flight cut at a SIGTERM: {loop.in_flight}")
    assert len(loop.in_flight) <= processes
    # Stopping the last process on the old port is when the old port goes away.
    for phase, failures in transitions.items():
        if phase != f"moving {processes - 1}":
            print(f"  {phase}: {sorted(set(failures))}")
    assert loop.failed.get("start") is None
    # No process serves the old port any more: every connection fails, and soon with "refused".
    # (Once, a connection right after the last move was closed instead of refused: a queued
    # handshake or a loopback self-connect on an ephemeral port; never a served one.)
    deadline = time.monotonic() + 5
    while True:
        with pytest.raises(psycopg.OperationalError) as caught:
            connect(cfg.listen_port, postgres.password)
        if "refused" in str(caught.value):
            break
        assert time.monotonic() < deadline, str(caught.value)
        time.sleep(0.1)
    assert all(pgb.alive() for pgb in group.processes)


# -- a login in flight at SIGTERM (the hand-over's cost on PgBouncer 1.25+) --------------------
def _begin_login(port: int) -> socket.socket:
    """Start a login over TCP and leave it in flight.

    Sends a startup message and returns once PgBouncer asks for the password in clear text
    (``auth_type = plain``).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0appdb\0\0"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    kind, payload = _read_message(sock)
    assert (kind, payload[:4]) == (b"R", struct.pack("!I", 3)), (kind, payload)
    return sock


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    """One backend message: its type byte and its payload (b"" on a closed connection)."""
    header = b""
    while len(header) < 5:
        chunk = sock.recv(5 - len(header))
        if not chunk:
            return b"", b""
        header += chunk
    length = struct.unpack("!I", header[1:5])[0] - 4
    payload = b""
    while len(payload) < length:
        chunk = sock.recv(length - len(payload))
        if not chunk:
            break
        payload += chunk
    return header[:1], payload


def _accepts(port: int) -> bool:
    """Whether a TCP connection to ``port`` is accepted (the handshake completes)."""
    with socket.socket() as sock:
        sock.settimeout(DEADLINE)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _finish_login(sock: socket.socket, password: str) -> str:
    """Send the password; ``"ok"`` on AuthenticationOk, else the error's message field."""
    secret = password.encode() + b"\0"
    sock.sendall(b"p" + struct.pack("!I", len(secret) + 4) + secret)
    kind, payload = _read_message(sock)
    if kind == b"R" and payload[:4] == struct.pack("!I", 0):
        return "ok"
    if kind == b"E":
        fields = {part[:1]: part[1:].decode() for part in payload.split(b"\0") if part}
        return fields.get(b"M", "")
    return f"unexpected {kind!r}"


def test_a_login_in_flight_at_sigterm_is_served_before_125_and_refused_from_it(
    postgres, pgbouncer_factory
):
    """What a hand-over costs a client logging in when the old process gets SIGTERM.

    And what it never costs: a connection made after the SIGTERM (docs/workload.md).
    """
    cfg = config(postgres, processes=1)
    group = start_group(
        pgbouncer_factory,
        postgres,
        cfg,
        edit=lambda text: text.replace("auth_type = scram-sha-256", "auth_type = plain"),
    )
    pgb = group.processes[0]
    held = connect(cfg.listen_port, postgres.password)  # keeps the process serving after SIGTERM
    held.execute("SELECT 1")
    in_flight = [_begin_login(cfg.listen_port) for _ in range(3)]
    try:
        pgb.proc.send_signal(signal.SIGTERM)
        # Its listener closes: with no other process on the port, a new connection is refused.
        wait_until(lambda: not _accepts(cfg.listen_port), "the listener to close")
        outcomes = [_finish_login(sock, postgres.password) for sock in in_flight]
    finally:
        for sock in in_flight:
            sock.close()
    if REFUSES_LOGINS_IN_FLIGHT:
        assert outcomes == [SHUTTING_DOWN] * 3
    else:
        assert outcomes == ["ok"] * 3
    assert held.execute("SELECT 1").fetchone() == (1,)  # its client is served until it leaves
    held.close()
    pgb.proc.wait(timeout=DEADLINE)
    assert pgb.proc.returncode == 0
