r"""The record of what this application created for its clients on the backend (docs/tenancy.md).

It lives in the ``pgb-peers`` application databag (key ``tenants``), which only the leader
writes: a tenant can forge a comment on its own database, not this record. It is the only proof
that a database or a role is ours, so it is checked against the server's OIDs before anything is
handed out. Example::

    {"databases": {"orders": {"oid": 16421, "owner": "pgbouncer_owner_1a2b3c4d_5e6f70819a",
                              "apps": ["shop"]}},
     "roles": {"pgbouncer_client_7_1a2b3c4d": {"oid": 16420, "relation": 7, "app": "shop",
                                              "databases": ["orders"]}}}

Pure: no ops, no psycopg. The decisions taken from it (:func:`grant_decision`,
:func:`roles_to_drop`) are plain functions with one test per branch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from state.names import InvalidNameError, validate_database_name, validate_role_name

ALLOWED_EXTRA_ROLES = frozenset({"CREATEDB"})
"""Extra roles a client may ask for. ``SUPERUSER``, ``REPLICATION``, ``CREATEROLE`` and
``BYPASSRLS`` would let a client escape its database (read every password verifier, stream the
whole cluster, grant itself anything, ignore row security); anything else, predefined roles
included (``pg_read_all_data`` reads every database), is not on the list."""
FORBIDDEN_EXTRA_ROLES = frozenset({"SUPERUSER", "REPLICATION", "CREATEROLE", "BYPASSRLS"})
_PRINTABLE_ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CLIENT_USER_PREFIX = "pgbouncer_client_"
OWNER_ROLE_PREFIX = "pgbouncer_owner_"
GROUP_ROLE_PREFIX = "pgbouncer_clients_"
ORPHAN_ROLE_PREFIX = "pgbouncer_orphans_"
DATABASES_ROLE_PREFIX = "pgbouncer_databases_"


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


def app_hash(owner_tag: str) -> str:
    """Eight hex digits naming this application (model uuid and app name) in role names."""
    return hashlib.sha256(owner_tag.encode()).hexdigest()[:8]


def client_username(relation_id: int, owner_tag: str) -> str:
    """The login role of one client relation, e.g. ``pgbouncer_client_7_1a2b3c4d``."""
    return f"{CLIENT_USER_PREFIX}{relation_id}_{app_hash(owner_tag)}"


def owner_role_for(database: str, owner_tag: str) -> str:
    """The NOLOGIN role owning a client database and everything its tenants create in it."""
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    return f"{OWNER_ROLE_PREFIX}{app_hash(owner_tag)}_{digest}"


def group_role_for(owner_tag: str) -> str:
    """The NOLOGIN group whose members (and only they) the auth lookup answers for."""
    return f"{GROUP_ROLE_PREFIX}{app_hash(owner_tag)}"


def orphan_role_for(owner_tag: str) -> str:
    """The NOLOGIN role, with no members, taking what a dropped client owned outside its databases."""
    return f"{ORPHAN_ROLE_PREFIX}{app_hash(owner_tag)}"


def databases_role_for(owner_tag: str) -> str:
    """The NOLOGIN role, with no members, owning every client database *object*.

    Tenants hold CONNECT, CREATE and TEMPORARY on their database through its owner role, and
    own what they create in it, but not the database itself: so no tenant can change what
    every session there sees (database-wide settings such as ``search_path`` or ``role``),
    mark it ``IS_TEMPLATE``, refuse connections to it or grant ``CONNECT`` on it.
    """
    return f"{DATABASES_ROLE_PREFIX}{app_hash(owner_tag)}"


def client_role_pattern(owner_tag: str) -> re.Pattern[str]:
    """The names of this application's client login roles."""
    return re.compile(re.escape(CLIENT_USER_PREFIX) + r"\d+_" + app_hash(owner_tag))


def tenant_roles_regex(owner_tag: str) -> str:
    """A POSIX regular expression matching every role name this application gives tenants.

    Client logins, owner roles, the client group, the orphan role and the databases role:
    sessions of these roles, or of their members, are tenants' (``postgres.locks``).
    """
    h = app_hash(owner_tag)
    return (
        rf"^pgbouncer_(client_[0-9]+_{h}|owner_{h}_[0-9a-f]+|clients_{h}|orphans_{h}"
        rf"|databases_{h})$"
    )


@dataclass(frozen=True)
class DatabaseRecord:
    """A client database we created: its OID, its owner role, who held it.

    ``apps`` held it in their own right (the application it was created for, and relations of
    the same application); ``guests`` held it only by the operator's consent
    (``database_sharing``), which a guest needs again to come back.
    """

    oid: int
    owner: str
    apps: tuple[str, ...] = ()
    guests: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleRecord:
    """A client login role we created, for one relation."""

    oid: int
    relation: int
    app: str
    databases: tuple[str, ...] = ()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(sorted({v for v in value if isinstance(v, str) and v}))


@dataclass(frozen=True)
class TenantRecord:
    """Databases and login roles this application created, by name."""

    databases: Mapping[str, DatabaseRecord] = field(default_factory=dict)
    roles: Mapping[str, RoleRecord] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> TenantRecord:
        """Parse the databag value; an empty or damaged value gives an empty record.

        Only the leader writes it; entries that fail validation are dropped, never trusted.
        """
        try:
            raw = json.loads(text) if text else {}
        except ValueError:
            raw = {}
        if not isinstance(raw, dict):
            raw = {}
        databases: dict[str, DatabaseRecord] = {}
        raw_dbs = raw.get("databases")
        for name, entry in raw_dbs.items() if isinstance(raw_dbs, dict) else []:
            if not isinstance(entry, dict):
                continue
            oid, owner = _int(entry.get("oid")), entry.get("owner")
            try:
                validate_database_name(name)
                validate_role_name(owner, "owner")
            except InvalidNameError:
                continue
            if oid is not None and isinstance(owner, str):
                databases[name] = DatabaseRecord(
                    oid, owner, _names(entry.get("apps")), _names(entry.get("guests"))
                )
        roles: dict[str, RoleRecord] = {}
        raw_roles = raw.get("roles")
        for name, entry in raw_roles.items() if isinstance(raw_roles, dict) else []:
            if not isinstance(entry, dict):
                continue
            oid, relation, app = _int(entry.get("oid")), entry.get("relation"), entry.get("app")
            try:
                validate_role_name(name)
            except InvalidNameError:
                continue
            if oid is None or not isinstance(app, str):
                continue
            if not isinstance(relation, int) or isinstance(relation, bool) or relation < 0:
                continue
            roles[name] = RoleRecord(oid, relation, app, _names(entry.get("databases")))
        return cls(databases=databases, roles=roles)

    def to_json(self) -> str:
        """The databag value, deterministic."""
        return json.dumps(
            {
                "databases": {
                    n: {"oid": d.oid, "owner": d.owner, "apps": list(d.apps)}
                    | ({"guests": list(d.guests)} if d.guests else {})
                    for n, d in sorted(self.databases.items())
                },
                "roles": {
                    n: {
                        "oid": r.oid,
                        "relation": r.relation,
                        "app": r.app,
                        "databases": list(r.databases),
                    }
                    for n, r in sorted(self.roles.items())
                },
            },
            sort_keys=True,
        )

    # -- updates (each returns a new record) ----------------------------------------------
    def with_grant(
        self,
        *,
        role: str,
        role_oid: int,
        relation: int,
        app: str,
        database: str,
        database_oid: int,
        owner: str,
        guest: bool = False,
    ) -> TenantRecord:
        """The record after ``role`` (of ``relation``/``app``) was granted ``database``.

        ``guest``: granted only by the operator's consent (see :class:`DatabaseRecord`).
        """
        databases = dict(self.databases)
        old_db = databases.get(database)
        same = old_db is not None and old_db.oid == database_oid
        apps = set(old_db.apps) if old_db and same else set()
        guests = set(old_db.guests) if old_db and same else set()
        if guest and app not in apps:
            guests.add(app)
        else:
            apps.add(app)
        databases[database] = DatabaseRecord(
            database_oid, owner, tuple(sorted(apps)), tuple(sorted(guests - apps))
        )
        roles = dict(self.roles)
        old_role = roles.get(role)
        held = set(old_role.databases) if old_role and old_role.oid == role_oid else set()
        roles[role] = RoleRecord(role_oid, relation, app, tuple(sorted(held | {database})))
        return replace(self, databases=databases, roles=roles)

    def without_role(self, role: str) -> TenantRecord:
        """The record after ``role`` was dropped (its databases stay recorded)."""
        roles = {n: r for n, r in self.roles.items() if n != role}
        return replace(self, roles=roles)

    def without_database(self, database: str) -> TenantRecord:
        """The record after ``database`` was found gone from the server."""
        databases = {n: d for n, d in self.databases.items() if n != database}
        return replace(self, databases=databases)

    def served(self, live_relations: Collection[int]) -> dict[str, int]:
        """Database → the lowest live relation holding it: what every unit must pool."""
        served: dict[str, int] = {}
        for role in self.roles.values():
            if role.relation not in live_relations:
                continue
            for database in role.databases:
                if database in self.databases:
                    served[database] = min(served.get(database, role.relation), role.relation)
        return served

    def app_of(self, relation: int) -> str | None:
        """The application of a recorded relation."""
        for role in self.roles.values():
            if role.relation == relation:
                return role.app
        return None

    def holders(self, database: str, live_relations: Collection[int]) -> set[int]:
        """Live relations whose role holds ``database``."""
        return {
            r.relation
            for r in self.roles.values()
            if database in r.databases and r.relation in live_relations
        }


# -- decisions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrantDecision:
    """What to do with one client's request for one database.

    ``action`` is ``create`` (no such database of ours: create it, refusing one that exists),
    ``join`` (ours, already held by a live relation: share it, after the trap check),
    ``reclaim`` (ours, held by nobody live, earlier held by this application: hand it back,
    after the trap check), ``keep`` (this relation already holds it) or ``refuse``.
    """

    action: str
    reason: str = ""
    database: DatabaseRecord | None = None

    def as_guest(self, app: str) -> bool:
        """Whether granting this makes ``app`` a guest (it does not own the database)."""
        return self.database is not None and app not in self.database.apps


def grant_decision(
    record: TenantRecord,
    *,
    database: str,
    relation: int,
    app: str,
    live: Collection[int],
    consent: Mapping[str, frozenset[str]] | None = None,
) -> GrantDecision:
    """Decide how ``relation`` (of application ``app``) may get ``database``.

    Relations of the same application may share a database; another application gets a
    database that is held (or was held by someone else) only when the operator consented
    (``database_sharing``: database → applications allowed to share it).

    Args:
        record: what this application created.
        database: the name asked for (already validated).
        relation: the asking relation's id.
        app: the remote application's name.
        live: ids of the live client relations.
        consent: the operator's ``database_sharing`` option, parsed.
    """
    db = record.databases.get(database)
    if db is None:
        return GrantDecision("create")
    holders = record.holders(database, live)
    if relation in holders:
        return GrantDecision("keep", database=db)
    consented = (consent or {}).get(database, frozenset())
    # The applications that held it in their own right own it; a guest needs consent again.
    may = app in consented or app in db.apps
    if holders:
        if may:
            return GrantDecision("join", database=db)
        holder_apps = sorted({record.app_of(r) or "?" for r in holders})
        return GrantDecision(
            "refuse",
            reason=(
                f"database {database} is held by application {', '.join(holder_apps)}; "
                f"to share it, add {database}={app} to database_sharing"
            ),
            database=db,
        )
    if may:
        return GrantDecision("reclaim", database=db)
    previous = ", ".join(db.apps) or "an earlier client"
    return GrantDecision(
        "refuse",
        reason=(
            f"database {database} holds data left by application {previous}; "
            f"only that application may take it back (or add {database}={app} to "
            "database_sharing)"
        ),
        database=db,
    )


def roles_to_drop(record: TenantRecord, live: Collection[int]) -> list[str]:
    """Recorded login roles whose relation is gone: what the leader must drop next."""
    return sorted(name for name, r in record.roles.items() if r.relation not in live)
