"""The real servers every functional test stands on: PostgreSQL 15 with SCRAM, PgBouncer 1.24."""

from __future__ import annotations

import psycopg
import pytest

from harness.servers.system import free_port, pgbouncer_version

pytestmark = pytest.mark.needs_root


def test_postgres_is_15_and_refuses_a_wrong_password(postgres):
    version = postgres.execute("SHOW server_version")[0][0]
    assert version.startswith("15.")
    assert postgres.execute("SHOW password_encryption")[0][0] == "scram-sha-256"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.conninfo(password="wrong"))


def test_pgbouncer_is_recent_and_passes_a_query(postgres, pgbouncer_factory):
    major, minor = (int(x) for x in pgbouncer_version().split()[1].split(".")[:2])
    assert (major, minor) >= (1, 21)
    port = free_port()
    workdir = pgbouncer_factory.workdir()
    pgbouncer_factory.write(workdir, "userlist.txt", f'"postgres" "{postgres.password}"\n')
    ini = f"""[databases]
smoke = host={postgres.host} port={postgres.port} dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {workdir}
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
"""
    pgb = pgbouncer_factory.start(ini, port, workdir)
    conn = psycopg.connect(
        f"host=127.0.0.1 port={port} dbname=smoke user=postgres password={postgres.password}",
        autocommit=True,
    )
    with conn:
        assert conn.execute("SELECT current_setting('port')::int").fetchone() == (postgres.port,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            f"host=127.0.0.1 port={port} dbname=smoke user=postgres password=nope connect_timeout=3"
        )
    assert pgb.alive()
