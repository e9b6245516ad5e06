"""The auth lookup plumbing PgBouncer's ``auth_query`` uses, in the backend database we requested.

What :func:`install_auth` leaves in that database (all in one transaction, idempotent):

- the auth role ``pgbouncer_auth_<backend user>``: LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE,
  NOREPLICATION, NOBYPASSRLS, NOINHERIT, SCRAM password; the only role (besides superusers)
  allowed to CONNECT to the auth database;
- the definer role ``<auth role>_definer``: NOLOGIN, no attributes, holding SELECT on exactly
  the six ``pg_catalog.pg_authid`` columns the lookup reads (in this database only). It owns the
  schema and the function, so the function keeps working after the PostgreSQL charm drops the
  relation user, and the function runs with no more than it needs (docs/auth-plumbing.md);
- a schema named like the auth role, USAGE for the auth role only;
- ``<schema>.get_auth(p_usename text) RETURNS TABLE(usename name, passwd text)``: SECURITY
  DEFINER, ``search_path`` pinned to ``pg_catalog, pg_temp``; EXECUTE for the auth role only.

Every object carries the comment ``pgbouncer-k8s owner=<model-uuid>/<app> kind=auth``; removal
and the leftover sweep touch nothing without that exact mark.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from postgres.connection import BackendCredentials, ForeignObjectError, connect
from postgres.passwords import generate_password, set_password
from postgres.queries import query
from state.names import (
    AUTH_ROLE_PREFIX,
    MAX_IDENTIFIER_BYTES,
    InvalidNameError,
    auth_query_for,
    auth_username_for,
    validate_plain_identifier,
)
from state.rotation import alternate_auth_user
from state.tenants import group_role_for

logger = logging.getLogger(__name__)

__all__ = [
    "AUTH_ROLE_PREFIX",
    "AuthQuery",
    "auth_query_for",
    "auth_schemas",
    "auth_username_for",
    "definer_role_for",
    "ensure_tenant_role",
    "find_leftovers",
    "generate_password",
    "install_auth",
    "mark_for",
    "remove_auth",
    "remove_leftovers",
]

_DEFINER_SUFFIX = "_definer"
_MARK_PREFIX = "pgbouncer-k8s owner="
# <model-uuid>/<app-name>: no whitespace, so that the mark is compared exactly.
_OWNER_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[a-z0-9][a-z0-9-]*")
_ANY_AUTH_MARK = re.compile(r"pgbouncer-k8s owner=\S+ kind=auth")


@dataclass(frozen=True)
class AuthQuery:
    """What PgBouncer needs to use the installed lookup.

    Attributes:
        auth_user: the auth role (PgBouncer's ``auth_user``).
        auth_query: ``SELECT usename, passwd FROM "<schema>".get_auth($1)``.
        dbname: the backend database holding the function (target of ``auth_dbname``).
    """

    auth_user: str
    auth_query: str
    dbname: str


def definer_role_for(auth_user: str) -> str:
    """The NOLOGIN role owning ``auth_user``'s schema and function.

    ``<auth_user>_definer``; when that would pass 63 bytes, the auth name is shortened and a
    hash of it keeps the result unique.
    """
    name = auth_user + _DEFINER_SUFFIX
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        digest = hashlib.sha256(auth_user.encode()).hexdigest()[:8]
        keep = MAX_IDENTIFIER_BYTES - len(_DEFINER_SUFFIX) - len(digest) - 1
        name = f"{auth_user[:keep]}_{digest}{_DEFINER_SUFFIX}"
    return validate_plain_identifier(name, "auth definer role")


def mark_for(owner_tag: str) -> str:
    """The comment every auth object carries.

    Raises:
        InvalidNameError: ``owner_tag`` is not ``<model-uuid>/<app-name>``.
    """
    if (
        not isinstance(owner_tag, str)
        or len(owner_tag) > 200
        or not _OWNER_TAG.fullmatch(owner_tag)
    ):
        raise InvalidNameError("owner tag", owner_tag, "not <model-uuid>/<app-name>")
    return f"{_MARK_PREFIX}{owner_tag} kind=auth"


def _run(conn: psycopg.Connection, name: str, **parts: sql.Composable) -> None:
    conn.execute(query("auth.sql", name).format(**parts))


def tenant_mark(owner_tag: str) -> str:
    """The comment on owner roles, the client group and the orphan role (informational only)."""
    return mark_for(owner_tag).removesuffix(" kind=auth") + " kind=tenant"


def ensure_tenant_role(conn: psycopg.Connection, role: str, owner_tag: str) -> int:
    """Create a NOLOGIN tenant role, or put an existing one back; returns its OID.

    Read first, changed only where it differs (docs/tenancy.md, "The charm never waits"): a
    tenant acting as an owner role can hold a lock on that role's row for as long as it likes,
    so a role that is already right is never altered. A role of that name without our mark is
    someone else's: :class:`ForeignObjectError`. Must run inside a transaction.
    """
    validate_plain_identifier(role, "tenant role")
    mark = tenant_mark(owner_tag)
    role_id = sql.Identifier(role)
    row = conn.execute(query("clients.sql", "role_state"), {"name": role}).fetchone()
    if row is None:
        conn.execute(query("clients.sql", "create_tenant_role").format(role=role_id))
        conn.execute(
            query("common.sql", "comment_role").format(role=role_id, comment=sql.Literal(mark))
        )
        row = conn.execute(query("clients.sql", "role_state"), {"name": role}).fetchone()
        assert row is not None  # noqa: S101 (created above)
        return int(row[0])
    oid, login, password, superuser, inherit, createrole, createdb, repl, bypass = row[:9]
    connlimit, forever, comment = row[9:]
    if comment != mark:
        raise ForeignObjectError(f"role {role!r} exists without this application's mark")
    wanted = (False, None, False, True, False, False, False, False, -1, True)
    if (login, password, superuser, inherit, createrole, createdb, repl, bypass, connlimit,
            forever) != wanted:  # fmt: skip
        conn.execute(query("clients.sql", "alter_tenant_role").format(role=role_id))
    # A tenant role is a member of nothing: a membership planted on it is revoked.
    for (group,) in conn.execute(query("clients.sql", "memberships_of"), {"oid": oid}).fetchall():
        conn.execute(
            query("clients.sql", "revoke_membership").format(
                group=sql.Identifier(group), role=role_id
            )
        )
    return int(oid)


def auth_schemas(conn: psycopg.Connection, owner_tag: str) -> list[str]:
    """This application's auth schemas in the connected database (where ``issued`` lives)."""
    rows = conn.execute(query("auth.sql", "auth_schemas"), {"comment": mark_for(owner_tag)})
    return [name for (name,) in rows.fetchall()]


def _role_row(conn: psycopg.Connection, role: str) -> tuple | None:
    return conn.execute(query("common.sql", "role_info"), {"name": role}).fetchone()


def _check_ours(kind: str, name: str, comment: str | None, mark: str) -> None:
    if comment != mark:
        raise ForeignObjectError(
            f"{kind} {name!r} exists without this application's pgbouncer-k8s mark: left alone"
        )


def install_auth(
    creds: BackendCredentials,
    *,
    auth_user: str,
    auth_password: str,
    owner_tag: str,
    login_role: str | None = None,
) -> AuthQuery:
    """Create or update the auth plumbing in ``creds.dbname``, in one transaction.

    Idempotent: a second run with the same arguments changes nothing in the catalog (the
    password is only set again when it differs).

    Args:
        creds: relation user (a superuser) and the database we requested.
        auth_user: the auth role name (from :func:`auth_username_for`).
        auth_password: the plain password of the generation that logs in.
        owner_tag: ``<model-uuid>/<app-name>``.
        login_role: the generation that logs in (``rotate-credentials``,
            :mod:`state.rotation`): ``auth_user`` (the default) or its alternate, which then
            gets the same attributes, limits and grants and ``auth_password``; the other
            generation's password is left as it is.

    Returns:
        The auth role, the ``auth_query`` and the database holding the function.

    Raises:
        InvalidNameError: a name or the owner tag fails validation (before any SQL).
        ValueError: empty password.
        ForeignObjectError: a role, schema or function of that name exists without our mark.
        BackendError: connection or statement failure (nothing is left half-done).
    """
    validate_plain_identifier(auth_user, "auth username")
    if not isinstance(auth_password, str) or not auth_password:
        raise ValueError("invalid auth password: empty or not a string")
    login_role = login_role or auth_user
    if login_role not in (auth_user, alternate_auth_user(auth_user)):
        raise InvalidNameError("login role", login_role, "not a generation of the auth role")
    mark = mark_for(owner_tag)
    definer = definer_role_for(auth_user)
    role_id, definer_id, schema_id = (sql.Identifier(x) for x in (auth_user, definer, auth_user))
    comment = sql.Literal(mark)

    with connect(creds) as conn, conn.transaction():
        row = _role_row(conn, auth_user)
        if row is None:
            _run(conn, "create_auth_role", role=role_id)
            current_password = None
        else:
            _check_ours("role", auth_user, row[3], mark)
            _run(conn, "alter_auth_role", role=role_id)
            current_password = row[2]
        _run_common(conn, "comment_role", role=role_id, comment=comment)
        for limit in ("limit_auth_role", "limit_auth_role_timeout", "limit_auth_role_temp"):
            _run(conn, limit, role=role_id)
        if login_role == auth_user and set_password(
            conn, auth_user, auth_password, current_password
        ):
            logger.info("set the password of auth role %s", auth_user)

        row = _role_row(conn, definer)
        if row is None:
            _run(conn, "create_definer_role", role=definer_id)
        else:
            _check_ours("role", definer, row[3], mark)
            _run(conn, "alter_definer_role", role=definer_id)
        _run_common(conn, "comment_role", role=definer_id, comment=comment)
        _run(conn, "grant_authid_columns", role=definer_id)

        row = conn.execute(query("auth.sql", "schema_info"), {"name": auth_user}).fetchone()
        if row is None:
            _run(conn, "create_schema", schema=schema_id, owner=definer_id)
        else:
            _check_ours("schema", auth_user, row[2], mark)
            _run(conn, "alter_schema_owner", schema=schema_id, owner=definer_id)
        _run(conn, "lock_schema", schema=schema_id)
        _run(conn, "grant_schema_usage", schema=schema_id, role=role_id)
        _run(conn, "comment_schema", schema=schema_id, comment=comment)

        row = conn.execute(query("auth.sql", "function_info"), {"schema": auth_user}).fetchone()
        if row is not None:
            _check_ours("function", f"{auth_user}.get_auth", row[1], mark)
        group = group_role_for(owner_tag)
        ensure_tenant_role(conn, group, owner_tag)
        _run(conn, "create_issued", schema=schema_id)
        row = conn.execute(query("auth.sql", "issued_owner"), {"schema": auth_user}).fetchone()
        if row is None or row[0] != definer:
            _run(conn, "alter_issued_owner", schema=schema_id, owner=definer_id)
        _run(conn, "lock_issued", schema=schema_id)
        _run(
            conn,
            "create_function",
            schema=schema_id,
            auth_role_name=sql.Literal(auth_user),
            group_name=sql.Literal(group),
        )
        _run(conn, "alter_function_owner", schema=schema_id, owner=definer_id)
        _run(conn, "lock_function", schema=schema_id, owner=definer_id)
        _run(conn, "grant_function", schema=schema_id, role=role_id)
        _run(conn, "comment_function", schema=schema_id, comment=comment)

        database_id = sql.Identifier(creds.dbname)
        _run(conn, "lock_database", database=database_id)
        _run(conn, "grant_database_connect", database=database_id, role=role_id)
        if login_role != auth_user:
            _ensure_generation(conn, auth_user, login_role, auth_password, mark)

    logger.info("auth plumbing for %s installed in database %s", auth_user, creds.dbname)
    return AuthQuery(
        auth_user=auth_user, auth_query=auth_query_for(auth_user), dbname=creds.dbname
    )


def _ensure_generation(
    conn: psycopg.Connection, auth_user: str, role: str, password: str, mark: str
) -> None:
    """The auth role's alternate generation, as the auth role is: attributes, limits, grants.

    It uses the lookup in ``auth_user``'s schema (USAGE, EXECUTE) and may connect to the auth
    database; the lookup refuses it a password like any role outside the allow-list.
    """
    role_id, schema_id = sql.Identifier(role), sql.Identifier(auth_user)
    row = _role_row(conn, role)
    if row is None:
        _run(conn, "create_auth_role", role=role_id)
        current = None
    else:
        _check_ours("role", role, row[3], mark)
        _run(conn, "alter_auth_role", role=role_id)
        current = row[2]
    _run_common(conn, "comment_role", role=role_id, comment=sql.Literal(mark))
    for limit in ("limit_auth_role", "limit_auth_role_timeout", "limit_auth_role_temp"):
        _run(conn, limit, role=role_id)
    if set_password(conn, role, password, current):
        logger.info("set the password of auth role %s", role)
    _run(conn, "grant_schema_usage", schema=schema_id, role=role_id)
    _run(conn, "grant_function", schema=schema_id, role=role_id)
    _run(conn, "grant_database_connect", database=sql.Identifier(conn.info.dbname), role=role_id)


def retire_generation(creds: BackendCredentials, *, role: str, owner_tag: str) -> bool:
    """Remove the password of a generation no unit uses any more; True if it had one.

    The role stays (the next rotation gives it a new password): without a verifier no
    password opens it. Its sessions are left to end: PgBouncer closes its idle server
    connections after ``server_idle_timeout``, and none is given to a new lookup.

    Raises:
        InvalidNameError: a bad name or owner tag (before any SQL).
        ForeignObjectError: a role of that name without our mark.
        BackendError: connection or statement failure.
    """
    validate_plain_identifier(role, "auth generation")
    mark = mark_for(owner_tag)
    with connect(creds) as conn, conn.transaction():
        row = _role_row(conn, role)
        if row is None:
            return False
        _check_ours("role", role, row[3], mark)
        if row[2] is None:
            return False
        _run(conn, "clear_password", role=sql.Identifier(role))
    logger.info("removed the password of auth role %s", role)
    return True


def _run_common(conn: psycopg.Connection, name: str, **parts: sql.Composable) -> None:
    conn.execute(query("common.sql", name).format(**parts))


def _drop_role(conn: psycopg.Connection, role: str, oid: int, *, definer: bool) -> None:
    role_id = sql.Identifier(role)
    granting = conn.execute(query("common.sql", "databases_granting"), {"oid": oid}).fetchall()
    for (datname,) in granting:
        _run_common(conn, "revoke_database", database=sql.Identifier(datname), role=role_id)
    if definer:
        _run(conn, "revoke_authid_columns", role=role_id)
    _run_common(conn, "drop_role", role=role_id)


def _remove_pair(
    conn: psycopg.Connection, auth_user: str | None, definer: str, is_ours
) -> list[str]:
    """Drop one auth role's objects and roles that ``is_ours``; returns the roles dropped."""
    schemas: dict[str, str | None] = {}
    if auth_user is not None:
        row = conn.execute(query("auth.sql", "schema_info"), {"name": auth_user}).fetchone()
        if row is not None:
            schemas[auth_user] = row[2]
    for name, comment in conn.execute(query("auth.sql", "schemas_owned_by"), {"owner": definer}):
        schemas[name] = comment
    for schema, comment in schemas.items():
        if not is_ours(comment):
            continue
        schema_id = sql.Identifier(schema)
        row = conn.execute(query("auth.sql", "function_info"), {"schema": schema}).fetchone()
        if row is not None and is_ours(row[1]):
            _run(conn, "drop_function", schema=schema_id)
        _run(conn, "drop_issued", schema=schema_id)
        _run(conn, "drop_schema", schema=schema_id)
    dropped = []
    generation = alternate_auth_user(auth_user) if auth_user is not None else None
    for role, is_definer in ((auth_user, False), (generation, False), (definer, True)):
        if role is None:
            continue
        row = _role_row(conn, role)
        if row is not None and is_ours(row[3]):
            _drop_role(conn, role, row[0], definer=is_definer)
            dropped.append(role)
    return dropped


def _drop_group_if_empty(conn: psycopg.Connection, owner_tag: str) -> list[str]:
    """Drop the client group once no client role is left in it (it owns nothing)."""
    group = group_role_for(owner_tag)
    row = _role_row(conn, group)
    if row is None or row[3] != tenant_mark(owner_tag):
        return []
    members = conn.execute(query("auth.sql", "members_of"), {"oid": row[0]}).fetchone()
    if members is not None and members[0]:
        return []
    _run_common(conn, "drop_role", role=sql.Identifier(group))
    return [group]


def remove_auth(
    creds: BackendCredentials, *, auth_user: str, owner_tag: str | None = None
) -> None:
    """Drop the function, schema, auth role and definer role, in one transaction.

    Only objects carrying our mark are dropped: the exact mark of ``owner_tag`` when given,
    else any ``pgbouncer-k8s owner=... kind=auth`` mark. Nothing there is fine.

    Args:
        creds: relation user (a superuser) and the database holding the function.
        auth_user: the auth role name.
        owner_tag: ``<model-uuid>/<app-name>``, to only touch this application's objects.

    Raises:
        InvalidNameError: ``auth_user`` or ``owner_tag`` fails validation (before any SQL).
        BackendError: connection or statement failure (for example an object of ours that
            something foreign now depends on); nothing is dropped then.
    """
    validate_plain_identifier(auth_user, "auth username")
    if owner_tag is None:

        def is_ours(comment: str | None) -> bool:
            return comment is not None and _ANY_AUTH_MARK.fullmatch(comment) is not None
    else:
        mark = mark_for(owner_tag)

        def is_ours(comment: str | None) -> bool:
            return comment == mark

    with connect(creds) as conn, conn.transaction():
        dropped = _remove_pair(conn, auth_user, definer_role_for(auth_user), is_ours)
        if owner_tag is not None:
            dropped += _drop_group_if_empty(conn, owner_tag)
    logger.info("auth plumbing for %s removed (roles dropped: %s)", auth_user, dropped or "none")


def _leftovers(conn: psycopg.Connection, mark: str, keep: str | None) -> list[tuple[str, bool]]:
    spared = set() if keep is None else {keep, definer_role_for(keep), alternate_auth_user(keep)}
    rows = conn.execute(query("auth.sql", "marked_roles"), {"comment": mark}).fetchall()
    found = [(name, can_login) for name, can_login in rows if name not in spared]
    # An alternate generation goes with its first one (its grants are on that one's schema).
    seconds = {alternate_auth_user(name) for name, _ in found}
    return sorted(found, key=lambda row: row[0] in seconds)


def find_leftovers(creds: BackendCredentials, *, owner_tag: str, keep: str | None) -> list[str]:
    """Roles marked by this application's auth plumbing, other than ``keep`` and its definer.

    Args:
        creds: relation user and a database to connect to.
        owner_tag: ``<model-uuid>/<app-name>``.
        keep: the auth role in use now, or None.

    Returns:
        Sorted role names (auth roles and definer roles).

    Raises:
        InvalidNameError: bad ``owner_tag`` or ``keep``.
        BackendError: connection or statement failure.
    """
    mark = mark_for(owner_tag)
    if keep is not None:
        validate_plain_identifier(keep, "auth username")
    with connect(creds) as conn:
        return [name for name, _ in _leftovers(conn, mark, keep)]


def remove_leftovers(creds: BackendCredentials, *, owner_tag: str, keep: str | None) -> list[str]:
    """Remove what :func:`find_leftovers` finds, with their schemas and functions in ``creds.dbname``.

    One transaction: all leftovers go, or none.

    Returns:
        The role names dropped, sorted.

    Raises:
        InvalidNameError: bad ``owner_tag`` or ``keep``.
        BackendError: connection or statement failure (e.g. a leftover whose function lives
            in another database still depends on it); nothing is dropped then.
    """
    mark = mark_for(owner_tag)
    if keep is not None:
        validate_plain_identifier(keep, "auth username")

    def is_ours(comment: str | None) -> bool:
        return comment == mark

    dropped: list[str] = []
    with connect(creds) as conn, conn.transaction():
        leftovers = _leftovers(conn, mark, keep)
        for name, can_login in leftovers:
            if can_login:
                dropped += _remove_pair(conn, name, definer_role_for(name), is_ours)
        for name, can_login in leftovers:
            if not can_login and name not in dropped:
                # A definer whose auth role is already gone.
                dropped += _remove_pair(conn, None, name, is_ours)
    if dropped:
        logger.info("removed leftover auth roles: %s", ", ".join(sorted(dropped)))
    return sorted(dropped)


def check_auth(
    creds: BackendCredentials,
    *,
    auth_user: str,
    auth_password: str,
    owner_tag: str,
    schema: str | None = None,
) -> str | None:
    """Log in as the auth role and run its lookup, as PgBouncer does; what is broken, if anything.

    The honest check: the role, its password, its CONNECT, the schema's USAGE, the function,
    its EXECUTE grant and the definer's read of ``pg_authid`` are all exercised by one lookup
    (of a name no role has), and the client group the lookup needs must exist.

    Args:
        creds: the backend (host, port, database holding the function); its user is not used.
        auth_user: the auth role.
        auth_password: its plain password.
        owner_tag: ``<model-uuid>/<app-name>``.
        schema: the lookup's schema when ``auth_user`` is the alternate generation.

    Returns:
        None when the plumbing works, else a short description of the first failure.
    """
    from postgres.connection import BackendError

    as_auth = creds.as_user(auth_user, auth_password)
    group = group_role_for(owner_tag)
    try:
        with connect(as_auth) as conn:
            res = conn.pgconn.exec_params(
                auth_query_for(schema or auth_user).encode(), [b"pgbouncer-k8s-health-check"]
            )
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                message = (res.error_message or b"").decode(errors="replace").strip()
                return f"the lookup fails: {message.splitlines()[0] if message else 'error'}"
            row = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (group,)
            ).fetchone()
            if row is None:
                return f"the client group {group} is missing"
    except BackendError as exc:
        return str(exc)
    return None
