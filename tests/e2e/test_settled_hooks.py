"""Settled hooks on real PgBouncer processes (src/settled.py): nothing read, nothing lost.

Two units with their charm directories kept between hooks, as Juju keeps them, a real
PostgreSQL and two clients answered. Once settled, an update-status reads nothing on either
unit and clients are served through both. What changes under a settled unit is put back by the
next update-status: a file the charm wrote removed, or its mode loosened; a PgBouncer process
killed is brought back by Pebble (the stand-in applies the plan's ``on-failure: restart``), and
the unit, having nothing to do, stays settled.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

import settled
from charm import PgBouncerK8sCharm
from harness.story import Deployment

pytestmark = pytest.mark.needs_root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Whole reconciles, per unit (the real read runs; it is only counted)."""
    counter: Counter = Counter()
    real = PgBouncerK8sCharm._read_world

    def counted(self):
        counter[self.unit.name] += 1
        return real(self)

    monkeypatch.setattr(PgBouncerK8sCharm, "_read_world", counted)
    return counter


def test_settled_units_serve_and_repair(
    make_deployment: Callable[..., Deployment], reads: Counter
) -> None:
    d = make_deployment(charm_dirs=True)
    d.deploy()
    d.relate_backend("secret")
    alpha = d.credentials(d.relate_client("app-a", "alpha"))
    d.credentials(d.relate_client("app-b", "beta"))
    for _ in range(3):
        for unit in sorted(d.app.units, key=lambda u: not u.is_leader):
            unit.update_status()
        d.settle_peers()
    leader = d.app.leader
    follower = next(u for u in d.app.units if u is not leader)
    for unit in d.app.units:
        assert unit.charm_dir is not None and settled.read(unit.charm_dir) is not None, unit.name

    reads.clear()
    for unit in d.app.units:
        unit.update_status()
    assert reads == Counter()  # settled: the reconcile did not run
    for unit in d.app.units:
        assert d.query(unit, alpha, "SELECT 1") == (1,)

    # A file the charm wrote, removed; another made readable by all: the next update-status is
    # whole and puts both back, 0600.
    auth = follower.mount_dir / "userlist.txt"
    ini = follower.mount_dir / "pgbouncer_0.ini"
    auth.unlink()
    ini.chmod(0o644)
    follower.update_status()
    assert reads == Counter({follower.name: 1})
    assert auth.stat().st_mode & 0o777 == 0o600
    assert ini.stat().st_mode & 0o777 == 0o600
    assert d.query(follower, alpha, "SELECT 2") == (2,)

    # A PgBouncer process killed: Pebble starts it again; the unit has nothing to do.
    reads.clear()
    runner = follower.runner
    assert runner is not None
    name = next(n for n in sorted(runner.running()) if n.startswith("pgbouncer"))
    killed = runner.processes[name]
    os.kill(killed.pid, signal.SIGKILL)
    # Pebble notices the exit at once; the harness's stand-in applies it before the next hook.
    while killed.alive():
        time.sleep(0.05)
    follower.update_status()
    assert reads == Counter()
    assert runner.processes[name].pid != killed.pid and runner.processes[name].alive()
    assert d.query(follower, alpha, "SELECT 3") == (3,)
