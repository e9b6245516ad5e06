"""Rendering of PgBouncer's configuration files from typed input; pure, no ops import.

This module owns the text of every ``pgbouncer_<i>.ini`` and of the auth file line. Everything it
writes comes from a :class:`PgBouncerConfig`, is checked before a single line is produced, and is
rendered deterministically (databases sorted by key), so that the same state always gives the
same bytes and a write happens only when something really changed. A value that cannot be
rendered safely raises :class:`RenderError` and nothing is returned: a half-rendered file is never
handed to PgBouncer, which would apply it in part (a broken file is half-applied on
RELOAD, and RELOAD still answers success).

The derivation of the per-process numbers (process count, ``max_db_connections`` shares) is
explained with a worked example in ``docs/workload.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pgbouncer.ini import RenderError, parse_ini
from pgbouncer.slots import (
    DEFAULT_BASE_DIR,
    MAX_PROCESSES,
    MIN_PROCESSES,
    SLOTS,
    ini_path,
    peer_id,
    run_dir,
)
from state.charm_state import MIN_PGBOUNCER_VERSION
from state.config import (
    CLIENT_CAP_OPTIONS,
    CLIENT_TLS_MODES,
    DEFAULT_MAX_CLIENT_CONN,
    MAX_CLIENT_CAP,
    MAX_CLIENT_CONN_LIMIT,
    MAX_DB_CONNECTIONS_LIMIT,
    MAX_POOL_SIZE,
    MAX_PREPARED_STATEMENTS_LIMIT,
    MAX_TIMEOUT_SECONDS,
    POOL_MODES,
    POOL_SIZE_OPTIONS,
    TIMEOUT_OPTIONS,
    PoolSettings,
)
from state.names import (
    READONLY_KEY_SUFFIX,
    InvalidNameError,
    validate_database_name,
    validate_host,
    validate_port,
    validate_role_name,
)

if TYPE_CHECKING:  # cryptography is loaded only by hooks that use TLS
    from state.tls import BackendTLS, ClientTLSMaterial

AUTH_DATABASE_KEY = "pgb_authdb"
"""``[databases]`` key of the backend database holding the auth function.

``pgbouncer`` itself is the admin console's reserved name: as a key, or as a global
``auth_dbname``, it stops PgBouncer from starting, so the auth database is reached under
this key and ``auth_dbname`` points here.
"""


DEFAULT_POOL_SIZE_UNLIMITED = 20
"""Pool size per (database, user) and process when ``max_db_connections`` is 0 (PgBouncer's
default)."""

LOAD_BALANCE_HOSTS_SINCE = (1, 24)
"""``load_balance_hosts`` (a ``[databases]`` parameter) exists from PgBouncer 1.24.0 on; older
versions refuse the entry. Multi-host ``host=a,b`` exists since 1.17. A port list
(``port=x,y``) is not honoured by 1.24.1 (every host was reached on the first port: seen
here), so a multi-host entry only ever lists hosts sharing one port."""

MAX_HOSTS = 16
"""Hosts in one multi-host entry (the backend databag's endpoint limit)."""

SETTINGS_SINCE: dict[str, tuple[int, int]] = {
    "max_db_client_connections": (1, 24),
    "max_user_client_connections": (1, 24),
    "transaction_timeout": (1, 25),  # PgBouncer's NEWS.md, 1.25.0
}
"""``[pgbouncer]`` keys the charm renders only for a PgBouncer at least this new: an unknown key
stops PgBouncer from starting, so they are left out for an older one."""


MAX_AUTH_PASSWORD_BYTES = 100
"""Longest password accepted into the auth file; the charm generates 32 to 64 characters."""

SERVER_TLS_MODES = ("verify-ca", "verify-full")
"""``server_tls_sslmode`` values the charm renders when the backend announces TLS."""

_SCRAM_SECRET = re.compile(r"SCRAM-SHA-256\$")
_MD5_HASH = re.compile(r"md5[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class DatabaseTarget:
    """One ``[databases]`` entry: ``key = host=<host> port=<port> dbname=<dbname>``.

    Attributes:
        key: the name clients connect to: a client database name, ``<name>_readonly`` or
            :data:`AUTH_DATABASE_KEY`.
        host: backend host (DNS name or IP address).
        port: backend port.
        dbname: the database's name on the backend.
        more_hosts: further hosts on the same ``port`` (read-only replicas): rendered as
            PgBouncer's multi-host list ``host=<host>,<more>…``, which spreads new server
            connections round-robin (``docs/client-database.md``).
    """

    key: str
    host: str
    port: int
    dbname: str
    more_hosts: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host of the entry, the first one first."""
        return (self.host, *self.more_hosts)


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
class ClientTLS:
    """PgBouncer serves TLS to clients (its files: :func:`render_tls_files`).

    Attributes:
        sslmode: ``prefer`` (plain clients still accepted) or ``require``.
    """

    sslmode: str = "prefer"


@dataclass(frozen=True)
class ServerTLS:
    """PgBouncer connects to PostgreSQL over TLS, verifying the server with the backend's CA.

    Attributes:
        sslmode: ``verify-full`` (the host name is checked too) or ``verify-ca``.
    """

    sslmode: str = "verify-full"


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
        pools: pool sizes and timeouts.
        version: the running PgBouncer's version, ``(1, 24, 1)``; settings it lacks
            (:data:`SETTINGS_SINCE`) are left out. Empty (unknown) renders for
            :data:`MIN_PGBOUNCER_VERSION`.
        client_tls: TLS towards clients, or None for plain only.
        server_tls: verified TLS towards PostgreSQL, or None for PgBouncer's default
            (``prefer``: encrypted when the server offers it, never verified).
        stats_user: the monitoring user listed in ``stats_users`` (``SHOW`` commands only on
            the admin console), or None for none. Its auth file line is
            :func:`pgbouncer.exporter.render_stats_auth_line`.
        admin_user: the charm's console user listed in ``admin_users`` (``PAUSE <db>``,
            ``RESUME <db>``: docs/actions.md), or None for none. Its auth file line is
            :func:`relations.admin.render_admin_auth_line`.
    """

    listen_port: int
    pool_mode: str
    max_db_connections: int
    max_prepared_statements: int
    processes: int
    databases: tuple[DatabaseTarget, ...] = ()
    auth: AuthSettings | None = None
    listen_addr: str = "*"
    max_client_conn: int = DEFAULT_MAX_CLIENT_CONN
    pools: PoolSettings = field(default_factory=PoolSettings)
    version: tuple[int, ...] = ()
    client_tls: ClientTLS | None = None
    server_tls: ServerTLS | None = None
    stats_user: str | None = None
    admin_user: str | None = None


def supports(version: tuple[int, ...], key: str) -> bool:
    """Whether PgBouncer ``version`` knows ``[pgbouncer]`` key ``key``.

    Args:
        version: ``(major, minor[, patch])``; empty when unknown, read as
            :data:`MIN_PGBOUNCER_VERSION`.
        key: a ``[pgbouncer]`` key.

    Returns:
        False only for a key in :data:`SETTINGS_SINCE` that needs a newer version.
    """
    since = SETTINGS_SINCE.get(key)
    return since is None or tuple(version or MIN_PGBOUNCER_VERSION) >= since


def left_out_settings(cfg: PgBouncerConfig) -> tuple[str, ...]:
    """Settings set to a non-default value that the running PgBouncer lacks, for a status note.

    Args:
        cfg: the unit's configuration.

    Returns:
        The option names, sorted; empty when everything set is rendered.
    """
    defaults = PoolSettings()
    return tuple(
        sorted(
            key
            for key in SETTINGS_SINCE
            if not supports(cfg.version, key) and getattr(cfg.pools, key) != getattr(defaults, key)
        )
    )


def pool_size(cfg: PgBouncerConfig, index: int) -> int:
    """Process ``index``'s ``default_pool_size``: the option, or derived when it is 0.

    Derived: the process's share of ``max_db_connections`` (a single pool may use all of it),
    or :data:`DEFAULT_POOL_SIZE_UNLIMITED` when that is unlimited.
    """
    if cfg.pools.default_pool_size > 0:
        return cfg.pools.default_pool_size
    share = connection_share(cfg.max_db_connections, cfg.processes, index)
    return share if cfg.max_db_connections > 0 else DEFAULT_POOL_SIZE_UNLIMITED


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


def _peers(cfg: PgBouncerConfig, base_dir: str) -> dict[str, dict[str, str]]:
    """``[peers]``: every slot of every process.

    A cancel request then reaches the process holding the key wherever the kernel delivers it,
    a process draining after a hand-over included.
    """
    return {
        str(peer_id(p, slot)): {"host": run_dir(p, base_dir, slot), "port": str(cfg.listen_port)}
        for p in range(cfg.processes)
        for slot in range(SLOTS)
    }


def auth_file_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the auth file (the auth role's plain password)."""
    return str(PurePosixPath(base_dir) / "userlist.txt")


def client_tls_key_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the private key PgBouncer serves clients with."""
    return str(PurePosixPath(base_dir) / "client-tls.key")


def client_tls_cert_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the certificate (leaf, then intermediates) PgBouncer presents to clients."""
    return str(PurePosixPath(base_dir) / "client-tls.crt")


def client_tls_ca_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the CA that signed the client-facing certificate (published as ``tls-ca``)."""
    return str(PurePosixPath(base_dir) / "client-tls-ca.crt")


def server_tls_ca_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Path of the backend's CA, which PgBouncer verifies PostgreSQL's certificate with."""
    return str(PurePosixPath(base_dir) / "server-tls-ca.crt")


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
        if key.endswith(READONLY_KEY_SUFFIX) and len(key) > len(READONLY_KEY_SUFFIX):
            validate_database_name(key[: -len(READONLY_KEY_SUFFIX)], field)
            # The whole key must still fit PostgreSQL's identifier length.
            return validate_role_name(key, field)
        return validate_database_name(key, field)
    except InvalidNameError as exc:
        raise _invalid(exc) from None


def _check_target(target: DatabaseTarget) -> DatabaseTarget:
    if not isinstance(target, DatabaseTarget):
        raise RenderError("[databases]", "not a DatabaseTarget")
    key = _check_key(target.key)
    if not isinstance(target.more_hosts, tuple) or len(target.more_hosts) >= MAX_HOSTS:
        raise RenderError("database host", f"more than {MAX_HOSTS} hosts")
    try:
        host = validate_host(target.host, "database host")
        # Each host of a list is checked alone: validate_host admits no ',' or space, so the
        # joined list reads back as exactly these hosts.
        more = tuple(validate_host(h, "database host") for h in target.more_hosts)
        port = validate_port(target.port, "database port")
        # The backend name may be one PgBouncer reserves as a *key* (we ask the PostgreSQL charm
        # for a database called "pgbouncer"), so only the character set and length are checked:
        # validate_role_name applies the same pattern as database names, minus the reserved list.
        dbname = validate_role_name(target.dbname, "database name")
    except InvalidNameError as exc:
        raise _invalid(exc) from None
    if len({host, *more}) != 1 + len(more):
        raise RenderError("database host", "the same host appears twice")
    return DatabaseTarget(key=key, host=host, port=port, dbname=dbname, more_hosts=more)


def _target_line(target: DatabaseTarget, version: tuple[int, ...]) -> str:
    line = (
        f"{target.key} = host={','.join(target.hosts)} port={target.port} dbname={target.dbname}"
    )
    if target.more_hosts and _balances(version):
        line += " load_balance_hosts=round-robin"
    return line


def _balances(version: tuple[int, ...]) -> bool:
    """Whether ``load_balance_hosts`` is rendered for PgBouncer ``version``."""
    return tuple(version or MIN_PGBOUNCER_VERSION) >= LOAD_BALANCE_HOSTS_SINCE


def read_only_group(endpoints: Iterable[Any]) -> tuple[tuple[str, ...], int] | None:
    """The replicas one ``<db>_readonly`` entry spreads over: hosts sharing one port.

    PgBouncer takes a single port for a whole host list, so the replicas on the port most of
    them use are listed (ties: the port of the first replica listed); replicas on other ports
    are left out, not reached on the wrong port.

    Args:
        endpoints: the backend's read-only endpoints (objects with ``host`` and ``port``), in
            the provider's order.

    Returns:
        ``(hosts, port)`` in the provider's order, or None without replicas.
    """
    by_port: dict[int, list[str]] = {}
    for endpoint in endpoints:
        hosts = by_port.setdefault(endpoint.port, [])
        if endpoint.host not in hosts:
            hosts.append(endpoint.host)
    if not by_port:
        return None
    port = max(by_port, key=lambda p: len(by_port[p]))  # first of the largest, by insertion
    return tuple(by_port[port][:MAX_HOSTS]), port


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
    max_db = _check_int("max_db_connections", cfg.max_db_connections, 0, MAX_DB_CONNECTIONS_LIMIT)
    prepared = _check_int(
        "max_prepared_statements", cfg.max_prepared_statements, 0, MAX_PREPARED_STATEMENTS_LIMIT
    )
    processes = _check_int("processes", cfg.processes, MIN_PROCESSES, MAX_PROCESSES)
    if 0 < max_db < processes:
        # A process would get a share of 0, which PgBouncer reads as unlimited.
        raise RenderError("processes", "more processes than max_db_connections")
    max_client = _check_int("max_client_conn", cfg.max_client_conn, 1, MAX_CLIENT_CONN_LIMIT)
    if cfg.listen_addr != "*":
        try:
            validate_host(cfg.listen_addr, "listen_addr")
        except InvalidNameError as exc:
            raise _invalid(exc) from None
    pools = _check_pools(cfg.pools, processes)
    version = cfg.version
    if not isinstance(version, tuple) or not all(
        isinstance(part, int) and not isinstance(part, bool) and 0 <= part < 1000
        for part in version
    ):
        raise RenderError("version", "must be a tuple of small integers")
    databases = tuple(sorted((_check_target(t) for t in cfg.databases), key=lambda t: t.key))
    keys = [t.key for t in databases]
    if len(set(keys)) != len(keys):
        raise RenderError("[databases]", "the same key appears twice")
    auth = _check_auth(cfg.auth, keys) if cfg.auth is not None else None
    stats_user = None
    if cfg.stats_user is not None:
        # One name, or two (", "-separated) while rotate-credentials runs.
        try:
            names = [validate_role_name(n, "stats_user") for n in cfg.stats_user.split(", ")]
        except (InvalidNameError, AttributeError) as exc:
            if isinstance(exc, InvalidNameError):
                raise _invalid(exc) from None
            raise RenderError("stats_user", "not a string") from None
        if len(names) > 2 or len(set(names)) != len(names):
            raise RenderError("stats_user", "one or two distinct names")
        if auth is not None and auth.auth_user in names:
            raise RenderError("stats_user", "must not be the auth user")
        stats_user = ", ".join(names)
    admin_user = None
    if cfg.admin_user is not None:
        try:
            admin_user = validate_role_name(cfg.admin_user, "admin_user")
        except InvalidNameError as exc:
            raise _invalid(exc) from None
        if (auth is not None and auth.auth_user == admin_user) or admin_user in (
            stats_user or ""
        ).split(", "):
            raise RenderError("admin_user", "must be neither the auth user nor a stats user")
    if cfg.client_tls is not None and (
        not isinstance(cfg.client_tls, ClientTLS) or cfg.client_tls.sslmode not in CLIENT_TLS_MODES
    ):
        raise RenderError("client_tls", f"sslmode must be one of {', '.join(CLIENT_TLS_MODES)}")
    if cfg.server_tls is not None and (
        not isinstance(cfg.server_tls, ServerTLS) or cfg.server_tls.sslmode not in SERVER_TLS_MODES
    ):
        raise RenderError("server_tls", f"sslmode must be one of {', '.join(SERVER_TLS_MODES)}")
    checked = PgBouncerConfig(
        listen_port=listen_port,
        pool_mode=cfg.pool_mode,
        max_db_connections=max_db,
        max_prepared_statements=prepared,
        processes=processes,
        databases=databases,
        auth=auth,
        listen_addr=cfg.listen_addr,
        max_client_conn=max_client,
        pools=pools,
        version=version,
        client_tls=cfg.client_tls,
        server_tls=cfg.server_tls,
        stats_user=stats_user,
        admin_user=admin_user,
    )
    for index in range(processes):
        size = pool_size(checked, index)
        if pools.min_pool_size > size:
            raise RenderError("min_pool_size", f"larger than process {index}'s pool size ({size})")
    return checked


def _check_pools(pools: PoolSettings, processes: int) -> PoolSettings:
    """Every pool size and timeout in range, and consistent with one another."""
    if not isinstance(pools, PoolSettings):
        raise RenderError("pools", "not a PoolSettings")
    for name in POOL_SIZE_OPTIONS:
        _check_int(name, getattr(pools, name), 0, MAX_POOL_SIZE)
    for name in TIMEOUT_OPTIONS:
        _check_int(name, getattr(pools, name), 0, MAX_TIMEOUT_SECONDS)
    for name in CLIENT_CAP_OPTIONS:
        value = _check_int(name, getattr(pools, name), 0, MAX_CLIENT_CAP)
        if 0 < value < processes:
            # A process would get a share of 0, which PgBouncer reads as unlimited.
            raise RenderError(name, f"smaller than the number of processes ({processes})")
    if pools.default_pool_size and pools.min_pool_size > pools.default_pool_size:
        raise RenderError("min_pool_size", "larger than default_pool_size")
    return pools


def _render_checked(cfg: PgBouncerConfig, index: int, base_dir: str, slot: int = 0) -> str:
    share = connection_share(cfg.max_db_connections, cfg.processes, index)
    size = pool_size(cfg, index)
    pools = cfg.pools
    lines = [
        f";; Rendered by the pgbouncer-k8s charm: process {index} of {cfg.processes}"
        f"{f' (slot {slot})' if slot else ''}."
        " Every edit is overwritten.",
        "",
        "[databases]",
    ]
    lines += [_target_line(t, cfg.version) for t in cfg.databases]
    lines += ["", "[peers]"]
    # Every process gets the same list, its own entry included (PgBouncer ignores that one):
    # a cancel request lands on whichever process the kernel picks and is forwarded to the peer
    # that owns the key. The port is required: it defaults to 6432 otherwise. A slot
    # that is not running costs nothing: PgBouncer connects to a peer only to forward a cancel
    # whose key names it.
    lines += [
        f"{key} = host={value['host']} port={value['port']}"
        for key, value in _peers(cfg, base_dir).items()
    ]
    lines += [
        "",
        "[pgbouncer]",
        f"listen_addr = {cfg.listen_addr}",
        f"listen_port = {cfg.listen_port}",
        "so_reuseport = 1",
        f"unix_socket_dir = {run_dir(index, base_dir, slot)}",
        # No pidfile: Pebble tracks the process, and during a port change two processes of one
        # index run side by side (docs/workload.md), which a shared pidfile would forbid.
        f"peer_id = {peer_id(index, slot)}",
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
    if cfg.admin_user is not None:
        lines.append(f"admin_users = {cfg.admin_user}")
    lines += [
        f"pool_mode = {cfg.pool_mode}",
        f"max_client_conn = {cfg.max_client_conn}",
        f"default_pool_size = {size}",
        f"min_pool_size = {pools.min_pool_size}",
        f"reserve_pool_size = {pools.reserve_pool_size}",
        f"reserve_pool_timeout = {pools.reserve_pool_timeout}",
        f"max_db_connections = {share}",
        f"max_prepared_statements = {cfg.max_prepared_statements}",
        "ignore_startup_parameters = extra_float_digits",
        "server_connect_timeout = 5",
        "server_login_retry = 1",
        f"server_idle_timeout = {pools.server_idle_timeout}",
        f"server_lifetime = {pools.server_lifetime}",
        f"query_wait_timeout = {pools.query_wait_timeout}",
        f"client_idle_timeout = {pools.client_idle_timeout}",
        f"idle_transaction_timeout = {pools.idle_transaction_timeout}",
    ]
    for key in ("max_db_client_connections", "max_user_client_connections"):
        if supports(cfg.version, key):
            value = connection_share(getattr(pools, key), cfg.processes, index)
            lines.append(f"{key} = {value}")
    if supports(cfg.version, "transaction_timeout"):
        lines.append(f"transaction_timeout = {pools.transaction_timeout}")
    if cfg.client_tls is not None:
        lines += [
            f"client_tls_sslmode = {cfg.client_tls.sslmode}",
            f"client_tls_key_file = {client_tls_key_path(base_dir)}",
            f"client_tls_cert_file = {client_tls_cert_path(base_dir)}",
            f"client_tls_ca_file = {client_tls_ca_path(base_dir)}",
        ]
    if cfg.server_tls is not None:
        lines += [
            f"server_tls_sslmode = {cfg.server_tls.sslmode}",
            f"server_tls_ca_file = {server_tls_ca_path(base_dir)}",
        ]
    return "\n".join(lines) + "\n"


def _parse_connstr(value: str) -> dict[str, str]:
    """A ``[databases]``/``[peers]`` value as PgBouncer splits it: ``k=v`` words."""
    params: dict[str, str] = {}
    for word in value.split():
        key, sep, val = word.partition("=")
        if not sep or key in params:
            raise RenderError("ini", "a connection string does not read back as written")
        params[key] = val
    return params


def verify_round_trip(
    cfg: PgBouncerConfig, index: int, text: str, base_dir: str, slot: int = 0
) -> None:
    """Parse a rendered file back and check it says exactly what ``cfg`` means.

    The last line of defence against a value that slipped past validation: a line break, a
    ``[section]``, an extra ``key=value`` word or a duplicate key in the text would change what
    PgBouncer loads, and shows up here as a difference. Nothing is written when it raises.

    Raises:
        RenderError: the text does not read back as the intended structure.
    """
    parsed = parse_ini(text)
    if set(parsed) != {"databases", "peers", "pgbouncer"}:
        raise RenderError("ini", "sections do not read back as written")
    expected_dbs = {
        t.key: {"host": ",".join(t.hosts), "port": str(t.port), "dbname": t.dbname}
        | (
            {"load_balance_hosts": "round-robin"}
            if t.more_hosts and _balances(cfg.version)
            else {}
        )
        for t in cfg.databases
    }
    got_dbs = {k: _parse_connstr(v) for k, v in parsed["databases"].items()}
    if got_dbs != expected_dbs:
        raise RenderError("[databases]", "entries do not read back as written")
    if {k: _parse_connstr(v) for k, v in parsed["peers"].items()} != _peers(cfg, base_dir):
        raise RenderError("[peers]", "entries do not read back as written")
    settings = parsed["pgbouncer"]
    header = text.index("[pgbouncer]")
    written = [
        line
        for line in text[header:].splitlines()[1:]
        if line.strip() and line.strip()[0] not in "#;"
    ]
    if len(written) != len(settings):
        raise RenderError("[pgbouncer]", "a setting is written twice or split over lines")
    wanted = {
        "listen_port": str(cfg.listen_port),
        "pool_mode": cfg.pool_mode,
        "peer_id": str(peer_id(index, slot)),
        "unix_socket_dir": run_dir(index, base_dir, slot),
        "auth_file": auth_file_path(base_dir),
    }
    if cfg.auth is not None:
        wanted |= {
            "auth_user": cfg.auth.auth_user,
            "auth_query": cfg.auth.auth_query,
            "auth_dbname": cfg.auth.auth_dbname,
        }
    elif any(k in settings for k in ("auth_user", "auth_query", "auth_dbname")):
        raise RenderError("[pgbouncer]", "auth settings appear without an auth user")
    for key, value in wanted.items():
        if settings.get(key) != value:
            raise RenderError("[pgbouncer]", f"{key} does not read back as written")


def _check_base_dir(base_dir: str) -> str:
    path = _check_single_line("base_dir", base_dir, 200)
    if not path.startswith("/") or any(ch.isspace() or ch in "'\"=;#" for ch in path):
        raise RenderError("base_dir", "must be an absolute path without spaces or quotes")
    return path.rstrip("/") or "/"


def render_ini(
    cfg: PgBouncerConfig, index: int, base_dir: str = DEFAULT_BASE_DIR, slot: int = 0
) -> str:
    """Render process ``index``'s ``pgbouncer.ini``.

    Args:
        cfg: the unit's configuration.
        index: the process, 0-based; its ``peer_id`` is ``index + 1``.
        slot: render the file of that slot of the index (:data:`SLOTS`, :func:`peer_id`,
            :func:`run_dir`).
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
    text = _render_checked(checked, index, base, slot)
    verify_round_trip(checked, index, text, base, slot)
    return text


def render_files(cfg: PgBouncerConfig, base_dir: str = DEFAULT_BASE_DIR) -> dict[str, str]:
    """Render every process's configuration file.

    Args:
        cfg: the unit's configuration.
        base_dir: where the files live (see :func:`render_ini`).

    Returns:
        ``{path: content}`` for ``pgbouncer_0.ini`` … ``pgbouncer_<N-1>.ini`` and the other
        slots of each, ``pgbouncer_<i>_twin.ini`` and ``pgbouncer_<i>_twin2.ini`` (each its own
        socket directory and ``peer_id``; the workload writes a slot's file only when that slot
        is to serve).

    Raises:
        RenderError: any input cannot be rendered safely (then nothing is returned).
    """
    checked = _check_config(cfg)
    base = _check_base_dir(base_dir)
    files = {}
    for i in range(checked.processes):
        for slot in range(SLOTS):
            text = _render_checked(checked, i, base, slot)
            verify_round_trip(checked, i, text, base, slot)
            files[ini_path(i, base, slot)] = text
    return files


def render_tls_files(
    client: ClientTLSMaterial | None,
    backend: BackendTLS | None,
    base_dir: str = DEFAULT_BASE_DIR,
) -> dict[str, str | None]:
    """The TLS files PgBouncer reads, or None (delete) for those not in use.

    Hand them to :meth:`pgbouncer.workload.Workload.apply` with the inis: they are written 0600
    and owned by the workload user, and a change to any of them reloads every process (clients
    stay connected; new TLS sessions use the new files). The texts were parsed, checked and
    re-serialised by :mod:`state.tls`; they are checked once more here so that nothing else can
    reach these files.

    Args:
        client: the unit's checked certificate for clients, or None.
        backend: the backend's checked CA, or None.
        base_dir: where the files live.

    Returns:
        ``{path: content or None}`` for the four TLS files.

    Raises:
        RenderError: a value is not what :mod:`state.tls` builds.
    """
    base = _check_base_dir(base_dir)
    if client is not None or backend is not None:
        from state.tls import BackendTLS, ClientTLSMaterial

        if client is not None and not isinstance(client, ClientTLSMaterial):
            raise RenderError("client TLS", "not a ClientTLSMaterial")
        if backend is not None and not isinstance(backend, BackendTLS):
            raise RenderError("backend TLS", "not a BackendTLS")
    files: dict[str, str | None] = {
        client_tls_key_path(base): client.key_pem if client else None,
        client_tls_cert_path(base): client.cert_pem if client else None,
        client_tls_ca_path(base): client.ca_pem if client else None,
        server_tls_ca_path(base): backend.ca_pem if backend else None,
    }
    for path, content in files.items():
        if content is not None and not (
            content.isascii() and content.startswith("-----BEGIN ") and "\x00" not in content
        ):
            raise RenderError(path, "not PEM text")
    return files


def render_auth_file(username: str, password: str) -> str:
    """The auth file: one line with the auth role and its plain password.

    PgBouncer's format is ``"user" "password"``, a ``"`` inside a field written as ``""``. The
    password must be the plain one: PgBouncer needs it to log in to the server itself, and an md5
    hash or SCRAM secret there makes the logins hang. A plain password that merely looks
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
