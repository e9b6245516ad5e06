"""The process harness on a stand-in charm: Pebble plan in, real PgBouncer out.

The stand-in charm below is not ours: it writes a hand-made ``pgbouncer.ini`` and auth file into
``/var/lib/pgbouncer`` and adds a Pebble layer, so that the harness is proven before
``src/charm.py`` lands. PostgreSQL and PgBouncer are real; Juju and Pebble's API are Scenario.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import ops
import psycopg
import pytest
from ops import testing
from psycopg import sql

from harness.juju import Application
from harness.processes import (
    PebbleCall,
    PebbleProcessRunner,
    PebbleRecorder,
    ProcessError,
)
from harness.servers.pg import PostgresServer
from harness.servers.system import free_port, pgbouncer_program, process_program

pytestmark = pytest.mark.needs_root

DB = "standin_app"
LOCATION = "/var/lib/pgbouncer"


def _meta(listen_port: int) -> dict:
    return {
        "name": "standin",
        "containers": {"pgbouncer": {}},
        "config": {
            "options": {
                "listen_port": {"type": "int", "default": listen_port},
                "pool_mode": {"type": "string", "default": "session"},
                # "signal", "restart" or "none": how the stand-in applies a config change.
                "apply": {"type": "string", "default": "signal"},
                "file_owner": {"type": "string", "default": "postgres"},
            }
        },
    }


def make_standin(server: PostgresServer) -> type[ops.CharmBase]:
    """A charm that runs one PgBouncer in front of ``server`` (its superuser, plain auth file)."""

    class StandIn(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            framework.observe(self.on.pgbouncer_pebble_ready, self._on_pebble_ready)
            framework.observe(self.on.config_changed, self._on_config_changed)

        def _ini(self) -> str:
            return textwrap.dedent(f"""\
                [databases]
                {DB} = host={server.host} port={server.port} dbname={DB}
                [pgbouncer]
                listen_addr = 127.0.0.1
                listen_port = {self.config["listen_port"]}
                unix_socket_dir = {LOCATION}/run/0
                pidfile = {LOCATION}/run/0/pgbouncer.pid
                auth_type = scram-sha-256
                auth_file = {LOCATION}/userlist.txt
                admin_users = {server.user}
                pool_mode = {self.config["pool_mode"]}
                """)

        def _write(self, container: ops.Container) -> None:
            owner = str(self.config["file_owner"]) or None
            container.make_dir(
                f"{LOCATION}/run/0", make_parents=True, permissions=0o700, user=owner, group=owner
            )
            container.push(
                f"{LOCATION}/pgbouncer_0.ini",
                self._ini(),
                permissions=0o600,
                user=owner,
                group=owner,
            )
            container.push(
                f"{LOCATION}/userlist.txt",
                f'"{server.user}" "{server.password}"\n',
                permissions=0o600,
                user=owner,
                group=owner,
            )

        def _on_pebble_ready(self, event: ops.PebbleReadyEvent) -> None:
            self._write(event.workload)
            layer: ops.pebble.LayerDict = {
                "services": {
                    "pgbouncer_0": {
                        "override": "replace",
                        "command": f"pgbouncer {LOCATION}/pgbouncer_0.ini",
                        "user": "postgres",
                        "startup": "enabled",
                        "on-failure": "restart",
                    }
                }
            }
            event.workload.add_layer("pgbouncer", layer, combine=True)
            event.workload.replan()
            self.unit.status = ops.ActiveStatus()

        def _on_config_changed(self, _: ops.ConfigChangedEvent) -> None:
            container = self.unit.get_container("pgbouncer")
            if not container.can_connect() or "pgbouncer_0" not in container.get_plan().services:
                return
            self._write(container)
            how = self.config["apply"]
            if how == "signal":
                container.send_signal("SIGHUP", "pgbouncer_0")
            elif how == "restart":
                container.restart("pgbouncer_0")

    return StandIn


@pytest.fixture
def backend(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The session server with a fresh database for the stand-in to pool."""
    postgres.execute(
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)).as_string()
    )
    postgres.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)).as_string())
    try:
        yield postgres
    finally:
        postgres.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            .format(sql.Identifier(DB))
            .as_string()
        )


@pytest.fixture
def app(backend: PostgresServer) -> Iterator[Application]:
    """A one-unit stand-in application whose PgBouncer runs for real; always cleaned up."""
    port = free_port()
    application = Application(
        make_standin(backend),
        name="standin",
        num_units=1,
        meta=_meta(port),
        config={"listen_port": port},
        peer_endpoint=None,
    )
    try:
        yield application
    finally:
        application.close()


def pooled(server: PostgresServer, port: int, dbname: str = DB) -> psycopg.Connection:
    """A client connection through PgBouncer on ``port``."""
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname=dbname,
        user=server.user,
        password=server.password,
        connect_timeout=5,
        autocommit=True,
        prepare_threshold=None,
    )


def show_config(server: PostgresServer, port: int, key: str) -> str:
    """A setting as the running PgBouncer holds it (admin console)."""
    with pooled(server, port, "pgbouncer") as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
    return next(str(r[1]) for r in rows if r[0] == key)


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_process_program_names_the_file_run_also_behind_a_loader():
    """What the PID check below compares.

    ``/proc/<pid>/exe``, or the program a dynamic loader run as a command mapped (the version
    matrix's wrapper), never just its arguments.
    """
    assert process_program(os.getpid()) == Path(sys.executable).resolve()
    assert process_program(os.getpid()) != Path(pgbouncer_program())
    loader = Path("/lib64/ld-linux-x86-64.so.2")
    sleep = Path(subprocess.check_output(["sh", "-c", "command -v sleep"], text=True).strip())
    proc = subprocess.Popen([str(loader), "--library-path", "/lib", str(sleep), "30"])
    try:
        deadline = time.monotonic() + 10
        while str(sleep.resolve()) not in Path(f"/proc/{proc.pid}/maps").read_text():
            assert time.monotonic() < deadline, "the loader never mapped its program"
            time.sleep(0.02)
        assert Path(os.readlink(f"/proc/{proc.pid}/exe")).name.startswith("ld-linux")
        assert process_program(proc.pid) == sleep.resolve()
    finally:
        proc.kill()
        proc.wait()


def test_process_program_wants_the_named_program_mapped(tmp_path: Path):
    """A loader whose command line names a program it has not mapped is not that program."""
    program = tmp_path / "pgbouncer"
    program.write_bytes(b"\x7fELF")
    other = tmp_path / "other"
    other.write_bytes(b"\x7fELF")
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "exe").symlink_to("/lib64/ld-linux-x86-64.so.2")
    args = ["/lib64/ld-linux-x86-64.so.2", "--library-path", "/lib", str(program), "x.ini"]
    (proc / "7" / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")

    def maps(path: Path, perms: str = "r-xp") -> None:
        st = path.stat()
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
        line = f"7f00-7f10 {perms} 00000000 {dev} {st.st_ino}    {path}"
        (proc / "7" / "maps").write_text(line + "\n")

    maps(program)
    assert process_program(7, proc) == program
    for mapped, perms in ((other, "r-xp"), (program, "r--p")):
        maps(mapped, perms)
        with pytest.raises(LookupError):
            process_program(7, proc)
    maps(program)
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"\x7fELF")
    replacement.replace(program)  # the same path, another file (another inode)
    with pytest.raises(LookupError):
        process_program(7, proc)


def test_plan_runs_as_real_pgbouncer_reload_restart_and_stop(
    app: Application, backend: PostgresServer
):
    unit = app.units[0]
    port = app.config["listen_port"]
    assert not Path(LOCATION).exists(), "the host must not have the container path"

    out = unit.pebble_ready()

    assert unit.last_calls == [PebbleCall("pgbouncer", "replan")]
    assert out.get_container("pgbouncer").plan.services["pgbouncer_0"].user == "postgres"
    assert unit.last_report is not None and unit.last_report.started == ["pgbouncer_0"]
    runner = unit.runner
    assert runner is not None
    pgb = runner.processes["pgbouncer_0"]
    # The PID we hold is PgBouncer itself, our build, running as postgres (through sid's
    # loader for the version matrix's Debian package: process_program sees through it).
    assert process_program(pgb.pid) == Path(pgbouncer_program())
    assert proc_status(pgb.pid)["Uid"].split()[0] == str(pwd.getpwnam("postgres").pw_uid)
    assert (unit.mount_dir / "pgbouncer_0.ini").owner() == "postgres"
    assert (unit.mount_dir / "run" / "0").owner() == "postgres"
    # PgBouncer's unix socket landed in the host directory behind /var/lib/pgbouncer.
    assert (unit.mount_dir / "run" / "0" / f".s.PGSQL.{port}").exists()
    assert not Path(LOCATION).exists()

    client = pooled(backend, port)
    try:
        row = client.execute(
            "SELECT current_user, current_database(), inet_server_port()"
        ).fetchone()
        assert row == (backend.user, DB, backend.port)
        assert show_config(backend, port, "pool_mode") == "session"

        # A config change applied with SIGHUP: same process, client still connected.
        app.set_config(pool_mode="transaction")
        unit.config_changed()
        assert unit.last_calls == [PebbleCall("pgbouncer", "signal", ("pgbouncer_0",), "SIGHUP")]
        assert runner.processes["pgbouncer_0"].pid == pgb.pid
        runner.wait_for_log("pgbouncer_0", "got SIGHUP, re-reading config")
        assert show_config(backend, port, "pool_mode") == "transaction"
        assert client.execute("SELECT 1").fetchone() == (1,)

        # A file rewritten without telling Pebble is not applied: nothing is inferred.
        app.set_config(pool_mode="statement", apply="none")
        unit.config_changed()
        assert unit.last_calls == []
        assert "pool_mode = statement" in (unit.mount_dir / "pgbouncer_0.ini").read_text()
        assert show_config(backend, port, "pool_mode") == "transaction"
    finally:
        client.close()

    # A port change applied with a Pebble restart: a new process on the new port.
    new_port = free_port()
    app.set_config(listen_port=new_port, apply="restart")
    unit.config_changed()
    assert unit.last_calls == [PebbleCall("pgbouncer", "restart", ("pgbouncer_0",))]
    assert unit.last_report is not None and unit.last_report.restarted == ["pgbouncer_0"]
    assert runner.processes["pgbouncer_0"].pid != pgb.pid
    assert pgb.proc.returncode is not None, "the old process is reaped"
    with pooled(backend, new_port) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (backend.port,)
    with pytest.raises(psycopg.OperationalError):
        pooled(backend, port).close()

    # Stop leaves no process, no zombie, no mount.
    pids = [p.pid for p in runner.processes.values()]
    app.close()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    assert not Path(LOCATION).exists()
    assert str(unit.mount_dir) not in Path("/proc/self/mountinfo").read_text()


def test_files_pushed_without_a_user_are_root_owned_and_pgbouncer_cannot_read_them(
    backend: PostgresServer,
):
    port = free_port()
    with Application(
        make_standin(backend),
        name="standin",
        num_units=1,
        meta=_meta(port),
        config={"file_owner": ""},
        peer_endpoint=None,
    ) as app:
        unit = app.units[0]
        with pytest.raises(ProcessError, match="Permission denied"):
            unit.pebble_ready()
        assert (unit.mount_dir / "pgbouncer_0.ini").owner() == "root"


def test_scenario_output_state_cannot_tell_a_signal_from_nothing(
    backend: PostgresServer, tmp_path: Path
):
    ctx = testing.Context(make_standin(backend), meta=_meta(free_port()))
    container = testing.Container(
        "pgbouncer",
        can_connect=True,
        mounts={"data": testing.Mount(location=LOCATION, source=tmp_path)},
    )
    ready = ctx.run(ctx.on.pebble_ready(container), testing.State(containers={container}))
    quiet_in = dataclasses.replace(ready, config={**ready.config, "apply": "none"})

    with PebbleRecorder() as recorder:
        signalled = ctx.run(ctx.on.config_changed(), ready)
    with PebbleRecorder() as silent:
        quiet = ctx.run(ctx.on.config_changed(), quiet_in)

    out_s, out_q = signalled.get_container("pgbouncer"), quiet.get_container("pgbouncer")
    assert out_s.plan.to_dict() == out_q.plan.to_dict()
    assert out_s.service_statuses == out_q.service_statuses
    assert recorder.calls == [PebbleCall("pgbouncer", "signal", ("pgbouncer_0",), "SIGHUP")]
    assert silent.calls == []


def test_runner_signal_to_a_stopped_service_fails_like_pebble(tmp_path: Path):
    with (
        PebbleProcessRunner({LOCATION: tmp_path}) as runner,
        pytest.raises(ProcessError, match="not running"),
    ):
        runner.signal(["pgbouncer_0"], signal.SIGHUP)


def test_a_service_dies_with_the_process_that_started_it(tmp_path: Path):
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from harness.processes import PebbleProcessRunner, ServiceSpec
        runner = PebbleProcessRunner(
            {{"{LOCATION}": Path("{tmp_path}")}}, workdir=Path("{tmp_path}")
        )
        svc = runner.start("sleeper", ServiceSpec(command="sleep 300", user="postgres"))
        print(svc.pid, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        deadline = time.monotonic() + 5
        while proc_status(pid)["Name"] != "sleep":  # still in unshare/sh/setpriv
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert proc_status(pid)["Uid"].split()[0] == str(pwd.getpwnam("postgres").pw_uid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and proc_status(pid).get("State", "")[:1] != "Z":
        assert time.monotonic() < deadline, "the orphaned service is still running"
        time.sleep(0.05)


def test_replan_restarts_a_stopped_service_whose_definition_changed_like_pebble(tmp_path: Path):
    """Pebble's replan acts on every service it has run, a stopped and disabled one included.

    One stopped, then redefined as ``startup: disabled``, is started again. Hence the charm
    stops and starts by name and never replans (``pgbouncer.workload``).
    """
    first = {"command": "sleep 300", "user": "postgres", "startup": "enabled"}
    disabled = {**first, "startup": "disabled", "summary": "no longer wanted"}
    with PebbleProcessRunner({LOCATION: tmp_path}) as runner:
        runner.apply([PebbleCall("pgbouncer", "replan")], {"old": first})
        runner.apply([PebbleCall("pgbouncer", "stop", ("old",))], {"old": first})
        assert runner.running() == set()
        runner.apply([], {"old": disabled})  # a new layer alone starts nothing
        assert runner.running() == set()
        report = runner.apply([PebbleCall("pgbouncer", "replan")], {"old": disabled})
        assert report.started == ["old"] and runner.running() == {"old"}
