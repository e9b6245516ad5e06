"""The drain clocks: since when old processes have been draining, kept beside their files.

Two kinds of old processes drain (docs/workload.md): after a port change, those still serving
their clients on the old port, stopped :data:`DRAIN_GRACE_S` after clients were told the new
port; after a same-port hand-over (``pool_mode``, a restart, fewer processes), those that got
SIGTERM, stopped at :data:`SAME_PORT_DRAIN_S`. The clocks are facts of this container's
processes, so they live in a file in the container (:data:`CLOCKS_FILE`) that the snapshot reads
and the hook rewrites only when a clock moves: a new pod starts with new processes and no
clock. Everything here is pure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath

from pgbouncer.plan import WAIT_FOR_CLIENTS_SINCE, ApplyResult, DrainPolicy
from pgbouncer.slots import DEFAULT_BASE_DIR

DRAIN_GRACE_S = 60.0
"""After a port change, how long the old processes keep serving their clients on the old port
once the new port has been published to clients: the first hook after this stops them (SIGTERM,
then the kill delay). Clients learn the new port only after the leader publishes it, which it
does once every unit listens on it, and only when that hook has ended (Juju publishes relation
data then); stopping the old processes sooner would cut every client still on them. Without
another hook they run until update-status."""

SAME_PORT_DRAIN_S = 3900.0
"""After a same-port hand-over (a ``pool_mode`` change, a restart, fewer processes), how long the
old processes may keep serving the clients they had, as those started: the first hook after this
stops them, cutting whoever is left (they got SIGTERM at the hand-over; Pebble's stop sends a
second one, which PgBouncer takes as an immediate shutdown). Longer than the default connection
lifetime of the common client pools (HikariCP 30 min, pgx and psycopg_pool 1 h,
docs/workload.md), so that an application whose pool recycles its connections moves over
without an error; a client that holds one connection for longer is cut once, at this bound."""


def clocks_path(base_dir: str = DEFAULT_BASE_DIR) -> str:
    """Where the clocks are kept in the container (no secret in it)."""
    return str(PurePosixPath(base_dir) / "drain-clocks.json")


CLOCKS_FILE = clocks_path()


def drain_due(now: float, since: float, bound: float) -> bool:
    """Whether processes left draining ``since`` then may be stopped: ``bound`` has passed.

    ``since`` 0 means nothing waits for a moment (nothing drains, or, after a port change,
    clients have not been told the new port yet: nothing is stopped). A clock that went
    backwards counts as not yet.
    """
    return bool(since) and now - since >= bound


@dataclass(frozen=True)
class DrainClocks:
    """The clocks of the processes left draining.

    Attributes:
        draining_port: after a port change, the port the old processes still serve (0: none).
        told_at: when this unit first saw clients told a port other than ``draining_port``.
        handover_at: when the processes of a same-port hand-over stopped taking new clients.
        handover_reason: why (``pool_mode``, ``restart``, ``processes``), for the status.
    """

    draining_port: int = 0
    told_at: float = 0.0
    handover_at: float = 0.0
    handover_reason: str = ""

    @classmethod
    def from_text(cls, text: str | None) -> DrainClocks:
        """The clocks in the file's text; none (all zero) when absent or unreadable."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                draining_port=int(data.get("draining_port", 0)),
                told_at=float(data.get("told_at", 0.0)),
                handover_at=float(data.get("handover_at", 0.0)),
                handover_reason=str(data.get("handover_reason", "")),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_text(self) -> str:
        """The file's text (sorted keys, so that equal clocks give equal bytes)."""
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    def told(self, published_port: int | None, now: float) -> DrainClocks:
        """Start the port clock when clients are first told a port other than the draining one."""
        if self.draining_port and published_port != self.draining_port and not self.told_at:
            return replace(self, told_at=now)
        return self

    def policy(self, now: float, version: tuple[int, ...]) -> DrainPolicy:
        """What may be stopped now, and whether this PgBouncer waits for clients on SIGTERM."""
        return DrainPolicy(
            drain_old=not self.draining_port or drain_due(now, self.told_at, DRAIN_GRACE_S),
            drain_same_port=not self.handover_at
            or drain_due(now, self.handover_at, SAME_PORT_DRAIN_S),
            wait_for_clients=version >= WAIT_FOR_CLIENTS_SINCE,
        )

    def after(self, result: ApplyResult, now: float) -> DrainClocks:
        """The clocks once ``result`` was carried out at ``now``."""
        clocks = self
        if result.moved_from is not None:
            clocks = replace(clocks, draining_port=result.moved_from, told_at=0.0)
        same_port = [kind for kind in result.handover_kinds if kind != "port"]
        if same_port:
            clocks = replace(clocks, handover_at=now, handover_reason=", ".join(same_port))
        if not set(result.draining) - set(result.draining_same_port):
            clocks = replace(clocks, draining_port=0, told_at=0.0)
        if not result.draining_same_port:
            clocks = replace(clocks, handover_at=0.0, handover_reason="")
        return clocks
