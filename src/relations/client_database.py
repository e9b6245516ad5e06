r"""The client ``database`` relation (provides ``postgresql_client``): one user per relation.

A client application asks for a database; the leader creates, on the backend PostgreSQL, a user
for that relation and the database (owned by that user), records the database in the peer data
so that every unit's PgBouncer gets a ``[databases]`` entry for it, and answers with the pooler's
address and the credentials. ``dpcharmlibs-interfaces``' :class:`ResourceProviderEventHandler`
speaks the wire format: it serves v0 clients (flat fields) and v1 clients (a ``requests`` list)
and puts the credentials in a Juju secret it grants to the client (``secret-user``).

A v0 client's application databag::

    {"database": "myapp", "requested-secrets": "[\"username\", \"password\"]",
     "extra-user-roles": "CREATEDB"}

and our answer (the secret holds ``username``, ``password``, ``uris`` and, with replicas,
``read-only-uris``)::

    {"database": "myapp", "endpoints": "pgbouncer-k8s.dev.svc.cluster.local:6432",
     "read-only-endpoints": "pgbouncer-k8s.dev.svc.cluster.local:6432",
     "version": "15.18", "secret-user": "secret://…/d2fk…", "data": "{…}", …}

Read-only access goes through the same address: the database ``<name>_readonly`` is PgBouncer's
entry for the first read-only endpoint of the backend (``docs/client-database.md``).

Requests are never deferred. A request that arrives before the backend is ready is left in the
client's databag, which stays readable; :meth:`ClientDatabaseRelation.refresh` answers every
answerable request and runs whenever the backend becomes ready or changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

import ops
import pydantic
from dpcharmlibs.interfaces import (
    RequirerCommonModel,
    ResourceProviderEventHandler,
    ResourceProviderModel,
    ResourceRequestedEvent,
)

from pgbouncer.config import READONLY_SUFFIX
from postgres.clients import (
    ForbiddenRoleError,
    backend_version,
    check_extra_roles,
    create_client,
    drop_client,
)
from postgres.connection import BackendError, ForeignObjectError
from postgres.passwords import generate_password
from state.config import CharmConfig, InvalidConfigError
from state.names import InvalidNameError, validate_database_name

if TYPE_CHECKING:
    from charm import PgBouncerK8sCharm
    from state.backend import BackendDatabase

logger = logging.getLogger(__name__)

CLIENT_RELATION = "database"
CLIENT_USER_PREFIX = "pgbouncer_client_"
CLIENT_SECRET_LABEL_PREFIX = "pgbouncer-client-"  # noqa: S105 (a label, not a secret)


def client_username(relation_id: int, owner_tag: str) -> str:
    """The backend role of one client relation, e.g. ``pgbouncer_client_7_1a2b3c4d``.

    The suffix (a hash of the model uuid and application name) keeps two pgbouncer
    applications (in two models) on one PostgreSQL from ever sharing a role.

    Args:
        relation_id: the client relation's id.
        owner_tag: the charm's owner tag (``<model uuid>/<app>``).
    """
    digest = hashlib.sha256(owner_tag.encode()).hexdigest()[:8]
    return f"{CLIENT_USER_PREFIX}{relation_id}_{digest}"


def parse_extra_roles(value: str | None) -> tuple[str, ...]:
    """``"createdb, x"`` → ``("createdb", "x")``: the comma list a client sent, not yet checked."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


class RequestRefusedError(ValueError):
    """A client request we will never answer as it stands; the message names why."""


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    """One validated request of a client relation."""

    relation_id: int
    database: str
    extra_roles: tuple[str, ...]
    request_id: str | None
    salt: str


def validate_request(relation_id: int, request: RequirerCommonModel) -> ClientRequest:
    """Check a request's database name and extra roles.

    Args:
        relation_id: the client relation's id (for messages).
        request: the request as the library parsed it.

    Raises:
        RequestRefusedError: the database name is invalid or reserved, a prefix, a custom entity,
            or an extra role is not on ``postgres.clients``' allow-list.
    """
    if request.entity_type:
        raise RequestRefusedError(f"relation {relation_id}: custom entities are not supported")
    name = request.resource
    if name.endswith("*"):
        raise RequestRefusedError(f"relation {relation_id}: database prefixes are not supported")
    try:
        validate_database_name(name, "database")
    except InvalidNameError as exc:
        raise RequestRefusedError(
            f"relation {relation_id}: invalid database name: {exc.reason}"
        ) from None
    try:
        roles = tuple(sorted(check_extra_roles(parse_extra_roles(request.extra_user_roles))))
    except ForbiddenRoleError as exc:
        raise RequestRefusedError(f"relation {relation_id}: {exc}") from None
    return ClientRequest(
        relation_id=relation_id,
        database=name,
        extra_roles=roles,
        request_id=request.request_id,
        salt=request.salt,
    )


class _ProviderEventHandler(ResourceProviderEventHandler):
    """The library's provider, except that an unreadable client databag does not crash the hook.

    The library parses the client's databag in its own relation-changed handler and lets
    pydantic's error escape; the same parse in :meth:`ClientDatabaseRelation._requests` turns
    it into a Blocked status naming the relation.
    """

    def _on_relation_changed_event(self, event: ops.RelationChangedEvent) -> None:
        try:
            self.requests(event.relation)
        except (pydantic.ValidationError, ValueError, TypeError):
            logger.warning(
                "client relation %d: unreadable request, not answered", event.relation.id
            )
            return
        super()._on_relation_changed_event(event)


class ClientDatabaseRelation(ops.Object):
    """Creates users and databases for client relations and answers them.

    Attributes:
        provider: the library's provider handler on the ``database`` endpoint.
    """

    _stored = ops.StoredState()

    def __init__(self, charm: PgBouncerK8sCharm):
        super().__init__(charm, "client-database")
        self.charm = charm
        self._stored.set_default(failures={}, refusals={}, pending_drops=[])
        self.provider = _ProviderEventHandler(charm, CLIENT_RELATION, RequirerCommonModel)
        observe = charm.framework.observe
        observe(self.provider.on.resource_requested, self._on_resource_requested)
        observe(charm.on[CLIENT_RELATION].relation_broken, self._on_relation_broken)
        observe(charm.on.leader_elected, self._on_leader_elected)

    # -- reading requests -------------------------------------------------------------------
    @property
    def relations(self) -> list[ops.Relation]:
        """Every live client relation."""
        return list(self.charm.model.relations[CLIENT_RELATION])

    def _requests(self, relation: ops.Relation) -> list[ClientRequest]:
        """The relation's valid requests (empty until the client asked).

        Raises:
            RequestRefusedError: the client's databag cannot be parsed or a request is refused.
        """
        if relation.app is None:
            return []
        try:
            raw: Sequence[RequirerCommonModel] = self.provider.requests(relation)
        except (pydantic.ValidationError, ValueError, TypeError):
            raise RequestRefusedError(f"relation {relation.id}: unreadable request") from None
        requests = [validate_request(relation.id, r) for r in raw if r.resource or r.entity_type]
        names = [r.database for r in requests]
        if len(set(names)) != len(names):
            raise RequestRefusedError(f"relation {relation.id}: the same database asked twice")
        return requests

    def _conflict(self, request: ClientRequest, served: dict[str, int]) -> str | None:
        """A refusal message when another live relation already holds the database."""
        owner = served.get(request.database)
        live = {r.id for r in self.relations}
        if owner is not None and owner != request.relation_id and owner in live:
            return (
                f"relation {request.relation_id}: database {request.database} is already "
                f"served to relation {owner}"
            )
        return None

    # -- status -----------------------------------------------------------------------------
    def statuses(self) -> list[ops.StatusBase]:
        """Blocked for refused requests, Waiting for unanswered ones; nothing when all good."""
        blocked: list[str] = []
        waiting: list[int] = []
        served = dict(self.charm.peers.app_data().databases)
        failures: dict[str, str] = dict(self._stored.failures)
        refusals: dict[str, str] = dict(self._stored.refusals)
        for relation in self.relations:
            try:
                requests = self._requests(relation)
            except RequestRefusedError as exc:
                blocked.append(str(exc))
                continue
            for request in requests:
                conflict = self._conflict(request, served)
                if conflict:
                    blocked.append(conflict)
                elif served.get(request.database) != relation.id:
                    waiting.append(relation.id)
            if str(relation.id) in refusals:
                blocked.append(f"relation {relation.id}: {refusals[str(relation.id)]}")
        statuses: list[ops.StatusBase] = [
            ops.BlockedStatus(f"client {message}") for message in blocked
        ]
        waiting_ids = sorted(set(waiting) - {int(k) for k in refusals})
        for rel_id in waiting_ids:
            if str(rel_id) in failures:
                statuses.append(
                    ops.WaitingStatus(f"client relation {rel_id}: {failures[str(rel_id)]}")
                )
        pending = [i for i in waiting_ids if str(i) not in failures]
        if pending:
            ids = ", ".join(str(i) for i in pending)
            statuses.append(
                ops.WaitingStatus(f"client relation(s) {ids} waiting for the backend database")
            )
        return statuses

    # -- answering --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Answer every client request that can be answered now (leader only).

        Creates what is missing on the backend, publishes the current endpoints, version and
        credentials to every client relation, drops users left over from relations that broke
        while the backend was unreachable, then re-renders PgBouncer if the databases changed.
        """
        if not self.charm.unit.is_leader():
            return
        backend = self._ready_backend()
        if backend is not None:
            self._drop_pending(backend)
        served = dict(self.charm.peers.app_data().databases)
        live = {r.id for r in self.relations}
        wanted = {name: rel for name, rel in served.items() if rel in live}
        for relation in self.relations:
            wanted.update(self._answer(relation, backend, wanted))
        if wanted != served and self.charm.peers.set_databases(wanted):
            self.charm.update_workload()

    def _ready_backend(self) -> BackendDatabase | None:
        backend = self.charm.backend.backend()
        if backend is None or not self.charm.backend.auth_ready_for(backend):
            return None
        return backend

    def _answer(
        self, relation: ops.Relation, backend: BackendDatabase | None, served: dict[str, int]
    ) -> dict[str, int]:
        """Create (if needed) and publish one relation's databases; the entries it now holds."""
        try:
            requests = self._requests(relation)
        except RequestRefusedError as exc:
            logger.warning("not answering client %s", exc)
            return {}
        requests = [r for r in requests if self._conflict(r, served) is None]
        if not requests:
            return {}
        if backend is None:
            logger.info("client relation %d waits for the backend database", relation.id)
            return {}
        endpoint = self._endpoint()
        if endpoint is None:
            return {}
        username = client_username(relation.id, self.charm.owner_tag)
        password = self._password(relation.id, username)
        creds = self.charm.backend.credentials(backend)
        held: dict[str, int] = {}
        for request in requests:
            if served.get(request.database) != relation.id:
                try:
                    create_client(
                        creds,
                        username=username,
                        password=password,
                        database=request.database,
                        extra_roles=request.extra_roles,
                        owner_tag=self.charm.owner_tag,
                        relation_id=relation.id,
                    )
                except BackendError as exc:
                    logger.warning(
                        "could not create database %s for client relation %d: %s",
                        request.database,
                        relation.id,
                        exc,
                    )
                    self._record_failure(
                        relation.id, str(exc), refused=isinstance(exc, ForeignObjectError)
                    )
                    continue
                logger.info(
                    "created user %s and database %s for client relation %d",
                    username,
                    request.database,
                    relation.id,
                )
            held[request.database] = relation.id
            response = self._response(request, backend, endpoint, username, password)
            # The library finds its secret again by label, and ops gives a secret fetched by
            # label no id: without the id it already published, it would drop `secret-user`.
            response.secret_user = self._published_secret_id(relation, request.request_id)
            self.provider.set_response(relation.id, response)
            if request.request_id is None:
                # v0 clients read `database`; the library writes it only while handling the
                # client's relation-changed, and this answer may come from another hook.
                databag = relation.data[self.charm.app]
                if databag.get("database") != request.database:
                    databag["database"] = request.database
        if len(held) == len(requests):
            self._record_failure(relation.id, None)
        return held

    def _published_secret_id(self, relation: ops.Relation, request_id: str | None) -> str | None:
        """The ``secret-user`` we already published for a request (v0: flat; v1: in a list)."""
        local = relation.data[self.charm.app]
        if request_id is None:
            return local.get("secret-user") or None
        try:
            responses = json.loads(local.get("requests") or "[]")
        except ValueError:
            return None
        for response in responses if isinstance(responses, list) else []:
            if isinstance(response, dict) and response.get("request-id") == request_id:
                secret_id = response.get("secret-user")
                return secret_id if isinstance(secret_id, str) and secret_id else None
        return None

    def _record_failure(
        self, relation_id: int, message: str | None, refused: bool = False
    ) -> None:
        """Remember (or, with ``None``, forget) why the backend did not serve a relation.

        ``refused`` failures (an object that exists without our mark) need a person: Blocked.
        The others (unreachable, timeouts) are retried by the next refresh: Waiting.
        """
        key = str(relation_id)
        for name, applies in (("failures", not refused), ("refusals", refused)):
            recorded: dict[str, str] = dict(getattr(self._stored, name))
            if message is not None and applies:
                if recorded.get(key) == message:
                    continue
                recorded[key] = message
            elif recorded.pop(key, None) is None:
                continue
            setattr(self._stored, name, recorded)

    def _endpoint(self) -> str | None:
        """``<app>.<model>.svc.cluster.local:<listen_port>``: the Kubernetes service."""
        try:
            port = CharmConfig.from_dict(self.charm.config).listen_port
        except InvalidConfigError:
            return None
        return f"{self.charm.app.name}.{self.charm.model.name}.svc.cluster.local:{port}"

    def _version(self, backend: BackendDatabase) -> str | None:
        if backend.version:
            return backend.version
        try:
            return backend_version(self.charm.backend.credentials(backend))
        except BackendError as exc:
            logger.warning("could not read the backend's version: %s", exc)
            return None

    def _response(
        self,
        request: ClientRequest,
        backend: BackendDatabase,
        endpoint: str,
        username: str,
        password: str,
    ) -> ResourceProviderModel:
        userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
        uri = f"postgresql://{userinfo}@{endpoint}/{request.database}"
        has_replicas = bool(backend.read_only_endpoints)
        read_only_uri = f"postgresql://{userinfo}@{endpoint}/{request.database}{READONLY_SUFFIX}"
        return ResourceProviderModel(
            salt=request.salt,
            request_id=request.request_id,
            resource=request.database,
            username=username,
            password=password,
            endpoints=endpoint,
            read_only_endpoints=endpoint if has_replicas else None,
            uris=uri,
            read_only_uris=read_only_uri if has_replicas else None,
            version=self._version(backend),
            # TLS (issue 12): whether PgBouncer serves TLS, and the CA to verify it with.
            **self.charm.client_tls_fields(),  # type: ignore[arg-type]
        )

    # -- the client's password, kept so that answering again never rotates it ----------------
    @staticmethod
    def _secret_label(relation_id: int) -> str:
        return f"{CLIENT_SECRET_LABEL_PREFIX}{relation_id}"

    def _password(self, relation_id: int, username: str) -> str:
        """The relation user's password, from our own app secret (created on first use)."""
        label = self._secret_label(relation_id)
        try:
            content = self.charm.model.get_secret(label=label).get_content(refresh=True)
        except ops.SecretNotFoundError:
            content = {}
        if content.get("username") == username and content.get("password"):
            return content["password"]
        password = generate_password()
        new_content = {"username": username, "password": password}
        try:
            self.charm.model.get_secret(label=label).set_content(new_content)
        except ops.SecretNotFoundError:
            self.charm.app.add_secret(new_content, label=label)
        return password

    def _forget_password(self, relation_id: int) -> bool:
        """Remove the relation's password secret; whether there was one."""
        try:
            secret = self.charm.model.get_secret(label=self._secret_label(relation_id))
        except ops.SecretNotFoundError:
            return False
        secret.remove_all_revisions()
        return True

    # -- events -----------------------------------------------------------------------------
    def _on_resource_requested(self, event: ResourceRequestedEvent) -> None:
        # The library has recorded the request; answer it now if the backend is ready, or
        # leave it for refresh() (no defer: the client's databag keeps the request).
        self.refresh()

    def _on_leader_elected(self, _: ops.LeaderElectedEvent) -> None:
        # A new leader answers what the previous one may have left pending.
        self.refresh()

    def _on_relation_broken(self, event: ops.RelationBrokenEvent) -> None:
        if not self.charm.unit.is_leader():
            return
        relation_id = event.relation.id
        self._record_failure(relation_id, None)
        self._remove_response_secrets(event.relation)
        if self._forget_password(relation_id):
            # A user may exist only if we stored a password for it.
            username = client_username(relation_id, self.charm.owner_tag)
            pending: list[str] = list(self._stored.pending_drops)
            if username not in pending:
                pending.append(username)
            self._stored.pending_drops = pending
        backend = self._ready_backend()
        if backend is not None:
            self._drop_pending(backend)
        served = dict(self.charm.peers.app_data().databases)
        remaining = {name: rel for name, rel in served.items() if rel != relation_id}
        if remaining != served and self.charm.peers.set_databases(remaining):
            self.charm.update_workload()

    def _drop_pending(self, backend: BackendDatabase) -> None:
        """Drop users of broken relations (kept in a list until the backend took the drop)."""
        pending: list[str] = list(self._stored.pending_drops)
        if not pending:
            return
        creds = self.charm.backend.credentials(backend)
        remaining: list[str] = []
        for username in pending:
            try:
                drop_client(creds, username=username, owner_tag=self.charm.owner_tag)
            except BackendError as exc:
                logger.warning("could not drop client user %s (will retry): %s", username, exc)
                remaining.append(username)
                continue
            logger.info("dropped client user %s", username)
        self._stored.pending_drops = remaining

    def _remove_response_secrets(self, relation: ops.Relation) -> None:
        """Remove the ``secret-user`` secrets we granted to the relation's application."""
        try:
            local = dict(relation.data[self.charm.app])
        except (ops.RelationDataAccessError, KeyError):
            return
        ids = [local.get("secret-user")]
        try:
            requests = json.loads(local.get("requests") or "[]")
        except ValueError:
            requests = []
        if isinstance(requests, list):
            ids.extend(r.get("secret-user") for r in requests if isinstance(r, dict))
        for secret_id in ids:
            if not secret_id or not isinstance(secret_id, str):
                continue
            try:
                self.charm.model.get_secret(id=secret_id).remove_all_revisions()
            except (ops.SecretNotFoundError, ops.ModelError):
                logger.debug("response secret already gone")
