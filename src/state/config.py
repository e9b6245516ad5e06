"""The charm's configuration as one typed, validated value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from state.names import InvalidNameError, validate_client_database_name

POOL_MODES = ("session", "transaction", "statement")
CLIENT_TLS_MODES = ("prefer", "require")
"""``client_tls_mode`` values (``client_tls_sslmode`` once there is a certificate, docs/tls.md)."""
MAX_PREPARED_STATEMENTS_LIMIT = 1000
MAX_CLIENT_CONN_LIMIT = 100_000
MAX_CLIENT_CAP = 1_000_000
MAX_DB_CONNECTIONS_LIMIT = 1_000_000
"""The bounds of the options; the renderer (``pgbouncer.config``) checks against the same ones."""
DEFAULT_MAX_CLIENT_CONN = 10_000
"""Client connections each process accepts by default (PgBouncer's own, 100, is far too low)."""

POOL_SIZE_OPTIONS = ("default_pool_size", "min_pool_size", "reserve_pool_size")
"""Per-pool, per-process sizes (0 to :data:`MAX_POOL_SIZE`)."""
TIMEOUT_OPTIONS = (
    "reserve_pool_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "query_wait_timeout",
    "client_idle_timeout",
    "idle_transaction_timeout",
    "transaction_timeout",
)
"""Whole seconds (0 to :data:`MAX_TIMEOUT_SECONDS`). ``transaction_timeout`` needs PgBouncer 1.25
(``pgbouncer.config.SETTINGS_SINCE``)."""
CLIENT_CAP_OPTIONS = ("max_db_client_connections", "max_user_client_connections")
"""Unit-wide client connection caps (0 = unlimited), PgBouncer 1.24 and newer only."""

MAX_POOL_SIZE = 10_000
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
"""Upper bounds for pool sizes and for every timeout (seconds) the charm renders."""


@dataclass(frozen=True)
class PoolSettings:
    """Pool sizes and timeouts, as operators set them (docs/configuration.md).

    Pool sizes are per (database, user) pool and per process, as in PgBouncer; timeouts are in
    whole seconds, 0 disabling the timeout where PgBouncer allows it. The client connection caps
    are for the whole unit and are divided across the processes like ``max_db_connections``.

    Attributes:
        default_pool_size: server connections per pool; 0 lets the charm derive it (the
            process's share of ``max_db_connections``, or 20 when that is unlimited).
        min_pool_size: server connections kept open per pool even when idle.
        reserve_pool_size: extra connections a pool may open when a client waited
            ``reserve_pool_timeout`` seconds.
        reserve_pool_timeout: seconds a client waits before the reserve is used.
        server_idle_timeout: seconds an idle server connection is kept.
        server_lifetime: seconds after which an unused server connection is closed.
        query_wait_timeout: seconds a query may wait for a server connection.
        client_idle_timeout: seconds an idle client connection is kept.
        idle_transaction_timeout: seconds a client may stay idle inside a transaction.
        transaction_timeout: seconds a transaction may last before its client is disconnected
            (PgBouncer 1.25+); 0 disables.
        max_db_client_connections: client connections per database for the unit (PgBouncer
            1.24+); 0 = unlimited.
        max_user_client_connections: client connections per user for the unit (PgBouncer
            1.24+); 0 = unlimited.
    """

    default_pool_size: int = 0
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: int = 5
    server_idle_timeout: int = 600
    server_lifetime: int = 3600
    query_wait_timeout: int = 120
    client_idle_timeout: int = 0
    idle_transaction_timeout: int = 0
    transaction_timeout: int = 0
    max_db_client_connections: int = 0
    max_user_client_connections: int = 0


class InvalidConfigError(ValueError):
    """A configuration option has a value the charm cannot use."""

    def __init__(self, option: str, reason: str):
        self.option = option
        self.reason = reason
        super().__init__(f"invalid config {option}: {reason}")


def _int(options: Mapping[str, object], name: str, default: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidConfigError(name, "must be an integer")
    return value


@dataclass(frozen=True)
class CharmConfig:
    """Validated charm options (names as in charmcraft.yaml, matching the incumbent charm)."""

    listen_port: int = 6432
    pool_mode: str = "session"
    max_db_connections: int = 100
    max_prepared_statements: int = 100
    max_client_conn: int = DEFAULT_MAX_CLIENT_CONN
    pools: PoolSettings = field(default_factory=PoolSettings)
    client_tls_mode: str = "prefer"
    database_sharing: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Database → applications the operator allows to share it with its holder (docs/tenancy.md)."""

    @classmethod
    def from_dict(cls, options: Mapping[str, object]) -> CharmConfig:
        """Build from Juju's config mapping; raises :class:`InvalidConfigError`."""
        listen_port = _int(options, "listen_port", 6432)
        if not 1024 <= listen_port <= 65535:
            raise InvalidConfigError("listen_port", "must be from 1024 to 65535")
        pool_mode = options.get("pool_mode", "session")
        if pool_mode not in POOL_MODES:
            raise InvalidConfigError("pool_mode", f"must be one of {', '.join(POOL_MODES)}")
        max_db_connections = _int(options, "max_db_connections", 100)
        if not 0 <= max_db_connections <= MAX_DB_CONNECTIONS_LIMIT:
            raise InvalidConfigError(
                "max_db_connections", f"must be 0 (unlimited) to {MAX_DB_CONNECTIONS_LIMIT}"
            )
        max_prepared = _int(options, "max_prepared_statements", 100)
        if not 0 <= max_prepared <= MAX_PREPARED_STATEMENTS_LIMIT:
            raise InvalidConfigError(
                "max_prepared_statements", f"must be from 0 to {MAX_PREPARED_STATEMENTS_LIMIT}"
            )
        max_client_conn = _int(options, "max_client_conn", DEFAULT_MAX_CLIENT_CONN)
        if not 1 <= max_client_conn <= MAX_CLIENT_CONN_LIMIT:
            raise InvalidConfigError(
                "max_client_conn", f"must be from 1 to {MAX_CLIENT_CONN_LIMIT}"
            )
        return cls(
            listen_port=listen_port,
            pool_mode=str(pool_mode),
            max_db_connections=max_db_connections,
            max_prepared_statements=max_prepared,
            max_client_conn=max_client_conn,
            pools=_pools(options, max_db_connections),
            client_tls_mode=_client_tls_mode(options),
            database_sharing=parse_database_sharing(options.get("database_sharing", "")),
        )


def _client_tls_mode(options: Mapping[str, object]) -> str:
    value = options.get("client_tls_mode", "prefer")
    if value not in CLIENT_TLS_MODES:
        raise InvalidConfigError(
            "client_tls_mode", f"must be one of {', '.join(CLIENT_TLS_MODES)}"
        )
    return str(value)


def _ranged(options: Mapping[str, object], name: str, default: int, high: int) -> int:
    value = _int(options, name, default)
    if not 0 <= value <= high:
        raise InvalidConfigError(name, f"must be from 0 to {high}")
    return value


def _pools(options: Mapping[str, object], max_db_connections: int) -> PoolSettings:
    """The pool sizes and timeouts, each in range and consistent with the others."""
    defaults = PoolSettings()
    values = {
        name: _ranged(options, name, getattr(defaults, name), MAX_POOL_SIZE)
        for name in POOL_SIZE_OPTIONS
    }
    values |= {
        name: _ranged(options, name, getattr(defaults, name), MAX_TIMEOUT_SECONDS)
        for name in TIMEOUT_OPTIONS
    }
    values |= {name: _ranged(options, name, 0, MAX_CLIENT_CAP) for name in CLIENT_CAP_OPTIONS}
    default_size, min_size = values["default_pool_size"], values["min_pool_size"]
    if default_size and min_size > default_size:
        raise InvalidConfigError("min_pool_size", "must not exceed default_pool_size")
    if not default_size and max_db_connections and min_size > max_db_connections:
        # With the derived pool size (a process's share of max_db_connections) the smallest
        # share is checked at render time, when the process count is known.
        raise InvalidConfigError("min_pool_size", "must not exceed max_db_connections")
    if max_db_connections and default_size > max_db_connections:
        raise InvalidConfigError(
            "default_pool_size", "must not exceed max_db_connections (a per-unit cap)"
        )
    return PoolSettings(**values)


_APP_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_APP_NAME = 63


def parse_database_sharing(value: object) -> dict[str, frozenset[str]]:
    """Parse ``database_sharing``: ``<database>=<app>[,<app>…]`` entries, space-separated.

    ``shop=reporting,audit orders=billing`` lets applications ``reporting`` and ``audit`` be
    given database ``shop`` while another application holds it (or after it left), and
    ``billing`` be given ``orders``. Relations of one application share without it.

    Raises:
        InvalidConfigError: an entry that is not of that form, a database name a client could
            not ask for, or an application name Juju would not allow (the entry is named).
    """
    if not isinstance(value, str):
        raise InvalidConfigError("database_sharing", "must be a string")
    consent: dict[str, set[str]] = {}
    for entry in value.replace(";", " ").split():
        database, sep, apps = entry.partition("=")
        shown = entry if entry.isprintable() and len(entry) <= 80 else "<unprintable entry>"
        if not sep or not apps:
            raise InvalidConfigError(
                "database_sharing", f"entry {shown!r} is not <database>=<app>[,<app>...]"
            )
        try:
            validate_client_database_name(database, "database")
        except InvalidNameError as exc:
            raise InvalidConfigError("database_sharing", f"entry {shown!r}: {exc}") from None
        for app in apps.split(","):
            if len(app) > _MAX_APP_NAME or not _APP_NAME.fullmatch(app):
                raise InvalidConfigError(
                    "database_sharing", f"entry {shown!r}: not an application name: {app[:64]!r}"
                )
            consent.setdefault(database, set()).add(app)
    return {db: frozenset(apps) for db, apps in consent.items()}
