"""The charm never waits on a tenant: sessions that block our statements are ended.

A tenant can hold a lock on anything it may touch (its own role's catalog row, by leaving
``BEGIN; ALTER ROLE <self> PASSWORD …`` open; a table of its database; the owner role it acts
as) and so stall any statement of ours that needs the same lock until our ``lock_timeout``
gives up, hook after hook. While a statement of ours runs inside :func:`clearing`, a watcher on
a second connection asks the server who blocks it (``pg_blocking_pids``) and terminates the
blockers that are tenants of this application: sessions whose login role is one of our client
roles or a member of one of our tenant roles. Anyone else (the PostgreSQL charm, an operator, a
backup) is never terminated: our statement then times out and the error names the blocker, so
the status can say exactly what blocks us (docs/tenancy.md, "The charm never waits").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from postgres.connection import BackendCredentials, BackendError, BackendSQLError, connect
from postgres.queries import query

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
"""How often the watcher looks for blockers while a statement of ours waits."""


class Blocked(BackendSQLError):  # noqa: N818 (reads as a state, like the others)
    """A statement of ours waited on a session we may not end; ``blockers`` names them."""

    def __init__(self, message: str, blockers: tuple[str, ...]):
        self.blockers = blockers
        super().__init__(message, sqlstate="55P03")


class _Watcher(threading.Thread):
    def __init__(self, creds: BackendCredentials, pid: int, tenant_pattern: str):
        super().__init__(daemon=True, name="pgbouncer-k8s-lock-watcher")
        self.creds = creds
        self.pid = pid
        self.pattern = tenant_pattern
        self.stop = threading.Event()
        self.terminated: list[str] = []
        self.foreign: set[str] = set()
        self.error: BackendError | None = None

    def run(self) -> None:
        try:
            with connect(self.creds) as conn:
                while not self.stop.wait(POLL_SECONDS):
                    rows = conn.execute(
                        query("clients.sql", "blockers_of"),
                        {"pid": self.pid, "pattern": self.pattern},
                    ).fetchall()
                    for pid, role, is_tenant in rows:
                        if not is_tenant:
                            self.foreign.add(f"session {pid} of role {role}")
                            continue
                        conn.execute(query("clients.sql", "terminate_pid"), {"pid": pid})
                        self.terminated.append(f"{role} (pid {pid})")
                        logger.warning(
                            "ended session %d of tenant role %s: it blocked the charm", pid, role
                        )
        except BackendError as exc:
            self.error = exc


@contextmanager
def clearing(
    creds: BackendCredentials, conn: psycopg.Connection, tenant_pattern: str
) -> Iterator[list[str]]:
    """Run the block's statements on ``conn`` while tenants blocking them are terminated.

    Args:
        creds: the relation user (the watcher's own connection).
        conn: the connection whose statements are watched.
        tenant_pattern: a POSIX regular expression matching this application's tenant role names
            (client logins and tenant roles); sessions of those roles, and of members of those
            roles, may be ended.

    Yields:
        The list of sessions ended so far (filled as it happens).

    Raises:
        Blocked: a statement timed out waiting on a session that is not a tenant's.
    """
    watcher = _Watcher(creds, conn.info.backend_pid, tenant_pattern)
    watcher.start()
    try:
        yield watcher.terminated
    except BackendSQLError as exc:
        if exc.sqlstate == "55P03" and watcher.foreign:
            raise Blocked(
                f"{exc}: waiting for {', '.join(sorted(watcher.foreign))}",
                tuple(sorted(watcher.foreign)),
            ) from None
        raise
    except psycopg.errors.LockNotAvailable as exc:
        shown = ", ".join(sorted(watcher.foreign)) or "a session"
        raise Blocked(
            f"lock timeout: waiting for {shown}: {exc.diag.message_primary}",
            tuple(sorted(watcher.foreign)),
        ) from None
    finally:
        watcher.stop.set()
        watcher.join(timeout=5)


@contextmanager
def connect_clearing(
    creds: BackendCredentials, tenant_pattern: str, dbname: str | None = None
) -> Iterator[psycopg.Connection]:
    """:func:`~postgres.connection.connect`, with :func:`clearing` watching its statements.

    Every connection on which the charm changes what tenants can lock goes through here.
    """
    with connect(creds, dbname) as conn, clearing(creds, conn, tenant_pattern):
        yield conn
