"""Part 2: 300 and 1,000 concurrent clients against PostgreSQL with ``max_connections = 50``.

Direct, PostgreSQL refuses every client past its free slots. Pooled (our rendered configuration,
transaction pool, ``max_db_connections = 40`` for the unit, two processes), every client gets a
connection and PgBouncer multiplexes them on at most 40 server connections; the peak number of
server connections to the benchmark database is sampled during the run as evidence.

Two tools: pgbench (throughput, but it aborts the whole run at the first refused client) and
:mod:`bench.loadgen` (counts each client's fate).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.loadgen import LoadResult, run_load
from bench.pgbench import PgbenchResult, Target, run_pgbench
from bench.settings import Settings
from bench.stack import APP_DB, Backend, Stack, pooler_config
from harness.servers.system import free_port


@dataclass
class ScaleRow:
    """One (clients, target) measurement.

    Attributes:
        clients: concurrent clients.
        target: ``direct`` or the pooler's label.
        pgbench: the pgbench run.
        load: the load generator run.
        peak_server_connections: most backends connected to the benchmark database at once.
    """

    clients: int
    target: str
    pgbench: PgbenchResult
    load: LoadResult
    peak_server_connections: int


class _BackendSampler:
    """Samples the number of client backends on the benchmark database in a thread."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            with psycopg.connect(self._backend.server.conninfo(), autocommit=True) as conn:
                for _ in range(2000):  # bounded: 0.25 s x 2000 = 500 s at most
                    if self._stop.wait(0.25):
                        return
                    row = conn.execute(
                        "SELECT count(*) FROM pg_catalog.pg_stat_activity"
                        " WHERE datname = %s AND backend_type = 'client backend'",
                        (APP_DB,),
                    ).fetchone()
                    self.peak = max(self.peak, int(row[0]) if row else 0)
        except psycopg.Error:
            return

    def __enter__(self) -> _BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run(settings: Settings, backend: Backend, stack: Stack, workdir: Path) -> list[ScaleRow]:
    """Measure every client count against ``backend`` directly and through a fresh pooler.

    The pooler is started for each pooled run and stopped after it, so that its idle server
    connections never take slots away from the direct runs. The matrix runs ``settings.rounds``
    times, order reversed every other round; one row per run.
    """
    rows: list[ScaleRow] = []
    accounts = 100_000 * settings.scale
    cells = [(c, pooled) for c in settings.scale_clients for pooled in (False, True)]
    for rnd in range(settings.rounds):
        for clients, pooled in cells if rnd % 2 == 0 else list(reversed(cells)):
            pooler = (
                stack.pooler("N=2", pooler_config(backend, free_port(), 2), backend)
                if pooled
                else None
            )
            target = pooler.target() if pooler else backend.direct()
            try:
                row = _measure(settings, backend, target, clients, accounts, workdir)
            finally:
                if pooler:
                    stack.stop_pooler(pooler)
            rows.append(row)
    return rows


def _measure(
    settings: Settings,
    backend: Backend,
    target: Target,
    clients: int,
    accounts: int,
    workdir: Path,
) -> ScaleRow:
    with _BackendSampler(backend) as sampler:
        bench = run_pgbench(
            target,
            [
                "-S",
                "-n",
                "-c",
                str(clients),
                "-j",
                str(settings.threads),
                "-T",
                # pgbench's clock includes its connection phase (about 6 ms per
                # SCRAM login here): give the large runs that time on top.
                str(settings.scale_seconds + clients // 150),
            ],
            workdir,
            timeout=settings.scale_seconds + 180,
            name=f"scale-{clients}-{target.label}",
        )
        load = run_load(target, clients, settings.scale_seconds / 2, accounts)
    row = ScaleRow(clients, target.label, bench, load, sampler.peak)
    print(
        f"  {clients:5d} clients {target.label:6s} pgbench: tps {bench.tps:9.1f}"
        f" exit {bench.returncode} aborted {bench.aborted_clients}"
        f" {'error: ' + bench.errors[0] if bench.errors else ''}\n"
        f"{'':22s}loadgen: connected {load.connected} refused {load.refused}"
        f" failed {load.failed} qps {load.qps:8.1f};"
        f" peak server connections {sampler.peak}",
        flush=True,
    )
    return row
