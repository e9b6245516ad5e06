"""Everything one hook decides from, read once, as one immutable value; no ops import.

The charm builds a :class:`CharmState` from plain values at the start of each reconcile
(``PgBouncerK8sCharm._load_state``): config, the backend databag and its secret, the peer data,
the tenant record, the CPU count and what the container says. Decisions are functions of it
(``pgbouncer.config.desired_config``, the charts in ``relations.backend_database``); effects
go through ``reconcile``; the status is computed from this value and the reconcile's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from state.backend import BackendDatabase
from state.config import CharmConfig
from state.names import InvalidNameError, auth_username_for
from state.peers import AuthData, PeerAppData
from state.tenants import TenantRecord

MIN_PGBOUNCER_VERSION = (1, 21)
UNKNOWN_VERSION = "unknown"
"""Recorded when the image's ``pgbouncer --version`` ran but named no version: not driven."""


def parse_version(text: str | None) -> tuple[int, ...]:
    """``"1.24.1"`` → ``(1, 24, 1)``; anything unparsable → ``()``."""
    parts: list[int] = []
    for piece in (text or "").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits or digits != piece:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class CharmState:
    """The inputs of one hook.

    Attributes:
        leader: whether this unit leads.
        config: the validated options, or None when ``config_error`` says why not.
        config_error: the message of the option refused.
        backend_related: whether a ``backend-database`` relation exists.
        backend: the backend as published, None while incomplete or refused.
        backend_error: why the provider's databag was refused (names the field).
        request_written: whether our own ``database`` request is in our databag.
        auth: the auth role's credentials shared by the leader.
        peer: the leader's other shared decisions.
        tenants: what this application created for its clients.
        cpus: CPUs the workload container may use.
        pgb_version: the PgBouncer version the container reported, if read.
        can_connect: whether Pebble answers.
        running: whether PgBouncer's services run.
        tls_related: whether the ``certificates`` relation exists.
    """

    leader: bool
    config: CharmConfig | None
    config_error: str | None = None
    backend_related: bool = False
    backend: BackendDatabase | None = None
    backend_error: str | None = None
    request_written: bool = False
    auth: AuthData | None = None
    peer: PeerAppData = field(default_factory=PeerAppData)
    tenants: TenantRecord = field(default_factory=TenantRecord)
    cpus: int = 1
    pgb_version: str | None = None
    can_connect: bool = True
    running: bool = False
    tls_related: bool = False
    tls_material: object | None = None
    """The unit's checked certificate (``state.tls.ClientTLSMaterial``), when it has one."""
    backend_tls: object | None = None
    """The backend's checked CA (``state.tls.BackendTLS``), when it announces TLS."""
    tls_error: str | None = None
    """Why the TLS material (ours or the backend's) cannot be used."""
    tls_waiting: bool = False
    """True when ``tls_error`` is something to wait for (a CA not sent yet), not a fault."""
    tls_stale: str | None = None
    """Why ``tls_material`` is the certificate served before, not the provider's current one."""
    tls_stale_fault: bool = False
    """True when ``tls_stale`` is the provider's fault (Blocked), not a wait for a signature."""
    backend_tls_refused: bool = False
    """The backend announced TLS but its flag or CA cannot be used: no connection of ours may
    then fall back to an unverified one (the last good CA, or none, is used)."""

    @property
    def expected_auth_user(self) -> str | None:
        """The auth role this backend's relation user calls for."""
        if self.backend is None:
            return None
        try:
            return auth_username_for(self.backend.username)
        except InvalidNameError:
            return None

    @property
    def auth_ready(self) -> bool:
        """Whether the shared auth data belongs to this backend's relation user."""
        expected = self.expected_auth_user
        return (
            self.auth is not None and expected is not None and self.auth.lookup_schema == expected
        )

    @property
    def backend_unusable(self) -> bool:
        """A related backend whose databag cannot be served from (docs/tls.md, docs/backend-database.md).

        Refused (``backend_error`` names the field) or incomplete (the provider took its
        endpoints or credentials away) after this application set auth up for a backend.
        Rendering from it would empty ``[databases]`` and drop the auth settings, cutting every
        client: the last good configuration keeps serving instead. Before any set-up there is
        nothing to keep, and the configuration without a backend is rendered as before.
        """
        return self.backend_related and self.backend is None and self.auth is not None

    @property
    def version_too_old(self) -> bool:
        """A PgBouncer the charm cannot drive (False while the version was never read).

        Below :data:`MIN_PGBOUNCER_VERSION`, or one whose ``--version`` named no version
        (:data:`UNKNOWN_VERSION`).
        """
        if not self.pgb_version:
            return False
        version = parse_version(self.pgb_version)
        return not version or version < MIN_PGBOUNCER_VERSION
