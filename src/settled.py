"""The settled record: a hook that can change nothing ends before the reconcile (issue 23).

Juju tells a unit of every change to its inputs with a hook about that input: the configuration
with config-changed, a relation's data with that relation's relation-changed, a secret with
secret-changed, leadership with leader-elected. A hook about something else cannot find any of
them changed. So after a reconcile that ended *clean* (one active status and nothing in motion:
no hand-over draining, no rotation, no pause, nothing repaired) the unit keeps a small record in
its charm directory: when it was, whether the unit led, a digest of the configuration, a digest
of each client relation's application databag, and the container at a glance (the listing of
``/var/lib/pgbouncer``: name, type, size, permissions, modification time, owner; and every
Pebble service's state).

A later ``update-status``, ``config-changed`` or client ``relation-changed`` ends at once, with
no status set (the last one stands, and was true), when:

- the record is less than :data:`SETTLED_FOR_S` old and no certificate served or trusted has
  expired since (every unit reconciles in full at least that often; the leader also whenever
  its backend check is due, ``postgres.verification``);
- the unit's leadership is the record's;
- the input the hook is about is the record's (the configuration's digest for config-changed,
  the client databag's for relation-changed; update-status is about no input);
- the container looks exactly as the record saw it.

Anything else (no record, an unreadable one, another format, one input different, one file
touched, one service stopped) runs the whole reconcile, which writes a new record when it ends
clean and removes it otherwise. The record holds no secret: digests and file metadata only.

What it cannot see, said in docs/decisions.md (2026-12-07): Pebble lists modification times to
the second, so a file rewritten with the same size within the second of the glance looks
unchanged until the next full reconcile (at most :data:`SETTLED_FOR_S` later).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgbouncer.workload import WorkloadError

if TYPE_CHECKING:
    import ops

    from pgbouncer.plan import ContainerSnapshot, ServiceInfo
    from pgbouncer.workload import Workload
    from state.charm_state import CharmState

logger = logging.getLogger(__name__)

RECORD_FILE = ".settled.json"
"""In the charm directory (unit-local; lost with the pod, and then the next hook is whole)."""
FORMAT = 2
SETTLED_FOR_S = 30 * 60
"""At most this long between two whole reconciles of a unit (as the leader's backend check)."""


def settled_until(at: float, expiries: Iterable[float]) -> float:
    """Until when a record taken at ``at`` holds.

    :data:`SETTLED_FOR_S`, or until the first of ``expiries`` (the certificates served and
    trusted: the whole reconcile after one expires tells it), whichever comes first.
    """
    return min([at + SETTLED_FOR_S, *expiries])


UPDATE_STATUS = "update-status"
CONFIG_CHANGED = "config-changed"
CLIENT_CHANGED = "client-relation-changed"
HOOKS = frozenset({UPDATE_STATUS, CONFIG_CHANGED, CLIENT_CHANGED})
"""The hooks that may end on the record: each is about one input or none."""


def digest(data: object) -> str:
    """A short digest of JSON-able data, independent of key order."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Glance:
    """The container at a glance: one listing of the base directory, one of the services.

    Attributes:
        files: one row per directory entry: name, type, size, permissions, modification time,
            owner and group, as Pebble lists them.
        services: one row per Pebble service: name, current state, startup.
    """

    files: tuple[tuple[str, ...], ...] = ()
    services: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def of(cls, files: Iterable[Iterable[object]], services: Mapping[str, ServiceInfo]) -> Glance:
        """Rows in a canonical order (the listing's and Pebble's orders do not matter)."""
        return cls(
            files=tuple(sorted(tuple(str(v) for v in row) for row in files)),
            services=tuple(sorted((n, i.current, i.startup) for n, i in services.items())),
        )

    def digest(self) -> str:
        """What the record keeps of the glance."""
        return digest([self.files, self.services])


@dataclasses.dataclass(frozen=True)
class SettledRecord:
    """What a clean reconcile saw, for the hooks after it (see the module docstring)."""

    at: float
    leader: bool
    config: str
    clients: Mapping[int, str]
    container: str
    until: float
    """When the record stops holding (:func:`settled_until`)."""

    def to_text(self) -> str:
        """The record file's content."""
        return json.dumps(
            {
                "format": FORMAT,
                "at": self.at,
                "leader": self.leader,
                "config": self.config,
                "clients": {str(k): v for k, v in sorted(self.clients.items())},
                "container": self.container,
                "until": self.until,
            },
            sort_keys=True,
        )

    @classmethod
    def from_text(cls, text: str | None) -> SettledRecord | None:
        """The record, or None for anything that is not exactly one of ours."""
        if not text:
            return None
        try:
            raw: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            return None
        at, leader, config = raw.get("at"), raw.get("leader"), raw.get("config")
        clients, container, until = raw.get("clients"), raw.get("container"), raw.get("until")
        if (
            not isinstance(at, (int, float))
            or isinstance(at, bool)
            or not isinstance(until, (int, float))
            or isinstance(until, bool)
            or not isinstance(leader, bool)
            or not isinstance(config, str)
            or not isinstance(container, str)
            or not isinstance(clients, dict)
            or not all(
                isinstance(k, str) and k.isdigit() and isinstance(v, str)
                for k, v in clients.items()
            )
        ):
            return None
        return cls(
            at=float(at),
            leader=leader,
            config=config,
            clients={int(k): v for k, v in clients.items()},
            container=container,
            until=float(until),
        )


def unsettled_reason(
    record: SettledRecord | None,
    hook: str,
    *,
    now: float,
    leader: bool,
    container: str | None,
    config: str | None = None,
    client: tuple[int, str] | None = None,
) -> str | None:
    """Why ``hook`` must reconcile in full; None when it may end on the record.

    Args:
        record: the unit's record (None: there is none, or it is unreadable).
        hook: one of :data:`HOOKS` (any other hook always reconciles).
        now: the current time.
        leader: whether the unit leads now.
        container: the digest of the container's glance now (None: it could not be read).
        config: config-changed: the digest of the configuration now.
        client: a client's relation-changed: the relation id and its databag's digest now.
    """
    if hook not in HOOKS:
        return f"{hook} is not a settled hook"
    if record is None:
        return "no record"
    if not 0 <= now - record.at < SETTLED_FOR_S or now >= record.until:
        return "the record is too old"
    if leader != record.leader:
        return "leadership changed"
    if hook == CONFIG_CHANGED and config != record.config:
        return "the configuration changed"
    if hook == CLIENT_CHANGED and (client is None or record.clients.get(client[0]) != client[1]):
        return "the client's databag changed"
    if container is None or container != record.container:
        return "the container changed"
    return None


def read(charm_dir: Path) -> SettledRecord | None:
    """The unit's record (None when absent or unreadable)."""
    try:
        text = (Path(charm_dir) / RECORD_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return SettledRecord.from_text(text)


def write(charm_dir: Path, record: SettledRecord | None) -> None:
    """Keep ``record`` (0600, replaced atomically); None removes it. Failures are ignored.

    An unwritable charm directory only means every hook reconciles in full, as before.
    """
    path = Path(charm_dir) / RECORD_FILE
    try:
        if record is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f"{RECORD_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(record.to_text())
        os.replace(tmp, path)
    except OSError:
        pass


class SettledHooks:
    """The charm's side of the record: what a hook reads to decide, and what it keeps.

    Args:
        charm: the charm (its charm directory, leadership, configuration and relations).
        workload: PgBouncer's container, for the glance.
        client_endpoint: the endpoint whose relations' databags the record holds digests of.
    """

    def __init__(self, charm: ops.CharmBase, workload: Workload, client_endpoint: str):
        self._charm = charm
        self._workload = workload
        self._endpoint = client_endpoint

    def may_end(self, hook: str, relation: ops.Relation | None = None) -> bool:
        """Whether ``hook`` may end on the record (:func:`unsettled_reason` says why not).

        Costs no hook tool without a record; with one, ``is-leader``, the input the hook is
        about (``config-get``, or the client's databag) and two Pebble listings.
        """
        charm = self._charm
        record = read(charm.charm_dir)
        if record is None:
            return False
        leader = charm.unit.is_leader()
        if hook == UPDATE_STATUS and leader:
            from postgres.verification import verification_pending

            if verification_pending(charm.charm_dir):
                return False
        config = digest(dict(charm.config)) if hook == CONFIG_CHANGED else None
        client = None
        if relation is not None and relation.app is not None:
            client = (relation.id, digest(dict(relation.data[relation.app])))
        try:
            container: str | None = Glance.of(*self._workload.glance()).digest()
        except WorkloadError:
            container = None
        reason = unsettled_reason(
            record, hook, now=time.time(), leader=leader, container=container, config=config,
            client=client,
        )  # fmt: skip
        if reason is not None:
            logger.debug("reconciling in full: %s", reason)
        return reason is None

    def forget(self) -> None:
        """A reconcile starts: no record until it ends clean (one that fails leaves none)."""
        write(self._charm.charm_dir, None)

    def keep(self, state: CharmState | None, seen: ContainerSnapshot | None) -> None:
        """After a reconcile: the record of ``state`` if it ended clean (else None: none).

        The glance is the snapshot's own listing when nothing was done to the container since
        it was read, else two Pebble listings.
        """
        record = None
        if state is not None and seen is not None:
            try:
                if seen.listing is not None:
                    glance: Glance | None = Glance.of(seen.listing, seen.services)
                else:
                    glance = Glance.of(*self._workload.glance())
            except WorkloadError:
                glance = None
            if glance is not None:
                record = self._record(state, glance)
        write(self._charm.charm_dir, record)

    def _record(self, state: CharmState, glance: Glance) -> SettledRecord:
        charm = self._charm
        clients = {
            r.id: digest(dict(r.data[r.app]))
            for r in charm.model.relations[self._endpoint]
            if r.app is not None
        }
        now = time.time()
        certificates = (state.tls_material, state.backend_tls)
        expiries = [c.not_after.timestamp() for c in certificates if c is not None]  # type: ignore[attr-defined]
        return SettledRecord(
            at=now,
            leader=state.leader,
            config=digest(dict(charm.config)),
            clients=clients,
            container=glance.digest(),
            until=settled_until(now, expiries),
        )
