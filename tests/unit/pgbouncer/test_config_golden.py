"""Golden files pin the rendered configuration byte for byte.

The files under ``golden/`` were written by hand from PgBouncer's configuration reference
(``pgbouncer.ini(5)``: ``[databases]`` connection strings, ``[peers]`` entries with ``host`` and
``port``, ``[pgbouncer]`` settings), not produced by the renderer. A difference is either a
renderer bug or a deliberate change that must be made by hand here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AuthSettings,
    ClientTLS,
    DatabaseTarget,
    PgBouncerConfig,
    PoolSettings,
    ServerTLS,
    render_files,
    render_ini,
)

GOLDEN = Path(__file__).parent / "golden"
APPDB = (DatabaseTarget("appdb", "10.1.0.5", 5432, "appdb"),)
TUNED = PoolSettings(
    default_pool_size=15,
    min_pool_size=3,
    reserve_pool_size=4,
    reserve_pool_timeout=2,
    server_idle_timeout=300,
    server_lifetime=1800,
    query_wait_timeout=30,
    client_idle_timeout=900,
    idle_transaction_timeout=60,
    max_db_client_connections=101,
    max_user_client_connections=7,
    transaction_timeout=45,
)
"""Every pool option away from its default (the v1xx_tuned cases)."""


def tuned(version: tuple[int, ...]) -> PgBouncerConfig:
    """Every option changed, for PgBouncer ``version``."""
    return PgBouncerConfig(
        listen_port=7001,
        pool_mode="transaction",
        max_db_connections=41,
        max_prepared_statements=250,
        processes=2,
        databases=APPDB,
        max_client_conn=2500,
        pools=TUNED,
        version=version,
    )


BASE = "/var/lib/pgbouncer"

CASES: dict[str, PgBouncerConfig] = {
    # The 1.21 settings set (the pinned default image): the 1.24-only keys are left out.
    "v121_tuned": tuned((1, 21, 0)),
    # The 1.24 settings set: the client caps at their default, and changed.
    "v124_defaults": PgBouncerConfig(
        listen_port=6432,
        pool_mode="session",
        max_db_connections=100,
        max_prepared_statements=100,
        processes=2,
        databases=APPDB,
        version=(1, 24, 1),
    ),
    "v124_tuned": tuned((1, 24, 1)),
    "n1_noauth": PgBouncerConfig(
        listen_port=6432,
        pool_mode="session",
        max_db_connections=100,
        max_prepared_statements=100,
        processes=1,
    ),
    "n2_auth_3dbs": PgBouncerConfig(
        listen_port=6432,
        pool_mode="transaction",
        max_db_connections=100,
        max_prepared_statements=200,
        processes=2,
        # Deliberately unsorted: the output is sorted by key.
        databases=(
            DatabaseTarget(AUTH_DATABASE_KEY, "10.1.0.5", 5432, "pgbouncer"),
            DatabaseTarget("appdb_readonly", "10.1.0.6", 5432, "appdb"),
            DatabaseTarget("appdb", "10.1.0.5", 5432, "appdb"),
        ),
        auth=AuthSettings(
            auth_user="pgbouncer_auth_relation_7",
            auth_query="SELECT usename, passwd FROM pgbouncer_auth_relation_7.get_auth($1)",
            auth_dbname=AUTH_DATABASE_KEY,
        ),
    ),
    "n2_max0": PgBouncerConfig(
        listen_port=7000,
        pool_mode="session",
        max_db_connections=0,
        max_prepared_statements=0,
        processes=2,
        databases=(DatabaseTarget("appdb", "db.example.internal", 5433, "appdb"),),
    ),
    "n4_max5": PgBouncerConfig(
        listen_port=6432,
        pool_mode="statement",
        max_db_connections=5,
        max_prepared_statements=100,
        processes=4,
        databases=(DatabaseTarget("appdb", "10.1.0.5", 5432, "appdb"),),
    ),
    # TLS on: clients must use it, PostgreSQL is verified by name (docs/tls.md). The files the
    # TLS keys name are tested in test_tls_render.py.
    "n1_tls_require_verify_full": PgBouncerConfig(
        listen_port=6432,
        pool_mode="session",
        max_db_connections=100,
        max_prepared_statements=100,
        processes=1,
        databases=(
            DatabaseTarget("appdb", "postgresql-k8s-primary.dev.svc.cluster.local", 5432, "appdb"),
            DatabaseTarget(
                AUTH_DATABASE_KEY,
                "postgresql-k8s-primary.dev.svc.cluster.local",
                5432,
                "pgbouncer",
            ),
        ),
        auth=AuthSettings(
            auth_user="pgbouncer_auth_relation_7",
            auth_query="SELECT usename, passwd FROM pgbouncer_auth_relation_7.get_auth($1)",
        ),
        client_tls=ClientTLS("require"),
        server_tls=ServerTLS("verify-full"),
    ),
    # A certificate but no backend yet: TLS offered, plain clients still served.
    "n1_tls_prefer_only": PgBouncerConfig(
        listen_port=6432,
        pool_mode="session",
        max_db_connections=100,
        max_prepared_statements=100,
        processes=1,
        client_tls=ClientTLS("prefer"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_files_match_the_golden_files(case):
    expected = {
        f"{BASE}/{path.name}": path.read_text() for path in sorted((GOLDEN / case).glob("*.ini"))
    }
    assert expected, f"no golden files for {case}"
    assert render_files(CASES[case]) == expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_ini_is_the_same_text_as_render_files(case):
    cfg = CASES[case]
    files = render_files(cfg)
    assert [
        render_ini(cfg, i, slot=slot) for i in range(cfg.processes) for slot in range(3)
    ] == list(files.values())


def test_golden_directories_all_have_a_case():
    assert sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()) == sorted(CASES)


def test_base_dir_moves_every_path():
    files = render_files(CASES["n2_auth_3dbs"], base_dir="/tmp/x")
    assert sorted(files) == [
        "/tmp/x/pgbouncer_0.ini",
        "/tmp/x/pgbouncer_0_twin.ini",
        "/tmp/x/pgbouncer_0_twin2.ini",
        "/tmp/x/pgbouncer_1.ini",
        "/tmp/x/pgbouncer_1_twin.ini",
        "/tmp/x/pgbouncer_1_twin2.ini",
    ]
    text, twin = files["/tmp/x/pgbouncer_1.ini"], files["/tmp/x/pgbouncer_1_twin.ini"]
    assert "/var/lib/pgbouncer" not in text + twin
    assert "unix_socket_dir = /tmp/x/run/1\n" in text
    assert "unix_socket_dir = /tmp/x/run/1_twin\n" in twin
    assert "peer_id = 2\n" in text and "peer_id = 6\n" in twin
    for either in (text, twin):
        assert "2 = host=/tmp/x/run/1 port=6432\n" in either
        assert "6 = host=/tmp/x/run/1_twin port=6432\n" in either
        assert "10 = host=/tmp/x/run/1_twin2 port=6432\n" in either
    assert "auth_file = /tmp/x/userlist.txt\n" in text


def test_every_pool_option_differs_from_its_default_in_the_tuned_cases():
    defaults = PoolSettings()
    same = [name for name in vars(defaults) if getattr(TUNED, name) == getattr(defaults, name)]
    assert same == []


def test_a_newer_version_renders_the_newer_keys_and_an_unknown_one_does_not():
    newer = render_ini(tuned((1, 25)), 0)
    unknown = render_ini(tuned(()), 0)
    assert "max_user_client_connections = 4\n" in newer
    assert "transaction_timeout = 45\n" in newer  # PgBouncer 1.25
    assert "transaction_timeout" not in render_ini(tuned((1, 24, 1)), 0).replace("idle_t", "")
    assert "client_connections" not in unknown
    assert unknown == (GOLDEN / "v121_tuned" / "pgbouncer_0.ini").read_text()
