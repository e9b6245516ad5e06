"""The tenancy audit: the invariants of docs/tenancy.md, checked on the live backend.

Read-only: catalog queries as the relation user, one connection for the cluster-wide view and
one per tenant database, each session read-only (``default_transaction_read_only``, so a
statement that would write fails instead) with a :data:`AUDIT_LOCK_TIMEOUT_MS` lock timeout
and the connection's statement timeout and deadline (``postgres.connection``). It changes
nothing and takes no lock a tenant could wait on: catalog reads take only ``ACCESS SHARE``,
which conflicts with nothing a tenant can take on a catalog, and no statement is left in an
open transaction. The tenant fuzzer
(``tests/functional/test_tenant_fuzz.py``) uses it as its oracle, so the tests and the operator's
view agree by construction.

Each finding is a :class:`Violation` with a ``severity``:

- ``breach``: the boundary is open: someone can reach, or keep, what the model says they may
  not (a database object not ours, a grant beyond the tenant, a membership, a login of a
  removed relation, a changed lookup). Never expected after a reconcile.
- ``drift``: something a tenant may change about itself changed and the charm puts it back on
  update-status (its password, its own settings), or a clean-up is still pending.
- ``hazard``: allowed, but worth an operator's eye (a SECURITY DEFINER function without a
  pinned ``search_path``, default privileges to PUBLIC inside a database only its holders reach).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from postgres.auth import auth_schemas, definer_role_for
from postgres.connection import BackendCredentials, BackendError, connect
from postgres.queries import query
from state.names import auth_username_for
from state.rotation import generations
from state.tenants import (
    TenantRecord,
    client_role_pattern,
    databases_role_for,
    group_role_for,
    orphan_role_for,
    owner_role_for,
    tenant_roles_regex,
)

BREACH, DRIFT, HAZARD = "breach", "drift", "hazard"
_DB_PRIVILEGES = ("CONNECT", "CREATE", "TEMPORARY")
AUTH_ROLE_SETTINGS = frozenset(
    {"default_transaction_read_only=on", "statement_timeout=5s", "temp_file_limit=0"}
)
"""The role-wide settings ``postgres/sql/auth.sql`` gives the auth role, and no others."""
AUDIT_LOCK_TIMEOUT_MS = 1000
"""How long one audit statement may wait for a lock before it gives up (and reports)."""


def _read_only(conn: psycopg.Connection) -> psycopg.Connection:
    """Make an audit session read-only, with a short lock wait; returns ``conn``."""
    conn.execute("SET default_transaction_read_only = on")
    conn.execute(
        sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{AUDIT_LOCK_TIMEOUT_MS}ms"))
    )
    return conn


@dataclass(frozen=True)
class Violation:
    """One finding: what kind, where, on what object, and what exactly."""

    kind: str
    database: str
    object: str
    detail: str
    severity: str = BREACH

    def as_dict(self) -> dict[str, str]:
        """For JSON (the action's ``violations``)."""
        return asdict(self)


def _expected_lookup_body(auth_user: str, owner_tag: str) -> str:
    """The body of ``get_auth`` as :func:`postgres.auth.install_auth` installs it."""
    text = (
        query("auth.sql", "create_function")
        .format(
            schema=sql.Identifier(auth_user),
            auth_role_name=sql.Literal(auth_user),
            group_name=sql.Literal(group_role_for(owner_tag)),
        )
        .as_string(None)
    )
    return text.split("$get_auth$")[1]


def audit_tenancy(
    creds: BackendCredentials,
    record: TenantRecord,
    live: Collection[int],
    *,
    owner_tag: str,
    auth_user: str | None = None,
    console_users: Collection[str] = (),
) -> list[Violation]:
    """Check every tenant invariant on the backend; the findings, most serious first.

    Args:
        creds: the relation user (a superuser) and the auth database.
        record: the tenant record (peer app data).
        live: ids of the live client relations.
        owner_tag: ``<model-uuid>/<app-name>``.
        auth_user: the auth role in use (default: derived from the relation user).
        console_users: the PgBouncer-only users (stats, admin): no PostgreSQL role may have
            their names (docs/actions.md, ``pause database=``).

    Raises:
        BackendError: the backend could not be read.
    """
    auth_user = auth_user or auth_username_for(creds.user)
    pattern = tenant_roles_regex(owner_tag)
    logins = client_role_pattern(owner_tag)
    group, orphan = group_role_for(owner_tag), orphan_role_for(owner_tag)
    keeper = databases_role_for(owner_tag)
    live_roles = {n: r for n, r in record.roles.items() if r.relation in live}
    holders_of: dict[str, set[str]] = {}
    for name, role in live_roles.items():
        for database in role.databases:
            holders_of.setdefault(database, set()).add(name)
    owners = {owner_role_for(d, owner_tag): d for d in record.databases}
    found: list[Violation] = []

    def add(kind: str, database: str, obj: str, detail: str, severity: str = BREACH) -> None:
        found.append(Violation(kind, database, obj, detail, severity))

    with connect(creds) as raw:
        conn = _read_only(raw)
        oid_to_db: dict[int, str] = {}
        databases = conn.execute(
            query("audit.sql", "tenant_databases"), {"names": sorted(record.databases)}
        ).fetchall()
        present = set()
        for name, oid, datdba, is_template, allow, limit, grants, settings in databases:
            present.add(name)
            oid_to_db[int(oid)] = name
            recorded = record.databases[name]
            if int(oid) != recorded.oid:
                add("record", name, name, f"database OID {oid} is not the recorded {recorded.oid}")
                continue
            if datdba != keeper:
                add("database-owner", name, name, f"owned by {datdba}, not {keeper}")
            if is_template:
                add("database-flag", name, name, "IS_TEMPLATE is true")
            if not allow:
                add("database-flag", name, name, "ALLOW_CONNECTIONS is false")
            if limit != -1:
                add("database-flag", name, name, f"CONNECTION LIMIT {limit}")
            wanted = {f"{recorded.owner}:{p}" for p in _DB_PRIVILEGES}
            for grant in sorted(set(grants or []) - wanted):
                add("database-grant", name, name, f"privilege beyond its owner role: {grant}")
            for setting in settings or []:
                role, _, value = setting.partition(":")
                if not role:
                    add("database-setting", name, name, f"database-wide setting {value}")
                elif role in live_roles or logins.fullmatch(role):
                    expected = f"role={recorded.owner}"
                    if role not in holders_of.get(name, set()) or value != expected:
                        add("role-setting", name, role, f"setting {value}", DRIFT)
        for name in sorted(set(record.databases) - present):
            add("record", name, name, "recorded database is gone from the server", DRIFT)

        roles = conn.execute(
            query("audit.sql", "roles"), {"pattern": pattern, "names": []}
        ).fetchall()
        existing = set()
        for row in roles:
            oid, name, login, superuser, _inherit, createrole, createdb, repl, bypass = row[:9]
            member_of, settings = row[9], row[11]
            existing.add(name)
            if superuser or createrole or repl or bypass:
                add("role-attribute", "", name, "SUPERUSER, CREATEROLE, REPLICATION or BYPASSRLS")
            if logins.fullmatch(name):
                role = live_roles.get(name)
                if role is None:
                    pending = name in record.roles
                    if login:
                        add("login", "", name, "login role of no live relation can log in")
                    else:
                        add("login", "", name, "role of a removed relation not dropped yet",
                            DRIFT if pending else BREACH)  # fmt: skip
                    continue
                if int(oid) != role.oid:
                    add("record", "", name, f"role OID {oid} is not the recorded {role.oid}")
                held = {owner_role_for(d, owner_tag) for d in role.databases}
                for membership in sorted(set(member_of) - held):
                    add("role-membership", "", name, f"member of {membership}")
                seen = set()
                for setting in settings or []:
                    db_oid, _, value = setting.partition(":")
                    db_name = oid_to_db.get(int(db_oid), "")
                    seen.add(db_name)
                    if db_oid == "0":
                        add("role-setting", "", name, f"role-wide setting {value}", DRIFT)
                    elif db_name not in role.databases:
                        add("role-setting", db_name, name, f"setting {value}", DRIFT)
                for db_name in sorted(set(role.databases) & present - seen):
                    add("role-setting", db_name, name, "acts as itself, not the owner role", DRIFT)
                continue
            if login:
                add("role-attribute", "", name, "tenant role (not a client login) can log in")
            if createdb:
                add("role-attribute", "", name, "tenant role has CREATEDB")
            for membership in member_of:
                add("role-membership", "", name, f"tenant role is a member of {membership}")
            if name not in owners and name not in (group, orphan, keeper):
                add("role-unknown", "", name, "named like our owner roles, not in the record",
                    HAZARD)  # fmt: skip
        for name in sorted(set(live_roles) - existing):
            add("record", "", name, "recorded login role is gone from the server")
        for (name,) in conn.execute(
            sql.SQL(
                "SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY({}) ORDER BY 1"
            ).format(sql.Placeholder()),
            (sorted(console_users),),
        ).fetchall():
            add("console-user", "", name, "a PostgreSQL role has the name of a PgBouncer-only"
                " console user (with that user's password it would log in past PgBouncer)",
                HAZARD)  # fmt: skip

        for group_name, member in conn.execute(
            query("audit.sql", "members_of_tenant_roles"), {"pattern": pattern}
        ).fetchall():
            if group_name == group:
                if logins.fullmatch(member):
                    add("role-membership", "", member, f"client login in the client group {group}")
                continue  # operator-enrolled roles: allowed by design
            database = owners.get(group_name)
            if database is None or member not in holders_of.get(database, set()):
                add("role-membership", database or "", member, f"member of {group_name}")

        for pid, user, datname in conn.execute(
            query("audit.sql", "tenant_sessions"), {"pattern": pattern}
        ).fetchall():
            if user not in live_roles:
                add(
                    "session", datname or "", user, f"session {pid} of a role no live relation has"
                )
            elif datname in record.databases and datname not in live_roles[user].databases:
                add("session", datname, user, f"session {pid} in a database it does not hold")

        schemas = auth_schemas(conn, owner_tag)
        for schema in schemas:
            issued_rows = conn.execute(
                query("audit.sql", "issued_all").format(schema=sql.Identifier(schema))
            ).fetchall()
            for rolname, roloid, issued, oid, current in issued_rows:
                if rolname not in live_roles:
                    add("issued", "", rolname, "issued verifier of no live relation")
                elif oid is None or roloid != oid:
                    add("issued", "", rolname, "issued for another role of that name")
                elif issued != current:
                    add("password", "", rolname, "password changed since the charm issued it",
                        DRIFT)  # fmt: skip
            issued_names = {row[0] for row in issued_rows}
            for name in sorted(set(live_roles) - issued_names):
                add("issued", "", name, "no issued verifier: the pooler refuses it", DRIFT)
        if auth_user in schemas:
            row = conn.execute(
                query("audit.sql", "lookup_function"), {"schema": auth_user}
            ).fetchone()
            where = f"{auth_user}.get_auth"
            if row is None:
                add("lookup", creds.dbname, where, "the lookup function is missing")
            else:
                owner, secdef, config, body, executors = row
                if owner != definer_role_for(auth_user):
                    add("lookup", creds.dbname, where, f"owned by {owner}")
                if not secdef or list(config or []) != ["search_path=pg_catalog, pg_temp"]:
                    add("lookup", creds.dbname, where, "not SECURITY DEFINER with a pinned path")
                if body != _expected_lookup_body(auth_user, owner_tag):
                    add("lookup", creds.dbname, where, "its definition differs from ours")
                extra = sorted(set(executors) - {*generations(auth_user), owner})
                if extra:
                    add("lookup", creds.dbname, where, f"EXECUTE held by {', '.join(extra)}")
            _audit_plumbing_roles(conn, auth_user, add)

    for name, oid, _datdba, _t, allow, *_ in databases:
        if not allow or int(oid) != record.databases[name].oid:
            continue
        allowed = sorted({record.databases[name].owner} | holders_of.get(name, set()))
        try:
            _audit_database(creds, name, allowed, logins, add)
        except BackendError as exc:
            add("unreadable", name, name, f"could not be read: {exc}", DRIFT)
    order = {BREACH: 0, DRIFT: 1, HAZARD: 2}
    return sorted(found, key=lambda v: (order[v.severity], v.kind, v.database, v.object))


def _audit_plumbing_roles(
    conn: psycopg.Connection, auth_user: str, add: Callable[..., None]
) -> None:
    """The auth role and the lookup's owner against what ``auth.sql`` made of them.

    Either role gained an attribute, a membership (the lookup's reach grows with it) or a
    member (who can ``SET ROLE`` to it reads every verifier the lookup serves); the auth role
    holds a setting beyond its three, e.g. ``search_path`` or ``role``, which would change what
    its lookups resolve or who they run as, or is missing one of them.
    """
    definer = definer_role_for(auth_user)
    # Both generations of the auth role (rotate-credentials, state.rotation) are auth roles.
    logins = generations(auth_user)
    rows = conn.execute(
        query("audit.sql", "roles"), {"pattern": None, "names": [*logins, definer]}
    ).fetchall()
    for row in rows:
        _oid, name, login, superuser, _inherit, createrole, createdb, repl, bypass = row[:9]
        member_of, members, settings = row[9:12]
        if superuser or createdb or createrole or repl or bypass:
            add("auth-role", "", name, "CREATEDB, CREATEROLE, SUPERUSER, REPLICATION or BYPASSRLS")
        if login != (name in logins):
            add("auth-role", "", name, "can log in" if login else "cannot log in")
        for membership in member_of:
            add("auth-role", "", name, f"member of {membership}")
        for member in members:
            add("auth-role", "", name, f"{member} is a member of it")
        seen = set()
        for setting in settings or []:
            db_oid, _, value = setting.partition(":")
            if name in logins and db_oid == "0" and value in AUTH_ROLE_SETTINGS:
                seen.add(value)
                continue
            scope = "role-wide" if db_oid == "0" else f"in database {db_oid}"
            add("auth-role", "", name, f"{scope} setting {value}")
        if name in logins:
            for value in sorted(AUTH_ROLE_SETTINGS - seen):
                add("auth-role", "", name, f"setting {value} is missing", DRIFT)


def _audit_database(
    creds: BackendCredentials,
    database: str,
    allowed: list[str],
    logins: re.Pattern[str],
    add: Callable[..., None],
) -> None:
    """The checks that need a connection to the tenant database itself."""
    with connect(creds, database) as raw:
        conn = _read_only(raw)
        for obj, owner in conn.execute(
            query("clients.sql", "foreign_objects"), {"allowed": allowed, "limit": 20}
        ).fetchall():
            add("object-owner", database, obj, f"owned by {owner}")
        for func, owner, pinned in conn.execute(query("audit.sql", "definer_functions")):
            if not pinned:
                add("security-definer", database, func,
                    f"SECURITY DEFINER (owner {owner}) without a pinned search_path",
                    HAZARD)  # fmt: skip
        for setter, schema, kind, grantee in conn.execute(
            query("audit.sql", "default_privileges")
        ).fetchall():
            where = f"default privileges of {setter}" + (f" in schema {schema}" if schema else "")
            if grantee == "PUBLIC":
                add("default-privilege", database, where, f"to PUBLIC on {kind}", HAZARD)
            elif grantee not in allowed:
                # Inert (no CONNECT), and revoked on update-status and after a drop.
                add("default-privilege", database, where, f"to {grantee} on {kind}", DRIFT)
        for (grantee,) in conn.execute(query("audit.sql", "grantees_in_database")).fetchall():
            if grantee not in allowed and logins.fullmatch(grantee or ""):
                add("object-grant", database, grantee,
                    "a login that does not hold it has grants (inert: it cannot connect)",
                    DRIFT)  # fmt: skip
