"""Throwaway PgBouncer processes: configuration text in, a running process on loopback out.

Each process runs as the ``postgres`` user (PgBouncer refuses root), logs to a file in its own
work directory and is stopped by its own PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.servers.system import (
    as_service_user,
    pgbouncer_binary,
    service_ids,
    service_tempdir,
    stop_process,
    write_service_file,
)
from pgbouncer.slots import ini_path, run_dir


def first_slots(files: dict[str, str]) -> dict[str, str]:
    """The ini files of each process's first slot, from ``render_files``.

    What a group of plain processes runs (the twin slots exist for the charm's hand-overs).
    """
    return {
        path: text
        for path, text in files.items()
        if any(path == ini_path(i, str(Path(path).parent)) for i in range(len(files)))
    }


def make_run_dirs(base: Path, indices: range | list[int]) -> None:
    """Create the run (unix socket) directory of each process index under ``base``.

    0700 and owned by ``postgres``, their parent too, as the charm has Pebble make them.
    """
    uid, gid = service_ids()
    for index in indices:
        rundir = Path(run_dir(index, str(base)))
        rundir.mkdir(parents=True, exist_ok=True)
        for path in (rundir.parent, rundir):
            os.chown(path, uid, gid)
        rundir.chmod(0o700)


class PgBouncerStartError(RuntimeError):
    """PgBouncer exited or never said it was up."""


@dataclass
class PgBouncerProcess:
    """A running PgBouncer and the files it was started from."""

    proc: subprocess.Popen
    ini_path: Path
    log_path: Path
    port: int

    @property
    def pid(self) -> int:
        """PID of PgBouncer itself (setpriv execs in place)."""
        return self.proc.pid

    def log(self) -> str:
        """Everything PgBouncer logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def reload(self) -> None:
        """SIGHUP: re-read the configuration, keeping clients connected."""
        self.proc.send_signal(signal.SIGHUP)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT on 1.23+), SIGKILL if it lingers."""
        stop_process(self.proc, signal.SIGQUIT)


@dataclass
class PgBouncerFactory:
    """Starts PgBouncer processes and stops every one of them at ``close()``."""

    processes: list[PgBouncerProcess] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def workdir(self) -> Path:
        """A fresh directory the ``postgres`` user owns, for an ini, auth file and sockets."""
        path = service_tempdir("pgbk8s-pgb-")
        self.dirs.append(path)
        return path

    def write(self, directory: Path, name: str, content: str) -> Path:
        """Write a 0600 file owned by ``postgres`` into ``directory``."""
        path = directory / name
        write_service_file(path, content)
        return path

    def start(
        self,
        ini_text: str,
        port: int,
        workdir: Path | None = None,
        name: str = "pgbouncer.ini",
        timeout: float = 10.0,
        hosts: Path | None = None,
    ) -> PgBouncerProcess:
        """Write ``ini_text`` and start PgBouncer on it; returns once it logged "process up".

        ``hosts``: a file PgBouncer reads as ``/etc/hosts``, bind-mounted in a private mount
        namespace of its own (the machine's file is untouched; the PID stays PgBouncer's).
        """
        directory = workdir or self.workdir()
        ini = self.write(directory, name, ini_text)
        log_path = directory / f"{ini.stem}.stderr"
        argv = as_service_user([pgbouncer_binary(), str(ini)])
        if hosts is not None:
            mount = 'mount --bind "$0" /etc/hosts && exec "$@"'
            namespace = ["unshare", "--mount", "--propagation", "private", "--"]
            argv = [*namespace, "sh", "-c", mount, str(hosts), *argv]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        pgb = PgBouncerProcess(proc=proc, ini_path=ini, log_path=log_path, port=port)
        self.processes.append(pgb)
        deadline = time.monotonic() + timeout
        while "process up" not in pgb.log():
            if not pgb.alive():
                raise PgBouncerStartError(f"PgBouncer exited with {proc.returncode}:\n{pgb.log()}")
            if time.monotonic() > deadline:
                pgb.stop()
                raise PgBouncerStartError(f"PgBouncer not up after {timeout}s:\n{pgb.log()}")
            time.sleep(0.02)
        return pgb

    def close(self) -> None:
        """Stop every process this factory started and remove their directories."""
        for pgb in self.processes:
            pgb.stop()
        self.processes.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()
