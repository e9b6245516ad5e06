"""Workload.apply against Scenario's Pebble, driven by a minimal charm.

Files land in a real directory (``testing.Mount``), so the tests read what was written, with its
mode. These pin the change-gating: the second identical apply does nothing, a reloadable change
reloads, a listen_port change restarts, fewer processes stop and disable the extra services.
"""

from __future__ import annotations

import dataclasses
import stat

import ops
import pytest
from ops import testing

from harness.juju import as_older_charm_left_it
from pgbouncer.config import (
    AUTH_FILE,
    DatabaseTarget,
    PgBouncerConfig,
    render_files,
)
from pgbouncer.exporter import render_exporter_files
from pgbouncer.plan import ApplyResult
from pgbouncer.slots import (
    next_slots,
    service_index,
    service_name,
    service_slot,
)
from pgbouncer.workload import Workload
from tests.unit.pgbouncer.conftest import PGB

ACTIVE = ops.pebble.ServiceStatus.ACTIVE


class WorkloadCharm(ops.CharmBase):
    """Applies whatever the test put in ``WorkloadCharm.request`` on config-changed."""

    request: tuple[dict[str, str | None], int] = ({}, 1)
    drain_old: bool = True
    wait_for_clients: bool = True
    drain_same_port: bool = True
    result: ApplyResult | None = None
    calls: list[tuple[str, ...]] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.config_changed, self._apply)

    def _apply(self, _: ops.EventBase) -> None:
        files, processes = WorkloadCharm.request
        workload = Workload(
            self.unit.get_container("pgbouncer"),
            sleep=lambda seconds: WorkloadCharm.calls.append(("sleep", str(seconds))),
        )
        WorkloadCharm.result = workload.apply(
            files,
            processes,
            WorkloadCharm.drain_old,
            WorkloadCharm.wait_for_clients,
            WorkloadCharm.drain_same_port,
        )


META = {"name": "wl", "containers": {"pgbouncer": {"resource": "img"}}}


def cfg(
    processes: int = 2,
    port: int = 6432,
    host: str = "10.0.0.1",
    pool_mode: str = "transaction",
    max_db: int = 10,
    extra_db: bool = False,
) -> PgBouncerConfig:
    databases = [DatabaseTarget("appdb", host, 5432, "appdb")]
    if extra_db:
        databases.append(DatabaseTarget("otherdb", host, 5432, "otherdb"))
    return PgBouncerConfig(
        listen_port=port,
        pool_mode=pool_mode,
        max_db_connections=max_db,
        max_prepared_statements=100,
        processes=processes,
        databases=tuple(databases),
    )


def run(
    state: testing.State,
    files,
    processes,
    drain_old: bool = True,
    wait_for_clients: bool = True,
    drain_same_port: bool | None = None,
) -> tuple[ApplyResult, testing.State]:
    WorkloadCharm.request = (files, processes)
    WorkloadCharm.drain_old = drain_old
    WorkloadCharm.wait_for_clients = wait_for_clients
    WorkloadCharm.drain_same_port = drain_old if drain_same_port is None else drain_same_port
    WorkloadCharm.result = None
    WorkloadCharm.calls = []
    out = testing.Context(WorkloadCharm, meta=META).run(
        testing.CharmEvents.config_changed(), state
    )
    assert WorkloadCharm.result is not None
    return WorkloadCharm.result, out


def files_for(c: PgBouncerConfig, auth: str = "") -> dict[str, str | None]:
    return {**render_files(c), AUTH_FILE: auth}


def test_first_apply_writes_everything_and_starts_every_service(state, tmp_path):
    result, out = run(state, files_for(cfg()), 2)
    # The serving slots' files only: a twin slot's file is written when that slot is to serve.
    assert sorted(result.written) == [
        f"{PGB}/pgbouncer_0.ini",
        f"{PGB}/pgbouncer_1.ini",
        AUTH_FILE,
    ]
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


def test_a_listen_port_change_hands_each_process_over_to_its_twin(state, tmp_path):
    _, out = run(state, files_for(cfg()), 2)
    result, out = run(out, files_for(cfg(port=7000)), 2)
    assert result.started == ("pgbouncer_0_twin", "pgbouncer_1_twin")
    assert result.handed_over == (
        "pgbouncer_0 -> pgbouncer_0_twin",
        "pgbouncer_1 -> pgbouncer_1_twin",
    )
    # The old processes keep their clients on the old port: nothing is stopped yet.
    assert result.stopped == () and result.draining == BOTH and result.moved_from == 6432
    assert result.reloaded == result.restarted == ()
    container = out.get_container("pgbouncer")
    assert container.plan.checks["pgbouncer-listening"].tcp == {"host": "127.0.0.1", "port": 7000}
    assert set(container.service_statuses.values()) == {ACTIVE}  # all four run
    assert {n: s.startup for n, s in container.plan.services.items()} == {
        "pgbouncer_0": "disabled",
        "pgbouncer_1": "disabled",
        "pgbouncer_0_twin": "enabled",
        "pgbouncer_1_twin": "enabled",
    }
    # Within the grace period a database change reaches the serving twins; the draining
    # processes keep the file they run with (the old port, the old target).
    old_file = (tmp_path / "pgbouncer_0.ini").read_text()
    result, out = run(out, files_for(cfg(port=7000, host="10.0.0.9")), 2, drain_old=False)
    assert result.reloaded == TWINS
    assert result.stopped == () and result.draining == BOTH
    assert (tmp_path / "pgbouncer_0.ini").read_text() == old_file
    assert "host=10.0.0.9" in (tmp_path / "pgbouncer_0_twin.ini").read_text()
    # Then a hook that may drain stops them, and nothing else changes.
    result, out = run(out, files_for(cfg(port=7000, host="10.0.0.9")), 2)
    assert result.stopped == BOTH and result.draining == () and result.reloaded == ()
    assert not _both_services_of_an_index_run(out)
    # Later changes reach the twins: fewer processes, then the way back.
    result, out = run(out, files_for(cfg(port=7000, processes=1)), 1, wait_for_clients=False)
    assert result.stopped == ("pgbouncer_1_twin",)
    assert out.get_container("pgbouncer").plan.services["pgbouncer_1_twin"].startup == "disabled"
    result, out = run(out, files_for(cfg(port=6432, processes=1)), 1)
    assert result.handed_over == ("pgbouncer_0_twin -> pgbouncer_0_twin2",)
    assert result.draining == ("pgbouncer_0_twin",)


def test_a_second_port_change_within_the_grace_stops_the_oldest_processes_first(state):
    _, out = run(state, files_for(cfg()), 2)
    _, out = run(out, files_for(cfg(port=7000)), 2)
    result, out = run(out, files_for(cfg(port=7001)), 2, drain_old=False)
    # The third slots are free: both earlier generations keep draining.
    assert result.stopped == () and result.started == TWINS2
    assert result.draining == tuple(sorted((*BOTH, *TWINS)))
    result, out = run(out, files_for(cfg(port=7002)), 2, drain_old=False)
    # No slot is free: pgbouncer_<i> (draining 6432, the oldest) is stopped for the hand-over.
    assert result.stopped == BOTH and result.started == BOTH
    assert result.draining == tuple(sorted((*TWINS, *TWINS2)))
    assert result.moved_from == 7001


def _both_services_of_an_index_run(out: testing.State) -> bool:
    """Whether any process index has both of its services active."""
    active = {
        name
        for name, status in out.get_container("pgbouncer").service_statuses.items()
        if status == ACTIVE
    }
    return any(f"{name}_twin" in active for name in active)


def _with_pidfile(files: dict[str, str | None]) -> dict[str, str | None]:
    """Process 0's files as an older rendering had them: a no-reload key (``pidfile``) more."""
    older = dict(files)
    for ini in (
        f"{PGB}/pgbouncer_0.ini",
        f"{PGB}/pgbouncer_0_twin.ini",
        f"{PGB}/pgbouncer_0_twin2.ini",
    ):
        older[ini] = str(files[ini]).replace("[pgbouncer]\n", "[pgbouncer]\npidfile = /x.pid\n")
    return older


def test_a_restart_that_keeps_the_port_hands_over_on_the_same_port(state, signals):
    """A no-reload key other than the port: the twin starts, the old process gets SIGTERM."""
    files = files_for(cfg())
    _, out = run(state, _with_pidfile(files), 2)
    result, _ = run(out, files, 2)
    assert result.handed_over == ("pgbouncer_0 -> pgbouncer_0_twin",)
    assert result.handover_reason == "restart" and result.restarted == ()
    assert result.draining == ("pgbouncer_0",)
    assert WorkloadCharm.calls == [("SIGTERM", "pgbouncer_0")]


def test_a_restart_is_in_place_on_an_older_pgbouncer_or_with_every_other_slot_busy(state):
    files = files_for(cfg())
    _, out = run(state, _with_pidfile(files), 2, wait_for_clients=False)
    result, _ = run(out, files, 2, wait_for_clients=False)
    assert result.restarted == ("pgbouncer_0",)
    assert result.handed_over == result.started == ()
    # Both other slots still drain pool_mode hand-overs: restart in place, nobody cut there.
    _, out = run(state, _with_pidfile(files), 2)
    _, out = run(out, _with_pidfile(files_for(cfg(pool_mode="session"))), 2)
    _, out = run(out, _with_pidfile(files_for(cfg())), 2, drain_old=False)
    result, _ = run(out, files_for(cfg()), 2, drain_old=False)
    assert result.restarted == ("pgbouncer_0_twin2",)
    assert result.handed_over == () and result.draining == tuple(sorted((*BOTH, *TWINS)))


def test_an_upgrade_that_changes_the_service_definition_hands_over(state, signals):
    """A running process started from an older charm's definition (no ``on-success``)."""
    _, out = run(state, files_for(cfg(processes=1)), 1)
    upgraded = as_older_charm_left_it(out.get_container("pgbouncer"), "on-success")
    out = dataclasses.replace(out, containers={upgraded})
    result, out = run(out, files_for(cfg(processes=1)), 1)
    assert result.handed_over == ("pgbouncer_0 -> pgbouncer_0_twin",)
    assert result.handover_reason == "restart" and result.restarted == ()
    assert WorkloadCharm.calls == [("SIGTERM", "pgbouncer_0")]
    # Nothing changed since: nothing more is done.
    result, _ = run(out, files_for(cfg(processes=1)), 1, drain_old=False)
    assert not result.changed, str(result)


def test_fewer_processes_drain_the_extra_ones_then_stop_them(state, tmp_path, signals):
    """PgBouncer >= 1.23: a retiring process gets SIGTERM and its file is moved aside.

    It takes no new clients and serves the connected ones until they leave (it read its file at
    start); a restart from its file would fail, so Pebble cannot bring it back. The bound stops
    it and removes the file.
    """
    _, out = run(state, files_for(cfg(processes=2)), 2)
    result, out = run(out, files_for(cfg(processes=1)), 1, drain_old=False)
    assert result.stopped == ()
    assert result.removed == (f"{PGB}/pgbouncer_1.ini",)
    assert ("SIGTERM", "pgbouncer_1") in WorkloadCharm.calls
    assert result.draining == result.draining_same_port == ("pgbouncer_1",)
    assert result.handover_reason == "processes"
    assert (tmp_path / "pgbouncer_1.ini.draining").exists()
    assert not (tmp_path / "pgbouncer_1.ini").exists()
    container = out.get_container("pgbouncer")
    assert container.plan.services["pgbouncer_1"].startup == "disabled"
    # The [peers] list of process 0 changed: a reload, not a restart; never the retiring one.
    assert result.reloaded == ("pgbouncer_0",)
    # Before the bound nothing more happens to it; at the bound it is stopped, its file goes.
    result, out = run(out, files_for(cfg(processes=1)), 1, drain_old=False)
    assert not result.changed and result.draining == ("pgbouncer_1",)
    result, out = run(out, files_for(cfg(processes=1)), 1)
    assert result.stopped == ("pgbouncer_1",)
    assert result.removed == (f"{PGB}/pgbouncer_1.ini.draining",)
    # A process index that comes back while its old process still drains gets a fresh slot.
    _, out = run(state, files_for(cfg(processes=2)), 2)
    _, out = run(out, files_for(cfg(processes=1)), 1, drain_old=False)
    result, _ = run(out, files_for(cfg(processes=2)), 2, drain_old=False)
    assert result.started == ("pgbouncer_1_twin",) and result.draining == ("pgbouncer_1",)


def test_fewer_processes_stop_the_extra_ones_on_an_older_pgbouncer(state, tmp_path):
    _, out = run(state, files_for(cfg(processes=2)), 2, wait_for_clients=False)
    result, out = run(out, files_for(cfg(processes=1)), 1, wait_for_clients=False)
    assert result.stopped == ("pgbouncer_1",)
    assert result.removed == (f"{PGB}/pgbouncer_1.ini",)
    assert not (tmp_path / "pgbouncer_1.ini").exists()
    container = out.get_container("pgbouncer")
    assert container.plan.services["pgbouncer_1"].startup == "disabled"
    assert container.service_statuses["pgbouncer_1"] != ops.pebble.ServiceStatus.ACTIVE
    assert result.reloaded == ("pgbouncer_0",)


def test_a_file_mapped_to_none_is_deleted(state, tmp_path):
    _, out = run(state, files_for(cfg(), auth='"u" "p"\n'), 2)
    result, _ = run(out, {**render_files(cfg()), AUTH_FILE: None}, 2)
    assert result.removed == (AUTH_FILE,)
    assert not (tmp_path / "userlist.txt").exists()


def test_paths_outside_the_base_dir_are_refused(state):
    with pytest.raises(Exception, match="not a file directly under"):
        run(state, {**files_for(cfg()), "/etc/passwd": "x"}, 2)


# -- PAUSE around a reload that moves a target, changes the mode or lowers a cap --------------
@pytest.fixture
def signals(monkeypatch) -> list[tuple[str, ...]]:
    """Every signal sent through ops, interleaved with the Workload's sleeps, in order."""
    original = ops.Container.send_signal

    def recording(self: ops.Container, sig: str | int, *names: str) -> None:
        WorkloadCharm.calls.append((str(sig), *names))
        original(self, sig, *names)

    monkeypatch.setattr(ops.Container, "send_signal", recording)
    return WorkloadCharm.calls


BOTH = ("pgbouncer_0", "pgbouncer_1")
TWINS = ("pgbouncer_0_twin", "pgbouncer_1_twin")
TWINS2 = ("pgbouncer_0_twin2", "pgbouncer_1_twin2")
PAUSED_RELOAD = [
    ("SIGUSR1", *BOTH),
    ("sleep", "1.0"),
    ("SIGHUP", *BOTH),
    ("sleep", "0.2"),
    ("SIGUSR2", *BOTH),
]


def test_a_target_change_pauses_reloads_then_resumes(state, signals):
    _, out = run(state, files_for(cfg()), 2)
    result, _ = run(out, files_for(cfg(host="10.0.0.2")), 2)
    assert WorkloadCharm.calls == PAUSED_RELOAD
    assert result.paused == BOTH
    assert result.pause_reason == "target"
    assert "paused (target)" in str(result)


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        (cfg(max_db=100), cfg(max_db=10), "cap"),
        (cfg(max_db=0), cfg(max_db=10), "cap"),
    ],
)
def test_a_lower_cap_pauses(state, signals, before, after, reason):
    _, out = run(state, files_for(before), 2)
    result, _ = run(out, files_for(after), 2)
    assert WorkloadCharm.calls == PAUSED_RELOAD
    assert result.pause_reason == reason


@pytest.mark.parametrize(
    ("before", "after", "auth"),
    [
        (cfg(max_db=10), cfg(max_db=100), ""),  # a higher cap needs no drain
        (cfg(), cfg(extra_db=True), ""),  # a new database: nothing in flight towards it
        (cfg(extra_db=True), cfg(), ""),  # a removed one
        (cfg(), cfg(), '"u" "p"\n'),  # the auth file
    ],
)
def test_other_reloads_are_plain_sighup_without_waiting(state, signals, before, after, auth):
    _, out = run(state, files_for(before), 2)
    result, _ = run(out, files_for(after, auth=auth), 2)
    assert WorkloadCharm.calls == [("SIGHUP", *BOTH)]
    assert result.paused == ()
    assert result.pause_reason is None


def test_resume_is_sent_even_when_the_reload_fails(state, monkeypatch):
    """A Pebble error between PAUSE and RESUME must not leave clients waiting forever."""
    _, out = run(state, files_for(cfg()), 2)
    sent: list[str] = []

    def failing(self: ops.Container, sig: str | int, *names: str) -> None:
        sent.append(str(sig))
        if sig == "SIGHUP":
            raise ops.pebble.APIError({}, 500, "Internal Server Error", "boom")

    monkeypatch.setattr(ops.Container, "send_signal", failing)
    WorkloadCharm.request = (files_for(cfg(host="10.0.0.2")), 2)
    with pytest.raises(testing.errors.UncaughtCharmError, match="reload"):
        testing.Context(WorkloadCharm, meta=META).run(testing.CharmEvents.config_changed(), out)
    assert sent == ["SIGUSR1", "SIGHUP", "SIGUSR2"]


def test_a_hand_over_is_never_paused(state, signals):
    """A listen_port change starts new processes; PAUSE would only stall the ones that stop."""
    _, out = run(state, files_for(cfg()), 2)
    result, _ = run(out, files_for(cfg(port=7000, host="10.0.0.2")), 2)
    assert result.draining == BOTH
    assert WorkloadCharm.calls == []


def test_apply_never_replans(state, monkeypatch):
    """Scale-down and hand-over never replan.

    Pebble's replan restarts a stopped service that a later layer made ``disabled``
    (``tests/e2e/test_harness_processes.py``).
    """

    def replan(self: ops.Container) -> None:
        raise AssertionError("replan called")

    monkeypatch.setattr(ops.Container, "replan", replan)
    _, out = run(state, files_for(cfg(processes=2)), 2)
    _, out = run(out, files_for(cfg(processes=1)), 1)
    result, out = run(out, files_for(cfg(processes=1, port=7000)), 1)
    assert result.handed_over == ("pgbouncer_0 -> pgbouncer_0_twin",)
    result, _ = run(out, files_for(cfg(processes=2, port=7000)), 2)
    assert result.started == ("pgbouncer_1",)


def test_a_hand_over_cut_short_is_finished_by_the_next_apply(state):
    """Both services of process 0 run: the next apply stops the one that does not serve.

    As after a hand-over whose old process was never stopped (a failed hook).
    """
    _, out = run(state, files_for(cfg(processes=1)), 1)
    container = out.get_container("pgbouncer")
    statuses = {**container.service_statuses, "pgbouncer_0_twin": ACTIVE}
    layer = ops.pebble.Layer(
        {"services": {"pgbouncer_0_twin": {"override": "replace", "command": "pgbouncer x"}}}
    )
    both = dataclasses.replace(
        container, service_statuses=statuses, layers={**container.layers, "twin": layer}
    )
    out = dataclasses.replace(out, containers={both})
    result, out = run(out, files_for(cfg(processes=1)), 1)
    assert result.stopped == ("pgbouncer_0_twin",)
    assert out.get_container("pgbouncer").service_statuses["pgbouncer_0"] == ACTIVE


# -- pool_mode: a same-port hand-over ---------------------------------------------------------
def test_a_pool_mode_change_hands_over_on_the_same_port_and_closes_the_old_processes(
    state, signals, tmp_path
):
    """The twins take new clients in the new mode; the old processes get SIGTERM.

    PgBouncer >= 1.23 then takes no new clients and serves the connected ones in their mode
    until they leave.
    """
    _, out = run(state, files_for(cfg()), 2)
    old_file = (tmp_path / "pgbouncer_0.ini").read_text()
    result, out = run(out, files_for(cfg(pool_mode="session")), 2)
    assert result.started == TWINS
    assert result.handed_over == (
        "pgbouncer_0 -> pgbouncer_0_twin",
        "pgbouncer_1 -> pgbouncer_1_twin",
    )
    assert result.handover_reason == "pool_mode" and result.moved_from is None
    assert result.draining == BOTH and result.stopped == () and result.reloaded == ()
    # SIGTERM after the twins started, and nothing else: no PAUSE, no reload of the old ones.
    assert WorkloadCharm.calls == [("SIGTERM", *BOTH)]
    # The old processes keep the file they run with, moved aside: a reload can never switch
    # their mode, and Pebble cannot start them again from it (a restart would fail at once).
    assert (tmp_path / "pgbouncer_0.ini.draining").read_text() == old_file
    assert not (tmp_path / "pgbouncer_0.ini").exists()
    twin = (tmp_path / "pgbouncer_0_twin.ini").read_text()
    assert "pool_mode = session\n" in twin and "listen_port = 6432\n" in twin
    assert f"unix_socket_dir = {PGB}/run/0_twin\n" in twin and "peer_id = 5\n" in twin
    assert (tmp_path / "run" / "0_twin").is_dir()
    container = out.get_container("pgbouncer")
    assert container.plan.checks["pgbouncer-listening"].tcp == {"host": "127.0.0.1", "port": 6432}
    assert {n: s.startup for n, s in container.plan.services.items()} == {
        **dict.fromkeys(BOTH, "disabled"),
        **dict.fromkeys(TWINS, "enabled"),
    }
    # A draining process that exits (its last client left) stays down.
    assert {s.on_success for s in container.plan.services.values()} == {"ignore"}

    # Within the bound: a database change reaches the twins only.
    signals.clear()
    result, out = run(out, files_for(cfg(pool_mode="session", extra_db=True)), 2, drain_old=False)
    assert result.reloaded == TWINS and result.draining == BOTH
    assert WorkloadCharm.calls == [("SIGHUP", *TWINS)]
    assert (tmp_path / "pgbouncer_0.ini.draining").read_text() == old_file

    # A second mode change (a revert) while the old slots still drain: the third slots take
    # over the same way; the clients that came to the twins keep their mode too.
    signals.clear()
    result, out = run(out, files_for(cfg(extra_db=True)), 2, drain_old=False)
    assert result.started == TWINS2 and result.stopped == ()
    assert WorkloadCharm.calls == [("SIGTERM", *TWINS)]
    assert (
        result.draining == tuple(sorted((*BOTH, *TWINS))) and result.handover_reason == "pool_mode"
    )

    # A third change with no slot free: the serving processes (the clients that came since
    # the last change) restart in place, one at a time, in the new mode; their clients are cut
    # once and reconnect. The draining ones are left alone.
    signals.clear()
    result, out = run(out, files_for(cfg(pool_mode="session", extra_db=True)), 2, drain_old=False)
    assert result.handed_over == () and result.stopped == ()
    assert result.restarted == TWINS2 and result.paused == () and result.reloaded == ()
    assert [c for c in WorkloadCharm.calls if c[0].startswith("SIG")] == []

    # At the bound the caller lets them go: they are stopped, nothing else happens.
    result, out = run(out, files_for(cfg(pool_mode="session", extra_db=True)), 2)
    assert result.stopped == tuple(sorted((*BOTH, *TWINS))) and result.draining == ()
    assert result.reloaded == ()
    # The next mode change hands over again, to the slots that served longest ago.
    result, _ = run(out, files_for(cfg(extra_db=True)), 2)
    assert result.handed_over == (
        "pgbouncer_0_twin2 -> pgbouncer_0",
        "pgbouncer_1_twin2 -> pgbouncer_1",
    )


def test_an_older_pgbouncer_changes_the_mode_in_place_by_restarting_each_process(state, signals):
    """PgBouncer < 1.23 answers SIGTERM by shutting down at once: no hand-over there.

    Not a reload: that would switch the mode under connected clients, whose prepared statements
    then fail on every later query. Each process restarts in turn (the other keeps the port).
    """
    _, out = run(state, files_for(cfg()), 2, wait_for_clients=False)
    signals.clear()
    result, _ = run(out, files_for(cfg(pool_mode="session")), 2, wait_for_clients=False)
    assert WorkloadCharm.calls == []  # no PAUSE, no SIGHUP
    assert result.restarted == BOTH and result.reloaded == ()
    assert result.pause_reason is None and result.handed_over == ()


def test_the_exporter_reads_the_serving_slot_of_each_process(state, tmp_path):
    exporter = render_exporter_files(2, 6432, "p" * 32, PGB)
    _, out = run(state, {**files_for(cfg()), **exporter}, 2)
    config = tmp_path / "exporter.yaml"
    assert f"host={PGB}/run/0 " in config.read_text()
    result, out = run(out, {**files_for(cfg(pool_mode="session")), **exporter}, 2)
    text = config.read_text()
    assert f"host={PGB}/run/0_twin " in text and f"host={PGB}/run/1_twin " in text
    assert f"host={PGB}/run/0 " not in text
    assert "metrics_exporter" in result.reloaded  # SIGHUP: it re-reads, serving meanwhile


def test_each_kind_of_drain_ends_on_its_own_flag(state):
    """Same-port drains and port-change drains end on their own flags.

    A draining process keeps its file: the port in it tells the two kinds apart.
    """
    _, out = run(state, files_for(cfg()), 2)
    _, out = run(out, files_for(cfg(pool_mode="session")), 2)  # pgbouncer_<i> drain, same port
    result, out = run(out, files_for(cfg(pool_mode="session")), 2, drain_same_port=False)
    assert result.stopped == () and result.draining == result.draining_same_port == BOTH
    result, out = run(
        out, files_for(cfg(pool_mode="session")), 2, drain_old=False, drain_same_port=True
    )
    assert result.stopped == BOTH and result.draining == ()
    _, out = run(out, files_for(cfg(pool_mode="session", port=7000)), 2)  # twins drain 6432
    result, out = run(
        out,
        files_for(cfg(pool_mode="session", port=7000)),
        2,
        drain_old=False,
        drain_same_port=True,
    )
    assert result.stopped == () and result.draining == TWINS
    assert result.draining_same_port == ()
    result, _ = run(out, files_for(cfg(pool_mode="session", port=7000)), 2, drain_same_port=False)
    assert result.stopped == TWINS and result.draining == ()


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("pgbouncer_0", (0, 0)),
        ("pgbouncer_3_twin", (3, 1)),
        ("pgbouncer_1_twin2", (1, 2)),
        ("pgbouncer_1_twin3", None),  # no fourth slot
        ("pgbouncer_1_twin1", None),
        ("pgbouncer_01", None),
        ("pgbouncer_0_twin_twin", None),
        ("metrics_exporter", None),
    ],
)
def test_service_names_map_to_one_index_and_slot_each(name, parsed):
    assert (service_index(name), None if parsed is None else service_slot(name)) == (
        (parsed[0], parsed[1]) if parsed else (None, None)
    )
    if parsed:
        assert service_name(*parsed) == name
        assert next_slots(name) == [service_name(parsed[0], (parsed[1] + k) % 3) for k in (1, 2)]


def test_a_field_pebble_adds_to_the_plan_is_not_a_new_definition(state):
    """Only what the charm sets counts: a field the plan holds beyond it changes nothing."""
    _, out = run(state, files_for(cfg(processes=1)), 1)
    container = out.get_container("pgbouncer")
    extra: ops.pebble.LayerDict = {
        "services": {"pgbouncer_0": {"override": "merge", "working-dir": "/"}}
    }
    more = dataclasses.replace(
        container, layers={**container.layers, "zz-extra": ops.pebble.Layer(extra)}
    )
    result, _ = run(dataclasses.replace(out, containers={more}), files_for(cfg(processes=1)), 1)
    assert result.handed_over == () and result.restarted == ()


def test_a_drained_process_pebble_tried_to_bring_back_is_stopped_for_good(state, tmp_path):
    """A process started by an older charm (no ``on-success: ignore``) exits 0 once drained.

    Pebble restarts it from the definition it started with; its file is moved aside, so the
    restart fails and Pebble reports the service as failing. The next apply stops it; the slot
    is free again and nothing else is touched.
    """
    _, out = run(state, files_for(cfg()), 2)
    result, out = run(out, files_for(cfg(pool_mode="session")), 2)
    assert result.draining == BOTH
    container = out.get_container("pgbouncer")
    failing = dataclasses.replace(
        container,
        service_statuses={
            **container.service_statuses,
            "pgbouncer_0": ops.pebble.ServiceStatus.ERROR,
        },
    )
    out = dataclasses.replace(out, containers={failing})
    result, out = run(out, files_for(cfg(pool_mode="session")), 2, drain_old=False)
    assert result.stopped == ("pgbouncer_0",)
    assert result.draining == ("pgbouncer_1",)
    assert result.removed == (f"{PGB}/pgbouncer_0.ini.draining",)
    assert (tmp_path / "pgbouncer_1.ini.draining").exists()
    assert result.started == result.restarted == result.reloaded == ()
