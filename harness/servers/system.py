"""Where the real binaries are, free ports, and running things as the ``postgres`` OS user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVICE_USER = "postgres"


def pgbouncer_binary() -> str:
    """The PgBouncer built by scripts/setup-system.sh, else one on PATH.

    ``PGBOUNCER_BUILD`` names another build under ``.build`` (``pgbouncer-sid``: the version
    matrix, ``make test-pgbouncer-sid``).
    """
    build = os.environ.get("PGBOUNCER_BUILD", "pgbouncer")
    if not build.replace("-", "").isalnum():
        raise RuntimeError("PGBOUNCER_BUILD must be a directory name under .build")
    built = PROJECT_ROOT / ".build" / build / "bin" / "pgbouncer"
    if build != "pgbouncer" and not built.exists():
        raise RuntimeError(f"no .build/{build}: run PGB_SUITE=sid scripts/setup-system.sh")
    if built.exists():
        return str(built.resolve())
    found = shutil.which("pgbouncer")
    if not found:
        raise RuntimeError("no pgbouncer: run `make setup` (scripts/setup-system.sh)")
    return found


def pgbouncer_program() -> str:
    """The PgBouncer executable file the build runs, as ``process_program`` finds it.

    ``pgbouncer_binary()`` itself, except for Debian's binary package that
    scripts/setup-system.sh unpacks into ``<build>/root`` behind a ``#!`` wrapper (the version
    matrix): then the packaged ``usr/sbin/pgbouncer``, which the wrapper has sid's loader run.
    """
    binary = Path(pgbouncer_binary())
    packaged = binary.parent.parent / "root" / "usr" / "sbin" / "pgbouncer"
    with binary.open("rb") as head:
        script = head.read(2) == b"#!"
    return str(packaged.resolve()) if script and packaged.is_file() else str(binary.resolve())


LOADER_OPTIONS_WITH_VALUE = frozenset({"--library-path", "--preload", "--audit", "--argv0"})
"""Options of glibc's dynamic loader run as a command that take the next argument."""


def process_program(pid: int, proc: Path = Path("/proc")) -> Path:
    """The executable file process ``pid`` runs.

    ``/proc/<pid>/exe``, unless that is glibc's dynamic loader run as a command
    (``ld-linux-x86-64.so.2 [options] PROGRAM [args]``, how the version matrix runs Debian's
    sid package): then PROGRAM, which must be mapped executable in the process (the same file,
    by device and inode), so an argument list alone cannot pass for it. ``proc``: where
    procfs is (a stand-in directory in the harness's own test).
    """
    exe = Path(os.readlink(proc / str(pid) / "exe"))
    if not exe.name.startswith("ld-linux"):
        return exe
    args = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")[1:]
    index = 0
    while index < len(args) and args[index].startswith(b"--"):
        index += 2 if args[index].decode() in LOADER_OPTIONS_WITH_VALUE else 1
    if index >= len(args) or not args[index]:
        raise LookupError(f"process {pid} runs the loader {exe} without a program")
    program = Path(os.fsdecode(args[index])).resolve()
    wanted = os.stat(program)
    for line in (proc / str(pid) / "maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "x" in fields[1] and fields[5] == str(program):
            major, minor = (int(part, 16) for part in fields[3].split(":"))
            if (os.makedev(major, minor), int(fields[4])) == (wanted.st_dev, wanted.st_ino):
                return program
    raise LookupError(f"process {pid}: {program} is named but not mapped executable")


def pgbouncer_version() -> str:
    """The ``PgBouncer x.y.z`` line of the binary the tests use."""
    out = subprocess.run(
        [pgbouncer_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()[0].strip()


def pgbouncer_version_tuple() -> tuple[int, ...]:
    """The version of the binary the tests use, as numbers: ``(1, 26, 1)``."""
    text = pgbouncer_version().removeprefix("PgBouncer ").strip()
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def is_root() -> bool:
    """Whether we can start servers as the ``postgres`` user and use mount namespaces."""
    return os.geteuid() == 0


def service_ids() -> tuple[int, int]:
    """UID and GID of the ``postgres`` OS user."""
    entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp owned by the ``postgres`` user (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    uid, gid = service_ids()
    os.chown(path, uid, gid)
    path.chmod(0o700)
    return path


def write_service_file(path: Path, content: str, mode: int = 0o600) -> None:
    """Write a file the ``postgres`` user owns and can read, atomically as Pebble's push does.

    The content goes to a temporary file in the same directory, which is renamed over ``path``:
    a reader (PgBouncer on reload, a client reading a CA file) sees the old file or the new one,
    never a half-written one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content)
    uid, gid = service_ids()
    os.chown(tmp, uid, gid)
    tmp.chmod(mode)
    os.replace(tmp, path)


def as_service_user(cmd: list[str]) -> list[str]:
    """Prefix a command so that it runs as the ``postgres`` user.

    setpriv execs the command in place (same PID), unlike runuser, which would SIGKILL its
    child shortly after a SIGTERM.
    """
    return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups", *cmd]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_for_path(path: Path, timeout: float = 10.0) -> None:
    """Block until ``path`` exists."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear after {timeout}s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen, first_signal: int, grace: float = 5.0) -> None:
    """Signal a child by its own PID, wait for it (no zombie left), SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(first_signal)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        proc.wait(timeout=5)
