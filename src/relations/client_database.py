r"""The client ``database`` relation (provides ``postgresql_client``): one user per relation.

A client application asks for a database; the leader creates, on the backend PostgreSQL, a user
for that relation and hands it the database (docs/tenancy.md), records it in the peer data so
that every unit's PgBouncer gets a ``[databases]`` entry for it, and answers with the pooler's
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
client's databag, which stays readable; the leader's reconcile (``reconcile.serve_clients``)
answers every answerable request in every hook. This module only reads and writes the databags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

import ops

from state.names import READONLY_KEY_SUFFIX, InvalidNameError, validate_client_database_name
from state.tenants import ForbiddenRoleError, check_extra_roles
from state.tenants import client_username as _client_username

if TYPE_CHECKING:
    from dpcharmlibs.interfaces import RequirerCommonModel, ResourceProviderModel

    from state.backend import BackendDatabase


logger = logging.getLogger(__name__)

CLIENT_RELATION = "database"
CLIENT_USER_PREFIX = "pgbouncer_client_"
CLIENT_SECRET_LABEL_PREFIX = "pgbouncer-client-"  # noqa: S105 (a label, not a secret)


def client_username(relation_id: int, owner_tag: str) -> str:
    """The backend role of one client relation, e.g. ``pgbouncer_client_7_1a2b3c4d``.

    The suffix (a hash of the model uuid and application name) keeps two pgbouncer
    applications (in two models) on one PostgreSQL from ever sharing a role.
    """
    return _client_username(relation_id, owner_tag)


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
        validate_client_database_name(name, "database")
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


def _provider_handler(charm: ops.CharmBase) -> ops.Object:
    """Dpcharmlibs' provider, except that an unreadable client databag does not crash the hook.

    Imported here, not at module level: pydantic and the library cost ~80 ms and 17 MiB, paid
    only in hooks that have a ``database`` relation (docs/architecture.md, "Lean hooks").
    """
    import warnings

    # The library logs a DEBUG line for each field it reads or writes: in Juju each line is a
    # juju-log call (82 in a leader hook with 10 clients, issue 23). Its warnings still show.
    logging.getLogger("dpcharmlibs").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # pydantic warns about the library's field attributes on import; nothing to act on.
        warnings.simplefilter("ignore")
        import pydantic
        from dpcharmlibs.interfaces import RequirerCommonModel, ResourceProviderEventHandler

    class _ProviderEventHandler(ResourceProviderEventHandler):
        def _on_relation_changed_event(self, event: ops.RelationChangedEvent) -> None:
            # The library parses the client's databag in its own handler and lets pydantic's
            # error escape; ClientDatabaseRelation.requests turns it into a Blocked status.
            try:
                self.requests(event.relation)
            except (pydantic.ValidationError, ValueError, TypeError):
                logger.warning(
                    "client relation %d: unreadable request, not answered", event.relation.id
                )
                return
            super()._on_relation_changed_event(event)

    return _ProviderEventHandler(charm, CLIENT_RELATION, RequirerCommonModel)


V0_FIELDS = frozenset({"database", "extra-user-roles", "requested-secrets"})
"""The v0 request fields read without the library; anything else goes through it."""
ANSWERED_KEY_PREFIX = "answered-"
"""Peer application databag: ``answered-<relation id>`` → digest of the answer published."""


@dataclasses.dataclass(frozen=True)
class _PlainV0:
    """A v0 request read from its flat fields, in the shape :func:`validate_request` reads."""

    resource: str
    extra_user_roles: str | None
    salt: str
    entity_type: None = None
    request_id: None = None


REQUEST_KEY_PREFIX = "request-"
"""Peer application databag: ``request-<relation id>`` → digest of the client databag the
library last handled in a relation-changed."""


class ClientDatabaseRelation(ops.Object):
    """The ``database`` endpoint as typed reads and writes; it runs no SQL, calls no charm.

    The library (and pydantic, and cryptography with it) is loaded only when a request must
    be parsed or answered through it: a client's relation-changed is handed to the library
    only when the client's databag differs from the one it last handled, a v0 request already
    answered is read from its flat fields, and an answer already published with the same
    inputs is not written again (issue 23: a steady hook pays for none of it, and writes
    nothing).
    """

    def __init__(self, charm: ops.CharmBase):
        super().__init__(charm, "client-database")
        self._charm = charm
        self._provider: ops.Object | None = None

    def changed(self, event: ops.RelationChangedEvent) -> None:
        """Let the library handle a client's databag it has not handled yet (leader only).

        It records the request (its ``data`` field, which v1 requirers match answers by) and
        draws a new salt each time: handed the same databag again, it would rewrite ours and
        wake every unit of the client.
        """
        relation = event.relation
        if not self._charm.unit.is_leader() or relation.app is None:
            return
        remote = dict(relation.data[relation.app])
        digest = hashlib.sha256(json.dumps(remote, sort_keys=True).encode()).hexdigest()[:32]
        peer = self._peer_app_data()
        key = f"{REQUEST_KEY_PREFIX}{relation.id}"
        if peer is not None and peer.get(key) == digest:
            return
        provider = self.provider
        if provider is None:
            return
        # Built now, the library's own observer is not notified of this event (ops saved the
        # notices before the first observer ran): it is called here, once.
        provider._on_relation_changed_event(event)  # type: ignore[attr-defined]
        if peer is not None:
            peer[key] = digest

    @property
    def provider(self) -> ops.Object | None:
        """Dpcharmlibs' provider, built on first use (None without a ``database`` relation)."""
        if self._provider is None and self._charm.model.relations[CLIENT_RELATION]:
            self._provider = _provider_handler(self._charm)
        return self._provider

    @property
    def relations(self) -> list[ops.Relation]:
        """Every live client relation."""
        return list(self._charm.model.relations[CLIENT_RELATION])

    def requests(self, relation: ops.Relation) -> list[ClientRequest]:
        """The relation's valid requests (empty until the client asked).

        Raises:
            RequestRefusedError: the client's databag cannot be parsed or a request is refused.
        """
        if relation.app is None:
            return []
        plain = self._plain_v0(relation)
        if plain is not None:
            return plain
        if self.provider is None:
            return []
        try:
            raw: Sequence[RequirerCommonModel] = self.provider.requests(relation)  # type: ignore[attr-defined]
        except (ValueError, TypeError):
            # pydantic's ValidationError is a ValueError.
            raise RequestRefusedError(f"relation {relation.id}: unreadable request") from None
        requests = [validate_request(relation.id, r) for r in raw if r.resource or r.entity_type]
        names = [r.database for r in requests]
        if len(set(names)) != len(names):
            raise RequestRefusedError(f"relation {relation.id}: the same database asked twice")
        return requests

    def _plain_v0(self, relation: ops.Relation) -> list[ClientRequest] | None:
        """A v0 request read without the library, or None when the library must read it.

        Only the plain case: flat v0 fields and nothing else, a database named, and (on the
        leader) the salt already published, which the answer keeps. A follower never answers,
        so it needs no salt.
        """
        assert relation.app is not None  # noqa: S101 (checked by the caller)
        remote = relation.data[relation.app]
        if not remote:
            return []
        if set(remote) - V0_FIELDS or not remote.get("database"):
            return None
        salt = ""
        if self._charm.unit.is_leader():
            salt = relation.data[self._charm.app].get("salt") or ""
            if not salt:
                return None
        request = _PlainV0(remote["database"], remote.get("extra-user-roles"), salt)
        return [validate_request(relation.id, request)]  # type: ignore[arg-type]

    # -- answers already published ---------------------------------------------------------------
    def _peer_app_data(self) -> ops.RelationDataContent | None:
        from relations.peers import PEER_RELATION

        peer = self._charm.model.get_relation(PEER_RELATION)
        return peer.data[self._charm.app] if peer is not None else None

    @staticmethod
    def _digest(relation: ops.Relation, request: ClientRequest, **inputs: object) -> str:
        """What an answer depends on besides the password (kept in our secret, never rotated).

        No secret goes in: the password only changes with the user name, which does.
        """
        fields = {
            "relation": relation.id,
            "database": request.database,
            "request_id": request.request_id,
            **{k: v for k, v in inputs.items() if k != "backend"},
        }
        backend = inputs.get("backend")
        fields["read_only"] = bool(getattr(backend, "read_only_endpoints", None))
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def answered(
        self,
        relation: ops.Relation,
        request: ClientRequest,
        *,
        backend: BackendDatabase,
        endpoint: str,
        username: str,
        version: str | None,
        tls_fields: Mapping[str, object] | None = None,
    ) -> bool:
        """Whether this very answer is already published (so answering again writes nothing).

        The digest of its inputs is in the peer data and the client's databag still holds an
        answer to the same database (``secret-user``, or the plain fields).
        """
        peer = self._peer_app_data()
        if peer is None:
            return False
        digest = self._digest(
            relation, request, backend=backend, endpoint=endpoint, username=username,
            version=version, tls=dict(tls_fields or {}), secrets=self.wants_secrets(relation),
        )  # fmt: skip
        if peer.get(f"{ANSWERED_KEY_PREFIX}{relation.id}") != digest:
            return False
        if request.request_id is not None:
            return self._published_secret_id(relation, request.request_id) is not None
        local = relation.data[self._charm.app]
        key = "secret-user" if self.wants_secrets(relation) else "password"
        return local.get("database") == request.database and bool(local.get(key))

    def _remember(self, relation: ops.Relation, request: ClientRequest, **inputs: object) -> None:
        peer = self._peer_app_data()
        if peer is None:
            return
        digest = self._digest(relation, request, **inputs, secrets=self.wants_secrets(relation))
        key = f"{ANSWERED_KEY_PREFIX}{relation.id}"
        if peer.get(key) != digest:
            peer[key] = digest

    def answer(
        self,
        relation: ops.Relation,
        request: ClientRequest,
        *,
        backend: BackendDatabase,
        endpoint: str,
        username: str,
        password: str,
        version: str | None,
        tls_fields: Mapping[str, object] | None = None,
    ) -> None:
        """Publish the pooler's address, the credentials and the TLS state for one request.

        A v0 client that sent no ``requested-secrets`` cannot read a Juju secret (an older
        ``data_interfaces``, or a model without secrets): the published interface answers it
        with plain fields, which dpcharmlibs cannot do (it always uses ``secret-user``), so
        :func:`plain_answer` does, against ``postgresql_client`` v0's provider schema.
        """
        self._remember(
            relation, request, backend=backend, endpoint=endpoint, username=username,
            version=version, tls=dict(tls_fields or {}),
        )  # fmt: skip
        if request.request_id is None and not self.wants_secrets(relation):
            fields = plain_answer(
                request, backend, endpoint, username, password, version, tls_fields or {}
            )
            databag = relation.data[self._charm.app]
            for key, value in fields.items():
                if value is None:
                    databag.pop(key, None)
                elif databag.get(key) != value:
                    databag[key] = value
            return
        if request.request_id is None:
            # The library draws a new salt each time it parses a v0 request; answering with it
            # would rewrite our databag in every hook, and wake every unit of the client with a
            # relation-changed. The salt already published stays.
            published = relation.data[self._charm.app].get("salt")
            if published:
                request = dataclasses.replace(request, salt=published)
        response = _response(
            request, backend, endpoint, username, password, version, tls_fields or {}
        )
        # The library finds its secrets again by label, and ops gives a secret fetched by
        # label no id: without the ids it already published, it would drop `secret-user` and
        # `secret-tls` from the databag when it answers again.
        response.secret_user = self._published_secret_id(relation, request.request_id)
        response.secret_tls = self._published_secret_id(relation, request.request_id, "secret-tls")
        assert self.provider is not None  # noqa: S101 (a request was read through it)
        self.provider.set_response(relation.id, response)  # type: ignore[attr-defined]
        if request.request_id is None:
            # v0 clients read `database`; the library writes it only while handling the
            # client's relation-changed, and this answer may come from another hook.
            databag = relation.data[self._charm.app]
            if databag.get("database") != request.database:
                databag["database"] = request.database

    @staticmethod
    def wants_secrets(relation: ops.Relation) -> bool:
        """Whether the client asked for secrets (sent ``requested-secrets``, as v0 requires)."""
        if relation.app is None:
            return True
        return "requested-secrets" in relation.data[relation.app]

    def _published_secret_id(
        self, relation: ops.Relation, request_id: str | None, key: str = "secret-user"
    ) -> str | None:
        """The secret id (``key``) we already published for a request (v0: flat; v1: a list)."""
        local = relation.data[self._charm.app]
        if request_id is None:
            return local.get(key) or None
        try:
            responses = json.loads(local.get("requests") or "[]")
        except ValueError:
            return None
        for response in responses if isinstance(responses, list) else []:
            if isinstance(response, dict) and response.get("request-id") == request_id:
                secret_id = response.get(key)
                return secret_id if isinstance(secret_id, str) and secret_id else None
        return None

    # -- the client's password, kept so that answering again never rotates it ----------------
    @staticmethod
    def _secret_label(relation_id: int) -> str:
        return f"{CLIENT_SECRET_LABEL_PREFIX}{relation_id}"

    def password(self, relation_id: int, username: str, new: Callable[[], str]) -> str:
        """The relation user's password, from our own app secret (``new()`` on first use)."""
        label = self._secret_label(relation_id)
        try:
            content = self._charm.model.get_secret(label=label).get_content(refresh=True)
        except ops.SecretNotFoundError:
            content = {}
        if content.get("username") == username and content.get("password"):
            return content["password"]
        password = new()
        new_content = {"username": username, "password": password}
        try:
            self._charm.model.get_secret(label=label).set_content(new_content)
        except ops.SecretNotFoundError:
            self._charm.app.add_secret(new_content, label=label)
        return password

    def forget(self, relation: ops.Relation) -> None:
        """Remove the relation's password secret and the ``secret-user`` secrets we granted."""
        peer = self._peer_app_data()
        if peer is not None:
            for prefix in (ANSWERED_KEY_PREFIX, REQUEST_KEY_PREFIX):
                peer.pop(f"{prefix}{relation.id}", None)
        with contextlib.suppress(ops.SecretNotFoundError):
            self._charm.model.get_secret(
                label=self._secret_label(relation.id)
            ).remove_all_revisions()
        try:
            local = dict(relation.data[self._charm.app])
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
                self._charm.model.get_secret(id=secret_id).remove_all_revisions()
            except (ops.SecretNotFoundError, ops.ModelError):
                logger.debug("response secret already gone")


def _response(
    request: ClientRequest,
    backend: BackendDatabase,
    endpoint: str,
    username: str,
    password: str,
    version: str | None,
    tls_fields: Mapping[str, object],
) -> ResourceProviderModel:
    from dpcharmlibs.interfaces import ResourceProviderModel

    uri, read_only_uri = _uris(request.database, endpoint, username, password, backend)
    return ResourceProviderModel(
        salt=request.salt,
        request_id=request.request_id,
        resource=request.database,
        username=username,
        password=password,
        endpoints=endpoint,
        read_only_endpoints=endpoint if read_only_uri is not None else None,
        uris=uri,
        read_only_uris=read_only_uri,
        version=version,
        **tls_fields,  # type: ignore[arg-type]  # validated (and wrapped) by the model
    )


def plain_answer(
    request: ClientRequest,
    backend: BackendDatabase,
    endpoint: str,
    username: str,
    password: str,
    version: str | None,
    tls_fields: Mapping[str, object],
) -> dict[str, str | None]:
    """The v0 provider databag for a client without secrets; None: a field to remove.

    ``postgresql_client`` v0 (provider.json): ``database``, ``username``, ``password`` and
    ``endpoints`` required; ``uris``, ``read-only-endpoints``, ``read-only-uris``,
    ``version``, ``tls`` (``"true"``/``"false"``) and ``tls-ca`` optional; all strings.
    """
    uri, read_only_uri = _uris(request.database, endpoint, username, password, backend)
    tls_ca = tls_fields.get("tls_ca")
    return {
        "database": request.database,
        "endpoints": endpoint,
        "username": username,
        "password": password,
        "uris": uri,
        "read-only-endpoints": endpoint if read_only_uri is not None else None,
        "read-only-uris": read_only_uri,
        "version": version,
        "tls": "true" if tls_fields.get("tls") else "false",
        "tls-ca": tls_ca if isinstance(tls_ca, str) and tls_ca else None,
    }


def _uris(
    database: str, endpoint: str, username: str, password: str, backend: BackendDatabase
) -> tuple[str, str | None]:
    """The client's libpq URI, and its read-only twin when the backend has replicas."""
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    uri = f"postgresql://{userinfo}@{endpoint}/{database}"
    return uri, (uri + READONLY_KEY_SUFFIX if backend.read_only_endpoints else None)


def client_endpoint(app_name: str, model_name: str, listen_port: int) -> str:
    """``<app>.<model>.svc.cluster.local:<listen_port>``: the Kubernetes service."""
    return f"{app_name}.{model_name}.svc.cluster.local:{listen_port}"
