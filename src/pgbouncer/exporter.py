"""The metrics exporter beside PgBouncer: its Pebble service, its files and the stats identity.

One exporter process per unit (``prometheus-pgbouncer-exporter``, command
``pgbouncer-exporter``; docs/decisions.md says why this one) reads every PgBouncer process of
the unit: its configuration lists one admin-console connection per process, through that
process's own unix socket (the shared TCP port would reach whichever process the kernel picks),
and labels each process's series ``process="<index>"``. It opens a connection per scrape and
closes it, so it holds nothing open across a PgBouncer restart or reload, and the admin console
never opens a server connection.

It logs in as :data:`STATS_USER`, listed in ``stats_users``: ``SHOW`` commands only, no
``RELOAD``/``PAUSE``/``SHUTDOWN``. Its password is nowhere in the Pebble plan, on no command
line and not in the exporter's configuration: libpq reads it from a 0600 password file named
in each connection string (``passfile=``). PgBouncer's auth file holds only a SCRAM verifier of
it, so a leaked auth file does not give the password away.

Everything here is pure: text in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import PurePosixPath

from ops import pebble

from pgbouncer.go_exporter import go_exporter_service, is_targets, retarget_lines
from pgbouncer.ini import RenderError
from pgbouncer.slots import (
    DEFAULT_BASE_DIR,
    MAX_PROCESSES,
    MIN_PROCESSES,
    run_dir,
)

STATS_USER = "pgbouncer_stats"
"""The PgBouncer-only monitoring user (``stats_users``); no PostgreSQL role has this name."""
STATS_USERS = (STATS_USER, f"{STATS_USER}_g2")
"""Its two generations: ``rotate-credentials`` hands out the one not in use (both are listed
in ``stats_users`` and the auth file while a rotation runs, state.rotation)."""
EXPORTER_RELOAD_S = 5.0
"""The exporter re-reads its configuration within 4 s of a SIGHUP (its main loop sleeps 4 s)."""

EXPORTER_SERVICE = "metrics_exporter"
"""The exporter's Pebble service. Not ``pgbouncer_…``: that prefix names PgBouncer processes."""

EXPORTER_COMMAND = "pgbouncer-exporter"
"""The exporter's executable in the workload image (PyPI ``prometheus-pgbouncer-exporter``)."""

EXPORTER_PORT = 9127
"""TCP port of ``/metrics`` in the pod."""

EXPORTER_CONNECT_TIMEOUT = 3
"""Seconds the exporter waits for one process's admin console before reporting it down."""

SCRAM_ITERATIONS = 4096
ADMIN_DATABASE = "pgbouncer"
"""The admin console's database name (reserved by PgBouncer)."""

_PASSWORD_MIN, _PASSWORD_MAX = 32, 100


def exporter_config_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the exporter's configuration file (no secret in it)."""
    return str(PurePosixPath(base_dir) / "exporter.yaml")


def passfile_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the libpq password file holding the stats user's password (0600)."""
    return str(PurePosixPath(base_dir) / "exporter.pgpass")


def exporter_service(base_dir: str = DEFAULT_BASE_DIR, go: bool = False) -> pebble.ServiceDict:
    """The exporter's Pebble service: the command names only the configuration file.

    Args:
        base_dir: where PgBouncer's files live in the container.
        go: the default image's Go exporters instead (:mod:`pgbouncer.go_exporter`).
    """
    if go:
        return go_exporter_service(base_dir)
    return {
        "override": "replace",
        "summary": "Prometheus exporter for every PgBouncer process of the unit",
        "command": (
            f"{EXPORTER_COMMAND} --config {exporter_config_path(base_dir)} --log-level WARNING"
        ),
        "user": "postgres",
        "group": "postgres",
        "startup": "enabled",
        "on-failure": "restart",
    }


def check_stats_password(password: object) -> str:
    """The stats password, if it is one the charm could have generated.

    Raises:
        RenderError: not 32 to 100 ASCII letters and digits (the generator's alphabet: nothing
            that needs quoting in a password file, an auth file or a connection string).
    """
    if not isinstance(password, str):
        raise RenderError("stats password", "not a string")
    if not _PASSWORD_MIN <= len(password) <= _PASSWORD_MAX:
        raise RenderError("stats password", f"not {_PASSWORD_MIN} to {_PASSWORD_MAX} characters")
    if not (password.isascii() and password.isalnum()):
        raise RenderError("stats password", "not only ASCII letters and digits")
    return password


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier of ``password`` (RFC 5802/7677, PostgreSQL's text form).

    The salt is derived from the password itself, so the same password always gives the same
    verifier: the auth file is then rewritten (and PgBouncer reloaded) only when the password
    changes. Each password is random (about 285 bits), so its salt is unique too.

    Args:
        password: the plain password (checked with :func:`check_stats_password`).
        iterations: PBKDF2 rounds.

    Returns:
        ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64 fields.
    """
    secret = check_stats_password(password).encode()
    salt = hashlib.sha256(b"pgbouncer-k8s stats salt\x00" + secret).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def render_stats_auth_line(password: str, user: str = STATS_USER) -> str:
    """The stats user's auth file line: its name and a SCRAM verifier, never the password.

    PgBouncer authenticates a client against a verifier in the auth file; it needs the plain
    password only for users it must log in to PostgreSQL as, and the stats user never does.
    """
    return f'"{user}" "{scram_verifier(password)}"\n'


def render_passfile(password: str, user: str = STATS_USER) -> str:
    """The libpq password file: the stats password for the admin database on any socket.

    Format ``host:port:database:user:password``; the checked password is letters and digits.
    """
    return f"*:*:{ADMIN_DATABASE}:{user}:{check_stats_password(password)}\n"


def render_exporter_config(
    processes: int,
    listen_port: int,
    base_dir: str = DEFAULT_BASE_DIR,
    host: str = "0.0.0.0",  # noqa: S104 (Prometheus scrapes the pod address)
    port: int = EXPORTER_PORT,
    user: str = STATS_USER,
) -> str:
    """The exporter's configuration: one admin-console connection per PgBouncer process.

    Written as JSON, which is YAML: every value is a quoted JSON string, so nothing in it can
    be read as YAML syntax (the exporter also expands ``$(NAME)`` from its environment; no
    value here contains ``$``).

    Args:
        processes: PgBouncer processes of the unit (1 to 4).
        listen_port: PgBouncer's port (it names each process's socket file).
        base_dir: where PgBouncer's files live in the container.
        host: the address ``/metrics`` listens on.
        port: the port ``/metrics`` listens on.
        user: the stats user.

    Returns:
        The file content.

    Raises:
        RenderError: a value out of range, or a path that would need quoting in a connection
            string.
    """
    if not isinstance(processes, int) or not MIN_PROCESSES <= processes <= MAX_PROCESSES:
        raise RenderError("processes", f"must be {MIN_PROCESSES} to {MAX_PROCESSES}")
    for field, value in (("listen_port", listen_port), ("exporter port", port)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise RenderError(field, "must be a port number")
    passfile = passfile_path(base_dir)
    targets = []
    for index in range(processes):
        socket_dir = run_dir(index, base_dir)
        for value in (socket_dir, passfile):
            if any(ch.isspace() or ch in "'\\=$" for ch in value):
                raise RenderError("base_dir", "must not need quoting in a connection string")
        targets.append(
            {
                "dsn": (
                    f"host={socket_dir} port={listen_port} dbname={ADMIN_DATABASE} "
                    f"user={user} passfile={passfile} application_name=metrics_exporter"
                ),
                "connect_timeout": EXPORTER_CONNECT_TIMEOUT,
                "exclude_databases": [ADMIN_DATABASE],
                "extra_labels": {"process": str(index)},
            }
        )
    config = {"exporter_host": host, "exporter_port": port, "pgbouncers": targets}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def retarget(config: str, slots: Mapping[int, int], base_dir: str = DEFAULT_BASE_DIR) -> str:
    """The exporter configuration with each process read through the slot that serves it.

    After a hand-over (``pgbouncer.workload``) process ``i`` may serve from another slot, whose
    socket is in ``run_dir(i, slot=k)``; its series keep the label ``process="<i>"``. A process
    left draining in an old slot is not scraped (it takes no new clients).

    Args:
        config: text from :func:`render_exporter_config` (every process in slot 0).
        slots: the serving slot of each process index; indices left out, or slot 0, stay.
        base_dir: where PgBouncer's files live in the container.

    Returns:
        The configuration to write; ``config`` itself when every process serves from slot 0.

    Raises:
        RenderError: ``config`` is not such a configuration.
    """
    moved = {index: slot for index, slot in slots.items() if slot}
    if is_targets(config):  # the Go exporters' targets (pgbouncer.go_exporter)
        return retarget_lines(config, moved, base_dir) if moved else config
    if not moved:
        return config
    try:
        parsed = json.loads(config)
        for target in parsed["pgbouncers"]:
            index = int(target["extra_labels"]["process"])
            if index in moved:
                first = f"host={run_dir(index, base_dir)} "
                if not target["dsn"].startswith(first):
                    raise ValueError(f"process {index}: unexpected dsn")
                serving = f"host={run_dir(index, base_dir, moved[index])} "
                target["dsn"] = serving + target["dsn"].removeprefix(first)
    except (ValueError, KeyError, TypeError) as exc:
        raise RenderError("exporter configuration", "not one rendered by the charm") from exc
    return json.dumps(parsed, indent=2, sort_keys=True) + "\n"


def render_exporter_files(
    processes: int,
    listen_port: int,
    password: str,
    base_dir: str = DEFAULT_BASE_DIR,
    user: str = STATS_USER,
    previous: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The exporter's configuration and password file, ``{path: content}``.

    Args:
        processes: PgBouncer processes of the unit.
        listen_port: PgBouncer's port.
        password: the stats user's password.
        base_dir: where PgBouncer's files live in the container.
        user: the stats user the exporter logs in as.
        previous: the generation a rotation replaces, ``(user, password)``: its line stays in
            the password file, so the exporter reads with either until it re-read its
            configuration.

    Raises:
        RenderError: see :func:`render_exporter_config` and :func:`check_stats_password`.
    """
    passfile = render_passfile(password, user)
    if previous is not None:
        passfile += render_passfile(previous[1], previous[0])
    return {
        exporter_config_path(base_dir): render_exporter_config(
            processes, listen_port, base_dir, user=user
        ),
        passfile_path(base_dir): passfile,
    }


def exporter_user(config: str) -> str | None:
    """The stats user a rendered exporter configuration logs in as (None: not one of ours)."""
    try:
        dsn = json.loads(config)["pgbouncers"][0]["dsn"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    for part in str(dsn).split():
        key, _, value = part.partition("=")
        if key == "user" and value in STATS_USERS:
            return value
    return None
