"""The ``pgb-peers`` relation: the leader's shared decisions and each unit's departing flags.

The auth role's credentials live in an application-owned Juju secret (every unit of the
application may read it); the peer application databag holds only the secret's id.
"""

from __future__ import annotations

import contextlib
import json
import logging

import ops

from state.peers import AuthData, PeerAppData, parse_port
from state.rotation import APPLIED_AUTH_KEY, APPLIED_STATS_KEY, ROTATION_KEY, Rotation
from state.tenants import TenantRecord

logger = logging.getLogger(__name__)

PEER_RELATION = "pgb-peers"
APPLIED_KEY = "applied-databases"
APPLIED_PORT_KEY = "applied-port"
AUTH_SECRET_LABEL = "pgbouncer-auth"  # noqa: S105 (a label, not a password)


def departing_key(relation_id: int) -> str:
    """The unit databag key that marks this unit as leaving a backend relation."""
    return f"backend-database_{relation_id}_departing"


class Peers:
    """Reads and writes the peer relation; writes to app data are for the leader only."""

    def __init__(self, charm: ops.CharmBase):
        self._charm = charm

    @property
    def relation(self) -> ops.Relation | None:
        """The peer relation, once Juju created it."""
        return self._charm.model.get_relation(PEER_RELATION)

    def app_data(self) -> PeerAppData:
        """The leader's shared decisions (defaults before the relation exists)."""
        rel = self.relation
        return PeerAppData.from_databag(rel.data[rel.app] if rel else {})

    def _set_app(self, **fields: str | None) -> bool:
        rel = self.relation
        if rel is None or not self._charm.unit.is_leader():
            return False
        databag = rel.data[rel.app]
        for key, value in fields.items():
            if value is None:
                databag.pop(key, None)
            elif databag.get(key) != value:
                databag[key] = value
        return True

    def set_databases(self, databases: dict[str, int]) -> bool:
        """Publish the client databases every unit must pool (leader only)."""
        data = PeerAppData(databases=databases)
        return self._set_app(databases=data.databases_json() if databases else None)

    def set_backend_problem(self, problem: str | None) -> bool:
        """Record (or clear) why the backend failed the leader, for every unit's status."""
        return self._set_app(backend_problem=problem or None)

    def set_auth_removal_failed(self, failed: bool) -> bool:
        """Record (or clear) that removing the auth user failed (Blocked; docs/backend-database.md)."""
        return self._set_app(auth_removal_failed="true" if failed else None)

    def tenants(self) -> TenantRecord:
        """What this application created for its clients (leader-written, docs/tenancy.md)."""
        rel = self.relation
        return TenantRecord.from_json(rel.data[rel.app].get("tenants") if rel else None)

    def set_tenants(self, record: TenantRecord) -> bool:
        """Save the tenant record (leader only); False when it could not be written."""
        return self._set_app(tenants=record.to_json())

    def auth(self) -> AuthData | None:
        """The auth role's credentials from the secret the leader shared, if any."""
        secret_id = self.app_data().auth_secret_id
        if not secret_id:
            return None
        try:
            secret = self._charm.model.get_secret(id=secret_id)
            content = secret.get_content(refresh=True)
        except (ops.SecretNotFoundError, ops.ModelError):
            logger.warning("auth secret referenced by the peer data is not readable")
            return None
        return AuthData.from_secret(content)

    def save_auth(self, auth: AuthData, auth_dbname: str) -> bool:
        """Store the auth credentials in an app secret and point the peer data at it."""
        if self.relation is None or not self._charm.unit.is_leader():
            return False
        content = auth.to_secret()
        try:
            secret = self._charm.model.get_secret(label=AUTH_SECRET_LABEL)
            if secret.get_content(refresh=True) != content:
                secret.set_content(content)
        except ops.SecretNotFoundError:
            secret = self._charm.app.add_secret(content, label=AUTH_SECRET_LABEL)
        return self._set_app(auth_secret_id=secret.get_info().id, auth_dbname=auth_dbname)

    def drop_auth(self) -> None:
        """Forget the auth credentials: remove the secret and its id (leader only)."""
        if not self._charm.unit.is_leader():
            return
        with contextlib.suppress(ops.SecretNotFoundError):
            self._charm.model.get_secret(label=AUTH_SECRET_LABEL).remove_all_revisions()
        self._set_app(auth_secret_id=None, auth_dbname=None)

    def set_applied(self, databases: list[str], port: int) -> None:
        """Say which client databases, on which port, this unit's PgBouncer now serves."""
        rel = self.relation
        if rel is None:
            return
        bag = rel.data[self._charm.unit]
        for key, value in (
            (APPLIED_KEY, json.dumps(sorted(databases))),
            (APPLIED_PORT_KEY, str(port)),
        ):
            if bag.get(key) != value:
                bag[key] = value

    def applied_ports(self) -> dict[str, int | None]:
        """Unit name → the port it reported listening on (None: not reported), every unit."""
        rel = self.relation
        if rel is None:
            return {}
        units = {*rel.units, self._charm.unit}
        return {unit.name: parse_port(rel.data[unit].get(APPLIED_PORT_KEY)) for unit in units}

    def set_published_port(self, port: int) -> bool:
        """Record the port of the endpoints published to clients (leader only)."""
        return self._set_app(published_port=str(port))

    def applied(self) -> dict[str, frozenset[str]]:
        """Unit name → the client databases it reported serving, for every unit (this one too)."""
        rel = self.relation
        if rel is None:
            return {}
        result: dict[str, frozenset[str]] = {}
        for unit in {*rel.units, self._charm.unit}:
            try:
                raw = json.loads(rel.data[unit].get(APPLIED_KEY) or "[]")
            except ValueError:
                raw = []
            names = raw if isinstance(raw, list) else []
            result[unit.name] = frozenset(n for n in names if isinstance(n, str))
        return result

    def rotation(self) -> Rotation | None:
        """The credential rotation in progress (``rotate-credentials``), if any."""
        rel = self.relation
        return Rotation.from_databag(rel.data[rel.app].get(ROTATION_KEY) if rel else None)

    def set_rotation(self, rotation: Rotation | None) -> bool:
        """Record (or end) the rotation in progress (leader only)."""
        return self._set_app(**{ROTATION_KEY: rotation.to_databag() if rotation else None})

    def set_applied_auth(self, auth_user: str | None, stats_user: str | None = None) -> None:
        """Say which auth role (and stats user) this unit uses since its last apply."""
        rel = self.relation
        if rel is None:
            return
        bag = rel.data[self._charm.unit]
        for key, value in ((APPLIED_AUTH_KEY, auth_user), (APPLIED_STATS_KEY, stats_user)):
            if value is None:
                bag.pop(key, None)
            elif bag.get(key) != value:
                bag[key] = value

    def applied_auth(self, key: str = APPLIED_AUTH_KEY) -> dict[str, str | None]:
        """Unit name → the auth role it reported using (None: none reported), every unit."""
        rel = self.relation
        if rel is None:
            return {}
        units = {*rel.units, self._charm.unit}
        return {unit.name: rel.data[unit].get(key) or None for unit in units}

    def applied_stats(self) -> dict[str, str | None]:
        """Unit name → the stats user its exporter surely uses (None: not reported)."""
        return self.applied_auth(APPLIED_STATS_KEY)

    def mark_departing(self, relation_id: int) -> None:
        """Tell the peers (and our own later broken hook) that this unit is leaving."""
        rel = self.relation
        if rel is not None:
            rel.data[self._charm.unit][departing_key(relation_id)] = "true"

    def is_departing(self, relation_id: int) -> bool:
        """Whether this unit marked itself as leaving the backend relation."""
        rel = self.relation
        return bool(rel and rel.data[self._charm.unit].get(departing_key(relation_id)) == "true")
