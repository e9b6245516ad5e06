"""``<db>_readonly`` spreads server connections over every replica: two real hot standbys.

A real PostgreSQL 15 primary with two streaming hot standbys (``pg_basebackup``) on one port at
``127.0.0.2`` and ``127.0.0.3``, as the replicas of a Kubernetes cluster listen on 5432 at
addresses of their own. The ``[databases]`` entry is the one the charm renders from a backend
databag listing both (``read_only_group`` then ``render_ini``); a real PgBouncer runs it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from harness.servers.pg import PostgresServer
from harness.servers.pgb import PgBouncerFactory, make_run_dirs
from harness.servers.system import free_port, pgbouncer_version
from harness.story import standby_pair
from pgbouncer.config import (
    DatabaseTarget,
    PgBouncerConfig,
    read_only_group,
    render_auth_file,
    render_ini,
)
from state.backend import parse_endpoints
from state.names import READONLY_KEY_SUFFIX

pytestmark = pytest.mark.needs_root

DB = "postgres"


@pytest.fixture(scope="module")
def standbys(postgres: PostgresServer) -> Iterator[list[PostgresServer]]:
    pair = standby_pair(postgres)
    try:
        yield pair
    finally:
        for server in pair:
            server.destroy()


def pgb_version() -> tuple[int, ...]:
    return tuple(int(p) for p in pgbouncer_version().split()[-1].split("."))


def start_pooler(factory: PgBouncerFactory, primary: PostgresServer, standbys) -> tuple:
    published = ",".join(s.endpoint for s in standbys)  # the provider's read-only-endpoints
    group = read_only_group(parse_endpoints(published, "read-only-endpoints"))
    assert group is not None
    (first, *more), port = group
    version = pgb_version()
    cfg = PgBouncerConfig(
        listen_port=free_port(),
        pool_mode="transaction",
        max_db_connections=20,
        max_prepared_statements=100,
        processes=1,
        databases=(
            DatabaseTarget(DB, primary.host, primary.port, DB),
            DatabaseTarget(DB + READONLY_KEY_SUFFIX, first, port, DB, tuple(more)),
        ),
        listen_addr="127.0.0.1",
        version=version,
    )
    workdir = factory.workdir()
    make_run_dirs(workdir, [0])
    factory.write(workdir, "userlist.txt", render_auth_file(primary.user, primary.password))
    text = render_ini(cfg, 0, base_dir=str(workdir))
    return factory.start(text, cfg.listen_port, workdir, name="pgbouncer_0.ini"), text


def connect(pgb, primary: PostgresServer, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=pgb.port,
        user=primary.user,
        password=primary.password,
        dbname=dbname,
        connect_timeout=10,
    )


def served_by(conns: list[psycopg.Connection]) -> Counter:
    """Open a transaction on each client at once (each then holds its own server connection)."""
    seen: Counter = Counter()
    for conn in conns:
        row = conn.execute(
            "SELECT pg_catalog.inet_server_addr()::text, pg_catalog.pg_is_in_recovery()"
        ).fetchone()
        assert row is not None and row[1] is True, "a read-only client reached the primary"
        seen[row[0].split("/")[0]] += 1
    for conn in conns:
        conn.rollback()
    return seen


def test_readonly_spreads_over_both_standbys_and_writes_stay_on_the_primary(
    postgres, standbys, pgbouncer_factory
):
    pgb, text = start_pooler(pgbouncer_factory, postgres, standbys)
    port = standbys[0].port
    line = f"{DB}{READONLY_KEY_SUFFIX} = host=127.0.0.2,127.0.0.3 port={port} dbname={DB}"
    assert line in text
    balanced = line + " load_balance_hosts=round-robin" in text
    assert balanced == (pgb_version() >= (1, 24)), text
    clients = [connect(pgb, postgres, DB + READONLY_KEY_SUFFIX) for _ in range(6)]
    try:
        seen = served_by(clients)
    finally:
        for conn in clients:
            conn.close()
    # Six server connections opened round-robin: three on each standby.
    assert seen == Counter({"127.0.0.2": 3, "127.0.0.3": 3}), seen
    with connect(pgb, postgres, DB) as rw:
        assert rw.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone() == (False,)


def test_a_stopped_standby_costs_a_retry_not_the_read_only_database(
    postgres, standbys, pgbouncer_factory
):
    """With one standby down, new read-only clients are still served (by the other one).

    PgBouncer tries the next host of the list after a failed server login
    (``server_login_retry``, 1 s in the charm's configuration): a client may wait that long.
    """
    pgb, _ = start_pooler(pgbouncer_factory, postgres, standbys)
    standbys[1].stop()
    try:
        began = time.monotonic()
        clients = [connect(pgb, postgres, DB + READONLY_KEY_SUFFIX) for _ in range(4)]
        try:
            # four transactions at once: four server connections, every other one first
            # tried on the stopped standby
            assert served_by(clients) == Counter({"127.0.0.2": 4})
        finally:
            for conn in clients:
                conn.close()
        took = time.monotonic() - began
        print(f"4 read-only clients with one standby down: {took:.2f} s")
        assert took < 8
    finally:
        standbys[1].start()
