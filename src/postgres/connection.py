"""Connections to the backend PostgreSQL and the errors they raise.

Every connection is made from :class:`BackendCredentials` (the relation user the PostgreSQL
charm gave us) and is time-bounded three ways, so that a hook never hangs on a sick server:

- libpq's connect timeout, TCP keepalives and a TCP user timeout (a dead peer or network);
- server-side ``statement_timeout``, ``lock_timeout`` and ``idle_in_transaction_session_timeout``;
- a client-side deadline: a timer shuts the socket down when a connection outlives
  :data:`CONNECTION_DEADLINE_SECONDS`, or the hook's budget (``postgres.deadline``), whichever
  comes first. This is what ends a wait on a server that is alive to TCP but does not run (a
  stopped process: the kernel still acknowledges, so neither keepalives nor the user timeout
  fire, and the server's own timeouts cannot either).

The session settings we pass at connection start override any a tenant planted with
``ALTER DATABASE … SET`` (``role``, ``default_transaction_read_only``, timeouts,
``search_path``): client options outrank database and role settings. Every psycopg error is mapped to one of the typed
errors below; none of their messages ever holds a password.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from postgres.credentials import BackendCredentials
from postgres.deadline import hook_remaining
from socket_watchdog import SocketWatchdog
from state.names import validate_role_name
from state.tls import SERVER_SSLMODE, backend_tls_problem

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5
STATEMENT_TIMEOUT_MS = STATEMENT_TIMEOUT_MS_DEFAULT = 15_000
LOCK_TIMEOUT_MS = LOCK_TIMEOUT_MS_DEFAULT = 5_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000
TCP_USER_TIMEOUT_MS = 10_000
CONNECTION_DEADLINE_SECONDS = 20.0
"""No connection of ours lives longer than this, whatever the server does."""
APPLICATION_NAME = "pgbouncer-k8s"


def session_settings() -> dict[str, str]:
    """What every connection of ours sets at start-up (overriding database and role settings)."""
    return {
        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
        "lock_timeout": str(LOCK_TIMEOUT_MS),
        "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
        "default_transaction_read_only": "off",
        "search_path": "pg_catalog,pg_temp",
        # A database's (or role's) `role` setting would make our superuser session act as
        # another role from its first statement: start-up options outrank it.
        "role": "none",
    }


def _remaining() -> float:
    """Seconds a new connection may live: the per-connection cap within the hook's budget."""
    left = hook_remaining()
    return CONNECTION_DEADLINE_SECONDS if left is None else min(CONNECTION_DEADLINE_SECONDS, left)


# libpq reports connection failures as text only (no SQLSTATE reaches psycopg): classify them
# by the server's and libpq's fixed English messages.
_AUTH_FAILURES = (
    "password authentication failed",
    "sasl authentication failed",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "is not permitted to log in",
    "permission denied for database",
    "fe_sendauth: no password supplied",
)
_AUTH_ROLE_MISSING = ("role", "does not exist")
_DATABASE_MISSING = ("database", "does not exist")


class BackendError(Exception):
    """Something went wrong talking to the backend PostgreSQL."""


class BackendUnreachable(BackendError):  # noqa: N818 (the names the charm codes against)
    """No connection: refused, timed out, name not resolved, server down or restarting."""


class BackendAuthFailed(BackendError):  # noqa: N818 (the names the charm codes against)
    """The server refused our credentials (wrong password, no such role, pg_hba, CONNECT)."""


class BackendDatabaseMissing(BackendError):  # noqa: N818 (the names the charm codes against)
    """The server is up and accepted the role, but the database asked for does not exist."""


class BackendSQLError(BackendError):
    """A statement failed or timed out; ``sqlstate`` is the server's error code when known."""

    def __init__(self, message: str, sqlstate: str | None = None):
        self.sqlstate = sqlstate
        super().__init__(message)


class ForeignObjectError(BackendError):
    """An object we would create or drop exists but does not carry our mark: left alone."""


def _redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _connect_error(
    exc: psycopg.OperationalError, creds: BackendCredentials, dbname: str
) -> BackendError:
    text = str(exc).lower()
    where = f"PostgreSQL at {creds.host}:{creds.port}"
    detail = _redact(_first_line(exc), creds.password)
    if any(marker in text for marker in _AUTH_FAILURES):
        return BackendAuthFailed(f"{where} refused role {creds.user!r}: {detail}")
    if all(marker in text for marker in _DATABASE_MISSING) and '"' in text:
        return BackendDatabaseMissing(f"{where} has no database {dbname!r}")
    if all(marker in text for marker in _AUTH_ROLE_MISSING):
        return BackendAuthFailed(f"{where} refused role {creds.user!r}: {detail}")
    # -- TLS to the backend (docs/tls.md): say which check failed, in words the status can carry.
    tls_problem = backend_tls_problem(str(exc)) if creds.sslrootcert else None
    if tls_problem:
        return BackendUnreachable(f"cannot reach {where}: {tls_problem}")
    return BackendUnreachable(f"cannot reach {where}: {detail}")


def sql_error(exc: psycopg.Error, what: str, *secrets: str) -> BackendError:
    """Map a psycopg error raised by a statement to a typed error.

    Only the server's primary message is kept (never the statement text), and any of
    ``secrets`` found in it is redacted.

    Args:
        exc: the psycopg error.
        what: what we were doing, for the message.
        secrets: strings that must not appear in the message.
    """
    lost = exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))
    if isinstance(exc, psycopg.OperationalError) and lost:
        return BackendUnreachable(
            f"{what}: connection lost: {_redact(_first_line(exc), *secrets)}"
        )
    primary = exc.diag.message_primary if exc.sqlstate else None
    message = _redact(primary or _first_line(exc), *secrets)
    return BackendSQLError(f"{what}: {message}", sqlstate=exc.sqlstate)


@contextmanager
def connect(creds: BackendCredentials, dbname: str | None = None) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the backend, closed on exit.

    Use ``with conn.transaction():`` for work that must be atomic. Any psycopg error raised
    inside the block is re-raised as a :class:`BackendError`.

    Args:
        creds: the relation user's credentials.
        dbname: database to connect to, ``creds.dbname`` when None.

    Raises:
        BackendUnreachable: no connection, or it was lost.
        BackendAuthFailed: the server refused the credentials.
        BackendDatabaseMissing: no such database.
        BackendSQLError: a statement in the block failed or timed out.
    """
    target = dbname or creds.dbname
    validate_role_name(target, "database")
    budget = _remaining()
    if budget <= 0:
        raise BackendUnreachable("this hook's time budget for PostgreSQL is spent")
    try:
        conn = psycopg.connect(
            host=creds.host,
            port=creds.port,
            user=creds.user,
            password=creds.password,
            dbname=target,
            connect_timeout=max(1, min(CONNECT_TIMEOUT_SECONDS, int(budget))),
            application_name=APPLICATION_NAME,
            options=" ".join(f"-c {k}={v}" for k, v in session_settings().items()),
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=TCP_USER_TIMEOUT_MS,
            autocommit=True,
            prepare_threshold=None,
            # TLS (docs/tls.md): verify-full against the backend's CA when it announced TLS.
            # (None values are left out of the conninfo by psycopg.)
            sslmode=SERVER_SSLMODE if creds.sslrootcert else None,
            sslrootcert=creds.sslrootcert,
        )
    except psycopg.OperationalError as exc:
        raise _connect_error(exc, creds, target) from None
    watchdog = SocketWatchdog(conn, _remaining())
    try:
        yield conn
    except psycopg.Error as exc:
        if watchdog.fired:
            raise BackendUnreachable(
                f"PostgreSQL at {creds.host}:{creds.port} did not answer in time "
                f"(gave up after {watchdog.seconds:.0f} s)"
            ) from None
        raise sql_error(exc, f"in database {target!r}", creds.password) from None
    finally:
        watchdog.cancel()
        conn.close()
