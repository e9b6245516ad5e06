"""``rotate-credentials``: new passwords for the auth role, with no failed login on the way.

The steps (docs/actions.md, "rotate-credentials"; the names and the state in
:mod:`state.rotation`):

1. :func:`start_rotation` (the action, on the leader): the auth role's generation not in use
   gets a new password (and, the first time, is created as the auth role is); the rotation is
   recorded in the peer application databag and the auth secret's next revision names that
   generation. Nothing that serves clients changed yet: every unit still logs in as the old
   generation, whose password still holds.
2. Each unit, in its next hook (the secret's and the peer data's change wake it), renders
   ``auth_user`` and its auth-file line for the new generation, reloads PgBouncer, and reports
   in its peer unit data which generation it uses (``Peers.set_applied_auth``).
3. :func:`advance_rotation` (in every leader reconcile, whichever unit leads by then): once
   every unit reports the new generation, the old one's password is removed and the rotation
   ends. Until then the unit statuses say what it waits for.

No password is in the peer data, a result or a log line: only the secret holds it.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from state.peers import AuthData
from state.rotation import Rotation, next_generation

if TYPE_CHECKING:
    from reconcile import BackendEffects
    from relations.metrics import Monitoring
    from relations.peers import Peers
    from state.charm_state import CharmState

logger = logging.getLogger(__name__)


class RotationError(Exception):
    """The rotation cannot start; the message says why (no secret in it)."""


def start_rotation(
    state: CharmState,
    peers: Peers,
    monitoring: Monitoring,
    sql: BackendEffects,
    *,
    owner_tag: str,
    ca_dir: str,
    now: float,
) -> dict[str, str]:
    """Step 1: give the idle generation a new password and hand it to every unit.

    The stats user, when there is one, rotates the same way inside each unit: the secret's next
    revision names its other generation with a new password and keeps the old one, every unit
    lists both in ``stats_users`` and its auth file, its exporter switches (SIGHUP), and the
    unit reports the new one once the exporter surely re-read its configuration.

    Returns:
        The action's results: ``from``, ``to``, ``stats-from``, ``stats-to`` (empty
        without a stats user), ``waiting-for`` (JSON list).

    Raises:
        RotationError: not ready (no backend or auth plumbing), a rotation is still running,
            or the backend refused.
    """
    from postgres.connection import BackendError
    from postgres.passwords import generate_password
    from reconcile import credentials

    auth = state.auth
    if state.backend is None or auth is None or not state.auth_ready:
        raise RotationError(
            "no auth plumbing to rotate: waiting for the backend-database relation"
        )
    running = peers.rotation()
    if running is not None:
        waiting = running.waiting_for(peers.applied_auth(), peers.applied_stats())
        raise RotationError(
            f"a rotation from {running.source} to {running.target} is still running"
            + (f" (waiting for {', '.join(waiting)})" if waiting else "")
        )
    schema = auth.lookup_schema
    target = next_generation(schema, auth.username)
    password = generate_password()
    try:
        sql.install_auth(
            credentials(state, ca_dir),
            auth_user=schema,
            auth_password=password,
            owner_tag=owner_tag,
            login_role=target,
        )
    except BackendError as exc:  # its text never holds a password (postgres.connection)
        raise RotationError(f"could not prepare {target}: {exc}") from None
    stats = monitoring.start_stats_rotation(generate_password)
    rotation = Rotation(
        source=auth.username,
        target=target,
        started=now,
        stats_source=stats[0] if stats else None,
        stats_target=stats[1] if stats else None,
    )
    peers.set_rotation(rotation)
    peers.save_auth(AuthData(target, password, schema=schema), state.backend.database)
    logger.info("rotate-credentials: %s handed out, %s kept until every unit uses it",
                target, auth.username)  # fmt: skip
    return {
        "from": rotation.source,
        "to": rotation.target,
        "stats-from": rotation.stats_source or "",
        "stats-to": rotation.stats_target or "",
        "waiting-for": json.dumps(
            rotation.waiting_for(peers.applied_auth(), peers.applied_stats())
        ),
    }


def advance_rotation(
    state: CharmState,
    peers: Peers,
    monitoring: Monitoring,
    sql: BackendEffects,
    *,
    owner_tag: str,
    ca_dir: str,
) -> str | None:
    """Step 3, in every leader reconcile: end the rotation once every unit uses the new one.

    Returns:
        None when no rotation runs (or it just ended), else what it waits for.
    """
    rotation = peers.rotation()
    if rotation is None or not state.leader:
        return None
    auth = state.auth
    if auth is None or not state.auth_ready or auth.username != rotation.target:
        # The auth data was replaced meanwhile (a new backend, the plumbing set up again):
        # what the rotation would remove may be in use, so it ends here, removing nothing.
        logger.warning("rotate-credentials: the auth data changed under it; ended")
        peers.set_rotation(None)
        return None
    reports, stats_reports = peers.applied_auth(), peers.applied_stats()
    if rotation.waiting_for(reports, stats_reports) or state.backend is None:
        return rotation.status_note(reports, stats_reports)
    from postgres.connection import BackendError
    from reconcile import credentials

    try:
        sql.retire_generation(
            credentials(state, ca_dir), role=rotation.source, owner_tag=owner_tag
        )
    except BackendError as exc:
        logger.warning("rotate-credentials: could not remove the old password: %s", exc)
        return rotation.status_note(reports, stats_reports)
    if rotation.stats_target is not None:
        # Each unit drops the old stats user's lines when it next applies (secret-changed).
        monitoring.finish_stats_rotation()
    peers.set_rotation(None)
    logger.info("rotate-credentials: every unit uses %s; %s has no password now",
                rotation.target, rotation.source)  # fmt: skip
    return None
