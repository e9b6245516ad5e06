"""Which address PgBouncer dials for a backend host name that has an IPv4 and an IPv6 address.

The charm writes the provider's host as given. PgBouncer asks c-ares for one address family,
IPv6 when there is one, and does not fall back to IPv4; libpq, which the charm's own connections
use, tries each address in turn (docs/image.md, "Which address PgBouncer dials"). PgBouncer and
psql read a hosts file of their own here (a private mount namespace each); the machine's is not
touched. Holds on 1.24.1 and on the version matrix's 1.26.1 alike.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess, make_run_dirs
from harness.servers.system import PG_BIN, free_port, write_service_file
from pgbouncer.config import DatabaseTarget, PgBouncerConfig, render_auth_file, render_ini

pytestmark = pytest.mark.needs_root

NAME = "pgbk8s-dual"
HOSTS = f"127.0.0.1 localhost\n127.0.0.1 {NAME}\n::1 {NAME}\n"


@pytest.fixture
def factory(pgbouncer_factory: PgBouncerFactory) -> PgBouncerFactory:
    """The project's PgBouncer factory (tests/conftest.py), under this module's short name."""
    return pgbouncer_factory


@pytest.fixture(scope="module")
def both_loopbacks() -> Iterator[PostgresServer]:
    server = start_postgres(prefix="pgbk8s-dual-", also_listen=("::1",))
    try:
        yield server
    finally:
        server.destroy()


def pooler(factory: PgBouncerFactory, server: PostgresServer) -> tuple[PgBouncerProcess, int]:
    """PgBouncer from the charm's rendering, the backend named ``NAME``, reading ``HOSTS``."""
    cfg = PgBouncerConfig(
        listen_port=free_port(),
        pool_mode="session",
        max_db_connections=5,
        max_prepared_statements=0,
        processes=1,
        databases=(DatabaseTarget("appdb", NAME, server.port, "postgres"),),
        listen_addr="127.0.0.1",
    )
    workdir = factory.workdir()
    make_run_dirs(workdir, [0])
    factory.write(workdir, "userlist.txt", render_auth_file(server.user, server.password))
    hosts = workdir / "hosts"
    write_service_file(hosts, HOSTS, mode=0o644)
    ini = render_ini(cfg, 0, str(workdir))
    process = factory.start(ini, cfg.listen_port, workdir, name="pgbouncer_0.ini", hosts=hosts)
    return process, cfg.listen_port


def through(port: int, server: PostgresServer) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname="appdb",
        user=server.user,
        password=server.password,
        connect_timeout=3,
        autocommit=True,
    )


def test_pgbouncer_dials_only_the_ipv6_address_of_a_dual_stack_name(postgres, factory):
    process, port = pooler(factory, postgres)  # PostgreSQL on 127.0.0.1 only
    with pytest.raises(psycopg.OperationalError):
        through(port, postgres).close()
    log = process.log()
    assert f"@[::1]:{postgres.port} closing because: connect failed" in log, log[-2000:]
    assert f"@127.0.0.1:{postgres.port}" not in log  # no fallback to the IPv4 address


def test_the_same_name_is_served_when_postgresql_listens_on_both(both_loopbacks, factory):
    _, port = pooler(factory, both_loopbacks)
    with through(port, both_loopbacks) as conn:
        assert conn.execute("SELECT inet_client_addr()::text").fetchone() == ("::1/128",)


def test_libpq_tries_the_ipv4_address_after_the_ipv6_one(postgres, tmp_path):
    """What the charm's own connections do with the same name: they reach PostgreSQL."""
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    conninfo = f"host={NAME} port={postgres.port} dbname=postgres user={postgres.user}"
    mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
    namespace = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount]
    psql = [str(PG_BIN / "psql"), "-X", "-At", f"{conninfo} connect_timeout=3"]
    out = subprocess.run(
        [*namespace, str(hosts), *psql, "-c", "SELECT inet_client_addr()"],
        env={**os.environ, "PGPASSWORD": postgres.password},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "127.0.0.1"
    assert Path("/etc/hosts").read_text() != HOSTS  # the machine's file was never replaced
