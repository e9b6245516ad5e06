"""Metrics on the default image: its Go ``pgbouncer_exporter``, one per PgBouncer process.

The default image (docs/image.md) carries prometheus-community's ``pgbouncer_exporter``, not
the Python ``pgbouncer-exporter``. It reads one PgBouncer, named by a connection string on its
command line, and serves ``/metrics`` on one address. So a unit runs one per process, each on
its own port (:data:`FIRST_PORT` + index), all under the one Pebble service
``metrics_exporter`` through a small POSIX ``sh`` supervisor (:data:`SUPERVISOR`): it starts
an exporter per line of the targets file and, when one ends, stops the others and exits 1, so
Pebble restarts the lot (``on-failure: restart``).

No secret anywhere: each exporter logs in to its process's admin console as the user
``pgbouncer`` over that process's unix socket, which PgBouncer lets in without a password when
the client runs under the same OS uid as PgBouncer (PgBouncer's usage docs, "Admin console";
the Pebble service runs as ``postgres``, like PgBouncer). That user may run every console
command, not only ``SHOW``; it is reachable only to a process that already runs as PgBouncer's
own uid, which could read PgBouncer's files anyway (docs/decisions.md, 2026-12-07).

The series differ from the Python exporter's in a few names; the scrape jobs
(:func:`scrape_jobs`) carry ``metric_relabel_configs`` that give Prometheus the names and labels
the alert rules and docs/observability.md use, and a ``process`` label per target.

Everything here is pure: text in, text out.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from ops import pebble

from pgbouncer.ini import RenderError
from pgbouncer.slots import (
    DEFAULT_BASE_DIR,
    MAX_PROCESSES,
    MIN_PROCESSES,
    run_dir,
)

GO_EXPORTER_COMMAND = "pgbouncer_exporter"
"""The Go exporter's executable in the default image (on PATH)."""

FIRST_PORT = 9127
"""Process ``i``'s exporter serves ``/metrics`` on ``FIRST_PORT + i``."""

ADMIN_USER = "pgbouncer"
"""The console user PgBouncer admits without a password over its unix socket, same uid only."""

TARGETS_HEADER = (
    "# pgbouncer-k8s: Go pgbouncer_exporter targets: index metrics_port socket_dir port"
)

SUPERVISOR = (
    "set -u; pids=; "
    'stop() { trap - TERM INT; [ -z "$pids" ] || kill $pids 2>/dev/null; wait; exit "$1"; }; '
    'trap "stop 0" TERM INT; '
    'while read -r index mport dir pport; do case "$index" in [0-9]) ;; *) continue ;; esac; '
    f"{GO_EXPORTER_COMMAND} --log.level=warn "
    '"--web.listen-address=:$mport" '
    f'"--pgBouncer.connectionString=postgres://{ADMIN_USER}@/pgbouncer'
    '?host=$dir&port=$pport&sslmode=disable" & '
    'pids="$pids $!"; done < "$1"; '
    "while sleep 2; do for pid in $pids; do "
    'kill -0 "$pid" 2>/dev/null || { echo "an exporter ended: restarting all" >&2; stop 1; }; '
    "done; done"
)
"""One line of POSIX ``sh`` (no single quote in it, so it survives Pebble's command parsing):
one exporter per target line, each with the documented flags only; the connection string holds
a socket directory and a port, no password."""


def targets_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """The targets file: the same path as the Python exporter's configuration.

    ``pgbouncer.workload`` runs the exporter service when that path is among the files and
    restarts it when it changes; the Go path reuses that, with its own content.
    """
    return str(PurePosixPath(base_dir) / "exporter.yaml")


def go_exporter_service(base_dir: str = DEFAULT_BASE_DIR) -> pebble.ServiceDict:
    """The ``metrics_exporter`` Pebble service on the Go path: the supervisor, the targets file."""
    return {
        "override": "replace",
        "summary": "Prometheus exporters (Go pgbouncer_exporter), one per PgBouncer process",
        "command": f"sh -c {shlex.quote(SUPERVISOR)} metrics_exporter {targets_path(base_dir)}",
        "user": "postgres",
        "group": "postgres",
        "startup": "enabled",
        "on-failure": "restart",
    }


def is_targets(text: str | None) -> bool:
    """Whether ``text`` is a Go targets file (:func:`render_targets`), not the Python config."""
    return bool(text) and str(text).startswith(TARGETS_HEADER)


def _check_dir(value: str) -> str:
    # The directory goes into a URL query and a shell word: plain path characters only.
    if not value.startswith("/") or any(
        not (ch.isascii() and (ch.isalnum() or ch in "/._-")) for ch in value
    ):
        raise RenderError("base_dir", "must be a plain absolute path (letters, digits, /._-)")
    return value


def render_targets(
    processes: int,
    listen_port: int,
    base_dir: str = DEFAULT_BASE_DIR,
    slots: Mapping[int, int] | None = None,
    first_port: int = FIRST_PORT,
) -> str:
    """The targets file: one line per process, ``index metrics_port socket_dir port``.

    Args:
        processes: PgBouncer processes of the unit (1 to 4).
        listen_port: PgBouncer's port (it names the socket file in each directory).
        base_dir: where PgBouncer's files live in the container.
        slots: the serving slot of process indices that moved (a hand-over); others slot 0.
        first_port: process 0's metrics port (the scrape jobs assume :data:`FIRST_PORT`;
            tests pick free ports).

    Raises:
        RenderError: a value out of range or a directory that would need quoting.
    """
    if not isinstance(processes, int) or not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise RenderError("processes", f"must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    if isinstance(listen_port, bool) or not isinstance(listen_port, int):
        raise RenderError("listen_port", "must be a port number")
    if not 1 <= listen_port <= 65535:
        raise RenderError("listen_port", "must be a port number")
    lines = [TARGETS_HEADER]
    for index in range(processes):
        socket_dir = _check_dir(run_dir(index, base_dir, (slots or {}).get(index, 0)))
        lines.append(f"{index} {first_port + index} {socket_dir} {listen_port}")
    return "\n".join(lines) + "\n"


def retarget_lines(text: str, slots: Mapping[int, int], base_dir: str = DEFAULT_BASE_DIR) -> str:
    """The targets file with each moved process read through the slot that serves it.

    Raises:
        RenderError: ``text`` is not a targets file the charm rendered.
    """
    rows = [line.split() for line in text.splitlines()[1:] if line.strip()]
    if not is_targets(text) or any(len(row) != 4 or not row[0].isdigit() for row in rows):
        raise RenderError("exporter targets", "not a file rendered by the charm")
    try:
        port, first_port = int(rows[0][3]), int(rows[0][1])
    except (IndexError, ValueError) as exc:
        raise RenderError("exporter targets", "not a file rendered by the charm") from exc
    return render_targets(len(rows), port, base_dir, slots, first_port)


def _relabel() -> list[dict[str, Any]]:
    """``metric_relabel_configs`` mapping the Go exporter's series onto the promised ones.

    Written for the exporter's names in 0.7.0 (the default image) and the newer
    ``stats_totals`` forms (0.9+, checked on 0.12.0 here): docs/image.md lists each.
    """
    databases = "pgbouncer_databases_(current_connections|max_connections|pool_size)"
    return [
        # SHOW DATABASES: the Go exporter's `name` is the entry (ours: database) and its
        # `database` the backend database (ours: backend_database).
        {
            "source_labels": ["__name__", "database"],
            "regex": f"{databases};(.*)",
            "target_label": "backend_database",
            "replacement": "$2",
        },
        {
            "source_labels": ["__name__", "name"],
            "regex": f"{databases};(.*)",
            "target_label": "database",
            "replacement": "$2",
        },
        {
            "source_labels": ["__name__"],
            "regex": databases,
            "target_label": "__name__",
            "replacement": "pgbouncer_databases_database_$1",
        },
        {"regex": "name|host|port|force_user|pool_mode", "action": "labeldrop"},
        {
            "source_labels": ["__name__"],
            "regex": "pgbouncer_config_max_client_connections",
            "target_label": "__name__",
            "replacement": "pgbouncer_config_max_client_conn",
        },
        {
            "source_labels": ["__name__"],
            "regex": "pgbouncer_stats_(?:totals_)?queries_pooled_total",
            "target_label": "__name__",
            "replacement": "pgbouncer_stats_queries_total",
        },
        {
            "source_labels": ["__name__"],
            "regex": "pgbouncer_stats_(?:totals_)?sql_transactions_pooled_total",
            "target_label": "__name__",
            "replacement": "pgbouncer_stats_transactions_total",
        },
        {
            "source_labels": ["__name__"],
            "regex": "pgbouncer_stats_(?:totals_)?(received|sent)_bytes_total",
            "target_label": "__name__",
            "replacement": "pgbouncer_stats_${1}_bytes_total",
        },
        # The admin console's own series (the Python exporter leaves them out too).
        {"source_labels": ["database"], "regex": "pgbouncer", "action": "drop"},
    ]


def scrape_jobs(processes: int, job_name: str, metrics_path: str) -> list[dict[str, Any]]:
    """One scrape job per process index: its port on every unit, labelled ``process``.

    Raises:
        RenderError: ``processes`` out of range.
    """
    if not isinstance(processes, int) or not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise RenderError("processes", f"must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    return [
        {
            "job_name": job_name if index == 0 else f"{job_name}_{index}",
            "metrics_path": metrics_path,
            "static_configs": [
                {"targets": [f"*:{FIRST_PORT + index}"], "labels": {"process": str(index)}}
            ],
            "metric_relabel_configs": _relabel(),
        }
        for index in range(processes)
    ]
