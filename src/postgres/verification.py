"""How often the leader's update-status checks the backend for drift (issue 23).

The check logs in as the auth role, runs its lookup, and reads the tenant model back from the
catalog (``reconcile.ensure_auth`` and ``reconcile.serve_clients`` with ``verify``): it needs
psycopg and several connections, about as much as the rest of the hook again. It runs at most
every :data:`VERIFY_EVERY_S`, and at once whenever the last attempt on the backend failed. The
time of the last check is the modification time of a marker file in the charm directory (unit-
local, kept across hooks; lost with the pod, and then the next update-status checks).
docs/decisions.md (2026-12-07) gives the trade-off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

VERIFY_EVERY_S = 30 * 60
"""At most this long between two checks (Juju's default update-status interval is 5 min)."""
MARKER = ".backend-verified"


def verification_due(charm_dir: Path, *, force: bool = False, now: float | None = None) -> bool:
    """Whether this update-status checks the backend; if so, the check is noted as done now.

    Args:
        charm_dir: the unit's charm directory (the marker lives there).
        force: check regardless of the last time (the last attempt on the backend failed).
        now: the current time (tests).
    """
    now = time.time() if now is None else now
    if not force and not verification_pending(charm_dir, now=now):
        return False
    marker = Path(charm_dir) / MARKER
    try:
        marker.touch(mode=0o600)
        os.utime(marker, (now, now))
    except OSError:
        pass  # an unwritable charm directory: check every time, as before
    return True


def verification_pending(charm_dir: Path, *, now: float | None = None) -> bool:
    """Whether the next update-status would check the backend (nothing is marked)."""
    now = time.time() if now is None else now
    try:
        last = (Path(charm_dir) / MARKER).stat().st_mtime
    except OSError:
        return True
    return not 0 <= now - last < VERIFY_EVERY_S
