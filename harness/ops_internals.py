"""Every private part of ``ops.testing`` (Scenario) the harness touches, in one place.

Scenario is our Juju; two things it cannot express need its internals:

- ``scenario._runtime.Runtime._get_event_env``: the hook environment it builds, wrapped to set
  variables it cannot (``JUJU_DEPARTING_UNIT`` for this unit's own departure; ``juju.juju_env``);
- ``scenario.mocking._MockPebbleClient``: its fake Pebble client, wrapped to record the calls the
  charm makes so that real processes can replay them (``processes.PebbleRecorder``).

One more is named for the type checker only, never imported at run time:
``scenario.state._EntityStatus``, what ``testing.State.unit_status`` is declared as
(``story.Deployment.statuses``).

These are not public API: they may change in any release. The versions they were read from are
pinned in ``requirements-dev.lock``; ``tests/unit/test_ops_internals.py`` fails loudly, naming
what moved, when the installed versions or these internals change.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

READ_FROM = {"ops": "3.9.0", "ops-scenario": "8.9.0"}
"""The package versions these internals were read from."""

INTERNALS = (
    ("scenario._runtime", "Runtime._get_event_env"),
    ("scenario.mocking", "_MockPebbleClient"),
)
"""(module, attribute path) of every private name the harness uses."""


def installed_versions() -> dict[str, str]:
    """The installed versions of the packages in :data:`READ_FROM`."""
    return {name: version(name) for name in READ_FROM}


def resolve(module: str, path: str) -> Any:
    """Import ``module`` and follow the dotted ``path`` in it; raises what the lookup raises."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def runtime_class() -> Any:
    """Scenario's ``Runtime`` (its ``_get_event_env`` builds the hook environment)."""
    return resolve("scenario._runtime", "Runtime")


def mock_pebble_client_class() -> type:
    """Scenario's fake Pebble client class."""
    return resolve("scenario.mocking", "_MockPebbleClient")
