"""Client load of its own process for part 6 (planned changes): what clients of the pooler see.

``python -m bench.clients OUT`` reads one JSON line on stdin (host, database, user, password,
the file holding the port to connect to, how many workers of each kind), starts the workers,
and runs until stdin closes; then it writes what it saw to ``OUT`` as JSON. The password
travels on stdin only. Running the clients in a process of their own keeps the charm's hooks
(which run under ``ops.testing`` in the measuring process and hold its interpreter lock for
whole seconds) out of the clients' latencies.

Worker kinds:

- ``txn``: a persistent connection (``prepare_threshold=None``) running a two-statement
  transaction in a loop; when the connection drops it is counted as cut and the worker
  reconnects to the port in the port file, every 50 ms until it succeeds. When the port file
  names another port (the charm published new endpoints), the worker moves there between two
  transactions, as an application told of new endpoints does: counted as ``moved``, not cut;
- ``prepared``: the same loop with psycopg's default automatic prepared statements
  (``prepare_threshold`` 5, a parametrised query): what most psycopg applications do;
- ``recycled``: a ``prepared`` worker whose connection is closed and opened again every
  :data:`RECYCLE_S` (counted as ``recycled``), as a client pool with a maximum connection
  lifetime does (scaled down: HikariCP's default is 30 min, psycopg_pool's 1 h);
- ``connector``: a new connection to the port in the port file for each query, closed after it.

Successes are counted per 100 ms bucket (count, worst latency); every failure, cut, failed
connect and a worker's first success after a failure is kept as an event with its epoch time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

BUCKET_S = 0.1
RETRY_S = 0.05
MOVE_CHECK_S = 0.1
"""How often a persistent worker looks for newly published endpoints."""
RECYCLE_S = 2.0
"""Connection lifetime of a ``recycled`` worker."""
PREPARING = ("prepared", "recycled")


class Recorder:
    """What all workers saw; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.buckets: dict[str, dict[int, list[float]]] = {}
        self.events: list[tuple[float, str, int, str, str]] = []

    def ok(self, kind: str, started: float, seconds: float) -> None:
        """A successful transaction (or connection and query) that started at ``started``."""
        key = int(started / BUCKET_S)
        with self._lock:
            row = self.buckets.setdefault(kind, {}).setdefault(key, [0, 0.0])
            row[0] += 1
            row[1] = max(row[1], seconds * 1000)

    def event(self, kind: str, worker: int, what: str, text: str = "") -> None:
        """A failure, a cut, a failed connect or a recovery, at the current time."""
        with self._lock:
            self.events.append((time.time(), kind, worker, what, text[:160]))


def _message(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


class Worker(threading.Thread):
    """One client of the given kind."""

    def __init__(self, kind: str, index: int, cfg: dict[str, Any], rec: Recorder, stop):
        super().__init__(daemon=True)
        self.kind, self.index, self.cfg, self.rec, self.stop = kind, index, cfg, rec, stop

    def _port(self) -> int:
        return int(Path(self.cfg["port_file"]).read_text().strip())

    def _connect(self) -> psycopg.Connection:
        kwargs: dict[str, Any] = {}
        if self.kind not in PREPARING:
            kwargs["prepare_threshold"] = None
        return psycopg.connect(
            host=self.cfg["host"],
            port=self._port(),
            dbname=self.cfg["dbname"],
            user=self.cfg["user"],
            password=self.cfg["password"],
            connect_timeout=5,
            **kwargs,
        )

    def run(self) -> None:
        """Loop until told to stop."""
        if self.kind == "connector":
            self._run_connector()
        else:
            self._run_persistent()

    def _run_connector(self) -> None:
        failing = False
        while not self.stop.is_set():
            started = time.time()
            try:
                with self._connect() as conn:
                    conn.execute("SELECT 1")
                self.rec.ok(self.kind, started, time.time() - started)
                if failing:
                    self.rec.event(self.kind, self.index, "recovered")
                failing = False
            except psycopg.Error as exc:
                self.rec.event(self.kind, self.index, "connect_fail", _message(exc))
                failing = True
            self.stop.wait(RETRY_S)

    def _run_persistent(self) -> None:
        conn: psycopg.Connection | None = None
        failing = False
        n = 0
        port, checked, opened = 0, 0.0, 0.0
        while not self.stop.is_set():
            if (
                self.kind == "recycled"
                and conn is not None
                and not conn.closed
                and time.time() - opened > RECYCLE_S
            ):
                conn.close()
                self.rec.event(self.kind, self.index, "recycled")
            if conn is not None and not conn.closed and time.time() - checked > MOVE_CHECK_S:
                checked = time.time()
                if self._port() != port:  # new endpoints published: move between transactions
                    conn.close()
                    self.rec.event(self.kind, self.index, "moved")
            if conn is None or conn.closed:
                port = self._port()
                try:
                    conn = self._connect()
                    opened = time.time()
                except psycopg.Error as exc:
                    self.rec.event(self.kind, self.index, "connect_fail", _message(exc))
                    failing = True
                    self.stop.wait(RETRY_S)
                    continue
            started = time.time()
            n += 1
            try:
                if self.kind in PREPARING:
                    conn.execute("SELECT %s::int + 1", (n % 100,)).fetchone()
                    conn.commit()
                else:
                    with conn.transaction():
                        conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()
                        conn.execute("SELECT 1").fetchone()
                self.rec.ok(self.kind, started, time.time() - started)
                if failing:
                    self.rec.event(self.kind, self.index, "recovered")
                failing = False
            except psycopg.Error as exc:
                failing = True
                if conn.closed or conn.broken:
                    self.rec.event(self.kind, self.index, "cut", _message(exc))
                    conn = None
                else:
                    self.rec.event(self.kind, self.index, "error", _message(exc))
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
                        conn = None
        if conn is not None:
            conn.close()


def main(out: Path) -> None:
    """Read the configuration, run the workers until stdin closes, write the record."""
    cfg = json.loads(sys.stdin.readline())
    rec = Recorder()
    stop = threading.Event()
    workers = [
        Worker(kind, i, cfg, rec, stop)
        for kind, count in cfg["workers"].items()
        for i in range(int(count))
    ]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    for worker in workers:
        worker.join(timeout=15)
    data = {
        "buckets": {k: {str(b): v for b, v in rows.items()} for k, rows in rec.buckets.items()},
        "events": rec.events,
    }
    out.write_text(json.dumps(data))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
