"""The pure parts of the actions: who serves and who drains, peer ids, pool rows and sums."""

from __future__ import annotations

from typing import cast

import pytest
from ops import pebble

from pgbouncer.console import ProcessPools, pool_rows, service_of_peer, sum_pools
from pgbouncer.pause import split_processes
from pgbouncer.slots import peer_id, service_name


def plan(enabled: list[str], disabled: list[str]) -> pebble.Plan:
    services = {
        name: {"override": "replace", "command": "pgbouncer x.ini", "startup": startup}
        for names, startup in ((enabled, "enabled"), (disabled, "disabled"))
        for name in names
    }
    return pebble.Plan(cast(pebble.PlanDict, {"services": services}))


def test_serving_processes_are_the_running_enabled_ones_and_the_rest_drain():
    p = plan(["pgbouncer_0_twin", "pgbouncer_1", "metrics_exporter"], ["pgbouncer_0"])
    statuses = {
        "pgbouncer_0": pebble.ServiceStatus.ACTIVE,  # draining after a hand-over
        "pgbouncer_0_twin": pebble.ServiceStatus.ACTIVE,
        "pgbouncer_1": "active",  # the form a plan or a fake may hold
        "metrics_exporter": pebble.ServiceStatus.ACTIVE,  # not PgBouncer
    }
    split = split_processes(p, statuses)
    assert split.serving == ("pgbouncer_0_twin", "pgbouncer_1")
    assert split.draining == ("pgbouncer_0",)


def test_a_stopped_service_neither_serves_nor_drains():
    split = split_processes(plan(["pgbouncer_0"], []), {"pgbouncer_0": "inactive"})
    assert (split.serving, split.draining) == ((), ())


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("slot", range(3))
def test_a_peer_id_names_the_service_of_its_slot(index, slot):
    assert service_of_peer(peer_id(index, slot)) == service_name(index, slot)


def test_a_peer_id_below_one_names_nothing():
    with pytest.raises(ValueError):
        service_of_peer(0)


COLUMNS = ["database", "user", "cl_active", "cl_waiting", "sv_active", "maxwait", "pool_mode"]


def test_pool_rows_leave_the_console_out_and_count_as_ints():
    rows = [
        ("pgbouncer", "pgbouncer_stats", 1, 0, 0, 0, "statement"),
        ("appdb", "u1", "3", "1", "2", "4", "transaction"),
    ]
    assert pool_rows(COLUMNS, rows) == [
        {
            "database": "appdb",
            "user": "u1",
            "cl_active": 3,
            "cl_waiting": 1,
            "sv_active": 2,
            "maxwait": "4",
            "pool_mode": "transaction",
        }
    ]


def test_the_unit_total_sums_counts_and_keeps_the_longest_wait():
    a = ProcessPools(1, "pgbouncer_0", {"paused": "no"}, pool_rows(COLUMNS, [
        ("appdb", "u1", 3, 1, 2, 4, "transaction"),
        ("otherdb", "u2", 1, 0, 1, 0, "transaction"),
    ]))  # fmt: skip
    b = ProcessPools(2, "pgbouncer_1", {"paused": "no"}, pool_rows(COLUMNS, [
        ("appdb", "u1", 2, 0, 1, 9, "session"),
    ]))  # fmt: skip
    total = {(p["database"], p["user"]): p for p in sum_pools([a, b])}
    appdb = total[("appdb", "u1")]
    assert (appdb["cl_active"], appdb["cl_waiting"], appdb["sv_active"]) == (5, 1, 3)
    assert appdb["maxwait"] == 9
    assert appdb["processes"] == 2
    assert appdb["pool_mode"] == "mixed"
    assert total[("otherdb", "u2")]["pool_mode"] == "transaction"
