"""The servers a benchmark runs against: a PostgreSQL backend and PgBouncer processes.

The PgBouncer configuration is the charm's own: :func:`pgbouncer.config.render_files` renders
every ``pgbouncer_<i>.ini`` into a temporary base directory laid out like the container's
``/var/lib/pgbouncer``, and :func:`postgres.auth.install_auth` installs the real auth lookup in the
backend, so clients log in through ``auth_query`` exactly as they do under the charm. Only
``listen_addr`` differs (loopback instead of ``*``).

Everything started here is stopped by its own PID in :meth:`Stack.close`, which callers run in a
``finally`` block.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import sql

from bench.pgbench import Target, pgbench_command, pgbench_env
from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess, first_slots, make_run_dirs
from harness.servers.system import (
    write_service_file,
)
from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    render_auth_file,
    render_files,
)
from postgres.auth import auth_username_for, install_auth
from postgres.connection import BackendCredentials
from postgres.passwords import generate_password
from state.tenants import group_role_for

APP_USER = "bench_app"
APP_DB = "bench"
AUTH_DB = "pgbouncer"
"""The database the charm asks the PostgreSQL charm for; the auth lookup lives there."""
RELATION_USER = "relation_7"
"""Plays the relation user the PostgreSQL charm creates for us (a superuser)."""
OWNER_TAG = "bench-model-uuid/pgbouncer-k8s"


@dataclass
class Backend:
    """A PostgreSQL server prepared like one the charm has set up.

    Attributes:
        server: the running cluster.
        app_password: password of :data:`APP_USER`, the role pgbench logs in as.
        relation_password: password of :data:`RELATION_USER`.
        auth: the auth lookup :func:`install_auth` returned, with its plain password.
    """

    server: PostgresServer
    app_password: str = field(repr=False)
    relation_password: str = field(repr=False)
    auth_user: str = ""
    auth_password: str = field(default="", repr=False)
    auth_query: str = ""

    @property
    def postmaster_pid(self) -> int:
        """PID of the postmaster (first line of ``postmaster.pid``)."""
        return int((self.server.datadir / "postmaster.pid").read_text().split()[0])

    def direct(self, dbname: str = APP_DB) -> Target:
        """The pgbench target straight to PostgreSQL as the app user."""
        return Target(
            "direct", self.server.host, self.server.port, dbname, APP_USER, self.app_password
        )

    def credentials(self) -> BackendCredentials:
        """The relation user's credentials, as the charm gets them from the relation."""
        return BackendCredentials(
            host=self.server.host,
            port=self.server.port,
            user=RELATION_USER,
            password=self.relation_password,
            dbname=AUTH_DB,
        )


def _roles_and_databases(server: PostgresServer, app_password: str, relation_password: str):
    for role, password, extra in (
        (RELATION_USER, relation_password, sql.SQL("SUPERUSER")),
        (APP_USER, app_password, sql.SQL("")),
    ):
        server.execute(
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(role), extra, sql.Literal(password)
            )
        )
    for dbname, owner in ((AUTH_DB, RELATION_USER), (APP_DB, APP_USER)):
        server.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )


def pgbench_init(target: Target, scale: int, timeout: float = 300) -> None:
    """``pgbench -i`` the target's database (tables owned by the target's user)."""
    res = subprocess.run(
        pgbench_command(target, ["-i", "-q", "-s", str(scale)]),
        env=pgbench_env(target),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {res.stderr[-1000:]}")


def set_max_connections(backend: Backend, max_connections: int) -> None:
    """Restart ``backend``'s server with another ``max_connections`` (needs a restart)."""
    backend.server.stop()
    backend.server.settings["max_connections"] = str(max_connections)
    backend.server.start()


def start_backend(scale: int, max_connections: int = 50) -> Backend:
    """Start PostgreSQL, create the roles and data, install the charm's auth lookup.

    Args:
        scale: ``pgbench -i`` scale.
        max_connections: the server's ``max_connections``.

    Returns:
        The prepared backend; the caller destroys ``backend.server``.
    """
    server = start_postgres(
        settings={"max_connections": str(max_connections), "shared_buffers": "256MB"},
        prefix="pgbk8s-bench-pg-",
    )
    try:
        backend = Backend(
            server=server,
            app_password=secrets.token_urlsafe(24),
            relation_password=secrets.token_urlsafe(24),
        )
        _roles_and_databases(server, backend.app_password, backend.relation_password)
        pgbench_init(backend.direct(), scale)
        backend.auth_user = auth_username_for(RELATION_USER)
        backend.auth_password = generate_password()
        lookup = install_auth(
            backend.credentials(),
            auth_user=backend.auth_user,
            auth_password=backend.auth_password,
            owner_tag=OWNER_TAG,
        )
        backend.auth_query = lookup.auth_query
        # The lookup answers only for members of the application's client group, as the charm
        # makes each client's login role (docs/tenancy.md): the bench user stands for one.
        server.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(group_role_for(OWNER_TAG)), sql.Identifier(APP_USER)
            )
        )
        server.execute("VACUUM ANALYZE", dbname=APP_DB)
        server.execute("CHECKPOINT")
        return backend
    except BaseException:
        server.destroy()
        raise


def pooler_config(
    backend: Backend,
    port: int,
    processes: int,
    pool_mode: str = "transaction",
    max_db_connections: int = 40,
    extra_databases: tuple[str, ...] = (),
) -> PgBouncerConfig:
    """The configuration the charm renders for this backend (listening on loopback)."""
    host, pg_port = backend.server.host, backend.server.port
    databases = [
        DatabaseTarget(key=AUTH_DATABASE_KEY, host=host, port=pg_port, dbname=AUTH_DB),
        DatabaseTarget(key=APP_DB, host=host, port=pg_port, dbname=APP_DB),
    ]
    databases += [
        DatabaseTarget(key=db, host=host, port=pg_port, dbname=db) for db in extra_databases
    ]
    return PgBouncerConfig(
        listen_port=port,
        pool_mode=pool_mode,
        max_db_connections=max_db_connections,
        max_prepared_statements=100,
        processes=processes,
        databases=tuple(databases),
        auth=AuthSettings(auth_user=backend.auth_user, auth_query=backend.auth_query),
        listen_addr="127.0.0.1",
    )


@dataclass
class Pooler:
    """One unit's PgBouncer processes, started from the charm's rendered files.

    Attributes:
        label: name in reports (``N=1``, ``N=2``).
        base_dir: the temporary stand-in for ``/var/lib/pgbouncer``.
        config: what the files were rendered from.
        processes: the running PgBouncer processes, index order.
        backend: whose app user logs in through it.
    """

    label: str
    base_dir: Path
    config: PgBouncerConfig
    processes: list[PgBouncerProcess]
    backend: Backend

    @property
    def pids(self) -> list[int]:
        """PIDs of the PgBouncer processes."""
        return [p.pid for p in self.processes]

    def target(self, dbname: str = APP_DB) -> Target:
        """The pgbench target through this pooler as the app user."""
        return Target(
            self.label,
            "127.0.0.1",
            self.config.listen_port,
            dbname,
            APP_USER,
            self.backend.app_password,
        )

    def apply(self, config: PgBouncerConfig) -> float:
        """Render ``config``, write the files that changed and SIGHUP every process.

        What the charm's workload does on a reloadable change. Returns the seconds it took.
        """
        start = time.monotonic()
        files = first_slots(render_files(config, str(self.base_dir)))
        for path, text in files.items():
            current = Path(path).read_text() if Path(path).exists() else None
            if current != text:
                write_service_file(Path(path), text)
        for proc in self.processes:
            proc.reload()
        self.config = config
        return time.monotonic() - start


@dataclass
class Stack:
    """Everything one benchmark started; :meth:`close` stops it all."""

    factory: PgBouncerFactory = field(default_factory=PgBouncerFactory)
    backends: list[Backend] = field(default_factory=list)

    def backend(self, scale: int, max_connections: int = 50) -> Backend:
        """Start and register a backend (see :func:`start_backend`)."""
        backend = start_backend(scale, max_connections)
        self.backends.append(backend)
        return backend

    def pooler(self, label: str, config: PgBouncerConfig, backend: Backend) -> Pooler:
        """Render ``config`` into a fresh base dir and start its processes."""
        base = self.factory.workdir()
        make_run_dirs(base, range(config.processes))
        write_service_file(
            base / "userlist.txt", render_auth_file(backend.auth_user, backend.auth_password)
        )
        files = first_slots(render_files(config, str(base)))
        processes = [
            self.factory.start(text, config.listen_port, base, name=Path(path).name)
            for path, text in files.items()
        ]
        return Pooler(label, base, config, processes, backend)

    def stop_pooler(self, pooler: Pooler) -> None:
        """Stop ``pooler``'s processes (their server connections close with them)."""
        for proc in pooler.processes:
            proc.stop()
            if proc in self.factory.processes:
                self.factory.processes.remove(proc)

    def close(self) -> None:
        """Stop every PgBouncer process and PostgreSQL server, remove their files."""
        try:
            self.factory.close()
        finally:
            for backend in self.backends:
                backend.server.destroy()
            self.backends.clear()
