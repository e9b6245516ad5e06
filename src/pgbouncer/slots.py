"""How the processes of one unit are named: indices, slots, services, files and sockets.

A unit runs 1 to 4 PgBouncer *processes* sharing one port (``so_reuseport``). Each process index
``i`` has :data:`SLOTS` slots, the Pebble services ``pgbouncer_<i>``, ``pgbouncer_<i>_twin`` and
``pgbouncer_<i>_twin2``, each with its own ini file, unix socket directory and ``peer_id``. One
slot serves (takes new clients); a change a reload cannot make hands the index over to the next
free slot while the old one drains (docs/workload.md). Everything that names a slot is here; the
plan (:mod:`pgbouncer.plan`) and the renderer (:mod:`pgbouncer.config`) only call it.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

DEFAULT_BASE_DIR = "/var/lib/pgbouncer"
"""Everything PgBouncer reads or writes lives under this directory (docs/architecture.md)."""

MIN_PROCESSES = 1
MAX_PROCESSES = 4
"""PgBouncer processes per unit: one per CPU the pod may use, clamped to this range."""

SLOTS = 3
"""Slots of each process index. Three, so that a change and its revert within the drain bound
both hand over."""

TWIN = "_twin"
SERVICE_PREFIX = "pgbouncer_"

DRAINING_SUFFIX = ".draining"
"""A slot that gets SIGTERM to drain its clients has its ini moved aside (``<ini>.draining``).
PgBouncer read it at start and reads it again only on a reload, which a draining process never
gets; but Pebble restarts a process that exits 0 from the definition it was *started* with, and
one started by an earlier charm (without ``on-success: ignore``) would come back, from that ini,
and take new clients. With the file gone, such a restart fails at once and the next apply stops
the service. The moved file still tells which port the process drains on."""

_SERVICE = re.compile(rf"^{SERVICE_PREFIX}(\d+)(?:{TWIN}(\d*))?$")


def slot_suffix(slot: int) -> str:
    """What names slot ``slot`` of an index: ``""``, ``"_twin"``, ``"_twin2"``."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot must be 0 to {SLOTS - 1}")
    return "" if slot == 0 else TWIN + (str(slot) if slot > 1 else "")


def ini_path(index: int, base_dir: str = DEFAULT_BASE_DIR, slot: int = 0) -> str:
    """Path of the configuration file of slot ``slot`` of process ``index``."""
    return str(PurePosixPath(base_dir) / f"pgbouncer_{index}{slot_suffix(slot)}.ini")


def run_dir(index: int, base_dir: str = DEFAULT_BASE_DIR, slot: int = 0) -> str:
    """Unix socket directory of slot ``slot`` of process ``index``.

    Each slot has its own: two processes of one index run side by side during a hand-over, on
    the same port, and PgBouncer refuses to start where a live process holds the socket.
    """
    return str(PurePosixPath(base_dir) / "run" / f"{index}{slot_suffix(slot)}")


def peer_id(index: int, slot: int = 0) -> int:
    """``peer_id`` of slot ``slot`` of process ``index``: 1 to 4, then 5 to 8, 9 to 12."""
    return index + 1 + slot * MAX_PROCESSES


def service_name(index: int, slot: int = 0) -> str:
    """The Pebble service of slot ``slot`` of process ``index``."""
    return f"{SERVICE_PREFIX}{index}{slot_suffix(slot)}"


def parse_service(name: str) -> tuple[int, int] | None:
    """``(index, slot)`` of PgBouncer service ``name``; None for any other name."""
    match = _SERVICE.match(name)
    if match is None:
        return None
    index, number = int(match.group(1)), match.group(2)  # number: None without the suffix
    slot = 0 if number is None else (int(number) if number else 1)
    if slot >= SLOTS or (number and slot < 2) or service_name(index, slot) != name:
        return None
    return index, slot


def service_index(name: str) -> int | None:
    """The process index a PgBouncer service (any slot) runs; None for other services."""
    parsed = parse_service(name)
    return parsed[0] if parsed else None


def service_slot(name: str) -> int:
    """The slot of PgBouncer service ``name`` (0 for ``pgbouncer_<i>``).

    Raises:
        ValueError: not a PgBouncer service.
    """
    parsed = parse_service(name)
    if parsed is None:
        raise ValueError(f"{name} is not a PgBouncer service")
    return parsed[1]


def slot_ini(name: str, base_dir: str = DEFAULT_BASE_DIR) -> str:
    """The ini file of PgBouncer service ``name`` (any slot of an index).

    Raises:
        ValueError: not a PgBouncer service.
    """
    parsed = parse_service(name)
    if parsed is None:
        raise ValueError(f"{name} is not a PgBouncer service")
    return ini_path(parsed[0], base_dir, parsed[1])


def next_slots(name: str) -> list[str]:
    """The other services of ``name``'s index, in the order they take turns after it.

    Slots are used in turn, so the first is the one that served longest ago.
    """
    parsed = parse_service(name)
    if parsed is None:
        raise ValueError(f"{name} is not a PgBouncer service")
    index, slot = parsed
    return [service_name(index, (slot + k) % SLOTS) for k in range(1, SLOTS)]
