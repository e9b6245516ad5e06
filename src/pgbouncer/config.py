"""Rendering of PgBouncer's configuration files from typed input; pure, no ops import.

This module owns the text of every ``pgbouncer_<i>.ini`` and of the auth file line. Everything it
writes comes from a :class:`PgBouncerConfig`, is checked before a single line is produced, and is
rendered deterministically (databases sorted by key), so that the same state always gives the
same bytes and a write happens only when something really changed. A value that cannot be
rendered safely raises :class:`RenderError` and nothing is returned: a half-rendered file is never
handed to PgBouncer, which would apply it in part (FACTS: a broken file is half-applied on
RELOAD, and RELOAD still answers success).

The derivation of the per-process numbers (process count, ``max_db_connections`` shares) is
explained with a worked example in ``docs/workload.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from state.names import (
    InvalidNameError,
    validate_database_name,
    validate_host,
    validate_port,
    validate_role_name,
)

DEFAULT_BASE_DIR = "/var/lib/pgbouncer"
"""Everything PgBouncer reads or writes lives under this directory (docs/architecture.md)."""

AUTH_DATABASE_KEY = "pgb_authdb"
"""``[databases]`` key of the backend database holding the auth function.

``pgbouncer`` itself is the admin console's reserved name: as a key, or as a global
``auth_dbname``, it stops PgBouncer from starting (FACTS), so the auth database is reached under
this key and ``auth_dbname`` points here.
"""

READONLY_SUFFIX = "_readonly"
"""Suffix of the ``[databases]`` key that points a client database at a read-only endpoint."""

MIN_PROCESSES = 1
MAX_PROCESSES = 4
"""PgBouncer processes per unit: one per CPU the pod may use, clamped to this range."""

POOL_MODES = ("session", "transaction", "statement")
MAX_PREPARED_STATEMENTS = 1000
MAX_CLIENT_CONN = 10000
"""Client connections each process accepts (PgBouncer's default, 100, is far too low)."""

DEFAULT_POOL_SIZE_UNLIMITED = 20
"""Pool size per (database, user) and process when ``max_db_connections`` is 0 (PgBouncer's
default)."""

MAX_AUTH_PASSWORD_BYTES = 100
"""Longest password accepted into the auth file; the charm generates 32 to 64 characters."""

NO_RELOAD_KEYS = frozenset(
    {
        "disable_pqexec",
        "job_name",
        "listen_addr",
        "listen_backlog",
        "listen_port",
        "pidfile",
        "pkt_buf",
        "resolv_conf",
        "service_name",
        "so_reuseport",
        "track_extra_parameters",
        "unix_socket_dir",
        "unix_socket_group",
        "unix_socket_mode",
        "user",
    }
)
"""``[pgbouncer]`` keys a RELOAD silently ignores (``CF_NO_RELOAD`` in PgBouncer's
``src/main.c``; ``SHOW CONFIG`` reports them ``changeable = no``). A change to any of them needs
a restart. ``peer_id``, ``[databases]``, ``[peers]`` and the auth file all reload."""

# A PgBouncer ini key written without quotes: libusual's cfparser reads [A-Za-z0-9_.*-]+.
_INI_KEY = re.compile(r"[A-Za-z0-9_.*\-]+")
_SCRAM_SECRET = re.compile(r"SCRAM-SHA-256\$")
_MD5_HASH = re.compile(r"md5[0-9a-fA-F]{32}")


class RenderError(ValueError):
    """A value cannot be rendered safely into PgBouncer's files; nothing was rendered.

    Attributes:
        field: which input the bad value came from (for a status message).
        reason: what is wrong with it. The value itself is never included: it may be hostile,
            long, or a secret.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"cannot render {field}: {reason}")


@dataclass(frozen=True)
class DatabaseTarget:
    """One ``[databases]`` entry: ``key = host=<host> port=<port> dbname=<dbname>``.

    Attributes:
        key: the name clients connect to: a client database name, ``<name>_readonly`` or
            :data:`AUTH_DATABASE_KEY`.
        host: backend host (DNS name or IP address).
        port: backend port.
        dbname: the database's name on the backend.
    """

    key: str
    host: str
    port: int
    dbname: str


@dataclass(frozen=True)
class AuthSettings:
    """How PgBouncer looks up client passwords on the backend.

    Attributes:
        auth_user: the role PgBouncer logs in as to run ``auth_query`` (its plain password is in
            the auth file).
        auth_query: the lookup query; ``$1`` is the client's user name.
        auth_dbname: the ``[databases]`` key of the database holding the lookup function,
            normally :data:`AUTH_DATABASE_KEY`.
    """

    auth_user: str
    auth_query: str
    auth_dbname: str = AUTH_DATABASE_KEY


@dataclass(frozen=True)
class PgBouncerConfig:
    """Everything one unit's PgBouncer configuration is rendered from.

    Attributes:
        listen_port: TCP port every process listens on (shared through ``so_reuseport``).
        pool_mode: ``session``, ``transaction`` or ``statement``.
        max_db_connections: server connections per database for the whole unit; 0 = unlimited.
        max_prepared_statements: protocol-level prepared statements tracked per connection.
        processes: number of PgBouncer processes; see :func:`effective_processes`.
        databases: the ``[databases]`` entries, in any order (rendered sorted by key).
        auth: the ``auth_query`` settings, or None before the backend is set up.
        listen_addr: TCP addresses to listen on; ``*`` (all) in the pod. Tests use loopback.
        max_client_conn: client connections each process accepts.
        stats_user: the monitoring user listed in ``stats_users`` (``SHOW`` commands only on
            the admin console), or None for none. Its auth file line is
            :func:`pgbouncer.exporter.render_stats_auth_line`.
    """

    listen_port: int
    pool_mode: str
    max_db_connections: int
    max_prepared_statements: int
    processes: int
    databases: tuple[DatabaseTarget, ...] = ()
    auth: AuthSettings | None = None
    listen_addr: str = "*"
    max_client_conn: int = MAX_CLIENT_CONN
    stats_user: str | None = None


def effective_processes(cpu_count: int, max_db_connections: int) -> int:
    """How many PgBouncer processes a unit runs.

    One per CPU the pod may use, clamped to 1 to 4. When ``max_db_connections`` is positive but
    smaller than that, only ``max_db_connections`` processes run: each process must get a share of
    at least 1, since PgBouncer reads a share of 0 as "unlimited".

    Args:
        cpu_count: CPUs the workload container may use (see ``Workload.cpu_limit``).
        max_db_connections: the unit-wide cap per database; 0 means unlimited.

    Returns:
        The process count, from 1 to 4.
    """
    count = min(max(cpu_count, MIN_PROCESSES), MAX_PROCESSES)
    if 0 < max_db_connections < count:
        count = max_db_connections
    return count


def connection_share(max_db_connections: int, processes: int, index: int) -> int:
    """Process ``index``'s part of the unit-wide ``max_db_connections``.

    ``m // n`` each, and the ``m % n`` left over go one each to the first processes, so that the
    shares add up to exactly ``m``. 0 (unlimited) stays 0 for every process.

    Args:
        max_db_connections: the unit-wide cap per database (``m``); 0 means unlimited.
        processes: the number of processes (``n``).
        index: the process, 0-based.

    Returns:
        The process's ``max_db_connections``.
    """
    base, extra = divmod(max_db_connections, processes)
    return base + (1 if index < extra else 0)


def ini_path(index: int, base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of process ``index``'s configuration file."""
    return str(PurePosixPath(base_dir) / f"pgbouncer_{index}.ini")


def run_dir(index: int, base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Unix socket directory (and pidfile directory) of process ``index``."""
    return str(PurePosixPath(base_dir) / "run" / str(index))


def auth_file_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the auth file (the auth role's plain password)."""
    return str(PurePosixPath(base_dir) / "userlist.txt")


AUTH_FILE = auth_file_path()
"""The auth file in the container. Write ``""`` there when there is no auth user yet: a
missing file makes PgBouncer log an error at every start and reload."""


def _invalid(exc: InvalidNameError) -> RenderError:
    return RenderError(exc.field, exc.reason)


def _check_key(key: object) -> str:
    """A ``[databases]`` key: a client database name, its ``_readonly`` twin, or the auth key."""
    field = "[databases] key"
    if key == AUTH_DATABASE_KEY:
        return AUTH_DATABASE_KEY
    if not isinstance(key, str):
        raise RenderError(field, "not a string")
    try:
        if key.endswith(READONLY_SUFFIX) and len(key) > len(READONLY_SUFFIX):
            validate_database_name(key[: -len(READONLY_SUFFIX)], field)
            # The whole key must still fit PostgreSQL's identifier length.
            return validate_role_name(key, field)
        return validate_database_name(key, field)
    except InvalidNameError as exc:
        raise _invalid(exc) from None


def _check_target(target: DatabaseTarget) -> DatabaseTarget:
    if not isinstance(target, DatabaseTarget):
        raise RenderError("[databases]", "not a DatabaseTarget")
    key = _check_key(target.key)
    try:
        host = validate_host(target.host, "database host")
        port = validate_port(target.port, "database port")
        # The backend name may be one PgBouncer reserves as a *key* (we ask the PostgreSQL charm
        # for a database called "pgbouncer"), so only the character set and length are checked:
        # validate_role_name applies the same pattern as database names, minus the reserved list.
        dbname = validate_role_name(target.dbname, "database name")
    except InvalidNameError as exc:
        raise _invalid(exc) from None
    return DatabaseTarget(key=key, host=host, port=port, dbname=dbname)


def _check_single_line(field: str, value: object, max_bytes: int) -> str:
    """A value rendered as the rest of an ini line: one line, no edge whitespace, no NUL."""
    if not isinstance(value, str) or not value:
        raise RenderError(field, "empty or not a string")
    if len(value.encode()) > max_bytes:
        raise RenderError(field, f"longer than {max_bytes} bytes")
    if any(ch in value for ch in "\n\r\x00\x0b\x0c"):
        raise RenderError(field, "contains a line break or NUL")
    if value != value.strip():
        raise RenderError(field, "starts or ends with whitespace")
    return value


def _check_auth(auth: AuthSettings, keys: Iterable[str]) -> AuthSettings:
    if not isinstance(auth, AuthSettings):
        raise RenderError("auth", "not an AuthSettings")
    try:
        user = validate_role_name(auth.auth_user, "auth_user")
    except InvalidNameError as exc:
        raise _invalid(exc) from None
    query = _check_single_line("auth_query", auth.auth_query, 1000)
    if auth.auth_dbname not in set(keys):
        # PgBouncer would refuse every login through auth_query ("bouncer config error").
        raise RenderError("auth_dbname", "names no [databases] entry")
    return AuthSettings(auth_user=user, auth_query=query, auth_dbname=auth.auth_dbname)


def _check_int(field: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RenderError(field, f"must be an integer from {low} to {high}")
    return value


def _check_config(cfg: PgBouncerConfig) -> PgBouncerConfig:
    """Validate every field of ``cfg``; the returned copy holds only checked values."""
    if not isinstance(cfg, PgBouncerConfig):
        raise RenderError("config", "not a PgBouncerConfig")
    try:
        listen_port = validate_port(cfg.listen_port, "listen_port")
    except InvalidNameError as exc:
        raise _invalid(exc) from None
    if cfg.pool_mode not in POOL_MODES:
        raise RenderError("pool_mode", f"must be one of {', '.join(POOL_MODES)}")
    max_db = _check_int("max_db_connections", cfg.max_db_connections, 0, 1_000_000)
    prepared = _check_int(
        "max_prepared_statements", cfg.max_prepared_statements, 0, MAX_PREPARED_STATEMENTS
    )
    processes = _check_int("processes", cfg.processes, MIN_PROCESSES, MAX_PROCESSES)
    if 0 < max_db < processes:
        # A process would get a share of 0, which PgBouncer reads as unlimited.
        raise RenderError("processes", "more processes than max_db_connections")
    max_client = _check_int("max_client_conn", cfg.max_client_conn, 1, 1_000_000)
    if cfg.listen_addr != "*":
        try:
            validate_host(cfg.listen_addr, "listen_addr")
        except InvalidNameError as exc:
            raise _invalid(exc) from None
    databases = tuple(sorted((_check_target(t) for t in cfg.databases), key=lambda t: t.key))
    keys = [t.key for t in databases]
    if len(set(keys)) != len(keys):
        raise RenderError("[databases]", "the same key appears twice")
    auth = _check_auth(cfg.auth, keys) if cfg.auth is not None else None
    stats_user = None
    if cfg.stats_user is not None:
        try:
            stats_user = validate_role_name(cfg.stats_user, "stats_user")
        except InvalidNameError as exc:
            raise _invalid(exc) from None
        if auth is not None and stats_user == auth.auth_user:
            raise RenderError("stats_user", "must not be the auth user")
    return PgBouncerConfig(
        listen_port=listen_port,
        pool_mode=cfg.pool_mode,
        max_db_connections=max_db,
        max_prepared_statements=prepared,
        processes=processes,
        databases=databases,
        auth=auth,
        listen_addr=cfg.listen_addr,
        max_client_conn=max_client,
        stats_user=stats_user,
    )


def _render_checked(cfg: PgBouncerConfig, index: int, base_dir: str) -> str:
    share = connection_share(cfg.max_db_connections, cfg.processes, index)
    pool_size = share if cfg.max_db_connections > 0 else DEFAULT_POOL_SIZE_UNLIMITED
    lines = [
        f";; Rendered by the pgbouncer-k8s charm: process {index} of {cfg.processes}."
        " Every edit is overwritten.",
        "",
        "[databases]",
    ]
    lines += [f"{t.key} = host={t.host} port={t.port} dbname={t.dbname}" for t in cfg.databases]
    lines += ["", "[peers]"]
    # Every process gets the same list, its own entry included (PgBouncer ignores that one):
    # a cancel request lands on whichever process the kernel picks and is forwarded to the peer
    # that owns the key. The port is required: it defaults to 6432 otherwise (FACTS).
    lines += [
        f"{peer + 1} = host={run_dir(peer, base_dir)} port={cfg.listen_port}"
        for peer in range(cfg.processes)
    ]
    lines += [
        "",
        "[pgbouncer]",
        f"listen_addr = {cfg.listen_addr}",
        f"listen_port = {cfg.listen_port}",
        "so_reuseport = 1",
        f"unix_socket_dir = {run_dir(index, base_dir)}",
        f"pidfile = {run_dir(index, base_dir)}/pgbouncer.pid",
        f"peer_id = {index + 1}",
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file_path(base_dir)}",
    ]
    if cfg.auth is not None:
        lines += [
            f"auth_user = {cfg.auth.auth_user}",
            f"auth_query = {cfg.auth.auth_query}",
            f"auth_dbname = {cfg.auth.auth_dbname}",
        ]
    if cfg.stats_user is not None:
        lines.append(f"stats_users = {cfg.stats_user}")
    lines += [
        f"pool_mode = {cfg.pool_mode}",
        f"max_client_conn = {cfg.max_client_conn}",
        f"default_pool_size = {pool_size}",
        f"max_db_connections = {share}",
        f"max_prepared_statements = {cfg.max_prepared_statements}",
        "ignore_startup_parameters = extra_float_digits",
        "server_connect_timeout = 5",
        "server_login_retry = 3",
        "client_idle_timeout = 0",
    ]
    return "\n".join(lines) + "\n"


def _check_base_dir(base_dir: str) -> str:
    path = _check_single_line("base_dir", base_dir, 200)
    if not path.startswith("/") or any(ch.isspace() or ch in "'\"=;#" for ch in path):
        raise RenderError("base_dir", "must be an absolute path without spaces or quotes")
    return path.rstrip("/") or "/"


def render_ini(cfg: PgBouncerConfig, index: int, base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Render process ``index``'s ``pgbouncer.ini``.

    Args:
        cfg: the unit's configuration.
        index: the process, 0-based; its ``peer_id`` is ``index + 1``.
        base_dir: where the files live; :data:`DEFAULT_BASE_DIR` in the container, a temporary
            directory in tests.

    Returns:
        The complete file text.

    Raises:
        RenderError: any input cannot be rendered safely.
    """
    checked = _check_config(cfg)
    base = _check_base_dir(base_dir)
    _check_int("index", index, 0, checked.processes - 1)
    return _render_checked(checked, index, base)


def render_files(cfg: PgBouncerConfig, base_dir: str = DEFAULT_BASE_DIR) -> dict[str, str]:
    """Render every process's configuration file.

    Args:
        cfg: the unit's configuration.
        base_dir: where the files live (see :func:`render_ini`).

    Returns:
        ``{path: content}`` for ``pgbouncer_0.ini`` … ``pgbouncer_<N-1>.ini``.

    Raises:
        RenderError: any input cannot be rendered safely (then nothing is returned).
    """
    checked = _check_config(cfg)
    base = _check_base_dir(base_dir)
    return {ini_path(i, base): _render_checked(checked, i, base) for i in range(checked.processes)}


def render_auth_file(username: str, password: str) -> str:
    """The auth file: one line with the auth role and its plain password.

    PgBouncer's format is ``"user" "password"``, a ``"`` inside a field written as ``""``. The
    password must be the plain one: PgBouncer needs it to log in to the server itself, and an md5
    hash or SCRAM secret there makes the logins hang (FACTS). A plain password that merely looks
    like one of those would be taken for it, so it is refused.

    Args:
        username: the auth role.
        password: its plain password.

    Returns:
        The file content (one line, newline-terminated).

    Raises:
        RenderError: the name or password cannot be written safely.
    """
    try:
        user = validate_role_name(username, "auth username")
    except InvalidNameError as exc:
        raise _invalid(exc) from None
    if not isinstance(password, str) or not password:
        raise RenderError("auth password", "empty or not a string")
    if len(password.encode()) > MAX_AUTH_PASSWORD_BYTES:
        raise RenderError("auth password", f"longer than {MAX_AUTH_PASSWORD_BYTES} bytes")
    if any(ch in password for ch in "\n\r\x00"):
        raise RenderError("auth password", "contains a line break or NUL")
    if _SCRAM_SECRET.match(password) or _MD5_HASH.fullmatch(password):
        raise RenderError("auth password", "looks like a hash, PgBouncer would not use it as is")
    quoted = password.replace('"', '""')
    return f'"{user}" "{quoted}"\n'


def parse_ini(text: str) -> dict[str, dict[str, str]]:
    """Read a PgBouncer ini the way PgBouncer does, enough for :func:`needs_restart`.

    Comment lines start with ``;`` or ``#``; keys are ``[A-Za-z0-9_.*-]+`` or single-quoted; the
    value is the rest of the line without edge whitespace. Section names keep their case, keys in
    ``[pgbouncer]`` are compared as written.

    Args:
        text: the file content.

    Returns:
        ``{section: {key: value}}``; a later duplicate key wins, as in PgBouncer.

    Raises:
        RenderError: a line PgBouncer would reject as a syntax error.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise RenderError("ini", f"line {number}: unterminated section header")
            current = sections.setdefault(line[1:-1], {})
            continue
        if line.startswith("'"):
            end = line.find("'", 1)
            if end <= 1:
                raise RenderError("ini", f"line {number}: bad quoted key")
            key, rest = line[1:end], line[end + 1 :]
        else:
            match = _INI_KEY.match(line)
            key = match.group(0) if match else ""
            rest = line[len(key) :]
        rest = rest.lstrip(" \t")
        if not key or not rest.startswith("="):
            raise RenderError("ini", f"line {number}: expected key = value")
        if current is None:
            raise RenderError("ini", f"line {number}: value outside a section")
        current[key] = rest[1:].strip()
    return sections


def needs_restart(old_ini: str | None, new_ini: str) -> bool:
    """Whether going from ``old_ini`` to ``new_ini`` needs a restart rather than a reload.

    True when there was no file (the process has never run with one) or when a key in
    :data:`NO_RELOAD_KEYS` was added, removed or changed. Everything else (``[databases]``,
    ``[peers]``, pool settings, auth) is applied by a reload with clients staying connected.

    Args:
        old_ini: the file the process runs with, or None.
        new_ini: the file about to be written.

    Returns:
        True when only a restart can apply the change.
    """
    if old_ini is None:
        return True
    try:
        old = parse_ini(old_ini).get("pgbouncer", {})
    except RenderError:
        # We cannot tell what the running process read: start it afresh.
        return True
    new = parse_ini(new_ini).get("pgbouncer", {})
    return any(old.get(key) != new.get(key) for key in NO_RELOAD_KEYS)
