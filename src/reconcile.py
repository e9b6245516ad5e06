"""The leader's effects on the backend, run by the charm's reconcile (docs/architecture.md).

Given the hook's :class:`~state.charm_state.CharmState` and the relation adapters, these
functions make the backend match it: the auth plumbing exists and works (set up once the backend
answers, checked and repaired on update-status), every client request is answered from the
tenant record, and what is gone is dropped. They return what happened; the charm turns that into
the status. ``postgres`` (and psycopg with it) is imported only here, inside the functions, so
that a follower's hook never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from state.charm_state import CharmState
from state.peers import AuthData
from state.tenants import TenantRecord, client_username, grant_decision, roles_to_drop

if TYPE_CHECKING:
    import ops

    from postgres.credentials import BackendCredentials
    from relations.client_database import ClientDatabaseRelation, ClientRequest
    from relations.peers import Peers
    from state.backend import BackendDatabase

logger = logging.getLogger(__name__)

WAITING_FOR_BACKEND = "waiting for the backend database"


class BackendEffects(Protocol):
    """What the reconcile does to PostgreSQL (:class:`postgres.effects.PostgreSQL` does it).

    Each method takes the credentials to connect with; failures raise
    ``postgres.connection.BackendError`` (or a subclass). Unit tests pass another object.
    """

    def connect_check(self, creds: BackendCredentials) -> None: ...  # noqa: D102

    def install_auth(  # noqa: D102
        self,
        creds: BackendCredentials,
        *,
        auth_user: str,
        auth_password: str,
        owner_tag: str,
        login_role: str | None = None,
    ) -> object: ...

    def check_auth(  # noqa: D102
        self,
        creds: BackendCredentials,
        *,
        auth_user: str,
        auth_password: str,
        owner_tag: str,
        schema: str | None = None,
    ) -> str | None: ...

    def remove_auth(  # noqa: D102
        self, creds: BackendCredentials, *, auth_user: str, owner_tag: str
    ) -> None: ...

    def remove_leftovers(  # noqa: D102
        self, creds: BackendCredentials, *, owner_tag: str, keep: str | None
    ) -> list[str]: ...

    def grant_database(  # noqa: D102
        self,
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
    ) -> TenantRecord: ...

    def drop_gone(  # noqa: D102
        self,
        creds: BackendCredentials,
        record: TenantRecord,
        live: Collection[int],
        *,
        owner_tag: str,
    ) -> tuple[TenantRecord, dict[str, str]]: ...

    def repair_tenancy(  # noqa: D102
        self,
        creds: BackendCredentials,
        record: TenantRecord,
        live: Collection[int],
        *,
        owner_tag: str,
    ) -> list[str]: ...

    def backend_version(self, creds: BackendCredentials) -> str: ...  # noqa: D102

    def retire_generation(  # noqa: D102
        self, creds: BackendCredentials, *, role: str, owner_tag: str
    ) -> bool: ...


@dataclass
class LeaderOutcome:
    """What the leader's part of one reconcile did.

    Attributes:
        backend_problem: why the backend failed us (None: it did not, or was not asked).
        repaired: what was found broken in the auth plumbing and put back.
        set_up: whether the auth plumbing was (re)installed and shared.
        client_blocked: refusals naming the client relation and the reason.
        blocked_relations: the ids those refusals are about.
        client_waiting: relation id → why it is not answered yet.
        answers: granted requests, to publish after the final apply (:func:`publish_answers`).
        cleanup_failed: client roles of removed relations not dropped yet, and why.
        tenancy_repaired: what drifted from the tenant model and was put back.
        tenancy_problem: why the tenancy check could not run (and whether it is blocked).
        auth: the auth role's credentials when this reconcile set them up (and shared them).
    """

    backend_problem: str | None = None
    repaired: list[str] = field(default_factory=list)
    set_up: bool = False
    client_blocked: list[str] = field(default_factory=list)
    blocked_relations: set[int] = field(default_factory=set)
    client_waiting: dict[int, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    cleanup_failed: dict[str, str] = field(default_factory=dict)
    tenancy_repaired: list[str] = field(default_factory=list)
    tenancy_problem: tuple[str, bool] | None = None
    auth: AuthData | None = None


@dataclass(frozen=True)
class Answer:
    """A request whose database is granted: published once every unit serves it."""

    relation: ops.Relation
    request: ClientRequest
    username: str
    password: str = field(repr=False)
    backend: BackendDatabase
    endpoint: str
    version: str | None
    tls_fields: dict[str, object]


def credentials(state: CharmState, ca_dir: str) -> BackendCredentials:
    """How to reach the backend's primary as the relation user (verified when it has TLS).

    ``ca_dir`` is required, so that no connection of ours can skip the verification: when the
    backend announces TLS its CA is kept there and every connection checks the server with it.
    """
    from postgres.credentials import BackendCredentials

    backend = state.backend
    assert backend is not None  # noqa: S101 (callers check)
    sslrootcert = None
    if state.backend_tls is not None:
        from postgres.tls import write_backend_ca

        sslrootcert = write_backend_ca(state.backend_tls, ca_dir)  # type: ignore[arg-type]
    elif state.backend_tls_refused:
        # TLS announced with a flag or CA we refuse (docs/tls.md): verify with the last good CA
        # kept there, or fail for want of one; never fall back to an unverified connection.
        from pathlib import Path

        from postgres.tls import CA_FILE_NAME

        sslrootcert = str(Path(ca_dir) / CA_FILE_NAME)
    return BackendCredentials(
        host=backend.primary.host,
        port=backend.primary.port,
        user=backend.username,
        password=backend.password,
        dbname=backend.database,
        sslrootcert=sslrootcert,
    )


def ensure_auth(
    state: CharmState,
    peers: Peers,
    sql: BackendEffects,
    *,
    owner_tag: str,
    verify: bool,
    outcome: LeaderOutcome,
    ca_dir: str,
) -> None:
    """Set up the auth plumbing when it is missing, or check (and repair) it when ``verify``.

    The created chart's set-up, and what completes it when that chart returned early: it runs
    in every reconcile on the leader once the backend is ready and PgBouncer runs.
    """
    backend = state.backend
    if not state.leader or backend is None or not state.request_written or not state.running:
        return
    auth_user = state.expected_auth_user
    if auth_user is None:
        return
    if state.auth_ready and state.auth is not None and not verify:
        return  # nothing to do on the backend: psycopg is not even imported
    from postgres.connection import BackendError
    from postgres.passwords import generate_password

    creds = credentials(state, ca_dir)
    # The generation that logs in (rotate-credentials takes turns between two, state.rotation).
    login = state.auth.username if state.auth_ready and state.auth is not None else auth_user
    if state.auth_ready and state.auth is not None:
        problem = sql.check_auth(
            creds,
            auth_user=login,
            auth_password=state.auth.password,
            owner_tag=owner_tag,
            schema=auth_user,
        )
        if problem is None:
            if state.peer.backend_problem:
                peers.set_backend_problem(None)
            return
        logger.warning("auth plumbing broken on the backend (%s): repairing", problem)
        password = state.auth.password
    else:
        problem = None
        current = state.auth
        password = (
            current.password if current and current.username == auth_user else generate_password()
        )
    try:
        removed = sql.remove_leftovers(creds, owner_tag=owner_tag, keep=auth_user)
        if removed:
            logger.info("removed auth leftovers of earlier relations: %s", ", ".join(removed))
        sql.install_auth(
            creds,
            auth_user=auth_user,
            auth_password=password,
            owner_tag=owner_tag,
            login_role=login,
        )
    except BackendError as exc:
        logger.warning("could not install the auth function: %s", exc)
        outcome.backend_problem = str(exc)
        peers.set_backend_problem(str(exc))
        return
    if problem is not None:
        outcome.repaired.append(problem)
    outcome.set_up = True
    peers.set_backend_problem(None)
    # A failed removal of an earlier relation's auth user is resolved once its leftovers are
    # gone, which remove_leftovers just made sure of.
    peers.set_auth_removal_failed(False)
    outcome.auth = AuthData(login, password, schema=auth_user)
    peers.save_auth(outcome.auth, backend.database)


def serve_clients(
    state: CharmState,
    clients: ClientDatabaseRelation,
    peers: Peers,
    sql: BackendEffects,
    *,
    owner_tag: str,
    endpoint: str | None,
    gone: int | None,
    outcome: LeaderOutcome,
    ca_dir: str,
    tls_fields: dict[str, object] | None = None,
    verify: bool = False,
) -> dict[str, int]:
    """Drop what is gone, give every request its database (leader only).

    The answers are queued in ``outcome.answers`` and published after the final apply
    (:func:`publish_answers`).

    Returns:
        The ``[databases]`` every unit must pool (database → lowest live relation holding it).
    """
    relations = [r for r in clients.relations if r.id != gone]
    live = {r.id for r in relations}
    record = state.tenants
    # Only the leader touches the backend; a follower reads the requests for its status.
    backend = state.backend if state.leader and state.auth_ready else None
    requests = {}
    for relation in relations:
        try:
            requests[relation.id] = clients.requests(relation)
        except ValueError as exc:  # RequestRefusedError
            outcome.client_blocked.append(f"client {exc}")
            outcome.blocked_relations.add(relation.id)
    if backend is not None:
        creds = credentials(state, ca_dir)
        if roles_to_drop(record, live):  # else no connection (nor psycopg) for it
            record = _drop_gone(sql, creds, record, live, owner_tag, outcome)
        if verify and (record.roles or record.databases):
            _repair_tenancy(sql, creds, record, live, owner_tag, outcome)
        # Read from the server only when an answer needs it (not in every leader hook).
        version = _version(sql, backend, creds) if any(requests.values()) else None
        for relation in relations:
            if relation.id in requests and relation.app is not None and endpoint is not None:
                record = _answer(
                    sql, clients, relation, requests[relation.id], backend, creds, record, live,
                    owner_tag=owner_tag, endpoint=endpoint, version=version, outcome=outcome,
                    tls_fields=tls_fields or {},
                    consent=state.config.database_sharing if state.config else {},
                )  # fmt: skip
    for relation in relations:
        for request in requests.get(relation.id, []):
            held = relation.id in record.holders(request.database, live)
            if not held and relation.id not in outcome.blocked_relations:
                outcome.client_waiting.setdefault(relation.id, WAITING_FOR_BACKEND)
    if record != state.tenants:
        peers.set_tenants(record)
    return record.served(live)


def drop_all_clients(
    state: CharmState, peers: Peers, sql: BackendEffects, *, owner_tag: str, ca_dir: str
) -> bool:
    """Drop every client login role we created (the backend relation is going).

    Their databases and data stay with the owner roles; a later backend gives each live relation
    a new login role and its databases back. Returns False when a drop failed (it stays in the
    record and is retried by the next leader that reaches a backend).
    """
    if state.backend is None:
        return not state.tenants.roles
    record = _drop_gone(sql, credentials(state, ca_dir), state.tenants, set(), owner_tag, None)
    if record != state.tenants:
        peers.set_tenants(record)
    peers.set_databases({})
    return not record.roles


def remove_auth_plumbing(
    state: CharmState, peers: Peers, sql: BackendEffects, *, owner_tag: str, ca_dir: str
) -> bool:
    """The departed chart's removal: client roles first, then the auth role and its function.

    Returns:
        Whether everything went; a failure sets the failed-removal Blocked state (docs/backend-database.md) in the peer data.
    """
    backend, auth = state.backend, state.auth
    if backend is None or auth is None:
        logger.info("no auth user to remove")
        return True
    from postgres.connection import BackendError

    if not drop_all_clients(state, peers, sql, owner_tag=owner_tag, ca_dir=ca_dir):
        logger.error("some client users could not be dropped; they stay in the record")
    try:
        sql.remove_auth(
            credentials(state, ca_dir), auth_user=auth.lookup_schema, owner_tag=owner_tag
        )
    except BackendError as exc:
        logger.error("failed to remove the auth user: %s", exc)
        peers.set_auth_removal_failed(True)
        return False
    logger.info("removed auth user %s and its lookup function", auth.lookup_schema)
    peers.set_auth_removal_failed(False)
    return True


def check_backend(state: CharmState, sql: BackendEffects, ca_dir: str) -> str | None:
    """Whether the backend accepts a connection as the relation user: the problem, if not."""
    if state.backend is None:
        return None
    from postgres.connection import BackendError

    try:
        sql.connect_check(credentials(state, ca_dir))
        return None
    except BackendError as exc:
        return str(exc)


# -- helpers ----------------------------------------------------------------------------------
def _drop_gone(
    sql: BackendEffects,
    creds: BackendCredentials,
    record: TenantRecord,
    live: set[int],
    owner_tag: str,
    outcome: LeaderOutcome | None,
) -> TenantRecord:
    record, failures = sql.drop_gone(creds, record, live, owner_tag=owner_tag)
    if outcome is not None:
        outcome.cleanup_failed.update(failures)
    return record


def _repair_tenancy(
    sql: BackendEffects,
    creds: BackendCredentials,
    record: TenantRecord,
    live: set[int],
    owner_tag: str,
    outcome: LeaderOutcome,
) -> None:
    from postgres.connection import BackendError
    from postgres.locks import Blocked

    try:
        outcome.tenancy_repaired = sql.repair_tenancy(creds, record, live, owner_tag=owner_tag)
    except BackendError as exc:
        logger.warning("could not check the tenant model: %s", exc)
        outcome.tenancy_problem = (str(exc), isinstance(exc, Blocked))


def _version(
    sql: BackendEffects, backend: BackendDatabase, creds: BackendCredentials
) -> str | None:
    if backend.version:
        return backend.version
    from postgres.connection import BackendError

    try:
        return sql.backend_version(creds)
    except BackendError as exc:
        logger.warning("could not read the backend's version: %s", exc)
        return None


def _answer(
    sql: BackendEffects,
    clients: ClientDatabaseRelation,
    relation,
    requests,
    backend: BackendDatabase,
    creds: BackendCredentials,
    record: TenantRecord,
    live: set[int],
    *,
    owner_tag: str,
    endpoint: str,
    version: str | None,
    outcome: LeaderOutcome,
    tls_fields: dict[str, object],
    consent: Mapping[str, frozenset[str]],
) -> TenantRecord:
    def generate_password() -> str:
        from postgres.passwords import generate_password

        return generate_password()

    app = relation.app.name
    username = client_username(relation.id, owner_tag)
    password = ""  # read (one secret-get) only when a grant or an answer needs it
    for request in requests:
        decision = grant_decision(
            record, database=request.database, relation=relation.id, app=app, live=live,
            consent=consent,
        )  # fmt: skip
        # A freshly installed lookup (a new backend relation, a repair) has no issued verifier
        # yet: every client is issued its own again (change-gated, from its password).
        if decision.action != "keep" or username not in record.roles or outcome.set_up:
            password = password or clients.password(relation.id, username, new=generate_password)
            from postgres.connection import BackendError, ForeignObjectError

            try:
                record = sql.grant_database(
                    creds,
                    record,
                    username=username,
                    password=password,
                    database=request.database,
                    extra_roles=request.extra_roles,
                    owner_tag=owner_tag,
                    relation_id=relation.id,
                    app=app,
                    live=live,
                    consent=consent,
                )
            except BackendError as exc:
                logger.warning(
                    "could not give database %s to client relation %d: %s",
                    request.database,
                    relation.id,
                    exc,
                )
                if isinstance(exc, ForeignObjectError):
                    outcome.client_blocked.append(f"client relation {relation.id}: {exc}")
                    outcome.blocked_relations.add(relation.id)
                else:
                    outcome.client_waiting[relation.id] = str(exc)
                continue
            logger.info(
                "user %s holds database %s for client relation %d",
                username,
                request.database,
                relation.id,
            )
        if not outcome.set_up and clients.answered(
            relation, request, backend=backend, endpoint=endpoint, username=username,
            version=version, tls_fields=tls_fields,
        ):  # fmt: skip
            continue  # published as it would be again: nothing to write (issue 23)
        password = password or clients.password(relation.id, username, new=generate_password)
        outcome.answers.append(
            Answer(relation, request, username, password, backend, endpoint, version, tls_fields)
        )
    return record


def publish_answers(
    clients: ClientDatabaseRelation,
    outcome: LeaderOutcome,
    applied: Mapping[str, frozenset[str]],
) -> None:
    """Publish each granted request once every unit serves its database (the publish barrier).

    A client gets its credentials only when each unit that will serve it reports (in its peer
    unit data, written after a successful apply) a ``[databases]`` entry for the database, so
    its first connection to any unit finds it.

    Args:
        clients: the ``database`` adapter.
        outcome: this reconcile's outcome, with the granted requests.
        applied: unit name → the client databases that unit has applied.
    """
    for answer in outcome.answers:
        database = answer.request.database
        missing = sorted(unit for unit, dbs in applied.items() if database not in dbs)
        if missing:
            outcome.client_waiting[answer.relation.id] = (
                f"waiting for {', '.join(missing)} to serve {database}"
            )
            continue
        clients.answer(
            answer.relation,
            answer.request,
            backend=answer.backend,
            endpoint=answer.endpoint,
            username=answer.username,
            password=answer.password,
            version=answer.version,
            tls_fields=answer.tls_fields,
        )
