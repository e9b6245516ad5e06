"""The pure parts of the workload: the Pebble layer, version and cgroup parsing."""

from __future__ import annotations

import pytest
from ops import pebble

from pgbouncer.plan import (
    CHECK_NAME,
    ApplyResult,
    build_layer,
    drain_reason,
)
from pgbouncer.workload import cpu_count_from_cgroup
from pgbouncer.workload import version_from_output as parse_version


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_layer_has_one_service_per_process(processes):
    layer = build_layer(processes)
    assert "services" in layer
    services = layer["services"]
    assert list(services) == [f"pgbouncer_{i}" for i in range(processes)]
    for i, (name, service) in enumerate(services.items()):
        assert service.get("command") == f"pgbouncer /var/lib/pgbouncer/pgbouncer_{i}.ini", name
        assert service.get("user") == "postgres"
        assert service.get("group") == "postgres"
        assert service.get("on-failure") == "restart"
        assert service.get("startup") == "enabled"
        assert service.get("override") == "replace"
    # Pebble accepts it as a layer.
    parsed = pebble.Layer(layer)  # pyright: ignore[reportArgumentType]
    assert set(parsed.services) == set(services)


def test_layer_check_is_a_tcp_readiness_check_on_the_port():
    layer = build_layer(2, listen_port=7001)
    assert "checks" in layer
    check = layer["checks"][CHECK_NAME]
    assert check.get("level") == "ready"
    assert check.get("tcp") == {"host": "127.0.0.1", "port": 7001}
    assert pebble.Layer(layer).checks[CHECK_NAME].tcp == {"host": "127.0.0.1", "port": 7001}  # pyright: ignore[reportArgumentType]


def test_layer_has_no_check_without_a_port():
    assert "checks" not in build_layer(1)


def test_layer_holds_no_secret_and_no_config_values():
    text = pebble.Layer(build_layer(4, listen_port=6432)).to_yaml()  # pyright: ignore[reportArgumentType]
    assert "password" not in text.lower()
    assert "userlist" not in text


@pytest.mark.parametrize("processes", [0, 5, -1])
def test_layer_refuses_a_bad_process_count(processes):
    with pytest.raises(ValueError):
        build_layer(processes)


def test_layer_uses_the_base_dir():
    layer = build_layer(1, base_dir="/srv/pgb")
    assert "services" in layer
    assert layer["services"]["pgbouncer_0"].get("command") == "pgbouncer /srv/pgb/pgbouncer_0.ini"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("PgBouncer 1.24.1\nlibevent 2.1.12-stable\nadns: c-ares 1.18.1\n", "1.24.1"),
        ("PgBouncer 1.21.0", "1.21.0"),
        ("PgBouncer 1.18\n", "1.18"),
        ("pgbouncer 1.24.1", None),
        ("", None),
        ("something else\nPgBouncer 1.22.1\n", "1.22.1"),
        ("PgBouncer x.y", None),
    ],
)
def test_parse_version(output, expected):
    assert parse_version(output) == expected


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "800000 100000\n"}, 8),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "max 100000\n", "cpuset.cpus.effective": "0-5\n"}, 6),
        ({"cpu.max": "200000 100000\n", "cpuset.cpus.effective": "0-5\n"}, 2),
        ({"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.cfs_quota_us": "-1\n", "cpuset.effective_cpus": "0,2,4-5\n"}, 4),
        ({"cpu.max": "garbage"}, None),
        ({"cpu.max": None, "cpuset.cpus.effective": "x-y"}, None),
        ({}, None),
    ],
)
def test_cpu_count_from_cgroup(files, expected):
    assert cpu_count_from_cgroup(files) == expected


def test_apply_result_says_what_changed():
    assert not ApplyResult().changed
    assert str(ApplyResult()) == "nothing changed"
    result = ApplyResult(written=("/a",), reloaded=("pgbouncer_0", "pgbouncer_1"))
    assert result.changed
    assert str(result) == "wrote /a; reloaded pgbouncer_0, pgbouncer_1"


# -- drain_reason: which reloads are wrapped in PAUSE … RESUME --------------------------------
_BASE = "[databases]\nappdb = host=10.0.0.1 port=5432 dbname=appdb\n[pgbouncer]\n"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (_BASE, _BASE.replace("10.0.0.1", "10.0.0.2"), "target"),
        (_BASE, _BASE.replace("port=5432", "port=5433"), "target"),
        (_BASE + "pool_mode = transaction\n", _BASE + "pool_mode = session\n", "pool_mode"),
        (_BASE, _BASE + "pool_mode = transaction\n", "pool_mode"),  # default is session
        (_BASE + "max_db_connections = 100\n", _BASE + "max_db_connections = 10\n", "cap"),
        (_BASE + "default_pool_size = 0\n", _BASE + "default_pool_size = 5\n", "cap"),
        (_BASE + "max_db_connections = 10\n", _BASE + "max_db_connections = 100\n", None),
        (_BASE + "max_db_connections = 10\n", _BASE + "max_db_connections = 0\n", None),
        (_BASE, _BASE.replace("[pgbouncer]", "new = host=h dbname=n\n[pgbouncer]"), None),
        (_BASE, "[databases]\n[pgbouncer]\n", None),  # a removed entry
        (None, _BASE, None),  # never ran: nothing to drain
        ("[broken\n", _BASE, None),  # unreadable old file: the restart path handles it
    ],
)
def test_drain_reason(old, new, reason):
    assert drain_reason(old, new) == reason
