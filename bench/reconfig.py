"""Part 3: reconfiguration under load, driven through the charm itself.

The charm runs under ``ops.testing`` with the end-to-end harness (``harness``): each
hook's Pebble calls are replayed on real PgBouncer processes started from the plan the charm
produced, in front of a real PostgreSQL that plays the PostgreSQL charm. While pgbench
(transaction pool, TPC-B-like, ``--aggregate-interval=1``) runs through those processes, the
charm handles, in turn:

1. a backend endpoint switch: the provider's ``endpoints`` moves to a second server, a
   ``pg_basebackup`` copy of the first (as after a failover), and ``relation-changed`` runs;
2. a ``max_db_connections`` change (``config-changed``);
3. a client ``database`` relation added (created, joined, changed: a user and a database are
   made on the backend and a ``[databases]`` entry appears);
4. that relation removed (departed, broken).

For each change: the hook's wall time, what the charm asked of Pebble (reload signals or
restarts), failed transactions, and the worst latency in the change's window (from the hook's
start to two seconds after its end) beside the worst outside every window. Each change is checked
to have taken effect on the servers.

The charm renders ``listen_addr = *``. So that nothing listens beyond loopback, this part runs in a
private network namespace (``unshare --net``, loopback only): PostgreSQL, PgBouncer, pgbench and
the harness all live in it, and the host's interfaces never see a listening socket.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from bench.netns import run_module
from bench.pgbench import PgbenchResult, Target, run_pgbench
from bench.settings import Settings, load
from bench.stack import pgbench_init
from harness.juju import limit_cpus
from harness.story import promoted_copy

WINDOW_AFTER_S = 2.0
CHANGES = (
    "backend endpoint switch",
    "max_db_connections 100 -> 10",
    "client relation added",
    "client relation removed",
)


@dataclasses.dataclass
class Change:
    """One reconfiguration and what was seen around it (times are epoch seconds)."""

    name: str
    start: float = 0.0
    end: float = 0.0
    hook_ms: float = 0.0
    pebble: str = ""
    check: str = ""
    window_tx: int = 0
    window_worst_ms: float = 0.0
    window_failures: int = 0


@dataclasses.dataclass
class ReconfigResult:
    """Part 3's figures (JSON-serialisable: they cross the namespace boundary)."""

    processes: int = 0
    clients: int = 0
    seconds: int = 0
    tps: float = 0.0
    processed: int = 0
    failed: int = 0
    aborted_clients: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    baseline_worst_ms: float = 0.0
    baseline_mean_ms: float = 0.0
    changes: list[Change] = dataclasses.field(default_factory=list)
    note: str = ""


def run(settings: Settings, workdir: Path) -> ReconfigResult:
    """Run :func:`child_main` in a private network namespace and read its figures."""
    out = workdir / "reconfig.json"
    data = run_module("bench.reconfig", out, settings.reconfig_seconds + 300, "reconfiguration")
    changes = [Change(**c) for c in data.pop("changes")]
    return ReconfigResult(**data, changes=changes)


# -- inside the namespace ----------------------------------------------------------------------


def _aggregate(log_dir: Path, prefix: str) -> dict[int, list[float]]:
    """Per second: [transactions, sum of latency (us), worst latency (us), failures]."""
    seconds: dict[int, list[float]] = {}
    for path in log_dir.glob(f"{prefix}.*"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) < 7:
                continue
            second = int(fields[0])
            row = seconds.setdefault(second, [0, 0.0, 0.0, 0])
            row[0] += int(fields[1])
            row[1] += float(fields[2])
            row[2] = max(row[2], float(fields[5]))
            # --failures-detailed: serialization_failures deadlock_failures.
            row[3] += int(fields[6]) + (int(fields[7]) if len(fields) > 7 else 0)
    return seconds


def _count_backends(server: Any, dbname: str) -> int:
    rows = server.execute(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity"
        " WHERE datname = %s AND backend_type = 'client backend'",
        (dbname,),
    )
    return int(rows[0][0])


def _connects(target: Target) -> str:
    import psycopg

    try:
        with psycopg.connect(
            host=target.host,
            port=target.port,
            dbname=target.dbname,
            user=target.user,
            password=target.password,
            connect_timeout=5,
        ) as conn:
            conn.execute("SELECT 1")
        return "ok"
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[-1][:100]


def child_main(out_path: Path) -> None:
    """The whole measurement: servers, charm life, pgbench, four changes, analysis."""
    from ops import testing

    from charm import PgBouncerK8sCharm
    from harness.juju import Application
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres
    from harness.servers.system import free_port, service_tempdir

    settings = load()
    work = Path(service_tempdir("pgbk8s-bench-rc-"))
    servers = []
    cgroup = service_tempdir("pgbk8s-bench-cgroup-")
    result = ReconfigResult(clients=settings.clients, seconds=settings.reconfig_seconds)
    port = free_port()
    app = None
    try:
        primary = start_postgres(settings={"max_connections": "100"}, prefix="pgbk8s-bench-rc-")
        servers.append(primary)
        app = Application(
            PgBouncerK8sCharm,
            num_units=1,
            config={"listen_port": port, "pool_mode": "transaction"},
        )
        unit = app.leader
        # A pod limited to 2 CPUs: the charm reads cpu.max through Pebble and runs 2 processes.
        limit_cpus(unit, cgroup, 2)
        for hook in (unit.install, unit.leader_elected, unit.config_changed, unit.start):
            hook()
        unit.pebble_ready()
        backend_id = app.add_relation(
            testing.Relation("backend-database", remote_app_name="postgresql-k8s")
        )
        unit.relation_created(backend_id)
        fake = FakePostgresqlCharm(primary)
        requested = unit.relation(backend_id).local_app_data["database"]
        provider_data, _ = fake.provide(
            requested, "SUPERUSER", relation_id=backend_id, use_secret=False
        )
        app.set_remote(backend_id, remote_app_data=provider_data)
        unit.relation_changed(backend_id, remote_unit=0)

        def add_client(name: str, database: str) -> tuple[int, Target]:
            rel = app.add_relation(
                testing.Relation(
                    "database",
                    remote_app_name=name,
                    remote_app_data={
                        "database": database,
                        "requested-secrets": '["username", "password"]',
                    },
                )
            )
            unit.relation_created(rel)
            unit.relation_joined(rel, 0)
            unit.relation_changed(rel, remote_unit=0)
            local = unit.relation(rel).local_app_data
            creds = unit.secret(local["secret-user"]).latest_content
            return rel, Target(
                "charm", "127.0.0.1", port, database, creds["username"], creds["password"]
            )

        _, target = add_client("bench-client", "benchdb")
        result.processes = len(
            [s for s in unit.state.get_container("pgbouncer").plan.services if s]
        )
        print(f"  charm: {unit.state.unit_status}", flush=True)
        direct = dataclasses.replace(target, host=primary.host, port=primary.port)
        pgbench_init(direct, settings.scale)
        primary.execute("CHECKPOINT")
        second = promoted_copy(primary)
        servers.append(second)

        holder: dict[str, PgbenchResult] = {}
        args = [
            "-n",
            "-c",
            str(settings.clients),
            "-j",
            str(settings.threads),
            "-T",
            str(settings.reconfig_seconds),
            "--failures-detailed",
            "--log",
            "--aggregate-interval=1",
            "--log-prefix=rc",
        ]
        bench_thread = threading.Thread(
            target=lambda: holder.setdefault(
                "r",
                run_pgbench(
                    target, args, work, timeout=settings.reconfig_seconds + 120, name="reconfig"
                ),
            ),
            daemon=True,
        )
        t0 = time.time()
        bench_thread.start()
        fractions = (0.15, 0.35, 0.55, 0.75)
        client2: dict[str, Any] = {}

        def switch() -> str:
            data = dict(provider_data, endpoints=second.endpoint)
            app.set_remote(backend_id, remote_app_data=data)
            unit.relation_changed(backend_id, remote_unit=0)
            return ""

        def max_db() -> str:
            app.set_config(max_db_connections=10)
            unit.config_changed()
            return ""

        def added() -> str:
            rel, tgt = add_client("bench-client-2", "benchdb2")
            client2.update(rel=rel, target=tgt)
            return f"new database through the pooler: {_connects(tgt)}"

        def removed() -> str:
            rel = client2["rel"]
            unit.relation_departed(rel, 0)
            app_rel = unit.relation(rel)
            unit.state = dataclasses.replace(
                unit.state,
                relations={r for r in unit.state.relations if r.id != rel}
                | {dataclasses.replace(app_rel, remote_units_data={})},
            )
            unit.relation_broken(rel)
            app.remove_relation(rel)
            rendered = (unit.mount_dir / "pgbouncer_0.ini").read_text()
            entry = "still rendered" if "\nbenchdb2 =" in rendered else "gone from the ini"
            return f"benchdb2 entry {entry}; its login now: {_connects(client2['target'])[-60:]}"

        actions = (switch, max_db, added, removed)
        for name, fraction, action in zip(CHANGES, fractions, actions, strict=True):
            while time.time() < t0 + fraction * settings.reconfig_seconds:
                time.sleep(0.05)
            change = Change(name=name, start=time.time())
            check = action()
            change.end = time.time()
            change.hook_ms = (change.end - change.start) * 1000
            report = unit.last_report
            change.pebble = (
                f"signalled {len(report.signalled)}, restarted {len(report.restarted)},"
                f" started {len(report.started)}, stopped {len(report.stopped)}"
                if report is not None
                else "no report"
            )
            time.sleep(WINDOW_AFTER_S)
            if name.startswith("backend"):
                check = (
                    f"backends on the new server: {_count_backends(second, 'benchdb')},"
                    f" on the old: {_count_backends(primary, 'benchdb')}"
                )
            elif name.startswith("max_db"):
                check = f"backends on the server: {_count_backends(second, 'benchdb')} (cap 10)"
            change.check = check
            result.changes.append(change)
            print(f"  {name}: hook {change.hook_ms:.0f} ms, {change.pebble}; {check}", flush=True)
        bench_thread.join(timeout=settings.reconfig_seconds + 180)
        bench = holder["r"]
        result.tps, result.processed = bench.tps, bench.processed
        result.failed, result.aborted_clients = bench.failed, bench.aborted_clients
        result.errors = bench.errors
        per_second = _aggregate(work, "rc")
        in_window: set[int] = set()
        for change in result.changes:
            seconds = [
                s for s in per_second if s + 1 > change.start and s < change.end + WINDOW_AFTER_S
            ]
            in_window.update(seconds)
            change.window_tx = int(sum(per_second[s][0] for s in seconds))
            change.window_worst_ms = max((per_second[s][2] for s in seconds), default=0) / 1000
            change.window_failures = int(sum(per_second[s][3] for s in seconds))
        first = min(per_second, default=0)
        quiet = [s for s in per_second if s not in in_window and s > first + 1]
        result.baseline_worst_ms = max((per_second[s][2] for s in quiet), default=0) / 1000
        tx = sum(per_second[s][0] for s in quiet)
        result.baseline_mean_ms = sum(per_second[s][1] for s in quiet) / tx / 1000 if tx else 0.0
        result.note = "charm-driven (ops.testing + harness), real PgBouncer processes"
        out_path.write_text(json.dumps(dataclasses.asdict(result)))
    finally:
        if app is not None:
            app.close()
        for server in servers:
            server.destroy()
        for path in (work, cgroup):
            subprocess.run(["rm", "-rf", str(path)], check=False)


def section(res: ReconfigResult) -> list[str]:
    """Markdown of part 3."""
    lines = [
        "## 3. Reconfiguration under load",
        "",
        f"{res.note}; {res.processes} PgBouncer processes (the charm reads a 2-CPU `cpu.max`),"
        f" transaction pool. pgbench TPC-B-like, `-c {res.clients} -j 2 -T {res.seconds}"
        " --failures-detailed --aggregate-interval=1` through the charm's PgBouncer as the"
        " client user the charm created. Run in a private network namespace (loopback only).",
        "",
        f"Whole run: {res.tps:,.1f} tps, {res.processed} transactions, **{res.failed} failed,"
        f" {res.aborted_clients} clients aborted**"
        + (f" (errors: {'; '.join(res.errors)})" if res.errors else "")
        + f". Outside every change window: mean latency {res.baseline_mean_ms:.1f} ms, worst"
        f" {res.baseline_worst_ms:.1f} ms.",
        "",
        "| change | hook (ms) | Pebble | transactions in window | failed in window | worst latency in window (ms) | check after the change |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for c in res.changes:
        lines.append(
            f"| {c.name} | {c.hook_ms:.0f} | {c.pebble} | {c.window_tx} | {c.window_failures} |"
            f" {c.window_worst_ms:.1f} | {c.check.replace('|', '/')} |"
        )
    lines += [
        "",
        f"A window runs from the hook's start to {WINDOW_AFTER_S:.0f} s after its end"
        " (whole pgbench log seconds that overlap it).",
    ]
    return lines


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydantic\..*")
    child_main(Path(sys.argv[1]))
