"""A throwaway PostgreSQL 15 cluster on loopback, started as the ``postgres`` OS user.

SCRAM for TCP, trust on its private unix socket, fsync off. Stopped with its own ``pg_ctl``.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from harness.servers.system import (
    PG_BIN,
    as_service_user,
    free_port,
    service_tempdir,
    write_service_file,
)

SUPERUSER = "postgres"


@dataclass
class PostgresServer:
    """A running cluster: where it listens and how to reach it as its superuser."""

    base: Path
    port: int
    password: str
    host: str = "127.0.0.1"
    user: str = SUPERUSER
    settings: dict[str, str] = field(default_factory=dict)
    also_listen: tuple[str, ...] = ()
    """Loopback addresses served besides ``host`` (``::1``: where a resolver may send
    ``localhost``, docs/image.md, "Which address PgBouncer dials")."""

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory of the server's unix socket."""
        return self.base / "sock"

    @property
    def endpoint(self) -> str:
        """``host:port`` as a PostgreSQL charm publishes it."""
        return f"{self.host}:{self.port}"

    def conninfo(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """A libpq conninfo string for TCP with SCRAM."""
        user = user or self.user
        password = self.password if password is None and user == self.user else password
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={dbname}", f"user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        parts.append("connect_timeout=5")
        return " ".join(parts)

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        """An autocommit superuser connection over TCP."""
        return psycopg.connect(self.conninfo(dbname), autocommit=True, **kwargs)

    def execute(
        self, query: str | sql.SQL | sql.Composed, params: tuple = (), dbname: str = "postgres"
    ) -> list[tuple]:
        """Run one statement as superuser; the rows it returned (empty when none)."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run pg_ctl on this cluster as the ``postgres`` user."""
        return subprocess.run(
            as_service_user([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), *args]),
            capture_output=True,
            text=True,
            check=False,
        )

    def start(self) -> None:
        """Start (or restart after stop) on the same port and settings."""
        opts = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            f"-c listen_addresses={','.join((self.host, *self.also_listen))}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
        ] + [f"-c {k}={v}" for k, v in self.settings.items()]
        res = self.pg_ctl(
            "-w", "-t", "30", "-l", str(self.base / "server.log"), "-o", " ".join(opts), "start"
        )
        if res.returncode != 0:
            log = (
                (self.base / "server.log").read_text()
                if (self.base / "server.log").exists()
                else ""
            )
            raise RuntimeError(f"PostgreSQL did not start: {res.stderr}\n{log[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (its own pg_ctl, which signals the postmaster PID it recorded)."""
        if (self.datadir / "postmaster.pid").exists():
            self.pg_ctl("-w", "-t", "30", "-m", mode, "stop")

    def destroy(self) -> None:
        """Stop and remove every file of the cluster."""
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def _free_on_every(addresses: tuple[str, ...]) -> int:
    """A port free on ``127.0.0.1`` that can be bound on each of ``addresses`` too."""
    for address in addresses:
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"{address} is not a loopback address")
    while True:
        port = free_port()
        try:
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port


def start_postgres(
    settings: dict[str, str] | None = None,
    prefix: str = "pgbk8s-pg-",
    also_listen: tuple[str, ...] = (),
) -> PostgresServer:
    """Create and start a fresh cluster on a free loopback port.

    ``also_listen``: loopback addresses it serves on the same port besides ``127.0.0.1``.
    """
    port = _free_on_every(also_listen)
    base = service_tempdir(prefix)
    password = secrets.token_urlsafe(24)
    pwfile = base / "pwfile"
    write_service_file(pwfile, password + "\n")
    (base / "sock").mkdir()
    write_service_file(base / ".keep", "")
    shutil.chown(base / "sock", "postgres", "postgres")
    res = subprocess.run(
        as_service_user(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    pwfile.unlink()
    if res.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {res.stderr}")
    server = PostgresServer(
        base=base,
        port=port,
        password=password,
        settings=dict(settings or {}),
        also_listen=also_listen,
    )
    try:
        server.start()
    except Exception:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server
