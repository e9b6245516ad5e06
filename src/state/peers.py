r"""What the leader shares with every unit through the ``pgb-peers`` application databag.

Example databag (no secret in it: the auth role's credentials live in a Juju secret)::

    {"auth_secret_id": "secret://…/d2fjn1fmp25004or68b0",
     "auth_dbname": "pgbouncer",
     "databases": "{\"myapp\": {\"relation_id\": 7}}"}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from state.names import InvalidNameError, validate_database_name, validate_target_dbname


@dataclass(frozen=True)
class AuthData:
    """The auth role PgBouncer's ``auth_query`` logs in as."""

    username: str
    password: str = field(repr=False)
    schema: str | None = None
    """The auth role whose schema holds the lookup, when another generation logs in
    (``rotate-credentials``, :mod:`state.rotation`); None: ``username`` itself."""

    @property
    def lookup_schema(self) -> str:
        """The schema of the lookup function (the first generation's name)."""
        return self.schema or self.username

    @classmethod
    def from_secret(cls, content: Mapping[str, str]) -> AuthData | None:
        """From the auth secret's content; ``None`` when incomplete."""
        username, password = content.get("username"), content.get("password")
        if not username or not password:
            return None
        schema = content.get("schema") or None
        return cls(username=username, password=password, schema=schema)

    def to_secret(self) -> dict[str, str]:
        """The secret content that :meth:`from_secret` reads back."""
        content = {"username": self.username, "password": self.password}
        if self.schema is not None and self.schema != self.username:
            content["schema"] = self.schema
        return content


@dataclass(frozen=True)
class PeerAppData:
    """The leader's decisions every unit renders from."""

    auth_secret_id: str | None = None
    auth_dbname: str | None = None
    databases: Mapping[str, int] = field(default_factory=dict)
    """Client database name → the lowest live client relation id holding it."""
    backend_problem: str | None = None
    """Why the leader's last attempt on the backend failed (shown by every unit)."""
    auth_removal_failed: bool = False
    """Removing the auth user failed when the backend went: Blocked (docs/backend-database.md)."""
    published_port: int | None = None
    """The port in the endpoints the leader last published to clients (docs/workload.md)."""

    @classmethod
    def from_databag(cls, data: Mapping[str, str]) -> PeerAppData:
        """Parse the peer application databag; an empty or damaged databag parses to defaults.

        Only the leader writes it, so a damaged value is a bug, not an attack: entries that
        fail validation are dropped rather than trusted.
        """
        databases: dict[str, int] = {}
        try:
            raw = json.loads(data.get("databases") or "{}")
        except ValueError:
            raw = {}
        if isinstance(raw, dict):
            for name, entry in raw.items():
                try:
                    validate_database_name(name)
                except InvalidNameError:
                    continue
                rel_id = entry.get("relation_id") if isinstance(entry, dict) else None
                if isinstance(rel_id, int) and not isinstance(rel_id, bool):
                    databases[name] = rel_id
        auth_dbname = data.get("auth_dbname") or None
        if auth_dbname is not None:
            try:
                validate_target_dbname(auth_dbname, "auth_dbname")
            except InvalidNameError:
                auth_dbname = None
        problem = data.get("backend_problem") or None
        return cls(
            published_port=parse_port(data.get("published_port")),
            auth_secret_id=data.get("auth_secret_id") or None,
            auth_dbname=auth_dbname,
            databases=databases,
            backend_problem=problem[:300] if problem else None,
            auth_removal_failed=data.get("auth_removal_failed") == "true",
        )

    def databases_json(self) -> str:
        """The ``databases`` value as stored in the databag."""
        return json.dumps(
            {name: {"relation_id": rel} for name, rel in sorted(self.databases.items())},
            sort_keys=True,
        )


def parse_port(value: str | None) -> int | None:
    """A TCP port written by a unit or the leader; None when absent or not a port."""
    if not value or not value.isdigit():
        return None
    port = int(value)
    return port if 1 <= port <= 65535 else None
