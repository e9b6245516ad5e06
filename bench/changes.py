"""Part 6: every planned change through the charm, under load (issue 16's rows).

Like part 3 (``bench/reconfig.py``), the charm runs under ``ops.testing`` with the end-to-end
harness: each hook's Pebble calls are replayed on real PgBouncer 1.24 processes (two, from a
2-CPU ``cpu.max``), in front of real PostgreSQL 15 servers, in a private network namespace
(loopback only). The clients are a process of their own (``bench/clients.py``) so that the
hooks, which run in this process, do not stall them. The rows:

1. primary switchover (``endpoints`` move, ``relation-changed``) with warm pools and with cold
   pools (a burst of fresh clients, each holding a server for 0.3 s, released just before the
   charm's Pebble calls are replayed, so that server logins are in flight at PAUSE);
2. unplanned failover: the primary stopped with ``pg_ctl stop -m immediate``, a copy made from
   it just before (as a promoted replica) published as the new ``endpoints``, ``relation-changed``;
   errors from the kill until the first successful transaction, and that time (reported);
5. ``pool_mode`` transaction -> session -> transaction with psycopg's default prepared
   statements (``prepare_threshold`` 5) beside pgbench, persistent clients and clients that
   reconnect every 2 s (as a client pool with a maximum lifetime does); each step says whether
   it was a same-port hand-over or in place (the other slot still draining);
6. ``max_db_connections`` 100 -> 10 under pgbench: server connections at or under 10 within
   5 s, and when.

Rows 3 (a ``listen_port`` change), 4 (a refresh) and 7 (a new client on three units) were
behaviour, not load: they are asserted by ``tests/e2e/test_port_change.py``,
``tests/e2e/test_same_port_handover.py`` and ``tests/e2e/test_publish_barrier.py``. The row
numbers are kept so that earlier reports still read.

Nothing is asserted; every figure is reported with its repetitions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.netns import run_module
from bench.pgbench import PgbenchResult, Target, run_pgbench
from bench.reconfig import _count_backends
from bench.settings import Settings, load
from bench.stack import pgbench_init
from harness.juju import limit_cpus
from harness.story import promoted_copy

WINDOW_AFTER_S = 2.0
BURST_CLIENTS = 16
BURST_HOLD_S = 0.3
CAP_WAIT_S = 5.0


@dataclasses.dataclass
class Step:
    """One change (or one repetition of it) and what the clients saw around it.

    Times are epoch seconds. ``served_ms`` is, for a failover, the time from the kill until
    the first successful transaction; for the cap, from the hook's start until the server
    connections were at or under the cap.
    """

    row: str
    rep: int
    detail: str = ""
    start: float = 0.0
    end: float = 0.0
    hook_ms: float = 0.0
    pebble: str = ""
    tx: int = 0
    failed: int = 0
    worst_ms: float = 0.0
    cut: int = 0
    connect_failed: int = 0
    served_ms: float | None = None
    pgbench_tx: int = 0
    pgbench_failed: int = 0
    burst: str = ""
    check: str = ""
    errors: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ChangesResult:
    """Part 6's figures (JSON-serialisable: they cross the namespace boundary)."""

    processes: int = 0
    steps: list[Step] = dataclasses.field(default_factory=list)
    baseline_worst_ms: float = 0.0
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)


def run(settings: Settings, workdir: Path) -> ChangesResult:
    """Run :func:`child_main` in a private network namespace and read its figures."""
    out = workdir / "changes.json"
    data = run_module("bench.changes", out, 1200, "planned-changes")
    steps = [Step(**s) for s in data.pop("steps")]
    return ChangesResult(**data, steps=steps)


# -- the clients' process ------------------------------------------------------------------------


class Load:
    """``bench/clients.py`` running against the pooler; :meth:`stop` returns its record."""

    def __init__(self, target: Target, workers: dict[str, int], work: Path, name: str):
        self.port_file = work / f"load-{name}.port"
        self.port_file.write_text(str(target.port))
        self.out = work / f"load-{name}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.clients", str(self.out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        config = {
            "host": target.host,
            "dbname": target.dbname,
            "user": target.user,
            "password": target.password,
            "port_file": str(self.port_file),
            "workers": workers,
        }
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def stop(self) -> Record:
        """Stop the clients (they finish their current query) and read what they saw."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        data = json.loads(self.out.read_text())
        return Record(
            {k: {int(b): v for b, v in rows.items()} for k, rows in data["buckets"].items()},
            [tuple(e) for e in data["events"]],
        )


@dataclasses.dataclass
class Record:
    """What the clients saw: successes per 100 ms bucket and kind, and every event."""

    buckets: dict[str, dict[int, list[float]]]
    events: list[tuple[Any, ...]]

    def window(self, start: float, end: float, kinds: tuple[str, ...]) -> tuple[int, float]:
        """Successful transactions that started in ``[start, end)`` and the worst latency (ms)."""
        count, worst = 0, 0.0
        for kind in kinds:
            for key, (n, ms) in self.buckets.get(kind, {}).items():
                if start <= key * 0.1 < end:
                    count += int(n)
                    worst = max(worst, ms)
        return count, worst

    def in_window(
        self, start: float, end: float, kinds: tuple[str, ...], what: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        """Events of those kinds and types in ``[start, end)``."""
        return [e for e in self.events if start <= e[0] < end and e[1] in kinds and e[3] in what]

    def worst_outside(self, windows: list[tuple[float, float]], kinds: tuple[str, ...]) -> float:
        """Worst latency (ms) of buckets outside every window."""
        worst = 0.0
        for kind in kinds:
            for key, (_, ms) in self.buckets.get(kind, {}).items():
                t = key * 0.1
                if not any(a <= t < b for a, b in windows):
                    worst = max(worst, ms)
        return worst


def _distinct(events: list[tuple[Any, ...]], limit: int = 3) -> list[str]:
    seen: dict[str, int] = {}
    for e in events:
        text = f"{e[1]} {e[3]}: {e[4]}" if e[4] else f"{e[1]} {e[3]}"
        seen[text] = seen.get(text, 0) + 1
    return [f"{n}x {t}" for t, n in sorted(seen.items(), key=lambda x: -x[1])[:limit]]


def _fill(step: Step, rec: Record, kinds: tuple[str, ...], until: float | None = None) -> None:
    """Window figures of ``step`` from the clients' record."""
    end = until if until is not None else step.end + WINDOW_AFTER_S
    step.tx, step.worst_ms = rec.window(step.start, end, kinds)
    bad = rec.in_window(step.start, end, kinds, ("error", "cut", "connect_fail"))
    step.failed = len(bad)
    step.cut = len({(e[1], e[2]) for e in bad if e[3] == "cut"})
    step.connect_failed = sum(1 for e in bad if e[3] == "connect_fail")
    step.errors = _distinct(bad)


# -- inside the namespace ------------------------------------------------------------------------


def _pebble(unit: Any) -> str:
    report = unit.last_report
    if report is None:
        return "no report"
    signals: dict[str, int] = {}
    for _, sig in report.signalled:
        signals[sig] = signals.get(sig, 0) + 1
    sig_text = ", ".join(f"{s} x{n}" for s, n in signals.items()) or "no signal"
    return (
        f"{sig_text}; restarted {len(report.restarted)}, started {len(report.started)},"
        f" stopped {len(report.stopped)}"
    )


def _login(target: Target, port: int | None = None, timeout: int = 2) -> str:
    import psycopg

    try:
        with psycopg.connect(
            host=target.host,
            port=port or target.port,
            dbname=target.dbname,
            user=target.user,
            password=target.password,
            connect_timeout=timeout,
        ) as conn:
            conn.execute("SELECT 1")
        return "ok"
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return (lines[-1] if lines else type(exc).__name__)[:120]


class _Burst:
    """Fresh clients, each holding a server for a moment, released together on :meth:`go`."""

    def __init__(self, target: Target, clients: int):
        self.target = target
        self.release = threading.Event()
        self.outcomes: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._one, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _one(self) -> None:
        import psycopg

        self.release.wait()
        try:
            with (
                psycopg.connect(
                    host=self.target.host,
                    port=self.target.port,
                    dbname=self.target.dbname,
                    user=self.target.user,
                    password=self.target.password,
                    connect_timeout=10,
                    prepare_threshold=None,
                ) as conn,
                conn.transaction(),
            ):
                conn.execute("SELECT pg_catalog.pg_sleep(%s)", (BURST_HOLD_S,))
            outcome = "ok"
        except psycopg.Error as exc:
            lines = str(exc).strip().splitlines()
            outcome = (lines[-1] if lines else type(exc).__name__)[:100]
        with self._lock:
            self.outcomes.append(outcome)

    def join(self) -> str:
        """Wait for every burst client; ``ok/total`` and the first distinct errors."""
        for thread in self.threads:
            thread.join(timeout=60)
        ok = self.outcomes.count("ok")
        errors = sorted({o for o in self.outcomes if o != "ok"})
        text = f"{ok}/{len(self.threads)} ok"
        return text + (f" ({'; '.join(errors[:2])})" if errors else "")


class Bench:
    """The single-unit deployment rows 1 to 6 run against, and the servers behind it."""

    def __init__(self, settings: Settings, work: Path):
        self.settings = settings
        self.work = work
        self.servers: list[Any] = []
        self.apps: list[Any] = []
        self.result = ChangesResult()
        self.windows: list[tuple[float, float]] = []
        self.baseline_kinds = ("txn",)
        self.records: list[Record] = []

    def setup(self) -> None:
        """Deploy the charm, relate it to PostgreSQL and to one client, make a second server."""
        from charm import PgBouncerK8sCharm
        from harness.juju import Application
        from harness.postgresql_charm import FakePostgresqlCharm
        from harness.servers.pg import start_postgres
        from harness.servers.system import free_port, service_tempdir
        from harness.story import Deployment

        primary = start_postgres(settings={"max_connections": "150"}, prefix="pgbk8s-bench-ch-")
        self.servers.append(primary)
        self.port = free_port()
        app = Application(
            PgBouncerK8sCharm,
            num_units=1,
            config={"listen_port": self.port, "pool_mode": "transaction"},
        )
        self.apps.append(app)
        unit = app.leader
        cgroup = service_tempdir("pgbk8s-bench-cgroup-")
        self.cgroup = cgroup
        limit_cpus(unit, cgroup, 2)
        self.app, self.unit = app, unit
        self.dep = Deployment(app, FakePostgresqlCharm(primary))
        self.dep.deploy()
        self.dep.relate_backend("plain")
        self.client = self.dep.relate_client("bench-client", "benchdb")
        creds = self.dep.credentials(self.client)
        self.target = Target(
            "charm", "127.0.0.1", self.port, "benchdb", creds.username, creds.password
        )
        self.result.processes = len(
            [s for s in unit.state.get_container("pgbouncer").plan.services if s]
        )
        print(f"  charm: {unit.state.unit_status}, {self.result.processes} processes", flush=True)
        direct = dataclasses.replace(self.target, host=primary.host, port=primary.port)
        pgbench_init(direct, 1)
        primary.execute("CHECKPOINT")
        self.current = primary
        self.spare = promoted_copy(primary)
        self.servers.append(self.spare)

    def close(self) -> None:
        """Stop every application's processes and every server."""
        for app in self.apps:
            app.close()
        for server in self.servers:
            server.destroy()
        if getattr(self, "cgroup", None) is not None:
            subprocess.run(["rm", "-rf", str(self.cgroup)], check=False)

    def load(self, workers: dict[str, int], name: str) -> Load:
        """Start the clients' process against the charm's PgBouncer."""
        return Load(self.target, workers, self.work, name)

    def timed(self, step: Step, action: Callable[[], object]) -> None:
        """Run one charm action, noting its start, end, wall time and Pebble calls."""
        step.start = time.time()
        action()
        step.end = time.time()
        step.hook_ms = (step.end - step.start) * 1000
        step.pebble = _pebble(self.unit)

    def keep(self, rec: Record, steps: list[Step]) -> None:
        """Record the steps and the windows they cover."""
        self.records.append(rec)
        for step in steps:
            self.result.steps.append(step)
            self.windows.append((step.start, step.end + WINDOW_AFTER_S))
            print(
                f"  {step.row} #{step.rep} {step.detail}: hook {step.hook_ms:.0f} ms,"
                f" {step.tx} tx, {step.failed} failed, worst {step.worst_ms:.0f} ms,"
                f" cut {step.cut}, served {step.served_ms}, {step.burst} {step.check}"
                f" {step.errors}",
                flush=True,
            )

    # -- row 1 ---------------------------------------------------------------------------------

    def switchovers(self, reps: int) -> None:
        """Warm and cold switchovers between the two servers, alternately."""
        load = self.load({"txn": 8, "connector": 1}, "switch")
        steps: list[Step] = []
        try:
            time.sleep(3)
            for rep in range(1, reps + 1):
                for cold in (False, True):
                    step = Step("switchover", rep, "cold pools" if cold else "warm pools")
                    new, old = self.spare, self.current
                    burst = _Burst(self.target, BURST_CLIENTS) if cold else None
                    runner = self.unit.runner
                    if burst is not None and runner is not None:
                        original = runner.apply

                        def apply_after_burst(*args: Any, _orig=original, _b=burst, **kw: Any):
                            _b.release.set()
                            return _orig(*args, **kw)

                        vars(runner)["apply"] = apply_after_burst
                    marks = self._pause_marks()
                    try:
                        self.timed(step, lambda new=new: self.dep.fail_over(new))
                    finally:
                        if runner is not None:
                            vars(runner).pop("apply", None)
                    if burst is not None:
                        step.burst = burst.join()
                    time.sleep(WINDOW_AFTER_S)
                    step.check = (
                        f"backends new/old: {_count_backends(new, 'benchdb')}/"
                        f"{_count_backends(old, 'benchdb')}"
                        f"; 'pause mode' closes in PgBouncer's log: {self._pause_marks() - marks}"
                    )
                    self.current, self.spare = new, old
                    steps.append(step)
                    time.sleep(1.5)
        finally:
            rec = load.stop()
        for step in steps:
            _fill(step, rec, ("txn", "connector"))
        self.keep(rec, steps)

    def _pause_marks(self) -> int:
        runner = self.unit.runner
        if runner is None:
            return 0
        return sum(runner.logs(name).count("pause mode") for name in runner.processes)

    # -- row 2 ---------------------------------------------------------------------------------

    def failovers(self, reps: int) -> None:
        """Kill the primary, publish a copy made just before as the new one."""
        steps: list[Step] = []
        for rep in range(1, reps + 1):
            copy = promoted_copy(self.current)
            self.servers.append(copy)
            load = self.load({"txn": 8, "connector": 1}, f"failover{rep}")
            step = Step("unplanned failover", rep, "kill -m immediate, copy promoted")
            try:
                time.sleep(3)
                old = self.current
                kill = time.time()
                old.stop("immediate")
                step.check = f"kill took {(time.time() - kill) * 1000:.0f} ms"
                self.timed(step, lambda copy=copy: self.dep.fail_over(copy))
                step.start = kill
                deadline = time.time() + 30
                while time.time() < deadline and _login(self.target) != "ok":
                    time.sleep(0.05)
                time.sleep(WINDOW_AFTER_S)
            finally:
                rec = load.stop()
            recovered = [
                e[0] for e in rec.events if e[0] >= kill and e[3] == "recovered" and e[1] == "txn"
            ]
            firsts = [
                key * 0.1
                for key, (n, _) in rec.buckets.get("txn", {}).items()
                if n and key * 0.1 >= step.end
            ]
            first_ok = min(recovered + firsts, default=None)
            step.served_ms = (first_ok - kill) * 1000 if first_ok is not None else None
            until = first_ok if first_ok is not None else step.end + WINDOW_AFTER_S
            _fill(step, rec, ("txn", "connector"), until=until + 0.001)
            step.check += (
                f"; hook began {(step.end - kill) * 1000 - step.hook_ms:.0f} ms after the kill"
            )
            self.current = copy
            steps.append(step)
            self.keep(rec, [step])

    # -- rows 5 and 6 (pgbench beside the clients) ------------------------------------------

    def _pgbench(self, seconds: int, clients: int, prefix: str) -> tuple[threading.Thread, dict]:
        holder: dict[str, PgbenchResult] = {}
        args = [
            "-n",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "--failures-detailed",
            "--log",
            "--aggregate-interval=1",
            f"--log-prefix={prefix}",
        ]
        target = self.target
        thread = threading.Thread(
            target=lambda: holder.setdefault(
                "r",
                run_pgbench(target, args, self.work, timeout=seconds + 120, name=f"{prefix}-run"),
            ),
            daemon=True,
        )
        thread.start()
        return thread, holder

    def _pgbench_window(self, step: Step, prefix: str, until: float) -> None:
        from bench.reconfig import _aggregate

        per_second = _aggregate(self.work, prefix)
        seconds = [s for s in per_second if s + 1 > step.start and s < until]
        step.pgbench_tx = int(sum(per_second[s][0] for s in seconds))
        step.pgbench_failed = int(sum(per_second[s][3] for s in seconds))

    def pool_modes(self, rounds: int, step_s: float) -> None:
        """Transaction -> session -> transaction, ``rounds`` times, each step ``step_s`` long."""
        total = int(rounds * 2 * step_s + 8)
        thread, holder = self._pgbench(total, 10, "pm")
        load = self.load({"txn": 4, "prepared": 8, "recycled": 4}, "poolmode")
        steps: list[Step] = []
        paths: list[str] = []
        try:
            time.sleep(4)
            for rep in range(1, rounds + 1):
                for mode in ("session", "transaction"):
                    prev = "transaction" if mode == "session" else "session"
                    step = Step("pool_mode", rep, f"{prev} -> {mode}")

                    def action(mode=mode) -> None:
                        self.app.set_config(pool_mode=mode)
                        self.unit.config_changed()

                    self.timed(step, action)
                    report = self.unit.last_report
                    paths.append(
                        "same-port hand-over"
                        if report is not None and report.started
                        else "in place under PAUSE (the other slot still drains)"
                    )
                    time.sleep(max(step_s - (time.time() - step.start), WINDOW_AFTER_S))
                    steps.append(step)
        finally:
            rec = load.stop()
            thread.join(timeout=total + 180)
        bench = holder.get("r")
        for i, step in enumerate(steps):
            until = steps[i + 1].start if i + 1 < len(steps) else step.start + step_s
            _fill(step, rec, ("prepared", "recycled"), until=until)
            txn_bad = rec.in_window(step.start, until, ("txn",), ("error", "cut", "connect_fail"))
            recycled_bad = rec.in_window(
                step.start, until, ("recycled",), ("error", "cut", "connect_fail")
            )
            self._pgbench_window(step, "pm", until)
            step.check = (
                f"{paths[i]}; prepared-statement clients (persistent and reconnecting every"
                f" 2 s): {step.failed} failed, {step.cut} cut, of which reconnecting:"
                f" {len(recycled_bad)}; unnamed-statement clients: {len(txn_bad)} failed"
            )
            step.end = until - WINDOW_AFTER_S
        if bench is not None:
            self.result.notes.append(
                f"pool_mode run: pgbench {bench.processed} transactions, {bench.failed} failed,"
                f" {bench.aborted_clients} clients aborted"
                + (f" ({'; '.join(bench.errors[:2])})" if bench.errors else "")
            )
        self.keep(rec, steps)

    def caps(self, reps: int) -> None:
        """``max_db_connections`` 100 -> 10 under pgbench (20 clients), ``reps`` times."""
        total = int(reps * 16 + 10)
        thread, holder = self._pgbench(total, 20, "cap")
        load = self.load({"txn": 4}, "cap")
        steps: list[Step] = []
        try:
            time.sleep(5)
            for rep in range(1, reps + 1):
                before = _count_backends(self.current, "benchdb")
                step = Step("max_db_connections", rep, "100 -> 10")

                def lower() -> None:
                    self.app.set_config(max_db_connections=10)
                    self.unit.config_changed()

                done = threading.Event()
                seen: list[tuple[float, int]] = []

                def poll(done=done, seen=seen) -> None:
                    while not done.is_set():
                        seen.append((time.time(), _count_backends(self.current, "benchdb")))
                        time.sleep(0.05)

                poller = threading.Thread(target=poll, daemon=True)
                poller.start()
                self.timed(step, lower)
                time.sleep(CAP_WAIT_S)
                done.set()
                poller.join(timeout=10)
                under = [t for t, n in seen if t >= step.start and n <= 10]
                after = [n for t, n in seen if t >= step.end]
                within = bool(under) and under[0] <= step.end + CAP_WAIT_S
                if under:
                    step.served_ms = (under[0] - step.start) * 1000
                step.check = (
                    f"server connections {before} before; <= 10 within {CAP_WAIT_S:.0f} s of the"
                    f" hook's end: {'yes' if within else 'NO'}"
                    f"; at the end {after[-1] if after else 'n/a'}, most after the hook"
                    f" {max(after, default=0)}"
                )
                steps.append(step)
                if rep < reps:
                    self.app.set_config(max_db_connections=100)
                    self.unit.config_changed()
                    time.sleep(6)
        finally:
            rec = load.stop()
            thread.join(timeout=total + 180)
        for step in steps:
            _fill(step, rec, ("txn",))
            self._pgbench_window(step, "cap", step.end + WINDOW_AFTER_S)
        bench = holder.get("r")
        if bench is not None:
            self.result.notes.append(
                f"max_db_connections run: pgbench {bench.processed} transactions,"
                f" {bench.failed} failed, {bench.aborted_clients} clients aborted"
            )
        self.app.set_config(max_db_connections=100)
        self.unit.config_changed()
        self.keep(rec, steps)


def child_main(out_path: Path) -> None:
    """Every row, in an order that needs no server back: switchovers, then the kill."""
    settings = load()
    from harness.servers.system import service_tempdir

    t0 = time.monotonic()
    work = Path(service_tempdir("pgbk8s-bench-ch-"))
    bench = Bench(settings, work)
    quick = settings.quick
    rows = os.environ.get("BENCH_CHANGES_ROWS", "1,2,5,6").split(",")
    try:
        bench.setup()
        if "1" in rows:
            print("  row 1: switchover", flush=True)
            bench.switchovers(1 if quick else 2)
        if "5" in rows:
            print("  row 5: pool_mode", flush=True)
            bench.pool_modes(1 if quick else 2, 4.0 if quick else 6.0)
        if "6" in rows:
            print("  row 6: max_db_connections", flush=True)
            bench.caps(1 if quick else 2)
        if "2" in rows:
            print("  row 2: unplanned failover", flush=True)
            bench.failovers(1 if quick else 2)
        bench.result.baseline_worst_ms = max(
            (r.worst_outside(bench.windows, ("txn",)) for r in bench.records), default=0.0
        )
        bench.result.seconds = time.monotonic() - t0
        out_path.write_text(json.dumps(dataclasses.asdict(bench.result)))
    finally:
        bench.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)


# -- report ----------------------------------------------------------------------------------------


def _span(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:,.{digits}f}" if lo == hi else f"{lo:,.{digits}f}-{hi:,.{digits}f}"


def target_rows(res: ChangesResult) -> list[tuple[str, str, bool | None]]:
    """Issue 16's targets beside this run's figures: ``(target, figure, met)``."""
    rows: list[tuple[str, str, bool | None]] = []

    def failed(row: str, detail: str | None = None) -> list[int]:
        return [
            s.failed for s in res.steps if s.row == row and (detail is None or s.detail == detail)
        ]

    for detail in ("warm pools", "cold pools"):
        values = failed("switchover", detail)
        if values:
            bursts = [s.burst for s in res.steps if s.detail == detail and s.burst]
            text = f"{sum(values)} in {len(values)} switchovers" + (
                f"; burst clients {', '.join(bursts)}" if bursts else ""
            )
            burst_ok = all(
                b.split()[0].split("/")[0] == b.split()[0].split("/")[1] for b in bursts
            )
            rows.append(
                (
                    f"switchover, {detail}: 0 client errors",
                    text,
                    sum(values) == 0 and burst_ok,
                )
            )
    caps = [s for s in res.steps if s.row == "max_db_connections"]
    if caps:
        ok = all("yes" in s.check.split(";")[1] for s in caps)
        served = [s.served_ms for s in caps if s.served_ms is not None]
        rows.append(
            (
                "max_db_connections 100 -> 10: 0 errors, servers <= 10 within 5 s",
                f"{sum(s.failed for s in caps)} errors; <= 10 after {_span(served)} ms from the"
                " hook's start",
                ok and sum(s.failed for s in caps) == 0,
            )
        )
    modes = [s for s in res.steps if s.row == "pool_mode"]
    if modes:
        rows.append(
            (
                "pool_mode change: 0 errors for psycopg's default prepared statements",
                f"{_span([s.failed for s in modes])} failed per step; same-port hand-overs in"
                f" {sum('hand-over' in s.check for s in modes)} of {len(modes)} steps"
                + ("" if all(s.failed == 0 for s in modes) else " (docs/workload.md)"),
                all(s.failed == 0 for s in modes),
            )
        )
    kills = [s for s in res.steps if s.row == "unplanned failover"]
    if kills:
        served = [s.served_ms for s in kills if s.served_ms is not None]
        rows.append(
            (
                "unplanned failover (reported, no target)",
                f"{_span([s.failed for s in kills])} errors, first success after"
                f" {_span(served)} ms",
                None,
            )
        )
    return rows


def section(res: ChangesResult) -> list[str]:
    """Markdown of part 6."""
    lines = [
        "## 6. Planned changes through the charm, under load",
        "",
        "Charm-driven (ops.testing + harness, Pebble calls replayed on real PgBouncer 1.24"
        f" processes, {res.processes} of them), PostgreSQL 15, private network namespace."
        " Clients: `bench/clients.py`, a process of its own: `txn` = 8 persistent psycopg"
        " connections looping a two-statement transaction (unnamed statements), reconnecting"
        " to the published port when cut; `connector` = a new connection per query to the"
        " published port; `prepared` = psycopg's defaults (`prepare_threshold` 5). A window runs"
        f" from the hook's start to {WINDOW_AFTER_S:.0f} s after its end (failover: from the kill"
        " to the first successful transaction). **failed** = every failed query, cut connection"
        f" and failed connect in the window. Worst latency outside every window:"
        f" {res.baseline_worst_ms:.0f} ms. Run {res.seconds:.0f} s.",
        "",
        "| row | # | change | hook (ms) | Pebble | client tx in window | failed | cut | failed"
        " connects | worst latency (ms) | served after (ms) | pgbench tx / failed | check |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in res.steps:
        served = "-" if s.served_ms is None else f"{s.served_ms:.0f}"
        bench = f"{s.pgbench_tx} / {s.pgbench_failed}" if s.pgbench_tx else "-"
        check = "; ".join(x for x in (s.burst and f"burst {s.burst}", s.check) if x)
        if s.errors:
            check += "; errors: " + "; ".join(s.errors)
        lines.append(
            f"| {s.row} | {s.rep} | {s.detail} | {s.hook_ms:.0f} | {s.pebble} | {s.tx} |"
            f" {s.failed} | {s.cut} | {s.connect_failed} | {s.worst_ms:.0f} | {served} |"
            f" {bench} | {check.replace('|', '/')} |"
        )
    lines += [
        "",
        "Ranges over the repetitions (min-max):",
        "",
        "| row | reps | hook (ms) | failed | cut | failed connects | worst latency (ms) |"
        " served after (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[str, list[Step]] = {}
    for s in res.steps:
        key = s.row + (f" ({s.detail})" if s.row in ("switchover", "pool_mode") else "")
        groups.setdefault(key, []).append(s)
    for key, group in groups.items():
        served = [s.served_ms for s in group if s.served_ms is not None]
        lines.append(
            f"| {key} | {len(group)} | {_span([s.hook_ms for s in group])} |"
            f" {_span([s.failed for s in group])} | {_span([s.cut for s in group])} |"
            f" {_span([s.connect_failed for s in group])} | {_span([s.worst_ms for s in group])} |"
            f" {_span(served)} |"
        )
    if res.notes:
        lines += ["", *[f"- {n}" for n in res.notes]]
    return lines


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydantic\..*")
    child_main(Path(sys.argv[1]))
