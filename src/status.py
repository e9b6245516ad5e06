"""The unit's status: a pure function of what the hook saw and what it did.

:func:`unit_statuses` reads the hook's :class:`~state.charm_state.CharmState` (what was seen),
the :class:`UnitOutcome` of this unit's workload side and the leader's
:class:`~reconcile.LeaderOutcome` (what was done), and returns every status that applies; ops
shows the most severe. Nothing here reads Juju, Pebble or PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

import ops

from pgbouncer.config import SETTINGS_SINCE
from pgbouncer.exporter import EXPORTER_COMMAND
from pgbouncer.go_exporter import GO_EXPORTER_COMMAND
from pgbouncer.image import ImageFacts
from reconcile import WAITING_FOR_BACKEND, LeaderOutcome
from relations.backend_database import REMOVE_AUTH_FAILED
from state.charm_state import MIN_PGBOUNCER_VERSION, UNKNOWN_VERSION, CharmState

PAUSED = "paused (pause action): clients wait until resume"
PAUSED_DATABASES = "{databases} paused (pause action): {whose} clients wait until resume"


@dataclass(frozen=True)
class UnitOutcome:
    """What this unit's workload side of the hook did.

    Attributes:
        render_error: why the configuration could not be rendered (nothing was written).
        apply_error: why Pebble refused the change (what was done before it stays).
        tls_required: ``client_tls_mode`` is ``require`` and there is no certificate.
        processes: PgBouncer processes configured.
        left_out: options set that the running PgBouncer lacks.
        paused: the unit is paused by the pause action (nothing was applied).
        paused_databases: databases paused by the pause action (nothing was applied).
        running: every serving PgBouncer process runs once the hook's steps are done.
        draining_port: a port old processes still serve after a port change (0: none).
        handover_reason: why old processes drain on this port (empty: none do).
    """

    render_error: str | None = None
    apply_error: str | None = None
    tls_required: bool = False
    processes: int = 0
    left_out: tuple[str, ...] = ()
    paused: bool = False
    paused_databases: tuple[str, ...] = ()
    running: bool = False
    draining_port: int = 0
    handover_reason: str = ""


def unit_statuses(
    state: CharmState,
    image: ImageFacts,
    unit: UnitOutcome,
    leader: LeaderOutcome,
    *,
    metrics_related: bool = False,
    notes: tuple[str, ...] = (),
) -> list[ops.StatusBase]:
    """Every status that applies to this unit; the first ones block everything after them.

    ``notes`` are added to the active message as they are (a rotation in progress).
    """
    if not state.can_connect:
        return [ops.WaitingStatus("waiting for the pgbouncer container")]
    if state.config_error:
        return [ops.BlockedStatus(state.config_error)]
    if state.version_too_old:
        need = ".".join(map(str, MIN_PGBOUNCER_VERSION))
        found = f"PgBouncer {state.pgb_version} found"
        if state.pgb_version == UNKNOWN_VERSION:
            found = "pgbouncer --version named no version"
        return [ops.BlockedStatus(f"{found}; {need} or newer needed")]
    if image.problems:
        return [ops.BlockedStatus(f"pgbouncer-image lacks: {'; '.join(image.problems)}")]
    if unit.render_error:
        return [ops.BlockedStatus(f"cannot render pgbouncer.ini: {unit.render_error}")]
    statuses: list[ops.StatusBase] = []
    if unit.tls_required:
        statuses.append(ops.BlockedStatus("client_tls_mode is require: waiting for a certificate"))
    statuses += _tls_statuses(state)
    if state.peer.auth_removal_failed:
        statuses.append(ops.BlockedStatus(REMOVE_AUTH_FAILED))
    statuses += _backend_statuses(state, leader)
    if unit.paused:
        statuses.append(ops.MaintenanceStatus(PAUSED))
    if unit.paused_databases:
        one = len(unit.paused_databases) == 1
        databases = f"database{'' if one else 's'} {', '.join(unit.paused_databases)}"
        message = PAUSED_DATABASES.format(databases=databases, whose="its" if one else "their")
        statuses.append(ops.MaintenanceStatus(message))
    statuses += _client_statuses(leader)
    if unit.apply_error:
        statuses.append(ops.WaitingStatus(f"pgbouncer container: {unit.apply_error}"))
    elif not unit.running:
        statuses.append(ops.WaitingStatus("PgBouncer is not running"))
    message = _active_message(image, unit, leader, metrics_related, notes)
    statuses.append(ops.ActiveStatus(message))
    return statuses


def settles(
    statuses: list[ops.StatusBase],
    unit: UnitOutcome,
    leader: LeaderOutcome,
    notes: tuple[str, ...] = (),
) -> bool:
    """Whether the hook ended clean (the settled record, :mod:`settled`, may be kept).

    Clean: one active status, PgBouncer running, and nothing in the message that moves on its
    own (a repair just done, a rotation, draining, a pause).
    """
    return (
        [type(s) for s in statuses] == [ops.ActiveStatus]
        and not notes
        and not leader.repaired
        and not leader.tenancy_repaired
        and not unit.draining_port
        and not unit.handover_reason
        and not unit.paused
        and not unit.paused_databases
        and unit.running
    )


def _active_message(
    image: ImageFacts,
    unit: UnitOutcome,
    leader: LeaderOutcome,
    metrics_related: bool,
    notes: tuple[str, ...],
) -> str:
    processes = "process" if unit.processes == 1 else "processes"
    message = f"{unit.processes} PgBouncer {processes}"
    for since in sorted({SETTINGS_SINCE[key] for key in unit.left_out}):
        keys = ", ".join(key for key in unit.left_out if SETTINGS_SINCE[key] == since)
        message += f"; {keys} ignored: needs PgBouncer {'.'.join(map(str, since))}"
    if leader.repaired:
        message += f"; repaired the auth plumbing ({leader.repaired[0]})"
    if leader.tenancy_repaired:
        message += f"; put back {leader.tenancy_repaired[0]}"
    for note in notes:
        message += f"; {note}"
    if unit.draining_port:
        message += f"; port {unit.draining_port} draining"
    if unit.handover_reason:
        message += f"; old processes draining ({unit.handover_reason})"
    if image.exporter_absent and metrics_related:
        message += (
            f"; no metrics: pgbouncer-image has no {EXPORTER_COMMAND} nor {GO_EXPORTER_COMMAND}"
        )
    return message


def _tls_statuses(state: CharmState) -> list[ops.StatusBase]:
    statuses: list[ops.StatusBase] = []
    if state.tls_error:
        status = ops.WaitingStatus if state.tls_waiting else ops.BlockedStatus
        statuses.append(status(state.tls_error))
    elif state.tls_related and state.tls_material is None:
        statuses.append(ops.WaitingStatus("waiting for a TLS certificate"))
    if state.tls_stale:
        older = state.tls_material
        until = f" until {older.not_after:%Y-%m-%d}" if older is not None else ""  # type: ignore[attr-defined]
        status = ops.BlockedStatus if state.tls_stale_fault else ops.WaitingStatus
        statuses.append(status(f"serving an older certificate{until}: {state.tls_stale}"))
    return statuses


def _client_statuses(leader: LeaderOutcome) -> list[ops.StatusBase]:
    statuses: list[ops.StatusBase] = [
        ops.BlockedStatus(message) for message in leader.client_blocked
    ]
    statuses += [
        ops.BlockedStatus(f"client user {user} of a removed relation not dropped yet: {why}")
        for user, why in sorted(leader.cleanup_failed.items())
    ]
    if leader.tenancy_problem is not None:
        problem, blocked = leader.tenancy_problem
        status_type = ops.BlockedStatus if blocked else ops.WaitingStatus
        statuses.append(status_type(f"tenant check failed: {problem}"))
    waiting = leader.client_waiting
    for rel_id in sorted(waiting):
        if waiting[rel_id] != WAITING_FOR_BACKEND:
            statuses.append(ops.WaitingStatus(f"client relation {rel_id}: {waiting[rel_id]}"))
    pending = [str(i) for i in sorted(waiting) if waiting[i] == WAITING_FOR_BACKEND]
    if pending:
        ids = ", ".join(pending)
        statuses.append(ops.WaitingStatus(f"client relation(s) {ids} {WAITING_FOR_BACKEND}"))
    return statuses


def _backend_statuses(state: CharmState, leader: LeaderOutcome) -> list[ops.StatusBase]:
    if not state.backend_related:
        return [ops.BlockedStatus("waiting for a backend-database relation")]
    if state.backend_error:
        kept = "; the last good configuration keeps serving" if state.auth else ""
        return [ops.BlockedStatus(f"{state.backend_error}{kept}")]
    if state.backend_unusable:
        return [
            ops.BlockedStatus(
                "backend-database sends no endpoints or credentials any more;"
                " the last good configuration keeps serving"
            )
        ]
    if state.backend is None:
        return [ops.WaitingStatus("waiting for backend-database credentials")]
    problem = leader.backend_problem or state.peer.backend_problem
    if problem:
        return [ops.WaitingStatus(f"backend unreachable: {problem}")]
    if not state.auth_ready:
        return [ops.WaitingStatus("waiting for the auth user on the backend")]
    return []
