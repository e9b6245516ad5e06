"""The pool options as the charm applies them: validation, reload, and PgBouncer's version.

Each invalid value must block naming its option and leave the last good files (and the running
processes) alone; each valid change must reach the ini files and be applied by a reload.
"""

from __future__ import annotations

import dataclasses

import pytest
from ops import testing

from harness.processes import PebbleRecorder
from tests.unit.conftest import make_container, peer_relation


def _ready(ctx, dirs, *, config=None, version="1.24.1"):
    (dirs.cgroup / "cpu.max").write_text("200000 100000\n")  # 2 CPUs: 2 processes
    container = make_container(dirs, running=False, version=version)
    state = testing.State(
        leader=True, relations={peer_relation()}, containers={container}, config=config or {}
    )
    return ctx.run(ctx.on.pebble_ready(container), state)


def _files(dirs) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(dirs.pgb.iterdir()) if p.is_file()}


def _setting(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f"{key} = "):
            return line.split(" = ", 1)[1]
    return None


INVALID = [
    # (options, the option the message must name, what it must say). Values of the wrong type
    # never reach the charm (Juju and Scenario refuse them): tests/unit/state/test_config.py
    # covers those on CharmConfig itself.
    ({"max_client_conn": 0}, "max_client_conn", "from 1 to 100000"),
    ({"max_client_conn": 100_001}, "max_client_conn", "from 1 to 100000"),
    ({"default_pool_size": -1}, "default_pool_size", "from 0 to 10000"),
    ({"default_pool_size": 10_001, "max_db_connections": 0}, "default_pool_size", "10000"),
    ({"default_pool_size": 101}, "default_pool_size", "must not exceed max_db_connections"),
    ({"min_pool_size": -1}, "min_pool_size", "from 0 to 10000"),
    ({"min_pool_size": 11, "default_pool_size": 10}, "min_pool_size", "default_pool_size"),
    ({"min_pool_size": 101}, "min_pool_size", "must not exceed max_db_connections"),
    ({"reserve_pool_size": -3}, "reserve_pool_size", "from 0 to 10000"),
    ({"reserve_pool_size": 20_000}, "reserve_pool_size", "from 0 to 10000"),
    ({"reserve_pool_timeout": -1}, "reserve_pool_timeout", "from 0 to 604800"),
    ({"server_idle_timeout": 604_801}, "server_idle_timeout", "from 0 to 604800"),
    ({"server_lifetime": -1}, "server_lifetime", "from 0 to 604800"),
    ({"client_idle_timeout": -60}, "client_idle_timeout", "from 0 to 604800"),
    ({"max_db_client_connections": -1}, "max_db_client_connections", "from 0 to 1000000"),
    ({"max_user_client_connections": 10**7}, "max_user_client_connections", "1000000"),
    ({"transaction_timeout": -1}, "transaction_timeout", "from 0 to 604800"),
]


@pytest.mark.parametrize(("options", "option", "reason"), INVALID)
def test_invalid_option_blocks_naming_it_and_writes_nothing(ctx, dirs, options, option, reason):
    out = _ready(ctx, dirs, config=options)
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(f"invalid config {option}: ")
    assert reason in out.unit_status.message
    assert out.get_container("pgbouncer").plan.services == {}
    assert not (dirs.pgb / "pgbouncer_0.ini").exists()


@pytest.mark.parametrize(("options", "option", "reason"), INVALID)
def test_invalid_option_keeps_the_last_good_configuration_running(
    ctx, dirs, options, option, reason
):
    good = _ready(ctx, dirs, config={"server_idle_timeout": 42})
    before = _files(dirs)
    state = dataclasses.replace(good, config={"server_idle_timeout": 42, **options})
    with PebbleRecorder(apply_ownership=False) as rec:
        out = ctx.run(ctx.on.config_changed(), state)
    calls = [c.action for c in rec.for_container("pgbouncer")]
    assert _files(dirs) == before
    assert "signal" not in calls and "restart" not in calls and "stop" not in calls
    assert out.unit_status.message.startswith(f"invalid config {option}: ")


def test_min_pool_size_above_a_process_share_blocks_at_render_time(ctx, dirs):
    # max_db_connections 41 over 2 processes: shares 21 and 20; the derived pool size of
    # process 1 is 20, so a minimum of 21 could never be honoured there.
    out = _ready(ctx, dirs, config={"max_db_connections": 41, "min_pool_size": 21})
    assert out.unit_status.name == "blocked"
    assert "min_pool_size" in out.unit_status.message
    assert "process 1" in out.unit_status.message
    assert not (dirs.pgb / "pgbouncer_0.ini").exists()


def test_client_cap_below_the_process_count_blocks_naming_it(ctx, dirs):
    out = _ready(ctx, dirs, config={"max_user_client_connections": 1})
    assert out.unit_status.name == "blocked"
    assert "max_user_client_connections" in out.unit_status.message


CHANGES = {
    "max_client_conn": (2500, "2500"),
    "default_pool_size": (15, "15"),
    "min_pool_size": (3, "3"),
    "reserve_pool_size": (4, "4"),
    "reserve_pool_timeout": (2, "2"),
    "server_idle_timeout": (300, "300"),
    "server_lifetime": (1800, "1800"),
    "query_wait_timeout": (30, "30"),
    "client_idle_timeout": (900, "900"),
    "idle_transaction_timeout": (60, "60"),
    "max_db_client_connections": (101, "51"),  # process 0's share of 101 over 2
    "max_user_client_connections": (7, "4"),
}


@pytest.mark.parametrize("option", sorted(CHANGES))
def test_each_option_change_is_rendered_and_reloaded_without_restart(ctx, dirs, option):
    value, rendered = CHANGES[option]
    first = _ready(ctx, dirs)
    assert _setting((dirs.pgb / "pgbouncer_0.ini").read_text(), option) != rendered
    with PebbleRecorder(apply_ownership=False) as rec:
        out = ctx.run(ctx.on.config_changed(), dataclasses.replace(first, config={option: value}))
    calls = [(c.action, c.services, c.signal) for c in rec.for_container("pgbouncer")]
    assert _setting((dirs.pgb / "pgbouncer_0.ini").read_text(), option) == rendered
    assert ("signal", ("pgbouncer_0", "pgbouncer_1"), "SIGHUP") in calls
    assert [c for c in calls if c[0] == "restart"] == []
    assert "invalid" not in out.unit_status.message
    assert "cannot render" not in out.unit_status.message


def _active_message(ctx, state) -> str:
    """The active status the charm adds (a missing backend outranks it in the unit status)."""
    with ctx(ctx.on.update_status(), state) as manager:
        manager.run()
        statuses = manager.charm._statuses()
    return next(s.message for s in statuses if s.name == "active")


def test_pgbouncer_121_leaves_out_newer_settings_and_says_so(ctx, dirs):
    config = {"max_user_client_connections": 10, "server_lifetime": 60}
    out = _ready(ctx, dirs, config=config, version="1.21.0")
    text = (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert "client_connections" not in text
    assert _setting(text, "server_lifetime") == "60"
    assert _active_message(ctx, out) == (
        "2 PgBouncer processes; max_user_client_connections ignored: needs PgBouncer 1.24"
    )


def test_pgbouncer_121_with_newer_settings_at_default_has_no_note(ctx, dirs):
    out = _ready(ctx, dirs, version="1.21.0")
    assert "client_connections" not in (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert _active_message(ctx, out) == "2 PgBouncer processes"


def test_pgbouncer_124_renders_the_newer_settings(ctx, dirs):
    _ready(ctx, dirs, config={"max_user_client_connections": 10}, version="1.24.1")
    texts = [(dirs.pgb / f"pgbouncer_{i}.ini").read_text() for i in (0, 1)]
    assert [_setting(t, "max_user_client_connections") for t in texts] == ["5", "5"]
    assert [_setting(t, "max_db_client_connections") for t in texts] == ["0", "0"]


# -- options new in PgBouncer 1.25 (issue 25) --------------------------------------------------
@pytest.mark.parametrize("version", ["1.25.0", "1.26.1"])
def test_transaction_timeout_is_applied_where_pgbouncer_has_it(ctx, dirs, version):
    out = _ready(ctx, dirs, config={"transaction_timeout": 30}, version=version)
    for name in ("pgbouncer_0.ini", "pgbouncer_1.ini"):
        assert _setting((dirs.pgb / name).read_text(), "transaction_timeout") == "30"
    assert _active_message(ctx, out) == "2 PgBouncer processes"


def test_transaction_timeout_is_left_out_below_125_and_the_status_names_the_version(ctx, dirs):
    out = _ready(ctx, dirs, config={"transaction_timeout": 30}, version="1.24.1")
    assert _setting((dirs.pgb / "pgbouncer_0.ini").read_text(), "transaction_timeout") is None
    assert _active_message(ctx, out) == (
        "2 PgBouncer processes; transaction_timeout ignored: needs PgBouncer 1.25"
    )


def test_on_121_each_left_out_setting_names_the_version_it_needs(ctx, dirs):
    config = {"transaction_timeout": 30, "max_db_client_connections": 50}
    out = _ready(ctx, dirs, config=config, version="1.21.0")
    text = (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert _setting(text, "transaction_timeout") is None and "client_connections" not in text
    assert _active_message(ctx, out) == (
        "2 PgBouncer processes; max_db_client_connections ignored: needs PgBouncer 1.24"
        "; transaction_timeout ignored: needs PgBouncer 1.25"
    )
