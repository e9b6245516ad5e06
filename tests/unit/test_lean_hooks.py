"""Guard: a hook that needs neither PostgreSQL nor a client relation stays lean.

Juju runs every hook in a new Python process, so every module the charm imports at load is paid
on every hook. Each test runs one hook in a fresh interpreter (``tests/unit/lean_probe.py``, with
``ops.testing`` standing in for Juju) and looks at ``sys.modules`` after it and at its stderr
(which Juju copies into the model's log).

Before issue 17 psycopg was imported at load by ``postgres.auth`` and pydantic by
``relations.client_database`` (which also printed two ``UnsupportedFieldAttributeWarning``s):
these tests were strict xfails until the imports became lazy (2026-11-30); now a regression
fails the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class ProbeCrashedError(RuntimeError):
    """The probe process did not complete the hook."""


def _probe(event: str, *, leader: bool, with_database: bool) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.unit.lean_probe",
            event,
            str(int(leader)),
            str(int(with_database)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if res.returncode != 0:
        raise ProbeCrashedError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


LEAN_HOOKS = [
    pytest.param("update-status", id="update-status-follower"),
    pytest.param("config-changed", id="config-changed-follower"),
]


@pytest.mark.parametrize("event", LEAN_HOOKS)
def test_probe_starts_clean(event: str) -> None:
    """The harness itself loads none of the watched packages: a clean result would mean something."""
    report, _ = _probe(event, leader=False, with_database=False)
    assert report["before_charm"] == []
    assert report["status"].startswith("ActiveStatus"), report["status"]


@pytest.mark.parametrize("event", LEAN_HOOKS)
def test_hook_without_postgres_or_clients_imports_neither_psycopg_nor_pydantic(event: str) -> None:
    report, _ = _probe(event, leader=False, with_database=False)
    assert report["after_hook"] == [], f"{event} loaded {report['after_hook']}"


@pytest.mark.parametrize("event", LEAN_HOOKS)
def test_hook_prints_no_warning_on_stderr(event: str) -> None:
    _, stderr = _probe(event, leader=False, with_database=False)
    assert stderr.strip() == "", stderr[-1500:]


def test_database_event_still_reaches_the_client_handler() -> None:
    """No event lost: a leader's ``database`` relation-changed is handled (request recorded).

    Whatever makes the client handler lazy must still build it for an event about a ``database``
    relation: the request is read (the provider library records it in our databag) and the charm
    tries to create the database (the backend here refuses, which the status says).
    """
    report, _ = _probe("database-relation-changed", leader=True, with_database=True)
    assert "dpcharmlibs" in report["after_hook"]
    assert json.loads(report["database_app_data"]["data"])["resource"] == "appdb"
    assert "client relation" in report["status"], report["status"]


@pytest.mark.parametrize("event", LEAN_HOOKS)
def test_a_follower_with_clients_loads_neither_the_library_nor_psycopg(event: str) -> None:
    """Issue 23: a client relation no longer costs pydantic, dpcharmlibs and cryptography.

    A follower reads the v0 request from its flat fields (for its status) and answers nothing.
    """
    report, stderr = _probe(event, leader=False, with_database=True)
    assert report["after_hook"] == [], f"{event} loaded {report['after_hook']}"
    # The request was read all the same: the follower reports it as not served yet.
    assert "client relation(s) 3 waiting" in report["status"], report["status"]
    assert stderr.strip() == "", stderr[-1500:]
