"""``make demo`` tells the story, never prints a password, fails loudly and cleans up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from demo import __main__ as demo
from harness.servers.system import PROJECT_ROOT
from harness.story import Deployment

pytestmark = pytest.mark.needs_root


def test_demo_runs_the_story_and_ends_with_no_leftover_auth_roles():
    result = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "SIMULATED: Juju" in out and "REAL: PostgreSQL 15 and PgBouncer 1.24" in out
    assert "| category " in out and "| metadata " in out
    assert re.search(r"\| password +\| +\| <redacted> +\|", out)
    assert out.count("-> ('pgbouncer_client_") == 2, "a query through each unit"
    # The seed's table has a read-only-endpoints row: two real hot standbys, and each unit
    # spreads the client's <db>_readonly transactions over both.
    assert re.search(r"\| read-only-endpoints +\| +\| 127\.0\.0\.2:(\d+),127\.0\.0\.3:\1 +\|", out)
    assert re.search(r"\| read-only-uris +\| +\| <redacted> +\|", out)
    assert re.search(r"appdb_readonly = host=127\.0\.0\.2,127\.0\.0\.3 port=\d+ dbname=appdb", out)
    for unit in (0, 1):
        line = re.search(rf"through pgbouncer-k8s/{unit} -> (\[\(True, 'appdb'.*)", out)
        assert line, out
        assert "'127.0.0.2/32'" in line.group(1) and "'127.0.0.3/32'" in line.group(1)
    assert re.search(
        r"PostgreSQL roles after clean-up: pgbouncer_databases_\w+, pgbouncer_orphans_\w+,"
        r" (pgbouncer_owner_\w+, )+postgres\n",
        out,
    )
    assert "owns the clients' data and cannot log in" in out
    assert out.rstrip().splitlines()[-1].startswith("Every step had its effect.")
    assert "Leftover auth roles: []" in out
    assert out.count('pgbouncer_up{process="0"} 1.0') == 2, "each unit's exporter scraped"
    # grafana-dashboard: the leader's databag decoded as Grafana's library decodes it
    assert "file:pgbouncer, decoded as Grafana's library does" in out
    assert re.search(r"uid [0-9a-f]{40}, \d+ bytes", out)
    assert "'charm: pgbouncer-k8s'" in out and "'application': 'pgbouncer-k8s'" in out


def test_a_failed_step_exits_non_zero_and_stops_every_process(monkeypatch, capsys):
    # The client relation is "removed" without running any hook: its user stays, step 4 fails.
    monkeypatch.setattr(Deployment, "remove_client", lambda self, client: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = demo.main()
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert code == 1
    assert "DEMO FAILED: client user left" in out
    pids = [int(p) for p in re.findall(r"PgBouncer running, pid (\d+)", out)]
    assert len(pids) == 2
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert "(stopped every PgBouncer and PostgreSQL process the demo started)" in out
