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

from postgres.auth import auth_schemas, ensure_tenant_role, mark_for
from postgres.connection import (
    BackendCredentials,
    BackendError,
    BackendSQLError,
    ForeignObjectError,
    connect,
)
from postgres.locks import connect_clearing
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
    databases_role_for,
    grant_decision,
    group_role_for,
    orphan_role_for,
    owner_role_for,
    roles_to_drop,
    tenant_roles_regex,
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
    "drop_gone",
    "grant_database",
    "repair_tenancy",
    "revoke_client",
    "secure_database",
    "sweep_grants",
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
    """Reset settings that would apply to sessions in the database, where they differ.

    Database-wide settings (a ``search_path`` pointing at a planted schema, a ``role``) are
    reset; our own roles' settings there are put back to what we set (client roles act as the
    owner role, nothing else). Settings of other roles only apply to those roles and are left
    alone.
    """
    owner = owner_role_for(database, owner_tag)
    ours = (
        group_role_for(owner_tag), orphan_role_for(owner_tag), owner,
        databases_role_for(owner_tag),
    )  # fmt: skip
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


def secure_database(
    conn: psycopg.Connection, database: str, owner_tag: str, *, comment: str | None = None
) -> list[str]:
    """Put a client database object back to what the charm relies on, changing only what differs.

    Owned by the databases role (never a tenant), not a template, open to connections, no
    connection limit, no database-wide settings, ``CONNECT``/``CREATE``/``TEMPORARY`` for its
    owner role and nobody else (``PUBLIC`` included), our roles' settings in it as we set them.

    Returns:
        What was changed ("owner", "IS_TEMPLATE", ...): empty when the database was as it should
        be. Empty too when it does not exist.
    """
    owner = owner_role_for(database, owner_tag)
    keeper = databases_role_for(owner_tag)
    database_id = sql.Identifier(database)
    row = conn.execute(query("clients.sql", "database_state"), {"name": database}).fetchone()
    if row is None:
        return []
    oid, datdba, is_template, allow_conn, conn_limit, current_comment, grants, has_settings = row
    roles = dict(
        conn.execute(
            "SELECT rolname, oid FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
            ([owner, keeper],),
        ).fetchall()
    )
    changed: list[str] = []
    if datdba != roles.get(keeper):
        _run(conn, "alter_database_owner", database=database_id, role=sql.Identifier(keeper))
        changed.append("owner")
    if is_template:
        _run(conn, "database_not_template", database=database_id)
        changed.append("IS_TEMPLATE")
    if not allow_conn:
        _run(conn, "database_allow_connections", database=database_id)
        changed.append("ALLOW_CONNECTIONS")
    if conn_limit != -1:
        _run(conn, "database_no_connection_limit", database=database_id)
        changed.append("CONNECTION LIMIT")
    owner_oid = roles.get(owner)
    wanted = sorted(f"{owner_oid}:{p}:f" for p in ("CONNECT", "CREATE", "TEMPORARY"))
    if "owner" in changed:
        row2 = conn.execute(query("clients.sql", "database_state"), {"name": database}).fetchone()
        grants = row2[6] if row2 else grants
    if sorted(grants or []) != wanted:
        _run(conn, "lock_database", database=database_id)
        others = {int(g.split(":", 1)[0]) for g in grants or []} - {0, owner_oid}
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE oid = ANY(%s) ORDER BY 1",
            (sorted(others),),
        ).fetchall():
            _run(conn, "revoke_database_from", database=database_id, role=sql.Identifier(name))
        _run(conn, "grant_database_to_owner", database=database_id, role=sql.Identifier(owner))
        changed.append("privileges")
    neutralised = _neutralise_settings(conn, database, int(oid), owner_tag)
    if has_settings or neutralised:
        changed.append("settings")
    if comment is not None and current_comment != comment:
        _run(conn, "comment_database", database=database_id, comment=sql.Literal(comment))
    return changed


def _give_public_schema(
    creds: BackendCredentials, database: str, owner: str, owner_tag: str
) -> bool:
    """In a database of ours, the ``public`` schema belongs to its owner role (if it exists).

    ``ALTER SCHEMA`` waits on any tenant transaction that created in the schema: watched.
    """
    with connect_clearing(creds, tenant_roles_regex(owner_tag), database) as conn:
        row = conn.execute(query("clients.sql", "public_schema_owner")).fetchone()
        if row is None or row[0] == owner:
            return False
        _run(conn, "give_public_schema", role=sql.Identifier(owner))
        return True


def _check_traps(creds: BackendCredentials, database: str, owner: str) -> None:
    with connect(creds, database) as conn:
        found = conn.execute(
            query("clients.sql", "foreign_objects"), {"allowed": [owner], "limit": 5}
        ).fetchall()
    if found:
        raise TrapError(database, [(str(obj), str(owner)) for obj, owner in found])


def _record_issued(
    conn: psycopg.Connection, owner_tag: str, username: str, oid: int, verifier: str | None
) -> None:
    """Write the verifier the charm issued where the auth lookup reads it (or forget it)."""
    for schema in auth_schemas(conn, owner_tag):
        if verifier is None:
            conn.execute(
                query("clients.sql", "forget_issued").format(schema=sql.Identifier(schema)),
                {"name": username},
            )
            continue
        conn.execute(query("common.sql", "quiet_transaction"))
        conn.execute(
            query("clients.sql", "record_issued").format(schema=sql.Identifier(schema)),
            {"name": username, "oid": oid, "verifier": verifier},
        )


def _ensure_client_role(
    conn: psycopg.Connection,
    username: str,
    password: str,
    *,
    createdb: bool,
    mark: str,
    is_ours: Callable[[str | None], bool],
    allowed_groups: Collection[str],
) -> tuple[int, str]:
    """Create or put back a client login role, changing only what differs; (OID, verifier)."""
    role_id = sql.Identifier(username)
    createdb_kw = sql.SQL("CREATEDB" if createdb else "NOCREATEDB")
    row = conn.execute(query("clients.sql", "role_state"), {"name": username}).fetchone()
    if row is None:
        _run(conn, "create_client_role", role=role_id, createdb=createdb_kw)
        conn.execute(
            query("common.sql", "comment_role").format(role=role_id, comment=sql.Literal(mark))
        )
        current = None
    else:
        if not is_ours(row[11]):
            raise ForeignObjectError(
                f"role {username!r} exists without this application's mark: left alone"
            )
        attributes = tuple(row[1:2]) + tuple(row[3:11])
        wanted = (True, False, True, False, createdb, False, False, -1, True)
        if attributes != wanted:
            _run(conn, "alter_client_role", role=role_id, createdb=createdb_kw)
        if row[11] != mark:
            conn.execute(
                query("common.sql", "comment_role").format(role=role_id, comment=sql.Literal(mark))
            )
        current = row[2]
    set_password(conn, username, password, current)
    state = conn.execute(query("clients.sql", "role_state"), {"name": username}).fetchone()
    assert state is not None  # noqa: S101 (created above)
    oid, verifier = int(state[0]), str(state[2])
    members = {g for (g,) in conn.execute(query("clients.sql", "memberships_of"), {"oid": oid})}
    for group in sorted(members - set(allowed_groups)):
        _run(conn, "revoke_membership", group=sql.Identifier(group), role=role_id)
    return oid, verifier


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
    held: Collection[str] = (),
) -> ClientGrant:
    """Create or update a client relation's login role and give it ``database``.

    ``decision`` (from :func:`state.tenants.grant_decision`) says whether the database is to be
    created (``create``, the default: one that already exists is refused, whatever its comment
    says), shared with or reclaimed from the record (``join``/``reclaim``: the recorded OID must
    still match, the database object is put back to what we rely on and any object not owned
    by the owner role refuses the hand-over), or is already held (``keep``).

    Change-gated: what is already as it should be is not altered (docs/tenancy.md), so a tenant
    holding a lock on a role or a database cannot stall the next client; a tenant session that
    blocks a change we do need is ended (``postgres.locks``).

    ``held`` names the other databases this login role holds: its memberships of their owner
    roles are kept, and any other membership is revoked.

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
    keeper = databases_role_for(owner_tag)
    group = group_role_for(owner_tag)
    role_id, database_id = sql.Identifier(username), sql.Identifier(database)
    owner_id = sql.Identifier(owner)
    allowed = {owner_role_for(d, owner_tag) for d in held} | {owner}

    with connect_clearing(creds, tenant_roles_regex(owner_tag)) as conn:
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

        with conn.transaction():
            ensure_tenant_role(conn, group, owner_tag)
            ensure_tenant_role(conn, orphan_role_for(owner_tag), owner_tag)
            ensure_tenant_role(conn, keeper, owner_tag)
            ensure_tenant_role(conn, owner, owner_tag)
            role_oid, verifier = _ensure_client_role(
                conn, username, password, createdb="CREATEDB" in roles, mark=mark,
                is_ours=is_ours, allowed_groups=allowed,
            )  # fmt: skip

        neutralised: list[str] = []
        if db_info is None:
            # New, or recorded but dropped since: created afresh (CREATE DATABASE cannot run in a
            # transaction; the connection is autocommit).
            _run(conn, "create_database", database=database_id, role=sql.Identifier(keeper))
            logger.info("created database %s for client relation %d", database, relation_id)
        with conn.transaction():
            neutralised = secure_database(conn, database, owner_tag, comment=mark)
        if db_info is None or "owner" in neutralised:
            _give_public_schema(creds, database, owner, owner_tag)
        if db_info is not None and decision.action in ("join", "reclaim"):
            _check_traps(creds, database, owner)

        with conn.transaction():
            if owner not in {
                g
                for (g,) in conn.execute(query("clients.sql", "memberships_of"), {"oid": role_oid})
            }:
                _run(conn, "grant_membership", group=owner_id, role=role_id)
            settings = conn.execute(
                query("clients.sql", "role_settings_in"),
                {"role": role_oid, "database": db_info[0] if db_info else _oid_of(conn, database)},
            ).fetchone()
            if settings is None or list(settings[0] or []) != [f"role={owner}"]:
                if settings is not None:
                    _run(conn, "reset_role_settings_in_database", role=role_id,
                         database=database_id)  # fmt: skip
                _run(
                    conn, "set_role_in_database", role=role_id, database=database_id,
                    owner=sql.Literal(owner),
                )  # fmt: skip
            # Last: only now may the pooler serve the role (the lookup reads this row).
            _record_issued(conn, owner_tag, username, role_oid, verifier)
        db_row = conn.execute(query("clients.sql", "database_info"), {"name": database}).fetchone()
        assert db_row is not None  # noqa: S101 (created above)
    if neutralised and db_info is not None:
        logger.warning("database %s: reset %s", database, ", ".join(neutralised))
    logger.info("client role %s ready on database %s", username, database)
    return ClientGrant(role_oid, int(db_row[0]), owner, tuple(neutralised))


def _oid_of(conn: psycopg.Connection, database: str) -> int:
    row = conn.execute(query("clients.sql", "database_info"), {"name": database}).fetchone()
    assert row is not None  # noqa: S101 (the caller created it)
    return int(row[0])


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
    consent: Mapping[str, frozenset[str]] | None = None,
) -> TenantRecord:
    """Decide from ``record``, create or hand over, and return the record that results.

    ``consent`` is the operator's ``database_sharing`` (database → applications allowed).

    Raises:
        The errors of :func:`create_client`.
    """
    decision = grant_decision(
        record, database=database, relation=relation_id, app=app,
        live=set(live) | {relation_id}, consent=consent,
    )  # fmt: skip
    role = record.roles.get(username)
    held = tuple(d for d in role.databases if d != database) if role else ()
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
        held=held,
    )
    return record.with_grant(
        role=username,
        role_oid=grant.role_oid,
        relation=relation_id,
        app=app,
        database=database,
        database_oid=grant.database_oid,
        owner=grant.owner,
        guest=decision.action in ("join", "reclaim") and decision.as_guest(app),
    )


def drop_client(
    creds: BackendCredentials,
    *,
    username: str,
    owner_tag: str,
    owners: Mapping[str, str] | None = None,
) -> bool:
    """Drop a client relation's login role; its databases and their data stay.

    In this order, each step change-gated and each wait on a tenant's lock cleared by ending
    the tenant's session (``postgres.locks``), so nothing a tenant does stalls it:

    1. the pooler stops serving it (its issued verifier is forgotten), it loses LOGIN and every
       membership, and its sessions are ended (and waited for: their locks go with them);
    2. databases it owns (made with ``CREATEDB``) go to the application's orphan role *before*
       any ``REASSIGN OWNED``, which would otherwise hand them to the first database's owner
       role, possibly another tenant's;
    3. in every database where it owns objects or holds privileges, ``REASSIGN OWNED`` hands its
       objects to that database's owner role if it held that database (``owners``), to the
       orphan role elsewhere (never to the relation user, a superuser: that would turn a
       tenant's SECURITY DEFINER function into superuser code); ``DROP OWNED`` removes its
       grants and default privileges; a database of ours, or one it owned, that refuses
       connections is opened again first;
    4. ``DROP ROLE``.

    The clean-up connections override any setting a tenant planted (``role``,
    ``default_transaction_read_only``, timeouts, ``search_path``: see ``postgres.connection``).

    Args:
        creds: relation user (a superuser).
        username: the client role.
        owner_tag: ``<model-uuid>/<app-name>``.
        owners: the databases this role held → their owner roles, from the record.

    Returns:
        True when a role was dropped, False when there was none (idempotent).

    Raises:
        InvalidNameError: bad ``username`` or ``owner_tag`` (before any SQL).
        ForeignObjectError: the role exists without this application's client mark.
        Blocked: a session that is not a tenant's holds a lock we need (named).
        BackendError: connection or statement failure (the message names the step).
    """
    validate_role_name(username, "username")
    is_ours = _client_mark_pattern(owner_tag)
    owners = dict(owners or {})
    orphan = orphan_role_for(owner_tag)
    regex = tenant_roles_regex(owner_tag)
    role_id = sql.Identifier(username)
    with connect_clearing(creds, regex) as conn:
        row = conn.execute(query("clients.sql", "role_state"), {"name": username}).fetchone()
        if row is None:
            with conn.transaction():
                _record_issued(conn, owner_tag, username, 0, None)
            return False
        if not is_ours(row[11]):
            raise ForeignObjectError(
                f"role {username!r} exists without this application's mark: left alone"
            )
        oid, can_login = int(row[0]), bool(row[1])
        with conn.transaction():
            _record_issued(conn, owner_tag, username, oid, None)
            ensure_tenant_role(conn, orphan, owner_tag)
            for name in sorted(set(owners.values())):
                ensure_tenant_role(conn, name, owner_tag)
            for (group,) in conn.execute(
                query("clients.sql", "memberships_of"), {"oid": oid}
            ).fetchall():
                _run(conn, "revoke_membership", group=sql.Identifier(group), role=role_id)
            if can_login:
                _run(conn, "disable_login", role=role_id)
        conn.execute(query("clients.sql", "terminate_sessions"), {"oid": oid})
        for name, _allow in conn.execute(
            query("clients.sql", "databases_owned_by"), {"oid": oid}
        ).fetchall():
            _run(conn, "alter_database_owner", database=sql.Identifier(name),
                 role=sql.Identifier(orphan))  # fmt: skip
            # Nobody connects to an orphaned database any more (PUBLIC may by default).
            _run(conn, "lock_database", database=sql.Identifier(name))
            logger.info("database %s, made by %s, now belongs to %s", name, username, orphan)
        orphan_oid = conn.execute(query("clients.sql", "role_state"), {"name": orphan}).fetchone()
        databases = conn.execute(
            query("clients.sql", "databases_with_objects_of"), {"oid": oid}
        ).fetchall()
        keeper_oid = conn.execute(
            query("clients.sql", "role_state"), {"name": databases_role_for(owner_tag)}
        ).fetchone()
        ours = {r[0] for r in (orphan_oid, keeper_oid) if r is not None}
        for name, allow in databases:
            if allow:
                continue
            datdba = conn.execute(
                "SELECT datdba FROM pg_catalog.pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if name in owners or (datdba is not None and datdba[0] in ours):
                _run(conn, "database_allow_connections", database=sql.Identifier(name))
            else:
                raise BackendSQLError(
                    f"cannot drop client role {username!r}: it holds privileges in database "
                    f"{name!r}, which refuses connections and is not ours to open"
                )
    ordered = sorted({name for name, _ in databases} | {creds.dbname})
    for dbname in ordered:
        new_owner = sql.Identifier(owners.get(dbname, orphan))
        with connect_clearing(creds, regex, dbname) as conn, conn.transaction():
            _run(conn, "reassign_owned", role=role_id, new_owner=new_owner)
            _run(conn, "drop_owned", role=role_id)
    with connect_clearing(creds, regex) as conn:
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
    # Whatever it owns in a database it held goes to that database's owner role; elsewhere (a
    # database another tenant granted it something in, say) to the orphan role.
    role = record.roles.get(username)
    held = role.databases if role else ()
    owners = {name: db.owner for name, db in record.databases.items() if name in held}
    drop_client(creds, username=username, owner_tag=owner_tag, owners=owners)
    return record.without_role(username)


def repair_tenancy(
    creds: BackendCredentials, record: TenantRecord, live: Collection[int], *, owner_tag: str
) -> list[str]:
    """Find and put back what drifted from the tenant model; what was put back (docs/tenancy.md).

    Run by the leader on update-status. Reads first, changes only what differs:

    - a client role whose password was changed from inside PostgreSQL (by the tenant, or by
      code running in its session) gets the verifier the charm issued back, and its sessions
      are ended; a recorded role with no issued verifier yet (made before the lookup served
      issued verifiers) has its current one adopted; issued verifiers of roles no live relation
      holds are forgotten; client roles leave the client group;
    - settings of client roles other than ``role = <owner role>`` in their databases are reset
      (role-wide, and in databases they do not hold);
    - every recorded database object is put back (:func:`secure_database`): owner, flags,
      privileges, settings.

    Raises:
        Blocked: a session that is not a tenant's holds a lock a repair needs.
        BackendError: connection or statement failure.
    """
    regex = tenant_roles_regex(owner_tag)
    group = group_role_for(owner_tag)
    live_roles = {n: r for n, r in record.roles.items() if r.relation in live}
    repaired: list[str] = []
    with connect_clearing(creds, regex) as conn:
        for schema in auth_schemas(conn, owner_tag):
            schema_id = sql.Identifier(schema)
            rows = conn.execute(
                query("clients.sql", "issued_state").format(schema=schema_id),
                {"group": group, "names": sorted(live_roles)},
            ).fetchall()
            for name, oid, verifier, issued_oid, issued, in_group in rows:
                role_id = sql.Identifier(name)
                with conn.transaction():
                    if in_group:
                        _run(conn, "revoke_membership", group=sql.Identifier(group), role=role_id)
                    if issued is None or issued_oid != oid:
                        _record_issued(conn, owner_tag, name, int(oid), str(verifier))
                        logger.info("adopted the current verifier of %s as issued", name)
                        continue
                    if verifier == issued:
                        continue
                    conn.execute(query("common.sql", "quiet_transaction"))
                    conn.execute(
                        query("common.sql", "set_password").format(
                            role=role_id, verifier=sql.Literal(issued)
                        )
                    )
                conn.execute(query("clients.sql", "terminate_sessions"), {"oid": oid})
                repaired.append(f"password of {name} changed inside PostgreSQL: put back")
            names = conn.execute(query("clients.sql", "issued_names").format(schema=schema_id))
            for (name,) in names.fetchall():
                if name not in live_roles:
                    with conn.transaction():
                        _record_issued(conn, owner_tag, name, 0, None)
        oids = {r.oid: (n, r) for n, r in live_roles.items()}
        settings = conn.execute(
            query("clients.sql", "settings_of_roles"), {"oids": sorted(oids)}
        ).fetchall()
        for setrole, setdatabase, datname, config in settings:
            name, role = oids[setrole]
            role_id = sql.Identifier(name)
            if setdatabase == 0:
                _run(conn, "reset_role_settings", role=role_id)
                repaired.append(f"settings of {name}: {', '.join(config or [])}: reset")
                continue
            owner = owner_role_for(datname, owner_tag)
            if datname in role.databases and list(config or []) == [f"role={owner}"]:
                continue
            database_id = sql.Identifier(datname)
            with conn.transaction():
                _run(conn, "reset_role_settings_in_database", role=role_id, database=database_id)
                if datname in role.databases:
                    _run(conn, "set_role_in_database", role=role_id, database=database_id,
                         owner=sql.Literal(owner))  # fmt: skip
            repaired.append(f"settings of {name} in {datname}: reset")
        have = {(oids[r][0], d) for r, _, d, _ in settings}
        for name, role in sorted(live_roles.items()):
            for datname in role.databases:
                if (name, datname) in have or datname not in record.databases:
                    continue
                # The tenant reset its own `role` setting there: its sessions would create
                # objects as the login role instead of the owner role.
                _run(conn, "set_role_in_database", role=sql.Identifier(name),
                     database=sql.Identifier(datname),
                     owner=sql.Literal(owner_role_for(datname, owner_tag)))  # fmt: skip
                repaired.append(f"settings of {name} in {datname}: put back")
        for database, db in sorted(record.databases.items()):
            with conn.transaction():
                changed = secure_database(conn, database, owner_tag)
            if changed:
                repaired.append(f"database {database}: {', '.join(changed)} put back")
            if "owner" in changed:
                _give_public_schema(creds, database, db.owner, owner_tag)
    repaired += [f"grants to {pair}: revoked" for pair in sweep_grants(
        creds, record, live, owner_tag=owner_tag)]  # fmt: skip
    for line in repaired:
        logger.warning("tenancy: %s", line)
    return repaired


def sweep_grants(
    creds: BackendCredentials, record: TenantRecord, live: Collection[int], *, owner_tag: str
) -> list[str]:
    """Revoke what a tenant granted, in its database, to a login role that does not hold it.

    A tenant may grant privileges on its tables, or default privileges on future ones, to any
    role, another client login included (a co-tenant's other relation, say). That login cannot
    connect to the database, so the grant is inert; but it must not outlive the relation that
    made it, nor wait for a login that later joins. One query on the shared catalog finds the
    pairs; only then is the database opened, and ``DROP OWNED`` run there for that login (our
    logins hold no privilege on shared objects, and own no object in a database they do not
    hold, so nothing else is touched).

    Returns:
        ``"<login> in <database>"`` for each pair swept.
    """
    logins = {r.oid: (n, r) for n, r in record.roles.items() if r.relation in live}
    databases = {d.oid: n for n, d in record.databases.items()}
    if not logins or not databases:
        return []
    with connect(creds) as conn:
        pairs = conn.execute(
            query("clients.sql", "grants_across"),
            {"roles": sorted(logins), "databases": sorted(databases)},
        ).fetchall()
    swept: list[str] = []
    regex = tenant_roles_regex(owner_tag)
    for role_oid, db_oid in pairs:
        name, role = logins[role_oid]
        database = databases[db_oid]
        if database in role.databases:
            continue
        with connect_clearing(creds, regex, database) as conn:
            _run(conn, "drop_owned", role=sql.Identifier(name))
        swept.append(f"{name} in {database}")
        logger.warning("revoked what tenants of %s had granted to %s", database, name)
    return swept


def drop_gone(
    creds: BackendCredentials, record: TenantRecord, live: Collection[int], *, owner_tag: str
) -> tuple[TenantRecord, dict[str, str]]:
    """Drop the login role of every relation that is gone, then sweep what they granted.

    The leader's clean-up in one place (``reconcile`` and the tenant fuzzer both call it). A
    role that could not be dropped stays in the record, to be retried by the next hook.

    Returns:
        The record after the drops, and the roles not dropped with the reason for each.
    """
    failures: dict[str, str] = {}
    dropped = False
    for username in roles_to_drop(record, live):
        try:
            record = revoke_client(creds, record, username=username, owner_tag=owner_tag)
        except BackendError as exc:
            logger.warning("could not drop client user %s (will retry): %s", username, exc)
            failures[username] = str(exc)
            continue
        dropped = True
        logger.info("dropped client user %s", username)
    if dropped and live:
        # What the departed tenants granted to other logins in the databases they held.
        try:
            sweep_grants(creds, record, live, owner_tag=owner_tag)
        except BackendError as exc:
            logger.warning("could not revoke grants left by departed tenants: %s", exc)
    return record, failures


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
