"""Users and databases for the client ``database`` relation: the tenant model (docs/tenancy.md).

Each client database is owned by a NOLOGIN owner role with no attribute and no membership; each
client relation gets a login role that is a member of the owner role of every database it holds
(and of the application's client group, which is what the auth lookup answers for), and whose
sessions in that database act as the owner role. So everything a tenant creates belongs to an
unprivileged role, outlives the relation, and can be shared by several relations. When the
relation goes, :func:`drop_client` hands what the login role still owns to those owner roles
(never to the relation user, a superuser) and drops it.

Only databases in the leader's record (:mod:`state.tenants`, by OID) are ever handed out: one
that exists without being recorded is refused whatever its comment says; a recorded one taken by
a new relation is first checked for traps (:func:`create_client`).

Extra roles a client may ask for: only ``CREATEDB``. ``SUPERUSER``, ``REPLICATION``,
``CREATEROLE`` and ``BYPASSRLS`` would let a client escape its database (read every password
verifier, stream the whole cluster, grant itself anything, ignore row security); anything else,
predefined roles included (``pg_read_all_data`` reads every database), is not on the list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from postgres.auth import ensure_tenant_role, mark_for
from postgres.connection import (
    BackendCredentials,
    BackendSQLError,
    ForeignObjectError,
    connect,
)
from postgres.passwords import set_password
from postgres.queries import query
from state.names import InvalidNameError, validate_client_database_name, validate_role_name
from state.tenants import (
    ALLOWED_EXTRA_ROLES,
    FORBIDDEN_EXTRA_ROLES,
    ForbiddenRoleError,
    GrantDecision,
    TenantRecord,
    check_extra_roles,
    grant_decision,
    group_role_for,
    orphan_role_for,
    owner_role_for,
)

__all__ = [
    "ALLOWED_EXTRA_ROLES",
    "FORBIDDEN_EXTRA_ROLES",
    "ClientGrant",
    "ForbiddenRoleError",
    "RefusedDatabaseError",
    "TrapError",
    "backend_version",
    "check_extra_roles",
    "client_mark",
    "create_client",
    "drop_client",
    "grant_database",
    "revoke_client",
]

logger = logging.getLogger(__name__)

_NEVER_HANDED_OUT = frozenset({"postgres", "template0", "template1"})


class TrapError(ForeignObjectError):
    """A database of ours holds an object a newcomer must not inherit; ``objects`` names them."""

    def __init__(self, database: str, objects: Sequence[tuple[str, str]]):
        self.objects = tuple(objects)
        shown = "; ".join(f"{obj} (owned by {owner})" for obj, owner in self.objects)
        super().__init__(
            f"database {database!r} holds objects not owned by its owner role: {shown}"
        )


class RefusedDatabaseError(ForeignObjectError):
    """The record says this relation may not have the database (see ``grant_decision``)."""


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


def _run(conn: psycopg.Connection, name: str, **parts: sql.Composable) -> None:
    conn.execute(query("clients.sql", name).format(**parts))


@dataclass(frozen=True)
class ClientGrant:
    """What :func:`create_client` left on the server, for the record."""

    role_oid: int
    database_oid: int
    owner: str
    neutralised: tuple[str, ...] = ()


def _neutralise_settings(
    conn: psycopg.Connection, database: str, db_oid: int, owner_tag: str
) -> list[str]:
    """Reset settings that would apply to a newcomer's sessions in the database.

    Database-wide settings (a ``search_path`` pointing at a planted schema, say) are reset; our
    own roles' settings there are put back to what we set (client roles act as the owner role,
    nothing else). Settings of other roles only apply to those roles and are left alone.
    """
    owner = owner_role_for(database, owner_tag)
    ours = (group_role_for(owner_tag), orphan_role_for(owner_tag), owner)
    expected = [f"role={owner}"]
    database_id = sql.Identifier(database)
    done: list[str] = []
    rows = conn.execute(query("clients.sql", "database_settings"), {"oid": db_oid}).fetchall()
    for setrole, role_name, config in rows:
        if setrole == 0:
            _run(conn, "reset_database_settings", database=database_id)
            done.append(f"database settings {', '.join(config or [])}")
            continue
        is_client = bool(role_name) and role_name.startswith("pgbouncer_client_")
        if not (is_client or role_name in ours) or (is_client and config == expected):
            continue
        role_id = sql.Identifier(role_name)
        _run(conn, "reset_role_settings_in_database", role=role_id, database=database_id)
        if is_client:
            _run(
                conn, "set_role_in_database", role=role_id, database=database_id,
                owner=sql.Literal(owner),
            )  # fmt: skip
        done.append(f"settings of role {role_name}")
    return done


def _check_traps(creds: BackendCredentials, database: str, owner_oid: int) -> None:
    with connect(creds, database) as conn:
        found = conn.execute(
            query("clients.sql", "foreign_objects"), {"owner": owner_oid}
        ).fetchall()
    if found:
        raise TrapError(database, [(str(obj), str(owner)) for obj, owner in found])


def create_client(
    creds: BackendCredentials,
    *,
    username: str,
    password: str,
    database: str,
    extra_roles: Sequence[str],
    owner_tag: str,
    relation_id: int,
    decision: GrantDecision | None = None,
) -> ClientGrant:
    """Create or update a client relation's login role and give it ``database``.

    ``decision`` (from :func:`state.tenants.grant_decision`) says whether the database is to be
    created (``create``, the default: one that already exists is refused, whatever its comment
    says), shared with or reclaimed from the record (``join``/``reclaim``: the recorded OID must
    still match, database-wide settings are reset and any object not owned by the owner role
    refuses the hand-over), or is already held (``keep``).

    Idempotent: a re-run resets attributes, memberships, the password (only written when it
    differs), the database's owner and its grants.

    Raises:
        InvalidNameError: a name fails validation (before any SQL).
        ForbiddenRoleError: an extra role is not allowed (before any SQL).
        ValueError: empty password.
        RefusedDatabaseError: the decision is ``refuse``.
        ForeignObjectError: the role or database exists without being ours.
        TrapError: the database holds objects a newcomer must not inherit.
        BackendError: connection or statement failure.
    """
    validate_role_name(username, "username")
    validate_client_database_name(database, "database")
    roles = check_extra_roles(extra_roles)
    if not isinstance(password, str) or not password:
        raise ValueError("invalid password: empty or not a string")
    decision = decision or GrantDecision("create")
    if decision.action == "refuse":
        raise RefusedDatabaseError(decision.reason)
    mark = client_mark(owner_tag, relation_id)
    is_ours = _client_mark_pattern(owner_tag)
    if database in _NEVER_HANDED_OUT or database == creds.dbname:
        raise ForeignObjectError(f"database {database!r} cannot be handed to a client")
    owner = owner_role_for(database, owner_tag)
    group = group_role_for(owner_tag)
    role_id, database_id = sql.Identifier(username), sql.Identifier(database)
    owner_id = sql.Identifier(owner)
    createdb = sql.SQL("CREATEDB" if "CREATEDB" in roles else "NOCREATEDB")

    with connect(creds) as conn:
        # The database first: nothing is created for a request that is refused.
        db_info = conn.execute(
            query("clients.sql", "database_info"), {"name": database}
        ).fetchone()
        recorded = decision.database
        if db_info is not None and (
            decision.action == "create" or recorded is None or db_info[0] != recorded.oid
        ):
            # Only the record proves a database is ours: a comment can be forged by any owner.
            raise ForeignObjectError(
                f"database {database!r} exists and was not created by this application"
            )
        if db_info is not None and db_info[1]:
            raise ForeignObjectError(f"database {database!r} is a template")

        with conn.transaction():
            ensure_tenant_role(conn, group, owner_tag)
            ensure_tenant_role(conn, orphan_role_for(owner_tag), owner_tag)
            owner_oid = ensure_tenant_role(conn, owner, owner_tag)
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
            role_row = conn.execute(
                query("common.sql", "role_info"), {"name": username}
            ).fetchone()
            assert role_row is not None  # noqa: S101 (created above)

        neutralised: list[str] = []
        if db_info is None:
            # New, or recorded but dropped since: created afresh (CREATE DATABASE cannot run in a
            # transaction; the connection is autocommit).
            _run(conn, "create_database", database=database_id, role=owner_id)
            logger.info("created database %s for client relation %d", database, relation_id)
        elif decision.action in ("join", "reclaim"):
            neutralised = _neutralise_settings(conn, database, int(db_info[0]), owner_tag)
            _check_traps(creds, database, owner_oid)

        with conn.transaction():
            _run(conn, "alter_database_owner", database=database_id, role=owner_id)
            _run(conn, "lock_database", database=database_id)
            _run(conn, "grant_membership", group=owner_id, role=role_id)
            _run(conn, "grant_membership", group=sql.Identifier(group), role=role_id)
            _run(
                conn, "set_role_in_database", role=role_id, database=database_id,
                owner=sql.Literal(owner),
            )  # fmt: skip
            _run(conn, "comment_database", database=database_id, comment=sql.Literal(mark))
        db_row = conn.execute(query("clients.sql", "database_info"), {"name": database}).fetchone()
        assert db_row is not None  # noqa: S101 (created above)
    if neutralised:
        logger.warning("database %s: reset %s", database, "; ".join(neutralised))
    logger.info("client role %s ready on database %s", username, database)
    return ClientGrant(int(role_row[0]), int(db_row[0]), owner, tuple(neutralised))


def grant_database(
    creds: BackendCredentials,
    record: TenantRecord,
    *,
    username: str,
    password: str,
    database: str,
    extra_roles: Sequence[str],
    owner_tag: str,
    relation_id: int,
    app: str,
    live: Collection[int],
) -> TenantRecord:
    """Decide from ``record``, create or hand over, and return the record that results.

    Raises:
        The errors of :func:`create_client`.
    """
    decision = grant_decision(
        record, database=database, relation=relation_id, app=app, live=set(live) | {relation_id}
    )
    if decision.action == "create" and database in record.databases:
        record = record.without_database(database)
    grant = create_client(
        creds,
        username=username,
        password=password,
        database=database,
        extra_roles=extra_roles,
        owner_tag=owner_tag,
        relation_id=relation_id,
        decision=decision,
    )
    return record.with_grant(
        role=username,
        role_oid=grant.role_oid,
        relation=relation_id,
        app=app,
        database=database,
        database_oid=grant.database_oid,
        owner=grant.owner,
    )


def drop_client(
    creds: BackendCredentials,
    *,
    username: str,
    owner_tag: str,
    owners: Mapping[str, str] | None = None,
) -> bool:
    """Drop a client relation's login role; its databases and their data stay.

    The role first loses LOGIN and its sessions are ended; then, in every database where it owns
    objects or holds privileges, ``REASSIGN OWNED`` hands its objects to that database's owner
    role (``owners``; the application's orphan role elsewhere): never to the relation user,
    which is a superuser and would turn a tenant's SECURITY DEFINER function into superuser
    code. ``DROP OWNED`` then removes its grants, and ``DROP ROLE`` the role. The clean-up
    connections override any setting a tenant planted (``default_transaction_read_only``,
    timeouts, ``search_path``: see ``postgres.connection``).

    Args:
        creds: relation user (a superuser).
        username: the client role.
        owner_tag: ``<model-uuid>/<app-name>``.
        owners: database name → its owner role, from the record.

    Returns:
        True when a role was dropped, False when there was none (idempotent).

    Raises:
        InvalidNameError: bad ``username`` or ``owner_tag`` (before any SQL).
        ForeignObjectError: the role exists without this application's client mark.
        BackendError: connection or statement failure.
    """
    validate_role_name(username, "username")
    is_ours = _client_mark_pattern(owner_tag)
    owners = dict(owners or {})
    orphan = orphan_role_for(owner_tag)
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
            ensure_tenant_role(conn, orphan, owner_tag)
            for name in owners.values():
                ensure_tenant_role(conn, name, owner_tag)
            _run(conn, "disable_login", role=role_id)
            conn.execute(query("clients.sql", "terminate_sessions"), {"oid": oid})
        databases = [
            name
            for (name,) in conn.execute(
                query("clients.sql", "databases_with_objects_of"), {"oid": oid}
            ).fetchall()
        ]
    # Its own databases first: REASSIGN OWNED also moves shared objects (a database the client
    # made itself, or took the ownership of) to the first new owner it runs with.
    ordered = sorted(databases, key=lambda d: (d not in owners, d == creds.dbname, d))
    if creds.dbname not in ordered:
        ordered.append(creds.dbname)
    for dbname in ordered:
        new_owner = sql.Identifier(owners.get(dbname, orphan))
        with connect(creds, dbname) as conn, conn.transaction():
            _run(conn, "reassign_owned", role=role_id, new_owner=new_owner)
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


def revoke_client(
    creds: BackendCredentials, record: TenantRecord, *, username: str, owner_tag: str
) -> TenantRecord:
    """Drop a recorded client role (objects to the owner roles) and return the record without it.

    Raises:
        The errors of :func:`drop_client`.
    """
    # Whatever it owns in one of our databases goes to that database's owner role.
    owners = {name: db.owner for name, db in record.databases.items()}
    drop_client(creds, username=username, owner_tag=owner_tag, owners=owners)
    return record.without_role(username)


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
