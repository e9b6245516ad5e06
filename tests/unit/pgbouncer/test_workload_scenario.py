"""Workload.apply against Scenario's Pebble, driven by a minimal charm.

Files land in a real directory (``testing.Mount``), so the tests read what was written, with its
mode. These pin the change-gating: the second identical apply does nothing, a reloadable change
reloads, a listen_port change restarts, fewer processes stop and disable the extra services.
"""

from __future__ import annotations

import stat
from pathlib import Path

import ops
import pytest
from ops import testing

from pgbouncer.config import AUTH_FILE, DatabaseTarget, PgBouncerConfig, render_files
from pgbouncer.workload import ApplyResult, Workload

PGB = "/var/lib/pgbouncer"


class WorkloadCharm(ops.CharmBase):
    """Applies whatever the test put in ``WorkloadCharm.request`` on config-changed."""

    request: tuple[dict[str, str | None], int] = ({}, 1)
    result: ApplyResult | None = None

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.config_changed, self._apply)

    def _apply(self, _: ops.EventBase) -> None:
        files, processes = WorkloadCharm.request
        WorkloadCharm.result = Workload(self.unit.get_container("pgbouncer")).apply(
            files, processes
        )


META = {"name": "wl", "containers": {"pgbouncer": {"resource": "img"}}}


def cfg(processes: int = 2, port: int = 6432, host: str = "10.0.0.1") -> PgBouncerConfig:
    return PgBouncerConfig(
        listen_port=port,
        pool_mode="transaction",
        max_db_connections=10,
        max_prepared_statements=100,
        processes=processes,
        databases=(DatabaseTarget("appdb", host, 5432, "appdb"),),
    )


def run(state: testing.State, files, processes) -> tuple[ApplyResult, testing.State]:
    WorkloadCharm.request = (files, processes)
    WorkloadCharm.result = None
    out = testing.Context(WorkloadCharm, meta=META).run(
        testing.CharmEvents.config_changed(), state
    )
    assert WorkloadCharm.result is not None
    return WorkloadCharm.result, out


@pytest.fixture
def state(tmp_path: Path) -> testing.State:
    container = testing.Container(
        "pgbouncer",
        can_connect=True,
        mounts={"pgb": testing.Mount(location=PGB, source=tmp_path)},
    )
    return testing.State(containers={container})


def files_for(c: PgBouncerConfig, auth: str = "") -> dict[str, str | None]:
    return {**render_files(c), AUTH_FILE: auth}


def test_first_apply_writes_everything_and_starts_every_service(state, tmp_path):
    result, out = run(state, files_for(cfg()), 2)
    assert sorted(result.written) == sorted([*render_files(cfg()), AUTH_FILE])
    assert result.started == ("pgbouncer_0", "pgbouncer_1")
    assert result.reloaded == result.restarted == ()
    ini = tmp_path / "pgbouncer_0.ini"
    assert ini.read_text() == render_files(cfg())[f"{PGB}/pgbouncer_0.ini"]
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert (tmp_path / "run" / "1").is_dir()
    container = out.get_container("pgbouncer")
    assert container.service_statuses["pgbouncer_1"] == ops.pebble.ServiceStatus.ACTIVE
    assert set(container.plan.checks) == {"pgbouncer-listening"}


def test_same_files_again_do_nothing(state):
    _, out = run(state, files_for(cfg()), 2)
    result, _ = run(out, files_for(cfg()), 2)
    assert not result.changed, str(result)


def test_a_database_change_reloads_the_running_processes(state):
    _, out = run(state, files_for(cfg()), 2)
    result, _ = run(out, files_for(cfg(host="10.0.0.2")), 2)
    assert result.reloaded == ("pgbouncer_0", "pgbouncer_1")
    assert result.restarted == result.started == ()


def test_an_auth_file_change_reloads(state):
    _, out = run(state, files_for(cfg()), 2)
    result, _ = run(out, files_for(cfg(), auth='"u" "p"\n'), 2)
    assert result.written == (AUTH_FILE,)
    assert result.reloaded == ("pgbouncer_0", "pgbouncer_1")


def test_a_listen_port_change_restarts_each_process(state):
    _, out = run(state, files_for(cfg()), 2)
    result, out = run(out, files_for(cfg(port=7000)), 2)
    assert result.restarted == ("pgbouncer_0", "pgbouncer_1")
    assert result.reloaded == ()
    check = out.get_container("pgbouncer").plan.checks["pgbouncer-listening"]
    assert check.tcp == {"host": "127.0.0.1", "port": 7000}


def test_fewer_processes_stop_and_disable_the_extra_ones(state, tmp_path):
    _, out = run(state, files_for(cfg(processes=2)), 2)
    result, out = run(out, files_for(cfg(processes=1)), 1)
    assert result.stopped == ("pgbouncer_1",)
    assert result.removed == (f"{PGB}/pgbouncer_1.ini",)
    assert not (tmp_path / "pgbouncer_1.ini").exists()
    container = out.get_container("pgbouncer")
    assert container.plan.services["pgbouncer_1"].startup == "disabled"
    assert container.service_statuses["pgbouncer_1"] != ops.pebble.ServiceStatus.ACTIVE
    # The [peers] list of process 0 changed: a reload, not a restart.
    assert result.reloaded == ("pgbouncer_0",)


def test_a_file_mapped_to_none_is_deleted(state, tmp_path):
    _, out = run(state, files_for(cfg(), auth='"u" "p"\n'), 2)
    result, _ = run(out, {**render_files(cfg()), AUTH_FILE: None}, 2)
    assert result.removed == (AUTH_FILE,)
    assert not (tmp_path / "userlist.txt").exists()


def test_paths_outside_the_base_dir_are_refused(state):
    with pytest.raises(Exception, match="not a file directly under"):
        run(state, {**files_for(cfg()), "/etc/passwd": "x"}, 2)
