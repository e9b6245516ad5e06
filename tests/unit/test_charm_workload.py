"""The workload as the charm drives it: pebble-ready, config-changed, version gate, bad config.

Scenario does not record Pebble's service calls or signals, so these tests wrap its mock
client with the e2e harness's :class:`PebbleRecorder` to see reloads and restarts.
"""

from __future__ import annotations

import dataclasses
import stat
import time

import pytest
from ops import testing

from harness.processes import PebbleRecorder
from pgbouncer.drain import DRAIN_GRACE_S
from pgbouncer.image import VERSION_MARKER, ImageFacts
from tests.unit.conftest import make_container, peer_relation


def _ready(ctx, dirs, *, cpus="200000 100000", config=None, version="1.24.1"):
    (dirs.cgroup / "cpu.max").write_text(cpus + "\n")
    container = make_container(dirs, running=False, version=version)
    state = testing.State(
        leader=True, relations={peer_relation()}, containers={container}, config=config or {}
    )
    return ctx.run(ctx.on.pebble_ready(container), state)


def _calls(ctx, state, event):
    with PebbleRecorder(apply_ownership=False) as rec:
        out = ctx.run(event, state)
    return out, [(c.action, c.services, c.signal) for c in rec.for_container("pgbouncer")]


def test_pebble_ready_writes_layer_files_and_ports(ctx, dirs):
    out = _ready(ctx, dirs)
    container = out.get_container("pgbouncer")
    assert sorted(container.plan.services) == ["pgbouncer_0", "pgbouncer_1"]  # 2 CPUs
    for name, service in container.plan.services.items():
        index = name.rsplit("_", 1)[1]
        assert service.command == f"pgbouncer /var/lib/pgbouncer/pgbouncer_{index}.ini"
        assert service.user == "postgres"
    for path in ("pgbouncer_0.ini", "pgbouncer_1.ini", "userlist.txt"):
        assert stat.S_IMODE((dirs.pgb / path).stat().st_mode) == 0o600
    assert "peer_id = 2" in (dirs.pgb / "pgbouncer_1.ini").read_text()
    assert testing.TCPPort(6432) in out.opened_ports
    assert out.workload_version == "1.24.1"
    # No backend yet: the unit says what it waits for.
    assert out.unit_status == testing.BlockedStatus("waiting for a backend-database relation")


def test_config_change_that_reload_can_apply_reloads_without_restart(ctx, dirs):
    first = _ready(ctx, dirs)
    state = dataclasses.replace(first, config={"max_prepared_statements": 7})
    _, calls = _calls(ctx, state, ctx.on.config_changed())
    assert "max_prepared_statements = 7" in (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert ("signal", ("pgbouncer_0", "pgbouncer_1"), "SIGHUP") in calls
    assert not [c for c in calls if c[0] == "restart"]


def test_listen_port_change_starts_the_twins_and_leaves_the_old_port_draining(
    ctx, dirs, monkeypatch
):
    first = _ready(ctx, dirs)
    state = dataclasses.replace(first, config={"listen_port": 7432})
    out, calls = _calls(ctx, state, ctx.on.config_changed())
    twins = ("pgbouncer_0_twin", "pgbouncer_1_twin")
    moves = [c for c in calls if c[0] in ("start", "stop", "restart", "replan")]
    assert moves == [("start", twins, None)]
    assert not [c for c in calls if c[0] == "signal"]
    # Both ports stay open: clients learn the new one only when this hook has ended.
    assert out.opened_ports == {testing.TCPPort(6432), testing.TCPPort(7432)}
    # A hook within the grace period leaves them; one after it stops them and closes the port.
    out, calls = _calls(ctx, out, ctx.on.update_status())
    assert [c for c in calls if c[0] == "stop"] == []
    later = time.time() + DRAIN_GRACE_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    out, calls = _calls(ctx, out, ctx.on.update_status())
    assert [c for c in calls if c[0] == "stop"] == [("stop", ("pgbouncer_0", "pgbouncer_1"), None)]
    assert out.opened_ports == {testing.TCPPort(7432)}
    # The next port change hands over to the third slots, the one after to the first again.
    state = dataclasses.replace(out, config={"listen_port": 8432})
    out, calls = _calls(ctx, state, ctx.on.config_changed())
    moves = [c for c in calls if c[0] in ("start", "stop", "restart", "replan")]
    assert moves == [("start", ("pgbouncer_0_twin2", "pgbouncer_1_twin2"), None)]


def test_unchanged_config_changes_nothing(ctx, dirs):
    first = _ready(ctx, dirs)
    before = {p.name: p.stat().st_mtime_ns for p in dirs.pgb.iterdir() if p.is_file()}
    _, calls = _calls(ctx, first, ctx.on.config_changed())
    assert [c for c in calls if c[0] in ("signal", "restart")] == []
    after = {p.name: p.stat().st_mtime_ns for p in dirs.pgb.iterdir() if p.is_file()}
    assert after == before


def test_too_old_pgbouncer_blocks_naming_both_versions(ctx, dirs):
    out = _ready(ctx, dirs, version="1.18.0")
    assert out.unit_status == testing.BlockedStatus("PgBouncer 1.18.0 found; 1.21 or newer needed")
    assert out.get_container("pgbouncer").plan.services == {}
    assert not (dirs.pgb / "pgbouncer_0.ini").exists()


@pytest.mark.parametrize(
    ("stdout", "status"),
    [
        ("PgBouncer 1.20.1\n", "PgBouncer 1.20.1 found; 1.21 or newer needed"),
        (
            "pgbouncer: something else\n",
            "pgbouncer --version named no version; 1.21 or newer needed",
        ),
    ],
)
def test_a_refresh_to_an_image_pgbouncer_cannot_run_blocks_before_anything_stops(
    ctx, dirs, stdout, status
):
    """upgrade-charm with a new image: the version is read before anything is applied.

    Nothing is stopped, restarted or rewritten; the processes of the old image keep serving.
    """
    first = _ready(ctx, dirs, config={"listen_port": 7432})
    before = {p.name: p.read_text() for p in dirs.pgb.iterdir() if p.is_file()}
    container = first.get_container("pgbouncer")
    check = testing.Exec(["sh", "-c"], stdout=f"{VERSION_MARKER}\n{stdout}")
    new_image = dataclasses.replace(
        container,
        execs={check, *(e for e in container.execs if list(e.command_prefix) != ["sh", "-c"])},
    )
    # A port change arrives with the refresh: it must not be applied either.
    state = dataclasses.replace(first, containers={new_image}, config={"listen_port": 8432})
    out, calls = _calls(ctx, state, ctx.on.upgrade_charm())
    assert out.unit_status == testing.BlockedStatus(status)
    assert calls == []
    after = {p.name: p.read_text() for p in dirs.pgb.iterdir() if p.is_file()}
    # Only what the check found changed (kept for the next hooks); nothing PgBouncer reads.
    assert ImageFacts.from_text(after.pop("image-check.json")).problems
    before.pop("image-check.json")
    assert after == before
    statuses = out.get_container("pgbouncer").service_statuses
    assert statuses == container.service_statuses


def test_a_refresh_with_a_supported_image_and_nothing_changed_touches_nothing(ctx, dirs):
    first = _ready(ctx, dirs)
    out, calls = _calls(ctx, first, ctx.on.upgrade_charm())
    assert calls == []
    assert out.workload_version == "1.24.1"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pool_mode": "sessions"}, "invalid config pool_mode"),
        ({"listen_port": 80}, "invalid config listen_port: must be from 1024 to 65535"),
        ({"max_prepared_statements": 5000}, "invalid config max_prepared_statements"),
    ],
)
def test_invalid_config_blocks_naming_the_option_and_writes_nothing(ctx, dirs, config, message):
    out = _ready(ctx, dirs, config=config)
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(message)
    assert not (dirs.pgb / "pgbouncer_0.ini").exists()


def test_max_db_connections_is_divided_across_processes(ctx, dirs):
    _ready(ctx, dirs, config={"max_db_connections": 5})
    shares = [
        (dirs.pgb / f"pgbouncer_{i}.ini").read_text().split("max_db_connections = ")[1].split()[0]
        for i in (0, 1)
    ]
    assert sorted(int(s) for s in shares) == [2, 3]
