"""The time budget of one hook's PostgreSQL work; no driver import, so it costs nothing.

Juju runs each hook as a fresh process: the charm starts the budget when it is constructed and
every connection made later in the hook (``postgres.connection.connect``) lives no longer than
what is left of it (docs/architecture.md, "Bounded time").
"""

from __future__ import annotations

import time

HOOK_BUDGET_SECONDS = 60.0
"""All PostgreSQL work of one hook gives up after this; the next hook retries."""

_deadline: float | None = None


def start_hook_budget(seconds: float | None = HOOK_BUDGET_SECONDS) -> None:
    """Start (or, with None, lift) the budget every later connection of this process shares."""
    global _deadline
    _deadline = None if seconds is None else time.monotonic() + seconds


def hook_remaining() -> float | None:
    """Seconds left of the hook's budget; None when no budget was started."""
    return None if _deadline is None else _deadline - time.monotonic()
