"""Every pool option on a real PgBouncer 1.24: what the charm renders is what PgBouncer runs.

For each option the rendered file is started, ``SHOW CONFIG`` is read, the option is changed,
the file re-rendered and PgBouncer sent SIGHUP (as the charm has Pebble do): ``SHOW CONFIG`` must
then report the new value from the same process (no restart), and PgBouncer must log no error.
"""

from __future__ import annotations

import dataclasses
import subprocess

import psycopg
import pytest

from harness.servers.pgb import PgBouncerStartError
from harness.servers.system import free_port, pgbouncer_version
from pgbouncer.config import (
    PoolSettings,
    left_out_settings,
    render_files,
    supports,
)
from pgbouncer.ini import NO_RELOAD_KEYS
from tests.functional.test_pgbouncer_workload import (
    config,
    connect,
    start_group,
    wait_until,
    with_admin,
)

pytestmark = pytest.mark.needs_root

VERSION = (1, 24, 1)

CHANGES: dict[str, int] = {
    "default_pool_size": 15,
    "min_pool_size": 3,
    "reserve_pool_size": 4,
    "reserve_pool_timeout": 2,
    "server_idle_timeout": 300,
    "server_lifetime": 1800,
    "query_wait_timeout": 30,
    "client_idle_timeout": 900,
    "idle_transaction_timeout": 60,
    "max_db_client_connections": 101,
    "max_user_client_connections": 7,
}
"""A changed value per pool option; one process, so the client caps are rendered whole."""


def show_config(port: int, password: str) -> dict[str, str]:
    with connect(port, password, "pgbouncer", prepare_threshold=None) as conn:
        return {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}


def same(shown: str, expected: int) -> bool:
    """SHOW CONFIG prints times as seconds, possibly with a fraction ("2" or "2.0")."""
    return float(shown) == float(expected)


def _version() -> str:
    try:
        return pgbouncer_version()
    except (OSError, subprocess.CalledProcessError):
        return ""  # no build: the needs_root tests skip or fail on their own


ON_124 = pytest.mark.skipif(
    not _version().startswith("PgBouncer 1.24"),
    reason="a 1.24.1 fact; the version matrix runs another PgBouncer (docs/image.md)",
)


@ON_124
def test_pgbouncer_under_test_is_124():
    assert pgbouncer_version().startswith("PgBouncer 1.24")


def test_pool_options_all_reload():
    assert not (set(CHANGES) | {"max_client_conn"}) & NO_RELOAD_KEYS
    # Every option the running version has; the newer ones are left out (below).
    assert set(CHANGES) == {key for key in vars(PoolSettings()) if supports(VERSION, key)}


@ON_124
def test_a_newer_option_is_left_out_and_pgbouncer_starts_which_it_would_not_with_it(
    postgres, pgbouncer_factory
):
    """``transaction_timeout`` (PgBouncer 1.25) set on the real 1.24.1.

    The rendered file leaves it out and PgBouncer runs; the same file with the key refuses to
    start.
    """
    assert not supports(VERSION, "transaction_timeout")
    cfg = config(
        postgres, processes=1, version=VERSION, pools=PoolSettings(transaction_timeout=30)
    )
    assert left_out_settings(cfg) == ("transaction_timeout",)
    group = start_group(pgbouncer_factory, postgres, cfg)
    text = group.processes[0].ini_path.read_text()
    assert "\ntransaction_timeout" not in text
    connect(cfg.listen_port, postgres.password).close()
    with pytest.raises(PgBouncerStartError, match="transaction_timeout"):
        pgbouncer_factory.start(text + "transaction_timeout = 30\n", free_port())


@pytest.mark.parametrize("option", [*sorted(CHANGES), "max_client_conn"])
def test_option_reaches_show_config_by_reload(postgres, pgbouncer_factory, option):
    cfg = config(postgres, processes=1, max_db_connections=100, version=VERSION)
    group = start_group(pgbouncer_factory, postgres, cfg, edit=with_admin)
    pgb = group.processes[0]
    pid = pgb.pid
    before = show_config(cfg.listen_port, postgres.password)
    default = cfg.max_client_conn if option == "max_client_conn" else getattr(cfg.pools, option)
    if option == "default_pool_size":
        default = 100  # 0 means derived: the process's whole max_db_connections share
    assert same(before[option], default), (option, before[option])

    if option == "max_client_conn":
        changed = dataclasses.replace(cfg, max_client_conn=2500)
        value = 2500
    else:
        value = CHANGES[option]
        changed = dataclasses.replace(cfg, pools=PoolSettings(**{option: value}))
    text = next(iter(render_files(changed, base_dir=str(group.workdir)).values()))
    pgbouncer_factory.write(group.workdir, pgb.ini_path.name, with_admin(text))
    pgb.reload()
    wait_until(lambda: "re-reading config" in pgb.log(), "the reload")
    after = show_config(cfg.listen_port, postgres.password)
    assert same(after[option], value), (option, after[option])
    assert pgb.alive() and pgb.pid == pid
    # Nothing else moved: a broken file would reset later settings to PgBouncer's defaults.
    assert {k: v for k, v in after.items() if k != option} == {
        k: v for k, v in before.items() if k != option
    }
    assert "ERROR" not in pgb.log() and "WARNING" not in pgb.log(), pgb.log()


def test_client_cap_is_enforced_per_process(postgres, pgbouncer_factory):
    """The rendered per-database client cap really refuses the client beyond it."""
    pools = PoolSettings(max_db_client_connections=2)
    cfg = config(postgres, processes=1, version=VERSION, pools=pools)
    start_group(pgbouncer_factory, postgres, cfg)
    first = connect(cfg.listen_port, postgres.password)
    second = connect(cfg.listen_port, postgres.password)
    try:
        with pytest.raises(psycopg.OperationalError, match="client connections"):
            connect(cfg.listen_port, postgres.password).close()
    finally:
        first.close()
        second.close()
