"""Shared fixtures of the workload tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ops import testing

PGB = "/var/lib/pgbouncer"


@pytest.fixture
def state(tmp_path: Path) -> testing.State:
    """A reachable ``pgbouncer`` container whose base directory is ``tmp_path``."""
    container = testing.Container(
        "pgbouncer",
        can_connect=True,
        mounts={"pgb": testing.Mount(location=PGB, source=tmp_path)},
    )
    return testing.State(containers={container})
