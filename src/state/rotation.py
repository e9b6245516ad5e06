"""Credential rotation (the ``rotate-credentials`` action), the pure part: names and steps.

PostgreSQL keeps one password per role and PgBouncer one auth-file line per user, and each unit
picks up a new secret revision in its own hook. So the auth role is rotated across two
generations that take turns: the role named by the relation user (``pgbouncer_auth_<user>``,
SPEC §3.1.4, which also names the lookup's schema) and its alternate (:func:`alternate_auth_user`).
A rotation gives the generation not in use a new password, hands it to every unit (the auth
secret's next revision: each unit switches ``auth_user`` and its auth-file line, with a reload),
waits until every unit reports that it uses it, and only then removes the old generation's
password (docs/actions.md, "rotate-credentials").

The state of a rotation in progress is the leader's, in the peer application databag under
:data:`ROTATION_KEY` (no secret in it), so that a new leader finishes what an old one started.

Example value::

    {"from": "pgbouncer_auth_relation_7", "to": "pgbouncer_auth_relation_7_g2",
     "started": 1796630400.0}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from state.names import (
    MAX_IDENTIFIER_BYTES,
    InvalidNameError,
    validate_plain_identifier,
)

ROTATION_KEY = "rotation"
"""Peer application databag key: the rotation in progress (JSON), absent when none is."""
APPLIED_AUTH_KEY = "applied-auth-user"
"""Peer unit databag key: the auth role this unit's PgBouncer uses since its last apply."""
APPLIED_STATS_KEY = "applied-stats-user"
"""Peer unit databag key: the stats user this unit's exporter surely uses."""

_ALTERNATE_SUFFIX = "_g2"


def alternate_auth_user(auth_user: str) -> str:
    """The auth role's second generation: ``<auth_user>_g2`` (hash-shortened past 63 bytes).

    Its name stays apart from the definer role's (``<auth_user>_definer``) and from the tenant
    role patterns.

    Raises:
        InvalidNameError: ``auth_user`` is not a plain identifier.
    """
    validate_plain_identifier(auth_user, "auth username")
    name = auth_user + _ALTERNATE_SUFFIX
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        digest = hashlib.sha256(auth_user.encode()).hexdigest()[:8]
        keep = MAX_IDENTIFIER_BYTES - len(_ALTERNATE_SUFFIX) - len(digest) - 1
        name = f"{auth_user[:keep]}_{digest}{_ALTERNATE_SUFFIX}"
    return validate_plain_identifier(name, "auth generation")


def generations(auth_user: str) -> tuple[str, str]:
    """Both generations of the auth role named ``auth_user`` (the first names the schema)."""
    return auth_user, alternate_auth_user(auth_user)


def next_generation(lookup_schema: str, in_use: str) -> str:
    """The generation a rotation hands out: the one of the pair not ``in_use``."""
    first, second = generations(lookup_schema)
    return second if in_use == first else first


@dataclass(frozen=True)
class Rotation:
    """A rotation in progress.

    Attributes:
        source: the generation every unit used before (its password goes at the end).
        target: the generation handed out (in the auth secret's latest revision).
        started: when the leader started it (seconds since the epoch).
        stats_source: the stats user replaced (None: no stats user to rotate).
        stats_target: the stats user handed out.
    """

    source: str
    target: str
    started: float
    stats_source: str | None = None
    stats_target: str | None = None

    @classmethod
    def from_databag(cls, value: str | None) -> Rotation | None:
        """Parse the databag value; None when absent or damaged (only the leader writes it)."""
        if not value:
            return None
        try:
            raw = json.loads(value)
            source, target = raw["from"], raw["to"]
            started = float(raw.get("started", 0.0))
            validate_plain_identifier(source, "rotation from")
            validate_plain_identifier(target, "rotation to")
            stats = raw.get("stats_from"), raw.get("stats_to")
            if stats != (None, None):
                for name in stats:
                    validate_plain_identifier(name, "rotation stats")
        except (ValueError, TypeError, KeyError, AttributeError, InvalidNameError):
            return None
        if source == target or (stats[0] is not None and stats[0] == stats[1]):
            return None
        return cls(source, target, started, stats_source=stats[0], stats_target=stats[1])

    def to_databag(self) -> str:
        """The databag value :meth:`from_databag` reads back."""
        value: dict[str, object] = {
            "from": self.source,
            "to": self.target,
            "started": round(self.started, 3),
        }
        if self.stats_target is not None:
            value |= {"stats_from": self.stats_source, "stats_to": self.stats_target}
        return json.dumps(value, sort_keys=True)

    def waiting_for(
        self,
        reports: Mapping[str, str | None],
        stats_reports: Mapping[str, str | None] | None = None,
    ) -> list[str]:
        """Units (sorted) not yet reporting that they use :attr:`target` (and the stats one).

        Args:
            reports: unit name → the auth role it reported (None: nothing reported), for
                every unit of the application, this one included.
            stats_reports: unit name → the stats user its exporter surely uses.
        """
        waiting = {unit for unit, used in reports.items() if used != self.target}
        if self.stats_target is not None:
            stats = stats_reports or {}
            waiting |= {unit for unit in reports if stats.get(unit) != self.stats_target}
        return sorted(waiting)

    def status_note(
        self,
        reports: Mapping[str, str | None],
        stats_reports: Mapping[str, str | None] | None = None,
    ) -> str:
        """What the status says while it runs."""
        waiting = self.waiting_for(reports, stats_reports)
        if not waiting:
            return "rotating credentials: removing the old password"
        return f"rotating credentials: waiting for {', '.join(waiting)}"
