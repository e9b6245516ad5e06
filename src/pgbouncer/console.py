"""Reading every PgBouncer process of the unit through its admin console, as the stats user.

The charm container shares the pod's network with the workload container, not its files, so
the processes' unix sockets (which the exporter uses) are out of its reach; their shared TCP
port is not. With ``so_reuseport`` the kernel hands each new connection to one of the
processes listening on the port, chosen by a hash of the connection's addresses, so one
connection reaches one process and a few more reach the others. :func:`read_processes` connects
until it has seen each serving process (told apart by ``peer_id`` in ``SHOW CONFIG``), within
a bounded number of attempts and a time bound, and reads ``SHOW STATE`` and ``SHOW POOLS`` on
each. A process that stopped accepting (one draining after a same-port hand-over) is not
reached: it is not serving.

The stats user may run ``SHOW`` commands only (``stats_users``); its password is passed to
libpq in memory, never on a command line, and no error text here holds it.

The parsing and the sums are pure (:func:`pool_rows`, :func:`sum_pools`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pgbouncer.exporter import ADMIN_DATABASE, STATS_USER
from pgbouncer.slots import MAX_PROCESSES, parse_service, service_name
from socket_watchdog import SocketWatchdog

CONNECT_TIMEOUT_S = 3
"""libpq's connect timeout for one console connection."""

READ_BUDGET_S = 15.0
"""No reading of the consoles lasts longer than this (every attempt included)."""

PAUSE_WAIT_S = 10.0
"""How long ``PAUSE <db>`` may wait for the database's transactions on one process."""

T = TypeVar("T")

ATTEMPTS_PER_PROCESS = 12
"""Connections tried per expected process before giving up on seeing them all. With 4
processes and the kernel's hash spreading connections evenly, 48 attempts miss a given process
with probability (3/4)^48, about 1e-6."""

COUNT_COLUMNS = (
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
)
"""``SHOW POOLS`` columns that are counts, so that they add up across processes."""


class ConsoleError(Exception):
    """No process's console could be read (the message names why, never the password)."""


@dataclass(frozen=True)
class ProcessPools:
    """What one process said: who it is, whether it is paused, and its pools."""

    peer_id: int
    service: str
    state: dict[str, str]
    pools: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For JSON (the action's results)."""
        return {
            "service": self.service,
            "peer_id": self.peer_id,
            "state": self.state,
            "pools": self.pools,
        }


def service_of_peer(peer: int) -> str:
    """The Pebble service whose ini carries ``peer_id = peer`` (``config.peer_id`` inverted)."""
    if peer < 1:
        raise ValueError(f"peer_id {peer} names no process")
    index, slot = (peer - 1) % MAX_PROCESSES, (peer - 1) // MAX_PROCESSES
    return service_name(index, slot)


def _peer_of_service(service: str) -> int:
    """:func:`service_of_peer` inverted."""
    parsed = parse_service(service)
    if parsed is None:
        raise ValueError(f"{service} is no PgBouncer service")
    index, slot = parsed
    return slot * MAX_PROCESSES + index + 1


def pool_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``SHOW POOLS`` rows as dicts, the admin console's own pool left out."""
    pools = []
    for row in rows:
        pool = dict(zip(columns, row, strict=False))
        if pool.get("database") == ADMIN_DATABASE:
            continue
        pools.append({k: (int(v) if k in COUNT_COLUMNS else v) for k, v in pool.items()})
    return sorted(pools, key=lambda p: (str(p.get("database")), str(p.get("user"))))


def sum_pools(processes: Iterable[ProcessPools]) -> list[dict[str, Any]]:
    """The pools of the unit: each (database, user) with its counts summed over processes.

    ``maxwait`` (seconds the oldest client has waited) is the largest, not a sum;
    ``pool_mode`` is the mode the processes agree on, ``mixed`` when they do not.
    """
    total: dict[tuple[str, str], dict[str, Any]] = {}
    for process in processes:
        for pool in process.pools:
            key = (str(pool.get("database")), str(pool.get("user")))
            into = total.setdefault(
                key, {"database": key[0], "user": key[1], "processes": 0, "maxwait": 0}
            )
            into["processes"] += 1
            for column in COUNT_COLUMNS:
                if column in pool:
                    into[column] = into.get(column, 0) + pool[column]
            into["maxwait"] = max(into["maxwait"], int(pool.get("maxwait") or 0))
            mode = pool.get("pool_mode")
            if mode is not None:
                into["pool_mode"] = mode if into.get("pool_mode", mode) == mode else "mixed"
    return [total[key] for key in sorted(total)]


def _show(conn: Any, command: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    cur = conn.execute(command)
    columns = [c.name for c in cur.description or []]
    return columns, list(cur.fetchall())


def _read_one(conn: Any, service: str) -> ProcessPools:
    columns, rows = _show(conn, "SHOW STATE")
    state = {str(r[0]): str(r[1]) for r in rows}
    columns, rows = _show(conn, "SHOW POOLS")
    peer = _peer_of_service(service)
    return ProcessPools(peer, service, state, pool_rows(columns, rows))


def _service_of(conn: Any) -> str | None:
    """The Pebble service behind a console connection (``peer_id`` in ``SHOW CONFIG``)."""
    columns, rows = _show(conn, "SHOW CONFIG")
    settings = {str(r[0]): str(r[1]) for r in rows} if columns else {}
    peer = settings.get("peer_id", "0")
    if not peer.isdigit() or int(peer) < 1:
        return None
    return service_of_peer(int(peer))


def _problem(exc: Exception, password: str) -> str:
    """One line saying what went wrong, the password never in it."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = exc.diag.message_primary if sqlstate else None  # type: ignore[attr-defined]
    text = text or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return text.replace(password, "***") if password else text


def on_each_process(
    port: int,
    user: str,
    password: str,
    expected: Iterable[str],
    work: Callable[[Any, str], T],
    *,
    host: str = "127.0.0.1",
    clock: Callable[[], float] = time.monotonic,
    budget: float = READ_BUDGET_S,
    application_name: str = "pgbouncer-k8s-console",
) -> tuple[dict[str, T], list[str]]:
    """Run ``work(connection, service)`` once on each expected process, through the shared port.

    Connects until each expected service has been seen (told apart by ``peer_id``), within
    :data:`ATTEMPTS_PER_PROCESS` attempts per process and ``budget`` seconds in all; every
    connection is cut when the budget ends (:class:`socket_watchdog.SocketWatchdog`), so nothing here waits longer.
    ``work`` raising :class:`psycopg.Error` counts as not done on that process (tried again on
    a later connection that reaches it).

    Returns:
        What ``work`` returned per service, and the expected services it did not run on.

    Raises:
        ConsoleError: not one console answered (the message never holds the password).
    """
    import psycopg

    wanted = set(expected)
    done: dict[str, T] = {}
    if not wanted:
        return done, []
    deadline = clock() + budget
    attempts = max(1, len(wanted)) * ATTEMPTS_PER_PROCESS
    problem: str | None = None
    answered = False
    for _ in range(attempts):
        left = deadline - clock()
        if wanted <= done.keys() or left <= 0:
            break
        try:
            with psycopg.connect(
                host=host,
                port=port,
                user=user,
                password=password,
                dbname=ADMIN_DATABASE,
                connect_timeout=max(1, min(CONNECT_TIMEOUT_S, int(left + 0.999))),
                autocommit=True,
                prepare_threshold=None,
                application_name=application_name,
            ) as conn:
                watchdog = SocketWatchdog(conn, left)
                try:
                    service = _service_of(conn)
                    answered = True
                    if service is None or service in done or service not in wanted:
                        continue
                    done[service] = work(conn, service)
                finally:
                    watchdog.cancel()
        except psycopg.Error as exc:
            problem = _problem(exc, password)
            continue
    if not answered and not done:
        raise ConsoleError(
            f"no PgBouncer console answered on port {port}" + (f": {problem}" if problem else "")
        )
    return done, sorted(wanted - done.keys())


def read_processes(
    port: int,
    password: str,
    expected: Iterable[str],
    *,
    host: str = "127.0.0.1",
    clock: Any = time.monotonic,
    user: str = STATS_USER,
) -> tuple[list[ProcessPools], list[str]]:
    """Read each serving process's state and pools through the shared port.

    Args:
        port: the port the serving processes listen on.
        password: the stats user's password.
        expected: the Pebble services that serve (what to look for).
        host: where the port is reached (the pod's loopback).
        clock: monotonic seconds (tests may replace it).
        user: the stats user (its generation in use, ``rotate-credentials``).

    Returns:
        The processes read (sorted by service), and the expected services not reached.

    Raises:
        ConsoleError: not one console answered.
    """
    seen, missed = on_each_process(
        port,
        user,
        password,
        expected,
        _read_one,
        host=host,
        clock=clock,
        application_name="pgbouncer-k8s-show-pools",
    )
    return [seen[k] for k in sorted(seen)], missed


# -- PAUSE <db> / RESUME <db> (the charm's admin user, relations.admin) ------------------------
PAUSED, PENDING, RESUMED = "paused", "pausing", "resumed"


def paused_databases(conn: Any) -> set[str]:
    """The databases this process says are paused (``SHOW DATABASES``, column ``paused``)."""
    columns, rows = _show(conn, "SHOW DATABASES")
    at, name = columns.index("paused"), columns.index("name")
    return {str(row[name]) for row in rows if str(row[at]) in ("1", "t", "True", "yes")}


def pause_database(conn: Any, database: str, seconds: float = PAUSE_WAIT_S) -> str:
    """``PAUSE <database>`` on one process; :data:`PAUSED`, or :data:`PENDING` when in time.

    PgBouncer marks the database paused at once (new queries wait) and answers once its
    server connections are released, as their transactions end. When that takes longer than
    ``seconds`` the connection is cut: the database stays paused on that process, and its
    last transactions finish on their own (:data:`PENDING`).
    """
    from psycopg import sql

    if database in paused_databases(conn):
        return PAUSED
    watchdog = SocketWatchdog(conn, seconds)
    try:
        conn.execute(sql.SQL("PAUSE {}").format(sql.Identifier(database)))
    except Exception:
        if watchdog.fired:
            return PENDING
        raise
    finally:
        watchdog.cancel()
    return PAUSED


def resume_database(conn: Any, database: str) -> str:
    """``RESUME <database>`` on one process (a database not paused there is left as it is)."""
    from psycopg import sql

    if database in paused_databases(conn):
        conn.execute(sql.SQL("RESUME {}").format(sql.Identifier(database)))
    return RESUMED


def served_databases(conn: Any) -> set[str]:
    """The ``[databases]`` entries this process pools (its console's own left out)."""
    columns, rows = _show(conn, "SHOW DATABASES")
    name = columns.index("name")
    return {str(row[name]) for row in rows} - {ADMIN_DATABASE}


def pools_results(processes: Sequence[ProcessPools], missed: Sequence[str]) -> Mapping[str, str]:
    """The ``show-pools`` action's results (JSON strings, as Juju's results are strings)."""
    import json

    return {
        "processes": json.dumps([p.as_dict() for p in processes], sort_keys=True),
        "total": json.dumps(sum_pools(processes), sort_keys=True),
        "paused": json.dumps(
            sorted(p.service for p in processes if p.state.get("paused") == "yes")
        ),
        "not-reached": json.dumps(list(missed)),
    }
