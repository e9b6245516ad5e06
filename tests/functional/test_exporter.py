"""The metrics exporter and the stats user, against two real PgBouncer 1.24 processes.

Real PostgreSQL 15, two real PgBouncer processes rendered by ``pgbouncer.config`` (``stats_users``
and the stats user's auth file line included), and the real exporter
(``prometheus-pgbouncer-exporter`` from ``.build/exporter``, installed by
``scripts/setup-system.sh``) started with exactly the command and user of the Pebble service
``pgbouncer.workload.build_layer`` builds, on the files ``pgbouncer.exporter`` renders. pgbench
loads each process through its own unix socket (3 clients on process 0, 5 on process 1) while
``/metrics`` is compared with ``SHOW POOLS`` on both admin consoles.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from harness.servers.pg import PostgresServer
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess, first_slots, make_run_dirs
from harness.servers.system import (
    PG_BIN,
    PROJECT_ROOT,
    as_service_user,
    free_port,
    stop_process,
    wait_for_port,
    write_service_file,
)
from pgbouncer.config import (
    DatabaseTarget,
    PgBouncerConfig,
    auth_file_path,
    render_auth_file,
    render_files,
)
from pgbouncer.exporter import (
    EXPORTER_SERVICE,
    STATS_USER,
    exporter_config_path,
    passfile_path,
    render_exporter_config,
    render_passfile,
    render_stats_auth_line,
)
from pgbouncer.plan import build_layer
from pgbouncer.slots import run_dir
from postgres.passwords import generate_password

pytestmark = pytest.mark.needs_root

EXPORTER_BIN = PROJECT_ROOT / ".build" / "exporter" / "bin"
CLIENTS = {0: 3, 1: 5}
SERVER_STATES = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Rig:
    """Two PgBouncer processes on one port, their files, and a database behind them."""

    base: Path
    port: int
    processes: list[PgBouncerProcess]
    database: str
    app_user: str
    app_password: str
    stats_password: str
    pg: PostgresServer


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition → ``[(name, labels, value)]`` (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"unparsable metrics line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric_sum(samples, name: str, **labels: str) -> float:
    return sum(
        value
        for n, lab, value in samples
        if n == name and all(lab.get(k) == v for k, v in labels.items())
    )


def admin(rig: Rig, index: int, user: str = STATS_USER, password: str | None = None, **kw):
    return psycopg.connect(
        host=run_dir(index, str(rig.base)),
        port=rig.port,
        dbname="pgbouncer",
        user=user,
        password=rig.stats_password if password is None else password,
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=5,
        application_name="test_checker",
        **kw,
    )


def show(conn: psycopg.Connection, what: str) -> list[dict]:
    cur = conn.execute(what)  # type: ignore[arg-type]
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pools_of(rig: Rig, index: int) -> tuple[int, int]:
    """(client, server) connections in SHOW POOLS of one process, the admin pool left out."""
    with admin(rig, index) as conn:
        rows = [r for r in show(conn, "SHOW POOLS") if r["database"] != "pgbouncer"]
    clients = sum(r["cl_active"] + r["cl_waiting"] for r in rows)
    servers = sum(sum(r[s] for s in SERVER_STATES) for r in rows)
    return clients, servers


@pytest.fixture
def rig(postgres: PostgresServer, pgbouncer_factory: PgBouncerFactory) -> Iterator[Rig]:
    suffix = uuid.uuid4().hex[:8]
    database, app_user, app_password = f"obs_{suffix}", f"obs_app_{suffix}", generate_password()
    with postgres.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(app_user), sql.Literal(app_password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(app_user)
            )
        )
    subprocess.run(
        [
            *(str(PG_BIN / "pgbench"), "-i", "-q", "-s", "1", "-h", "127.0.0.1"),
            *("-p", str(postgres.port), "-U", app_user, database),
        ],
        env={**os.environ, "PGPASSWORD": app_password},
        check=True,
        capture_output=True,
    )
    base = pgbouncer_factory.workdir()
    port = free_port()
    stats_password = generate_password()
    cfg = PgBouncerConfig(
        listen_port=port,
        pool_mode="session",
        max_db_connections=20,
        max_prepared_statements=0,
        processes=2,
        databases=(DatabaseTarget(database, postgres.host, postgres.port, database),),
        listen_addr="127.0.0.1",
        stats_user=STATS_USER,
    )
    make_run_dirs(base, range(2))
    # The client's plain password (PgBouncer logs in to PostgreSQL with it) and the stats
    # user's verifier, as the charm writes the auth file.
    write_service_file(
        Path(auth_file_path(str(base))),
        render_auth_file(app_user, app_password) + render_stats_auth_line(stats_password),
    )
    processes = [
        pgbouncer_factory.start(text, port, workdir=base, name=Path(path).name)
        for path, text in sorted(first_slots(render_files(cfg, str(base))).items())
    ]
    yield Rig(base, port, processes, database, app_user, app_password, stats_password, postgres)
    with postgres.connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app_user)))


@dataclass
class Exporter:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def exporter(rig: Rig) -> Iterator[Exporter]:
    """The exporter as the Pebble service runs it: its command, its user, no environment."""
    port = free_port()
    base = str(rig.base)
    write_service_file(
        Path(exporter_config_path(base)),
        render_exporter_config(2, rig.port, base, host="127.0.0.1", port=port),
    )
    write_service_file(Path(passfile_path(base)), render_passfile(rig.stats_password))
    layer = build_layer(2, rig.port, base, exporter=True)
    assert "services" in layer
    service = layer["services"][EXPORTER_SERVICE]
    assert "command" in service
    assert service.get("user") == "postgres"
    assert "environment" not in service
    argv = shlex.split(service["command"])
    assert rig.stats_password not in service["command"]
    log_path = rig.base / "exporter.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            as_service_user(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Pebble gives a service the image's PATH and nothing of ours.
            env={"PATH": f"{EXPORTER_BIN}:/usr/bin:/bin"},
        )
    exp = Exporter(proc, port, log_path)
    try:
        wait_for_port(port, timeout=20)
        yield exp
    finally:
        stop_process(proc, signal.SIGTERM, grace=8)


def _pgbench(rig: Rig, index: int, clients: int, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *(str(PG_BIN / "pgbench"), "-n", "-S", "-c", str(clients), "-j", "1"),
            *("-T", str(seconds), "-h", run_dir(index, str(rig.base)), "-p", str(rig.port)),
            *("-U", rig.app_user, rig.database),
        ],
        env={**os.environ, "PGPASSWORD": rig.app_password},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_metrics_match_show_pools_over_both_processes_under_load(rig: Rig, exporter: Exporter):
    benches = [_pgbench(rig, i, n, 25) for i, n in CLIENTS.items()]
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            # Every client connected and holding its server (session mode; a client that has
            # not sent its first query yet has none).
            pools = [pools_of(rig, i) for i in CLIENTS]
            if [c for c, _ in pools] == list(CLIENTS.values()) and all(s >= c for c, s in pools):
                break
            time.sleep(0.3)
        matched = None
        seen: dict[int, tuple[int, int]] = {}
        truth: dict[int, tuple[int, int]] = {}
        for _attempt in range(10):
            before = parse_metrics(exporter.scrape())
            truth = {i: pools_of(rig, i) for i in CLIENTS}
            after = parse_metrics(exporter.scrape())
            seen = {}
            for samples in (before, after):
                seen_now = {}
                for i in CLIENTS:
                    p = str(i)
                    clients = metric_sum(
                        samples, "pgbouncer_pools_client_active_connections", process=p
                    ) + metric_sum(
                        samples, "pgbouncer_pools_client_waiting_connections", process=p
                    )
                    servers = sum(
                        metric_sum(samples, f"pgbouncer_pools_server_{s}_connections", process=p)
                        for s in ("active", "idle", "used", "testing", "login")
                    )
                    seen_now[i] = (int(clients), int(servers))
                seen = seen or seen_now
                if seen_now != seen:
                    break
            if seen == truth:
                matched = (seen, truth)
                break
            time.sleep(0.5)
        assert matched is not None, f"metrics {seen} never matched SHOW POOLS {truth}"
        seen, truth = matched
        # The per-process numbers are the load we sent to each process's socket.
        assert {i: c for i, (c, _) in truth.items()} == CLIENTS
        total_clients = sum(c for c, _ in truth.values())
        total_servers = sum(s for _, s in truth.values())
        assert total_clients == 8
        assert total_servers >= 8  # session mode: one server connection per client
        print(
            f"\nmetrics vs SHOW POOLS: per process {seen} (clients, servers) == {truth};"
            f" summed: {total_clients} clients, {total_servers} servers"
        )
        samples = parse_metrics(exporter.scrape())
        up = {lab["process"]: v for n, lab, v in samples if n == "pgbouncer_up"}
        assert up == {"0": 1.0, "1": 1.0}
    finally:
        for bench in benches:
            bench.wait(timeout=60)
    for bench in benches:
        assert bench.returncode == 0, bench.stderr


def test_a_killed_process_shows_down_and_comes_back_after_restart_and_reload(
    rig: Rig, exporter: Exporter, pgbouncer_factory: PgBouncerFactory
):
    def up() -> dict[str, float]:
        samples = parse_metrics(exporter.scrape())
        return {lab["process"]: v for n, lab, v in samples if n == "pgbouncer_up"}

    assert up() == {"0": 1.0, "1": 1.0}
    victim = rig.processes[1]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=5)
    started = time.monotonic()
    assert up() == {"0": 1.0, "1": 0.0}
    scrape_seconds = time.monotonic() - started
    # Process 0's series are still there while process 1 is down.
    samples = parse_metrics(exporter.scrape())
    assert any(lab.get("process") == "0" for n, lab, _ in samples if n.startswith("pgbouncer_"))
    # Restarted (as Pebble would, same ini): the exporter needs nothing, the next scrape sees it.
    ini = victim.ini_path.read_text()
    pgbouncer_factory.start(ini, rig.port, workdir=rig.base, name="pgbouncer_1_restarted.ini")
    assert up() == {"0": 1.0, "1": 1.0}
    for process in rig.processes[:1]:
        process.reload()
    time.sleep(0.5)
    assert up() == {"0": 1.0, "1": 1.0}
    assert exporter.proc.poll() is None
    print(f"\nscrape with one process down took {scrape_seconds:.2f}s")


def test_the_exporter_holds_no_connection_between_scrapes(rig: Rig, exporter: Exporter):
    exporter.scrape()
    time.sleep(0.3)
    for index in (0, 1):
        with admin(rig, index) as conn:
            clients = show(conn, "SHOW CLIENTS")
            servers = show(conn, "SHOW SERVERS")
        assert [
            c for c in clients if c["user"] == STATS_USER and c["database"] != "pgbouncer"
        ] == []
        # Only our own checking connection is on the admin console.
        console = [c for c in clients if c["database"] == "pgbouncer"]
        assert len(console) == 1
        assert [s for s in servers if s["user"] == STATS_USER] == []
    rows = rig.pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (STATS_USER,)
    )
    assert rows == [(0,)]


def test_no_password_in_the_exporter_files_log_or_command(rig: Rig, exporter: Exporter):
    exporter.scrape()
    config = Path(exporter_config_path(str(rig.base))).read_text()
    assert rig.stats_password not in config
    assert rig.stats_password not in exporter.log()
    for process in rig.processes:
        assert rig.stats_password not in process.log()
    auth = Path(auth_file_path(str(rig.base))).read_text()
    assert rig.stats_password not in auth
    assert f'"{STATS_USER}" "SCRAM-SHA-256$' in auth
    passfile = Path(passfile_path(str(rig.base)))
    assert passfile.stat().st_mode & 0o777 == 0o600
    cmdline = Path(f"/proc/{exporter.proc.pid}/cmdline").read_bytes()
    assert rig.stats_password.encode() not in cmdline
    environ = Path(f"/proc/{exporter.proc.pid}/environ").read_bytes()
    assert rig.stats_password.encode() not in environ


ADMIN_ONLY = (
    "RELOAD",
    "SHUTDOWN",
    "PAUSE",
    "SUSPEND",
    "RESUME",
    "KILL {db}",
    "DISABLE {db}",
    "SET default_pool_size = 1",
    "RECONNECT",
)


def test_stats_user_can_show_but_not_administer(rig: Rig):
    with admin(rig, 0) as conn:
        assert show(conn, "SHOW POOLS")
        assert show(conn, "SHOW STATS")
        assert show(conn, "SHOW DATABASES")
        for command in ADMIN_ONLY:
            # PgBouncer 1.26 removed SUSPEND (its NEWS.md): refused as an unknown command.
            refused = "admin access needed|invalid command 'SUSPEND'"
            with pytest.raises(psycopg.Error, match=refused):
                conn.execute(command.format(db=rig.database))  # type: ignore[arg-type]
        config = {r["key"]: r["value"] for r in show(conn, "SHOW CONFIG")}
    # Nothing changed: still running, same pool size, both processes accept clients.
    assert config["default_pool_size"] != "1"
    assert all(p.alive() for p in rig.processes)
    for index in (0, 1):
        with psycopg.connect(
            host=run_dir(index, str(rig.base)),
            port=rig.port,
            dbname=rig.database,
            user=rig.app_user,
            password=rig.app_password,
            connect_timeout=5,
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stats_user_cannot_reach_a_database_and_others_cannot_reach_the_console(rig: Rig):
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1",
            port=rig.port,
            dbname=rig.database,
            user=STATS_USER,
            password=rig.stats_password,
            connect_timeout=8,
        ).close()
    refused_after = time.monotonic() - started
    rows = rig.pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (STATS_USER,)
    )
    assert rows == [(0,)]
    # A client of the pooler is not a stats user: the console refuses it.
    with pytest.raises(psycopg.OperationalError):
        admin(rig, 0, user=rig.app_user, password=rig.app_password).close()
    # A wrong password for the stats user is refused.
    with pytest.raises(psycopg.OperationalError):
        admin(rig, 0, password=generate_password()).close()
    print(f"\nstats user refused by a pooled database after {refused_after:.2f}s")
