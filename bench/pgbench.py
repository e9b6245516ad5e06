"""Running pgbench and reading what it and the servers did: tps, latency, errors, CPU.

pgbench runs as a child of this process with its password in ``PGPASSWORD`` (never on the
command line), its output in files (no pipe to fill), and is waited for with ``os.wait4`` so
that its own CPU time comes from the kernel's accounting. CPU of the servers comes from
``/proc/<pid>/stat``: PgBouncer processes by PID, PostgreSQL as the postmaster plus its
children, live ones and reaped ones (``cutime``/``cstime``), so that short-lived backends of
``pgbench -C`` are counted too.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PGBENCH = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")) / "pgbench"
TICK = os.sysconf("SC_CLK_TCK")

_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_CONNECT_TIME = re.compile(r"^average connection time = ([0-9.]+) ms", re.MULTILINE)


class PgbenchError(RuntimeError):
    """pgbench could not be run at all (not a benchmark failure: those are reported)."""


@dataclass
class Target:
    """Where pgbench connects and as whom.

    Attributes:
        label: a short name for reports (``direct``, ``N=1``, ``N=2``).
        host: TCP host.
        port: TCP port.
        dbname: database name (a ``[databases]`` key when pooled).
        user: role name.
        password: its password; passed to pgbench in ``PGPASSWORD`` only.
        sslmode: libpq's ``sslmode`` (``PGSSLMODE``), None for libpq's default.
        sslrootcert: the CA file for ``verify-*`` modes (``PGSSLROOTCERT``).
    """

    label: str
    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    sslmode: str | None = None
    sslrootcert: str | None = None


@dataclass
class PgbenchResult:
    """What one pgbench run reported.

    Attributes:
        tps: transactions per second (pgbench's ``tps =`` line), 0 when it printed none.
        latency_ms: mean latency, None when not printed.
        connect_ms: mean connection time (``-C`` runs), None when not printed.
        processed: transactions completed.
        failed: transactions pgbench counted as failed (serialization/deadlock, PG 15).
        aborted_clients: clients that stopped on an error (connection refused or lost, …).
        connect_errors: error lines about connections (``too many clients``, refused, …).
        returncode: pgbench's exit code (0 clean, 2 some clients aborted, 1 could not start).
        wall_s: wall time of the run.
        cpu_s: CPU seconds pgbench itself used (user + system).
        errors: the first distinct error lines, for the report.
        log_dir: where ``--log`` files went (when logging was asked for).
    """

    tps: float
    latency_ms: float | None
    connect_ms: float | None
    processed: int
    failed: int
    aborted_clients: int
    connect_errors: int
    returncode: int
    wall_s: float
    cpu_s: float
    errors: list[str]
    log_dir: Path | None = None

    def served(self, what: str) -> PgbenchResult:
        """This result, when pgbench got transactions through; else an error naming ``what``.

        For runs that must work (a throughput or TLS figure): a run that never connected
        would otherwise enter the report as 0 tps with 0 failed transactions.

        Raises:
            RuntimeError: no transaction completed.
        """
        if self.processed == 0 and self.tps == 0:
            detail = "; ".join(self.errors[:2]) or f"exit {self.returncode}"
            raise RuntimeError(f"pgbench got no transaction through {what}: {detail}")
        return self


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _prepare_child(cpus: set[int] | None) -> None:
    _raise_nofile()
    if cpus:
        os.sched_setaffinity(0, cpus)


def pgbench_command(target: Target, args: Sequence[str]) -> list[str]:
    """Pgbench's argv for ``target``: connection options, ``args``, the database (no password)."""
    return [
        str(PGBENCH),
        "-h",
        target.host,
        "-p",
        str(target.port),
        "-U",
        target.user,
        *args,
        target.dbname,
    ]


def pgbench_env(target: Target) -> dict[str, str]:
    """Pgbench's environment: the password travels here, never on the command line."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PGPASSWORD": target.password,
        "PGCONNECT_TIMEOUT": "10",
        "LC_ALL": "C",
    }
    if target.sslmode:
        env["PGSSLMODE"] = target.sslmode
    if target.sslrootcert:
        env["PGSSLROOTCERT"] = target.sslrootcert
    return env


def run_pgbench(
    target: Target,
    args: Sequence[str],
    workdir: Path,
    timeout: float,
    name: str = "run",
    cpus: set[int] | None = None,
) -> PgbenchResult:
    """Run pgbench against ``target`` with ``args`` and parse its report.

    Args:
        target: where to connect.
        args: pgbench options (workload, ``-c``, ``-T``, …), without connection options.
        workdir: pgbench's working directory (its ``--log`` files land there).
        timeout: seconds after which pgbench is killed (by its own PID).
        name: file name prefix of its captured output.
        cpus: the CPUs pgbench may run on (all when None).

    Returns:
        The parsed result; an unparsable report gives tps 0 and the error lines.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = pgbench_command(target, args)
    env = pgbench_env(target)
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            preexec_fn=(lambda: _prepare_child(cpus)),
        )
    usage = None
    deadline = start + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        raise
    wall = time.monotonic() - start
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    return _parse(stdout, stderr, proc.returncode, wall, usage, workdir)


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return match.group(1) if match else None


def _parse(
    stdout: str,
    stderr: str,
    returncode: int,
    wall: float,
    usage: resource.struct_rusage | None,
    workdir: Path,
) -> PgbenchResult:
    error_lines = [
        line
        for line in stderr.splitlines()
        if "error" in line.lower() or "aborted" in line.lower() or "fatal" in line.lower()
    ]
    aborted = sum(1 for line in error_lines if re.search(r"client \d+ aborted", line))
    connect_errors = sum(
        1
        for line in error_lines
        if "connection" in line.lower() and ("fail" in line.lower() or "could not" in line.lower())
    )
    distinct: list[str] = []
    for line in error_lines:
        # Strip client numbers and ports so that the same error is listed once.
        short = re.sub(r"\d+", "#", line.strip())[:160]
        if short not in distinct:
            distinct.append(short)
    tps = _first(_TPS, stdout)
    latency = _first(_LATENCY, stdout)
    connect = _first(_CONNECT_TIME, stdout)
    cpu = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
    return PgbenchResult(
        tps=float(tps) if tps else 0.0,
        latency_ms=float(latency) if latency else None,
        connect_ms=float(connect) if connect else None,
        processed=int(_first(_PROCESSED, stdout) or 0),
        failed=int(_first(_FAILED, stdout) or 0),
        aborted_clients=aborted,
        connect_errors=connect_errors,
        returncode=returncode,
        wall_s=wall,
        cpu_s=cpu,
        errors=distinct[:5],
        log_dir=workdir,
    )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu_ticks(pid: int) -> int:
    """CPU (utime + stime) of one process, in clock ticks (0 when it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After the name: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    return int(fields[11]) + int(fields[12])


def tree_cpu_ticks(root: int) -> int:
    """CPU ticks of ``root``, its reaped children and its live direct children."""
    fields = _stat_fields(root)
    if fields is None:
        return 0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = _stat_fields(int(entry.name))
        if child is not None and int(child[1]) == root:
            total += int(child[11]) + int(child[12])
    return total


@dataclass
class CpuMeter:
    """CPU used by named groups of processes between :meth:`start` and :meth:`stop`.

    Attributes:
        single: label → PIDs measured process by process (PgBouncer).
        trees: label → a root PID measured with its children (the postmaster).
    """

    single: dict[str, list[int]] = field(default_factory=dict)
    trees: dict[str, int] = field(default_factory=dict)
    _before: dict[str, int] = field(default_factory=dict)
    _t0: float = 0.0

    def _read(self) -> dict[str, int]:
        ticks: dict[str, int] = {}
        # First line of /proc/stat: user nice system idle iowait irq softirq steal ...
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        ticks["machine"] = sum(cpu) - cpu[3] - cpu[4]
        for label, pids in self.single.items():
            for i, pid in enumerate(pids):
                ticks[f"{label}[{i}]"] = process_cpu_ticks(pid)
        for label, root in self.trees.items():
            ticks[label] = tree_cpu_ticks(root)
        return ticks

    def _settle(self, timeout: float = 3.0) -> None:
        """Wait (bounded) until no child of a measured tree is a zombie.

        A zombie's ``/proc/<pid>/stat`` shows no CPU time, and its time reaches the parent's
        ``cutime`` only once reaped: read in between, the backends of a run that just ended
        (``pgbench`` closed their connections) would count for nothing.
        """
        deadline = time.monotonic() + timeout
        roots = set(self.trees.values())
        while time.monotonic() < deadline:
            zombie = False
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                fields = _stat_fields(int(entry.name))
                if fields is not None and fields[0] == "Z" and int(fields[1]) in roots:
                    zombie = True
                    break
            if not zombie:
                return
            time.sleep(0.05)

    def start(self) -> None:
        """Take the first reading."""
        self._before = self._read()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Percent of one core each process (or tree) used since :meth:`start`.

        The ``machine`` entry is every core's busy time, in the same unit (so at most
        ``100 * nproc``): what was left for anything else shows as its distance from that.
        """
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        self._settle()
        after = self._read()
        return {
            label: 100.0 * (after[label] - self._before.get(label, 0)) / TICK / elapsed
            for label in after
        }
