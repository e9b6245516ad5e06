"""Pausing a unit's PgBouncer for maintenance (the ``pause`` and ``resume`` actions).

The whole unit's PAUSE and RESUME reach each serving process as SIGUSR1 and SIGUSR2 through
Pebble, the way :mod:`pgbouncer.workload` already pauses around a reload: a signal names one
Pebble service, so each process is reached (the shared TCP port reaches whichever the kernel
picks). One database is paused on the consoles instead (``PAUSE <db>``, as the charm's admin
user: :mod:`relations.admin`, :func:`pgbouncer.console.pause_database`); the marker lists it. Under PAUSE, PgBouncer
closes each server connection as its transaction ends and holds every client's next query (and
every new client's login, which needs the auth lookup's server connection) until RESUME: clients
wait, none gets an error (``query_wait_timeout``, 120 s by default, still applies to a query that
waits).

Only serving processes are paused: a process draining after a hand-over (running, but no longer
enabled in the plan) is left alone, since PgBouncer refuses RESUME once it is shutting down and
its clients would wait until it is stopped.

The paused state lives in a file in the container (:data:`PAUSED_FILE`), not in the charm:
every hook reads it, the status shows it, and while it is there the charm applies no change to
the processes (a reload under PAUSE ends with RESUME, and a hand-over would SIGTERM a paused
process) but sends PAUSE again to every serving process, so that a process Pebble restarted
is paused too. A new pod has no such file: it starts serving.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import ops
from ops import pebble

from pgbouncer.plan import RESUME_AFTER_S, WORKLOAD_USER
from pgbouncer.slots import DEFAULT_BASE_DIR, service_index

PAUSED_FILE = str(PurePosixPath(DEFAULT_BASE_DIR) / "paused.json")
"""Present while the unit, or one of its databases, is paused by the ``pause`` action:
``{"since": <unix time>, "unit": <bool>, "databases": [<name>, ...]}`` (a file without
``unit`` means the whole unit, as the first version wrote it)."""

PAUSE_SIGNAL, RESUME_SIGNAL = "SIGUSR1", "SIGUSR2"


@dataclass(frozen=True)
class Processes:
    """The unit's running PgBouncer services: those that serve, those that drain."""

    serving: tuple[str, ...]
    draining: tuple[str, ...]


ACTIVE, ENABLED = pebble.ServiceStatus.ACTIVE, pebble.ServiceStartup.ENABLED


def _value(item: object) -> str:
    """An enum's value or a plain string (the plan holds ``startup`` as either)."""
    return str(getattr(item, "value", item))


def split_processes(plan: pebble.Plan, statuses: Mapping[str, object]) -> Processes:
    """Serving: running PgBouncer services the plan enables; draining: the other running ones."""
    serving, draining = [], []
    for name in sorted(statuses):
        if service_index(name) is None or _value(statuses[name]) != _value(ACTIVE):
            continue
        service = plan.services.get(name)
        enabled = service is not None and _value(service.startup) == _value(ENABLED)
        (serving if enabled else draining).append(name)
    return Processes(tuple(serving), tuple(draining))


def running_processes(container: ops.Container) -> Processes:
    """:func:`split_processes` of what Pebble says now (two calls)."""
    plan = container.get_plan()
    statuses = {name: info.current for name, info in container.get_services().items()}
    return split_processes(plan, statuses)


@dataclass(frozen=True)
class PauseMarker:
    """What ``paused.json`` says: since when, the whole unit or not, which databases."""

    since: float
    unit: bool = True
    databases: tuple[str, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> PauseMarker:
        """The marker in ``text``; a damaged file means the whole unit (only resume ends it)."""
        try:
            raw = json.loads(text)
            since = float(raw.get("since", 0.0))
            names = raw.get("databases", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("databases")
            return cls(since, bool(raw.get("unit", True)), tuple(sorted(set(names))))
        except (ValueError, AttributeError, TypeError):
            return cls(0.0)

    def to_text(self) -> str:
        """As written to ``paused.json``."""
        return json.dumps(
            {"since": self.since, "unit": self.unit, "databases": list(self.databases)}
        )

    @property
    def empty(self) -> bool:
        """Nothing is paused any more: the file goes."""
        return not self.unit and not self.databases


def marker_in(files: Mapping[str, str]) -> PauseMarker | None:
    """The pause marker in the container's files as read (None: nothing paused)."""
    text = files.get(PAUSED_FILE)
    return None if text is None else PauseMarker.from_text(text)


def read_marker(container: ops.Container) -> PauseMarker | None:
    """The pause marker in the container now (one or two Pebble calls)."""
    if not container.exists(PAUSED_FILE):
        return None
    try:
        return PauseMarker.from_text(container.pull(PAUSED_FILE).read())
    except pebble.PathError:
        return PauseMarker(0.0)


def write_marker(container: ops.Container, marker: PauseMarker) -> None:
    """Write ``marker`` (0600, the workload user), or remove the file when it is empty."""
    if marker.empty:
        if container.exists(PAUSED_FILE):
            container.remove_path(PAUSED_FILE)
        return
    container.push(
        PAUSED_FILE,
        marker.to_text(),
        make_dirs=True,
        permissions=0o600,
        user=WORKLOAD_USER,
        group=WORKLOAD_USER,
    )


def paused_since_in(files: Mapping[str, str]) -> float | None:
    """When the unit was paused, from the container's files as read (None: not paused)."""
    text = files.get(PAUSED_FILE)
    if text is None:
        return None
    try:
        return float(json.loads(text).get("since", 0.0))
    except (ValueError, AttributeError, TypeError):
        return 0.0  # a damaged file still means paused: only resume removes it


def pause(container: ops.Container, now: float) -> Processes:
    """Record the pause, then PAUSE every serving process; returns who was (and was not)."""
    processes = running_processes(container)
    marker = read_marker(container)
    if marker is None or not marker.unit:
        # A database paused before stays listed: a whole-unit resume releases it too.
        databases = marker.databases if marker is not None else ()
        write_marker(container, PauseMarker(now, True, databases))
    if processes.serving:
        container.send_signal(PAUSE_SIGNAL, *processes.serving)
    return processes


def hold(
    container: ops.Container,
    marker: PauseMarker | None = None,
    hold_databases: Callable[[tuple[str, ...], tuple[str, ...]], object] | None = None,
) -> tuple[str, ...]:
    """While paused: PAUSE again what the marker says (a restarted process starts unpaused).

    The whole unit: SIGUSR1 to every serving process. Paused databases: ``hold_databases``
    (databases, serving services), which sends ``PAUSE <db>`` on each console where it is not
    paused (:func:`actions.Actions.hold_databases`).
    """
    marker = marker if marker is not None else PauseMarker(0.0)
    processes = running_processes(container)
    if processes.serving and marker.unit:
        container.send_signal(PAUSE_SIGNAL, *processes.serving)
    if processes.serving and marker.databases and hold_databases is not None:
        hold_databases(marker.databases, processes.serving)
    return processes.serving


def resume(container: ops.Container, sleep: Callable[[float], None] = time.sleep) -> Processes:
    """RESUME every serving process, then forget the pause."""
    processes = running_processes(container)
    if processes.serving:
        container.send_signal(RESUME_SIGNAL, *processes.serving)
        # The reconcile that follows may SIGTERM a process (a hand-over of what was held
        # back): PgBouncer handles two signals in either order and refuses RESUME once it
        # shuts down, so RESUME goes first, and alone.
        sleep(RESUME_AFTER_S)
    if container.exists(PAUSED_FILE):
        container.remove_path(PAUSED_FILE)
    return processes
