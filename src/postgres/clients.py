"""Users and databases for the client ``database`` relation (SPEC §6).

For each client relation the leader creates a login role with a SCRAM password and the
database the client asked for, owned by that role and closed to everyone else (CONNECT revoked
from PUBLIC). Both carry ``pgbouncer-k8s owner=<model-uuid>/<app> kind=client relation=<id>``.
When the relation goes, :func:`drop_client` hands everything the role owned to the relation
user and drops the role: the database and its data stay.

Extra roles a client may ask for: only ``CREATEDB``. ``SUPERUSER``, ``REPLICATION``,
``CREATEROLE`` and ``BYPASSRLS`` would let a client escape its database (read every password
verifier, stream the whole cluster, grant itself anything, ignore row security); anything else,
predefined roles included (``pg_read_all_data`` reads every database), is not on the list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from postgres.auth import mark_for
from postgres.connection import (
    BackendCredentials,
    BackendSQLError,
    ForeignObjectError,
    connect,
)
from postgres.passwords import set_password
from postgres.queries import query
from state.names import InvalidNameError, validate_database_name, validate_role_name

logger = logging.getLogger(__name__)

ALLOWED_EXTRA_ROLES = frozenset({"CREATEDB"})
FORBIDDEN_EXTRA_ROLES = frozenset({"SUPERUSER", "REPLICATION", "CREATEROLE", "BYPASSRLS"})
_PRINTABLE_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_NEVER_HANDED_OUT = frozenset({"postgres", "template0", "template1"})


class ForbiddenRoleError(ValueError):
    """A client asked for extra roles it may not have; ``roles`` lists them.

    Raised before any SQL. Not a :class:`~postgres.connection.BackendError`: the request is at
    fault, not the backend.
    """

    def __init__(self, roles: Sequence[str]):
        self.roles = tuple(roles)
        shown = [r if _PRINTABLE_ROLE.fullmatch(r) else "<unprintable>" for r in self.roles]
        super().__init__(
            f"extra user roles not allowed: {', '.join(shown)} "
            f"(allowed: {', '.join(sorted(ALLOWED_EXTRA_ROLES))})"
        )


def client_mark(owner_tag: str, relation_id: int) -> str:
    """The comment on a client role and its database.

    Raises:
        InvalidNameError: bad owner tag or relation id.
    """
    if not isinstance(relation_id, int) or isinstance(relation_id, bool) or relation_id < 0:
        raise InvalidNameError("relation id", relation_id, "not a non-negative integer")
    return mark_for(owner_tag).removesuffix(" kind=auth") + f" kind=client relation={relation_id}"


def _client_mark_pattern(owner_tag: str) -> Callable[[str | None], bool]:
    prefix = mark_for(owner_tag).removesuffix(" kind=auth")
    pattern = re.compile(re.escape(prefix) + r" kind=client relation=\d+")

    def is_ours(comment: str | None) -> bool:
        return comment is not None and pattern.fullmatch(comment) is not None

    return is_ours


def check_extra_roles(extra_roles: Sequence[str]) -> frozenset[str]:
    """The allowed extra roles, upper-cased; refuses anything not on the allow-list.

    Raises:
        ForbiddenRoleError: naming every refused role (forbidden ones first).
    """
    if isinstance(extra_roles, str):
        raise TypeError("extra_roles must be a sequence of role names, not a string")
    wanted = [r.strip().upper() if isinstance(r, str) else repr(r) for r in extra_roles]
    wanted = [r for r in wanted if r]
    refused = sorted({r for r in wanted if r in FORBIDDEN_EXTRA_ROLES})
    refused += sorted({r for r in wanted if r not in ALLOWED_EXTRA_ROLES} - set(refused))
    if refused:
        raise ForbiddenRoleError(refused)
    return frozenset(wanted)


def _run(conn: psycopg.Connection, name: str, **parts: sql.Composable) -> None:
    conn.execute(query("clients.sql", name).format(**parts))


def create_client(
    creds: BackendCredentials,
    *,
    username: str,
    password: str,
    database: str,
    extra_roles: Sequence[str],
    owner_tag: str,
    relation_id: int,
) -> None:
    """Create or update a client relation's role and database.

    Idempotent: a re-run resets the attributes, the password (only written when it differs)
    and the grants. The database is created if missing; an existing one is only taken over when
    it carries this application's client mark (a database left by an earlier client relation).

    Args:
        creds: relation user (a superuser).
        username: the client role to create.
        password: its plain password.
        database: the database the client asked for.
        extra_roles: extra roles the client asked for (see :data:`ALLOWED_EXTRA_ROLES`).
        owner_tag: ``<model-uuid>/<app-name>``.
        relation_id: the client relation's id.

    Raises:
        InvalidNameError: a name fails validation (before any SQL).
        ForbiddenRoleError: an extra role is not allowed (before any SQL).
        ValueError: empty password.
        ForeignObjectError: the role or the database exists without our mark, or the database
            is a template, ``postgres`` or the database we connect to.
        BackendError: connection or statement failure.
    """
    validate_role_name(username, "username")
    validate_database_name(database, "database")
    roles = check_extra_roles(extra_roles)
    if not isinstance(password, str) or not password:
        raise ValueError("invalid password: empty or not a string")
    mark = client_mark(owner_tag, relation_id)
    is_ours = _client_mark_pattern(owner_tag)
    if database in _NEVER_HANDED_OUT or database == creds.dbname:
        raise ForeignObjectError(f"database {database!r} cannot be handed to a client")
    role_id, database_id = sql.Identifier(username), sql.Identifier(database)
    createdb = sql.SQL("CREATEDB" if "CREATEDB" in roles else "NOCREATEDB")

    with connect(creds) as conn:
        with conn.transaction():
            row = conn.execute(query("common.sql", "role_info"), {"name": username}).fetchone()
            if row is None:
                _run(conn, "create_client_role", role=role_id, createdb=createdb)
                current_password = None
            else:
                if not is_ours(row[3]):
                    raise ForeignObjectError(
                        f"role {username!r} exists without this application's mark: left alone"
                    )
                _run(conn, "alter_client_role", role=role_id, createdb=createdb)
                current_password = row[2]
            conn.execute(
                query("common.sql", "comment_role").format(role=role_id, comment=sql.Literal(mark))
            )
            set_password(conn, username, password, current_password)

        row = conn.execute(query("clients.sql", "database_info"), {"name": database}).fetchone()
        if row is None:
            # CREATE DATABASE cannot run inside a transaction: the connection is autocommit.
            _run(conn, "create_database", database=database_id, role=role_id)
            logger.info("created database %s for client relation %d", database, relation_id)
        elif row[1] or not is_ours(row[4]):
            raise ForeignObjectError(
                f"database {database!r} exists and was not created by this application"
            )

        with conn.transaction():
            _run(conn, "alter_database_owner", database=database_id, role=role_id)
            _run(conn, "lock_database", database=database_id)
            _run(conn, "grant_database_connect", database=database_id, role=role_id)
            _run(conn, "comment_database", database=database_id, comment=sql.Literal(mark))
    logger.info("client role %s ready on database %s", username, database)


def drop_client(creds: BackendCredentials, *, username: str, owner_tag: str) -> bool:
    """Drop a client relation's role; its database and data stay, owned by ``creds.user``.

    The role first loses LOGIN and its sessions are ended; then, in every database where it owns
    objects or holds privileges, ``REASSIGN OWNED BY <user> TO <creds.user>`` and
    ``DROP OWNED BY <user>`` run; then ``DROP ROLE``.

    Args:
        creds: relation user (a superuser).
        username: the client role.
        owner_tag: ``<model-uuid>/<app-name>``.

    Returns:
        True when a role was dropped, False when there was none (idempotent).

    Raises:
        InvalidNameError: bad ``username`` or ``owner_tag`` (before any SQL).
        ForeignObjectError: the role exists without this application's client mark.
        BackendError: connection or statement failure.
    """
    validate_role_name(username, "username")
    is_ours = _client_mark_pattern(owner_tag)
    role_id = sql.Identifier(username)
    with connect(creds) as conn:
        row = conn.execute(query("common.sql", "role_info"), {"name": username}).fetchone()
        if row is None:
            return False
        if not is_ours(row[3]):
            raise ForeignObjectError(
                f"role {username!r} exists without this application's mark: left alone"
            )
        oid = row[0]
        with conn.transaction():
            _run(conn, "disable_login", role=role_id)
            conn.execute(query("clients.sql", "terminate_sessions"), {"oid": oid})
        databases = [
            name
            for (name,) in conn.execute(
                query("clients.sql", "databases_with_objects_of"), {"oid": oid}
            ).fetchall()
        ]
    # The database we connect to runs last: REASSIGN OWNED there also moves shared objects
    # (the client's database itself) when no other database did.
    ordered = [d for d in databases if d != creds.dbname] + [creds.dbname]
    for dbname in ordered:
        with connect(creds, dbname) as conn, conn.transaction():
            _run(conn, "reassign_owned", role=role_id, new_owner=sql.Identifier(creds.user))
            _run(conn, "drop_owned", role=role_id)
    with connect(creds) as conn:
        try:
            conn.execute(query("common.sql", "drop_role").format(role=role_id))
        except psycopg.Error as exc:
            raise BackendSQLError(
                f"dropping client role {username!r} failed: {exc.diag.message_primary}",
                sqlstate=exc.sqlstate,
            ) from None
    logger.info("dropped client role %s", username)
    return True


def backend_version(creds: BackendCredentials) -> str:
    """The server's version, e.g. ``15.10`` (the distribution suffix dropped).

    Raises:
        BackendError: connection or statement failure.
    """
    with connect(creds) as conn:
        row = conn.execute(query("common.sql", "server_version")).fetchone()
    if row is None:
        raise BackendSQLError("the server did not report its version")
    return str(row[0]).split()[0]
