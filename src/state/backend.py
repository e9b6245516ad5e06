"""What the PostgreSQL charm gave us on ``backend-database``, as one typed value.

Built from plain values (the provider's application databag and, when it sent ``secret-user``,
that secret's content) so that it is testable without ops. Example provider databag, in the
v0 form (``username``/``password`` may instead arrive as a ``secret-user`` secret id)::

    {"endpoints": "postgresql-k8s-primary.model.svc.cluster.local:5432",
     "read-only-endpoints": "postgresql-k8s-replicas.model.svc.cluster.local:5432",
     "username": "relation_18", "password": "18cqKCp19xOPBh", "version": "14.7",
     "database": "pgbouncer"}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from state.names import (
    InvalidNameError,
    validate_host,
    validate_port,
    validate_role_name,
    validate_target_dbname,
)

DEFAULT_POSTGRES_PORT = 5432
MAX_ENDPOINTS = 16
MAX_PASSWORD_LENGTH = 1024
# Fields of the provider's databag that we record in our ``data`` field to detect changes.
# Credentials are left out on purpose: no password ever sits in a databag we write.
TRACKED_FIELDS = ("endpoints", "read-only-endpoints", "version", "database", "secret-user")
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*[A-Za-z0-9.~+-]*")


class InvalidBackendDataError(ValueError):
    """The provider's databag holds a value we refuse; ``field`` names it."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"invalid backend-database {field}: {reason}")


@dataclass(frozen=True, order=True)
class Endpoint:
    """One ``host:port`` of the backend."""

    host: str
    port: int = DEFAULT_POSTGRES_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoints(value: object, field: str = "endpoints") -> tuple[Endpoint, ...]:
    """Parse a comma list of ``host[:port]`` (IPv6 as ``[addr]:port``); empty gives ``()``."""
    if value is None:
        return ()
    if not isinstance(value, str):
        raise InvalidBackendDataError(field, "not a string")
    items = [item.strip() for item in value.split(",") if item.strip()]
    if len(items) > MAX_ENDPOINTS:
        raise InvalidBackendDataError(field, f"more than {MAX_ENDPOINTS} endpoints")
    endpoints: list[Endpoint] = []
    for item in items:
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise InvalidBackendDataError(field, "malformed [IPv6]:port endpoint")
            port_text = rest[1:] if rest else str(DEFAULT_POSTGRES_PORT)
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        elif ":" not in item:
            host, port_text = item, str(DEFAULT_POSTGRES_PORT)
        else:
            raise InvalidBackendDataError(field, "IPv6 addresses must be written [addr]:port")
        try:
            endpoint = Endpoint(validate_host(host, field), validate_port(port_text, field))
        except InvalidNameError as exc:
            raise InvalidBackendDataError(field, exc.reason) from None
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    return tuple(endpoints)


@dataclass(frozen=True)
class BackendDatabase:
    """A backend ready to use: where it is, which database, and the relation user."""

    database: str
    endpoints: tuple[Endpoint, ...]
    read_only_endpoints: tuple[Endpoint, ...]
    username: str
    password: str = field(repr=False)
    version: str | None = None

    @property
    def primary(self) -> Endpoint:
        """The endpoint that takes writes (the first one the provider listed)."""
        return self.endpoints[0]

    @classmethod
    def from_databag(
        cls,
        data: Mapping[str, str],
        credentials: Mapping[str, str] | None,
        requested_database: str,
    ) -> BackendDatabase | None:
        """Build from the provider's app databag and the ``secret-user`` content, if any.

        Returns ``None`` while the provider has not published everything (no endpoints, no
        credentials); raises :class:`InvalidBackendDataError` for a value we refuse.
        """
        endpoints = parse_endpoints(data.get("endpoints"), "endpoints")
        read_only = parse_endpoints(data.get("read-only-endpoints"), "read-only-endpoints")
        creds: Mapping[str, str] = credentials if credentials is not None else data
        username, password = creds.get("username"), creds.get("password")
        if not endpoints or not username or not password:
            return None
        field_prefix = "secret-user " if credentials is not None else ""
        try:
            validate_role_name(username, f"{field_prefix}username")
        except InvalidNameError as exc:
            raise InvalidBackendDataError(exc.field, exc.reason) from None
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidBackendDataError(f"{field_prefix}password", "not a usable password")
        if "\x00" in password:
            raise InvalidBackendDataError(f"{field_prefix}password", "contains a NUL byte")
        database = data.get("database") or requested_database
        try:
            validate_target_dbname(database, "database")
        except InvalidNameError as exc:
            raise InvalidBackendDataError("database", exc.reason) from None
        version = data.get("version") or None
        if version is not None and not (len(version) <= 32 and _VERSION.fullmatch(version)):
            raise InvalidBackendDataError("version", "not a version number")
        return cls(
            database=database,
            endpoints=endpoints,
            read_only_endpoints=tuple(e for e in read_only if e not in endpoints),
            username=username,
            password=password,
            version=version,
        )


def tracked_data(data: Mapping[str, str]) -> str:
    """The JSON we store in our ``data`` field: the provider fields we processed, no secrets."""
    return json.dumps({k: data[k] for k in TRACKED_FIELDS if k in data}, sort_keys=True)


def diff_tracked(previous_json: str | None, data: Mapping[str, str]) -> set[str]:
    """Tracked fields whose value differs from what we last processed."""
    try:
        previous = json.loads(previous_json) if previous_json else {}
    except ValueError:
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    return {k for k in TRACKED_FIELDS if previous.get(k) != data.get(k)}
