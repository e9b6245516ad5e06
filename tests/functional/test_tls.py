"""TLS on both hops with a real PostgreSQL 15 (``ssl = on``) and a real PgBouncer 1.24.

Every file PgBouncer reads is what the charm renders (``render_ini``, ``render_tls_files``) from
material checked by ``state.tls``; the certificates are made here with ``cryptography``.
Clients are libpq (psycopg), as applications would be.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess, make_run_dirs
from harness.servers.system import free_port, write_service_file
from harness.servers.tls import CertAuthority, make_ca, peer_certificate_serial, write_server_files
from pgbouncer.config import (
    ClientTLS,
    DatabaseTarget,
    PgBouncerConfig,
    ServerTLS,
    render_ini,
    render_tls_files,
)
from postgres.connection import BackendCredentials, BackendUnreachable
from postgres.connection import connect as backend_connect
from postgres.tls import write_backend_ca
from state.tls import BackendTLS, ClientTLSMaterial, backend_tls_problem, libpq_tls_params

pytestmark = pytest.mark.needs_root

APP_USER, APP_PASSWORD = "tls_app", "tls-app-password"


@dataclass
class TLSPostgres:
    """A PostgreSQL serving TLS with a certificate from ``ca``."""

    server: PostgresServer
    ca: CertAuthority


def serving_tls(
    common_name: str, dns: tuple[str, ...], ips: tuple[str, ...], also_listen: tuple[str, ...] = ()
) -> Iterator[TLSPostgres]:
    """A PostgreSQL serving TLS with a certificate for these names, from a CA of its own."""
    ca = make_ca("postgres CA")
    cert, key, _ = write_server_files(ca.leaf(common_name, dns=dns, ips=ips))
    server = start_postgres(
        {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)},
        prefix="pgbk8s-tls-",
        also_listen=also_listen,
    )
    server.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'")
    try:
        yield TLSPostgres(server, ca)
    finally:
        server.destroy()
        shutil.rmtree(cert.parent, ignore_errors=True)  # its own directory, CA file included


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TLSPostgres]:
    """The PostgreSQL PgBouncer reaches as ``localhost``, on both loopback addresses.

    verify-full checks that name. PgBouncer dials one address of one family, IPv6 when the
    resolver has one: c-ares after 1.34.4 adds ``::1`` for ``localhost`` when /etc/hosts has
    none (docs/image.md, "Which address PgBouncer dials").
    """
    yield from serving_tls("postgres", ("localhost",), ("127.0.0.1",), also_listen=("::1",))


@dataclass
class Pooler:
    """A PgBouncer started from the charm's rendering, and how to change its TLS files."""

    process: PgBouncerProcess
    workdir: Path
    cfg: PgBouncerConfig

    @property
    def port(self) -> int:
        return self.cfg.listen_port

    def ca_file(self) -> str:
        """The CA file clients verify with: the one the charm would publish as ``tls-ca``."""
        return str(self.workdir / "client-tls-ca.crt")

    def apply(
        self,
        client: ClientTLSMaterial | None,
        backend: BackendTLS | None,
        cfg: PgBouncerConfig | None = None,
    ) -> None:
        """Write the files as the workload does (0600, postgres) and reload."""
        self.cfg = cfg or self.cfg
        write_tls_files(self.workdir, client, backend)
        write_service_file(self.process.ini_path, render_ini(self.cfg, 0, str(self.workdir)))
        seen = self.process.log().count("got SIGHUP")
        self.process.reload()
        wait_for_log(self.process, "got SIGHUP", count=seen + 1)


def wait_for_log(process: PgBouncerProcess, text: str, count: int = 1, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while process.log().count(text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not logged {count} times")
        time.sleep(0.02)
    time.sleep(0.05)  # the reload is logged before it is applied


def write_tls_files(
    workdir: Path, client: ClientTLSMaterial | None, backend: BackendTLS | None
) -> None:
    for path, content in render_tls_files(client, backend, str(workdir)).items():
        if content is None:
            Path(path).unlink(missing_ok=True)
        else:
            write_service_file(Path(path), content)


def client_material(ca: CertAuthority) -> ClientTLSMaterial:
    leaf = ca.leaf("pgbouncer", dns=("localhost",), ips=("127.0.0.1",))
    return ClientTLSMaterial.from_pem(leaf.cert_pem, leaf.key_pem, ca.pem)


def start_pooler(
    factory: PgBouncerFactory,
    pg: TLSPostgres,
    client: ClientTLSMaterial | None,
    backend: BackendTLS | None,
    sslmode: str = "require",
    host: str = "localhost",
) -> Pooler:
    """PgBouncer in front of ``pg``: ``auth_user`` is the superuser, so ``auth_query`` runs."""
    cfg = PgBouncerConfig(
        listen_port=free_port(),
        pool_mode="session",
        max_db_connections=20,
        max_prepared_statements=0,
        processes=1,
        databases=(DatabaseTarget("postgres", host, pg.server.port, "postgres"),),
        listen_addr="127.0.0.1",
        client_tls=ClientTLS(sslmode) if client else None,
        server_tls=ServerTLS("verify-full") if backend else None,
    )
    workdir = factory.workdir()
    make_run_dirs(workdir, [0])
    write_tls_files(workdir, client, backend)
    # The superuser as auth_user: its plain password in the auth file, app users looked up
    # with PgBouncer's default auth_query (pg_shadow). The charm's locked-down auth role is
    # tested elsewhere; here the point is that the auth connection is TLS too.
    ini = render_ini(cfg, 0, str(workdir)).replace(
        "auth_file =", f"auth_user = {pg.server.user}\nauth_file ="
    )
    factory.write(workdir, "userlist.txt", f'"{pg.server.user}" "{pg.server.password}"\n')
    process = factory.start(ini, cfg.listen_port, workdir, name="pgbouncer_0.ini")
    return Pooler(process=process, workdir=workdir, cfg=cfg)


def connect(pooler: Pooler, **params: str) -> psycopg.Connection:
    args = {
        "host": "localhost",
        "port": str(pooler.port),
        "dbname": "postgres",
        "user": APP_USER,
        "password": APP_PASSWORD,
        "connect_timeout": "4",
        **params,
    }
    return psycopg.connect(" ".join(f"{k}={v}" for k, v in args.items()), autocommit=True)


def server_side_ssl(pg: TLSPostgres) -> dict[str, list[bool]]:
    """``pg_stat_ssl.ssl`` of every TCP backend but ours, by user (ours is over the socket)."""
    with psycopg.connect(
        f"host={pg.server.socket_dir} port={pg.server.port} dbname=postgres user=postgres",
        autocommit=True,
    ) as conn:
        rows = conn.execute(
            "SELECT a.usename, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.client_addr IS NOT NULL AND a.backend_type = 'client backend'"
        ).fetchall()
    found: dict[str, list[bool]] = {}
    for user, ssl in rows:
        found.setdefault(user, []).append(ssl)
    return found


@pytest.fixture
def factory(pgbouncer_factory: PgBouncerFactory) -> PgBouncerFactory:
    """The project's PgBouncer factory (tests/conftest.py), under this module's short name."""
    return pgbouncer_factory


# -- client side ---------------------------------------------------------------------------
def test_verify_full_client_through_the_pooler_and_tls_to_postgres(tls_postgres, factory):
    client = client_material(make_ca("pgbouncer CA"))
    backend = BackendTLS.from_databag({"tls": "True", "tls-ca": tls_postgres.ca.pem})
    pooler = start_pooler(factory, tls_postgres, client, backend)
    with connect(pooler, sslmode="verify-full", sslrootcert=pooler.ca_file()) as conn:
        assert conn.info.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (APP_USER,)
        # The server connection of this session and the auth_query connection are both TLS.
        seen = server_side_ssl(tls_postgres)
        assert seen.get(APP_USER) == [True], seen
        assert seen.get("postgres") == [True], seen
    assert "SSL established" in pooler.process.log()


@pytest.mark.parametrize(
    ("ca_name", "message"),
    [
        ("another CA", "certificate verify failed"),
        # The same subject as the real CA, another key: found as the issuer, then refused.
        ("pgbouncer CA", "signature failure"),
    ],
)
def test_a_client_with_another_ca_is_refused(tls_postgres, factory, ca_name, message):
    pooler = start_pooler(factory, tls_postgres, client_material(make_ca("pgbouncer CA")), None)
    wrong = factory.write(factory.workdir(), "wrong-ca.crt", make_ca(ca_name).pem)
    with pytest.raises(psycopg.OperationalError, match=message) as err:
        connect(pooler, sslmode="verify-full", sslrootcert=str(wrong))
    assert backend_tls_problem(str(err.value)) == (
        "the backend's certificate is not signed by its tls-ca"
    )


def test_a_client_asking_another_host_name_is_refused(tls_postgres, factory):
    pooler = start_pooler(factory, tls_postgres, client_material(make_ca("pgbouncer CA")), None)
    # 127.0.0.2 reaches nothing (listen_addr is 127.0.0.1): use hostaddr to dial the right
    # address while asking for a name the certificate does not carry.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(
            pooler,
            host="db.example.invalid",
            hostaddr="127.0.0.1",
            sslmode="verify-full",
            sslrootcert=pooler.ca_file(),
        )


def test_require_refuses_plain_clients_and_prefer_serves_them(tls_postgres, factory):
    client = client_material(make_ca("pgbouncer CA"))
    pooler = start_pooler(factory, tls_postgres, client, None, sslmode="require")
    with pytest.raises(psycopg.OperationalError):
        connect(pooler, sslmode="disable")
    # Nothing was learnt by the refused client: not even a login attempt was logged.
    assert "tls=no" not in pooler.process.log()
    prefer = replace(pooler.cfg, client_tls=ClientTLS("prefer"))
    pooler.apply(client, None, prefer)
    with connect(pooler, sslmode="disable") as conn:
        assert not conn.info.pgconn.ssl_in_use
    with connect(pooler, sslmode="verify-full", sslrootcert=pooler.ca_file()) as conn:
        assert conn.info.pgconn.ssl_in_use


def test_removing_client_tls_goes_back_to_plain_by_reload(tls_postgres, factory):
    client = client_material(make_ca("pgbouncer CA"))
    pooler = start_pooler(factory, tls_postgres, client, None, sslmode="require")
    held = connect(pooler, sslmode="verify-full", sslrootcert=pooler.ca_file())
    pid = pooler.process.pid
    pooler.apply(None, None, replace(pooler.cfg, client_tls=None))
    with connect(pooler, sslmode="disable") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        connect(pooler, sslmode="require")
    assert held.execute("SELECT 2").fetchone() == (2,)  # the TLS session was kept
    assert pooler.process.pid == pid and pooler.process.alive()
    held.close()


# -- server side -----------------------------------------------------------------------------
def test_a_server_certificate_from_another_ca_makes_the_backend_unreachable(tls_postgres, factory):
    other = BackendTLS.from_databag({"tls": "True", "tls-ca": make_ca("another CA").pem})
    assert other is not None
    pooler = start_pooler(factory, tls_postgres, None, other)
    with pytest.raises(psycopg.OperationalError):
        connect(pooler, sslmode="disable", connect_timeout="3")
    log = pooler.process.log()
    assert "certificate verify failed" in log or "signature failure" in log, log[-2000:]
    assert APP_USER not in server_side_ssl(tls_postgres)
    # The charm's own connection, with the same CA, fails the same way; the status names it.
    ca_file = factory.write(factory.workdir(), "backend-ca.crt", other.ca_pem)
    params = libpq_tls_params(str(ca_file))
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(make_conninfo(tls_postgres.server.conninfo(), **params))
    assert backend_tls_problem(str(err.value)) == (
        "the backend's certificate is not signed by its tls-ca"
    )


@pytest.fixture(scope="module")
def postgres_named_otherwise() -> Iterator[TLSPostgres]:
    """A PostgreSQL whose certificate, from a good CA, names only ``db.example.internal``."""
    yield from serving_tls("db", ("db.example.internal",), ())


def test_verify_full_refuses_a_server_certificate_for_another_name(
    postgres_named_otherwise, factory
):
    # The right CA, but the certificate does not name the address PgBouncer dials: with a CA
    # shared by a whole model, verify-ca would let any certificate it signed pass for the
    # database. verify-ca does connect here, which is the hole verify-full closes.
    pg = postgres_named_otherwise
    backend = BackendTLS.from_databag({"tls": "True", "tls-ca": pg.ca.pem})
    pooler = start_pooler(factory, pg, None, backend, host="127.0.0.1")
    with pytest.raises(psycopg.OperationalError):
        connect(pooler, sslmode="disable", connect_timeout="3")
    assert APP_USER not in server_side_ssl(pg)
    # libpq says which, and the status names it.
    ca_file = factory.write(factory.workdir(), "backend-ca.crt", pg.ca.pem)
    params = libpq_tls_params(str(ca_file))
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(make_conninfo(pg.server.conninfo(), **params))
    assert backend_tls_problem(str(err.value)) == (
        "the backend's certificate does not name the host connected to"
    )
    # Under the name the certificate carries, the charm's own connection is verified.
    conninfo = pg.server.conninfo().replace("host=127.0.0.1", "host=db.example.internal")
    with psycopg.connect(make_conninfo(f"{conninfo} hostaddr=127.0.0.1", **params)) as conn:
        assert conn.info.pgconn.ssl_in_use
    # What verify-ca would have allowed:
    with psycopg.connect(pg.server.conninfo(), sslmode="verify-ca", sslrootcert=str(ca_file)):
        pass


# -- rotation --------------------------------------------------------------------------------
ROTATIONS = 3
LOAD_SECONDS_PER_ROTATION = 1.0


def test_rotation_under_load_keeps_every_session_and_serves_the_new_certificate(
    tls_postgres, factory
):
    """Renew the client-facing certificate 3 times while clients run queries.

    Load: 4 persistent verify-full sessions looping ``SELECT 1`` and 1 client connecting anew
    for every query. Pass: 0 failed queries, every persistent session kept (same server-side
    PID before and after), and after each renewal a new connection is served the new serial.
    """
    ca = make_ca("pgbouncer CA")
    backend = BackendTLS.from_databag({"tls": "True", "tls-ca": tls_postgres.ca.pem})
    first = client_material(ca)
    pooler = start_pooler(factory, tls_postgres, first, backend)
    assert peer_certificate_serial("127.0.0.1", pooler.port) == first.serial
    verify = {"sslmode": "verify-full", "sslrootcert": pooler.ca_file()}

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "connects": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def record(ok: bool, error: str = "") -> None:
        with lock:
            counts["ok" if ok else "failed"] += 1
            if error and len(errors) < 5:
                errors.append(error)

    sessions = [connect(pooler, **verify) for _ in range(4)]
    pids_before = [s.execute("SELECT pg_backend_pid()").fetchone() for s in sessions]

    def persistent(conn: psycopg.Connection) -> None:
        while not stop.is_set():
            try:
                conn.execute("SELECT 1").fetchone()
                record(True)
            except psycopg.Error as exc:
                record(False, str(exc))

    def reconnecting() -> None:
        while not stop.is_set():
            try:
                with connect(pooler, **verify) as conn:
                    conn.execute("SELECT 1").fetchone()
                with lock:
                    counts["connects"] += 1
                record(True)
            except psycopg.Error as exc:
                record(False, str(exc))

    threads = [threading.Thread(target=persistent, args=(s,)) for s in sessions]
    threads.append(threading.Thread(target=reconnecting))
    for t in threads:
        t.start()
    serials = [first.serial]
    try:
        for _ in range(ROTATIONS):
            time.sleep(LOAD_SECONDS_PER_ROTATION / 2)
            renewed = client_material(ca)
            pooler.apply(renewed, backend)
            serials.append(renewed.serial)
            assert peer_certificate_serial("127.0.0.1", pooler.port) == renewed.serial
            time.sleep(LOAD_SECONDS_PER_ROTATION / 2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    pids_after = [s.execute("SELECT pg_backend_pid()").fetchone() for s in sessions]
    for s in sessions:
        s.close()
    print(
        f"\nrotation under load: {ROTATIONS} renewals, {counts['ok']} queries ok, "
        f"{counts['failed']} failed, {counts['connects']} new TLS connections, "
        f"{len(sessions)}/{len(sessions)} sessions kept"
    )
    assert counts["failed"] == 0, errors
    assert counts["ok"] > 100 and counts["connects"] > 10, counts
    assert pids_after == pids_before  # the same server connections: nobody was dropped
    assert len(set(serials)) == ROTATIONS + 1
    assert pooler.process.alive()


# -- the charm's own connections --------------------------------------------------------------
def test_the_charms_own_connection_verifies_the_backend(tls_postgres, tmp_path):
    backend = BackendTLS.from_databag({"tls": "True", "tls-ca": tls_postgres.ca.pem})
    path = write_backend_ca(backend, tmp_path / "state")
    assert path is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    mtime = os.stat(path).st_mtime_ns
    assert write_backend_ca(backend, tmp_path / "state") == path
    assert os.stat(path).st_mtime_ns == mtime  # unchanged content: not rewritten
    server = tls_postgres.server
    creds = BackendCredentials(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
        sslrootcert=path,
    )
    with backend_connect(creds) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    other = BackendTLS.from_databag({"tls": "True", "tls-ca": make_ca("another CA").pem})
    wrong = write_backend_ca(other, tmp_path / "other")
    with (
        pytest.raises(BackendUnreachable, match="not signed by its tls-ca") as err,
        backend_connect(replace(creds, sslrootcert=wrong)),
    ):
        pass
    assert server.password not in str(err.value)
    # Without TLS announced, the file goes and the connection is libpq's default again.
    assert write_backend_ca(None, tmp_path / "state") is None
    assert not os.path.exists(path)


# -- every connection the charm makes verifies what PgBouncer verifies (issue 22, defect 4) ----
CHECK_OWNER = "0c0ffee0-0000-4000-8000-000000000022/pgbouncer-k8s"


def _install_plumbing(server: PostgresServer, creds: BackendCredentials) -> tuple[str, str]:
    from postgres.auth import install_auth

    auth_user, auth_password = "pgbouncer_auth_tlscheck", "tls-check-auth-password-0123456789"
    install_auth(creds, auth_user=auth_user, auth_password=auth_password, owner_tag=CHECK_OWNER)
    return auth_user, auth_password


def _remove_plumbing(creds: BackendCredentials, auth_user: str) -> None:
    from postgres.auth import remove_auth

    remove_auth(creds, auth_user=auth_user, owner_tag=CHECK_OWNER)


def _creds(server: PostgresServer, sslrootcert: str | None) -> BackendCredentials:
    return BackendCredentials(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
        sslrootcert=sslrootcert,
    )


def test_the_auth_check_refuses_a_server_from_a_rogue_ca(tls_postgres, tmp_path):
    # check_auth logs in as the auth role: it must keep the backend's CA, as PgBouncer does.
    from postgres.auth import check_auth

    server = tls_postgres.server
    good = write_backend_ca(
        BackendTLS.from_databag({"tls": "True", "tls-ca": tls_postgres.ca.pem}), tmp_path / "ok"
    )
    rogue = write_backend_ca(
        BackendTLS.from_databag({"tls": "True", "tls-ca": make_ca("rogue CA").pem}),
        tmp_path / "rogue",
    )
    creds = _creds(server, good)
    auth_user, auth_password = _install_plumbing(server, creds)
    try:
        assert check_auth(
            creds, auth_user=auth_user, auth_password=auth_password, owner_tag=CHECK_OWNER
        ) is None  # fmt: skip
        problem = check_auth(
            replace(creds, sslrootcert=rogue),
            auth_user=auth_user,
            auth_password=auth_password,
            owner_tag=CHECK_OWNER,
        )
        assert problem is not None and "not signed by its tls-ca" in problem, problem
        assert auth_password not in problem
    finally:
        _remove_plumbing(creds, auth_user)


def test_the_auth_check_refuses_a_certificate_for_another_host(postgres_named_otherwise, tmp_path):
    from postgres.auth import check_auth

    pg = postgres_named_otherwise
    ca = write_backend_ca(BackendTLS.from_databag({"tls": "True", "tls-ca": pg.ca.pem}), tmp_path)
    plain = _creds(pg.server, None)  # only to set the plumbing up on this server
    auth_user, auth_password = _install_plumbing(pg.server, plain)
    try:
        problem = check_auth(
            _creds(pg.server, ca),
            auth_user=auth_user,
            auth_password=auth_password,
            owner_tag=CHECK_OWNER,
        )
        assert problem is not None and "does not name the host" in problem, problem
    finally:
        _remove_plumbing(plain, auth_user)


def test_no_backend_credentials_are_built_field_by_field_outside_one_place():
    # The guard against a defect-4 regression elsewhere: credentials are made once
    # (reconcile.credentials) and derived with dataclasses.replace (with_dbname, as_user).
    import ast

    src = Path(__file__).resolve().parents[2] / "src"
    makers = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "BackendCredentials"
            ):
                makers.append(f"{path.relative_to(src)}:{node.lineno}")
    assert [m.split(":")[0] for m in makers] == ["reconcile.py"], makers
