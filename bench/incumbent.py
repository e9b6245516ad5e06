"""The incumbent charm's PgBouncer settings for the same inputs, as a comparison row.

Written here from the incumbent's *documented* settings, not from its code (sources in
``bench/README.md``): Canonical's pgbouncer-k8s-operator renders ``templates/pgb_config.j2`` and
its documentation gives the rules:

- one PgBouncer process per CPU core of the unit, sharing the port (``so_reuseport = 1``, a
  ``[peers]`` section, one unix socket directory per process);
- ``effective_db_connections = max_db_connections / processes``;
  ``default_pool_size = ceil(effective / 2)``, ``min_pool_size = ceil(effective / 4)``,
  ``reserve_pool_size = ceil(effective / 4)``; 20/10/10 when ``max_db_connections = 0``;
- ``max_db_connections`` written as configured, in every process's file;
- constants: ``max_client_conn = 10000``,
  ``ignore_startup_parameters = extra_float_digits,options``, ``server_tls_sslmode = prefer``.

Everything else is kept as in our rendering so that only those settings differ: the same auth
lookup (``auth_query`` with the same function and auth user, resolved in the same database), the
same ``auth_type`` and auth file, ``listen_addr`` on loopback.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.stack import APP_DB, AUTH_DB, Backend, Pooler, Stack
from harness.servers.pgb import make_run_dirs
from harness.servers.system import write_service_file
from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    PgBouncerConfig,
    render_auth_file,
)
from pgbouncer.slots import run_dir


def pool_sizes(max_db_connections: int, processes: int) -> tuple[int, int, int]:
    """(default_pool_size, min_pool_size, reserve_pool_size) by the incumbent's documented rule."""
    if max_db_connections == 0:
        return 20, 10, 10
    effective = max_db_connections / processes
    return math.ceil(effective / 2), math.ceil(effective / 4), math.ceil(effective / 4)


def render(
    backend: Backend,
    base: Path,
    port: int,
    processes: int,
    max_db_connections: int = 40,
    pool_mode: str = "transaction",
) -> dict[str, str]:
    """``pgbouncer_<i>.ini`` text per process, keyed by path under ``base``."""
    host, pg_port = backend.server.host, backend.server.port
    default, minimum, reserve = pool_sizes(max_db_connections, processes)
    databases = "\n".join(
        f"{key} = host={host} dbname={dbname} port={pg_port}"
        for key, dbname in ((APP_DB, APP_DB), (AUTH_DATABASE_KEY, AUTH_DB))
    )
    peers = "\n".join(
        f"{i + 1} = host={run_dir(i, str(base))} port={port}" for i in range(processes)
    )
    files = {}
    for index in range(processes):
        rundir = run_dir(index, str(base))
        files[f"{base}/pgbouncer_{index}.ini"] = f"""[databases]
{databases}

[peers]
{peers}

[pgbouncer]
peer_id = {index + 1}
listen_addr = 127.0.0.1
listen_port = {port}
pidfile = {rundir}/pgbouncer.pid
auth_type = scram-sha-256
max_client_conn = 10000
ignore_startup_parameters = extra_float_digits,options
server_tls_sslmode = prefer
so_reuseport = 1
unix_socket_dir = {rundir}
pool_mode = {pool_mode}
max_db_connections = {max_db_connections}
default_pool_size = {default}
min_pool_size = {minimum}
reserve_pool_size = {reserve}
auth_user = {backend.auth_user}
auth_query = {backend.auth_query}
auth_dbname = {AUTH_DATABASE_KEY}
auth_file = {base}/userlist.txt
"""
    return files


def start(stack: Stack, label: str, backend: Backend, port: int, processes: int) -> Pooler:
    """Start the incumbent-configured processes; the returned pooler is stopped with ``stack``."""
    base = stack.factory.workdir()
    make_run_dirs(base, range(processes))
    write_service_file(
        base / "userlist.txt", render_auth_file(backend.auth_user, backend.auth_password)
    )
    files = render(backend, base, port, processes)
    procs = [
        stack.factory.start(text, port, base, name=Path(path).name) for path, text in files.items()
    ]
    # The config object is only for reports (label, port); the files above are what runs.
    config = PgBouncerConfig(
        listen_port=port,
        pool_mode="transaction",
        max_db_connections=40,
        max_prepared_statements=0,
        processes=processes,
        databases=(),
        auth=None,
        listen_addr="127.0.0.1",
    )
    return Pooler(label, base, config, procs, backend)
