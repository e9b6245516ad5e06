"""Part 1: select-only throughput, direct vs. our rendered configuration vs. the incumbent's.

Every run uses the same data and the same pgbench options; the matrix (target x connection mode)
is run ``rounds`` times (at least 3 in a full run), the order of targets reversed every other
round so that drift (cache warm-up, other load on the machine) falls on every target alike.
Figures are the median of the rounds with their range; a ratio is computed within each round
(runs minutes apart, under the same background load) and its median and range are reported.

Pinned targets run PostgreSQL (postmaster and every backend) and pgbench on CPU 0 and PgBouncer
alone on CPU 1, as in production where PgBouncer has its pod's CPU; the ``direct, pinned`` target
runs PostgreSQL and pgbench on CPU 0 too, so that the pinned ratio compares like with like.
During each run the CPU of pgbench, of PostgreSQL and of every PgBouncer process is recorded,
and PgBouncer's own CPU per transaction is derived from it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.pgbench import CpuMeter, PgbenchResult, Target, run_pgbench
from bench.settings import Settings
from bench.stack import Backend

MODES = {"persistent": [], "connect (-C)": ["-C"]}


@dataclass
class Cell:
    """One (target, mode) cell of the matrix, over all rounds.

    Attributes:
        target: ``direct``, ``N=1`` or ``N=2``.
        mode: a key of :data:`MODES`.
        runs: pgbench results, one per round.
        cpu: per round, percent of one core per process group (pgbench, PostgreSQL, PgBouncer).
    """

    target: str
    mode: str
    runs: list[PgbenchResult] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    pinned: bool = False

    @property
    def tps(self) -> float:
        """Median tps over the rounds."""
        return statistics.median(r.tps for r in self.runs)

    @property
    def tps_range(self) -> tuple[float, float]:
        """Lowest and highest tps of the rounds."""
        values = [r.tps for r in self.runs]
        return min(values), max(values)

    @property
    def latency_ms(self) -> float:
        """Median of the rounds' mean latencies."""
        return statistics.median(r.latency_ms or 0.0 for r in self.runs)

    def pgbouncer_us_per_txn(self) -> list[float]:
        """PgBouncer's CPU (all its processes) per transaction, microseconds, per round."""
        out = []
        for run, cpu in zip(self.runs, self.cpu, strict=True):
            percent = sum(v for k, v in cpu.items() if k.startswith("PgBouncer"))
            if run.processed:
                out.append(percent / 100 * run.wall_s / run.processed * 1e6)
        return out

    @property
    def failed(self) -> int:
        """Failed transactions plus aborted clients, all rounds."""
        return sum(r.failed + r.aborted_clients for r in self.runs)

    def mean_cpu(self) -> dict[str, float]:
        """Mean CPU percent per process group over the rounds."""
        keys = self.cpu[0].keys() if self.cpu else []
        return {k: statistics.fmean(c.get(k, 0.0) for c in self.cpu) for k in keys}

    def median_cpu(self) -> dict[str, float]:
        """Median CPU percent per process group over the rounds."""
        keys = self.cpu[0].keys() if self.cpu else []
        return {k: statistics.median(c.get(k, 0.0) for c in self.cpu) for k in keys}


@dataclass
class ThroughputResult:
    """The whole matrix and how it was run."""

    cells: dict[tuple[str, str], Cell]
    settings: Settings
    auth_note: str

    def cell(self, target: str, mode: str) -> Cell:
        """The cell of ``target`` in ``mode``."""
        return self.cells[(target, mode)]

    def has(self, target: str) -> bool:
        """Whether ``target`` was measured."""
        return any(t == target for t, _ in self.cells)

    def round_ratios(self, num: str, den: str, mode: str) -> list[float]:
        """``num``'s tps over ``den``'s, within each round."""
        a, b = self.cell(num, mode).runs, self.cell(den, mode).runs
        return [x.tps / y.tps for x, y in zip(a, b, strict=True) if y.tps]

    def ratio(self, num: str, den: str, mode: str) -> float:
        """Median over the rounds of ``num``'s tps over ``den``'s (0 when unmeasurable)."""
        values = self.round_ratios(num, den, mode)
        return statistics.median(values) if values else 0.0

    def ratio_text(self, num: str, den: str, mode: str) -> str:
        """``median (min-max)`` of the per-round ratio."""
        values = self.round_ratios(num, den, mode)
        if not values:
            return "n/a"
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


@dataclass
class Contender:
    """One target of the matrix.

    Attributes:
        target: where pgbench connects.
        pids: PgBouncer processes to meter (none for direct).
        pinned: run with PostgreSQL and pgbench on CPU 0 (PgBouncer is pinned by the caller).
    """

    target: Target
    pids: list[int]
    pinned: bool = False


def _postgres_pids(postmaster: int) -> list[int]:
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
            pids.append(int(entry.name))
    return pids


def pin(pids: list[int], cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of each process (gone ones are skipped)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def all_cpus() -> set[int]:
    """Every CPU this process may use."""
    return set(os.sched_getaffinity(0))


def run(
    settings: Settings, backend: Backend, contenders: list[Contender], workdir: Path
) -> ThroughputResult:
    """Run the interleaved matrix and return its cells.

    Args:
        settings: durations, clients, rounds.
        backend: the PostgreSQL server.
        contenders: targets in order (the first is ``direct``); pinned PgBouncer processes are
            already on their own CPU.
        workdir: where pgbench output goes.
    """
    cells = {
        (c.target.label, m): Cell(c.target.label, m, pinned=c.pinned)
        for c in contenders
        for m in MODES
    }
    base_args = [
        "-S",
        "-n",
        "-c",
        str(settings.clients),
        "-j",
        str(settings.threads),
        "-T",
        str(settings.run_seconds),
    ]
    everywhere = all_cpus()
    try:
        for rnd in range(settings.rounds):
            order = contenders if rnd % 2 == 0 else list(reversed(contenders))
            for mode, extra in MODES.items():
                for c in order:
                    cpus = {0} if c.pinned else everywhere
                    pin(_postgres_pids(backend.postmaster_pid), cpus)
                    meter = CpuMeter(
                        single={"PgBouncer": c.pids} if c.pids else {},
                        trees={"PostgreSQL": backend.postmaster_pid},
                    )
                    meter.start()
                    result = run_pgbench(
                        c.target,
                        [*base_args, *extra],
                        workdir,
                        timeout=settings.run_seconds + 120,
                        name=f"tput-{rnd}-{c.target.label.replace(' ', '_')}-{extra[0] if extra else 'p'}",
                        cpus=cpus,
                    )
                    cpu = meter.stop()
                    result.served(c.target.label)
                    cpu["pgbench"] = 100.0 * result.cpu_s / max(result.wall_s, 1e-6)
                    cell = cells[(c.target.label, mode)]
                    cell.runs.append(result)
                    cell.cpu.append(cpu)
                    print(
                        f"  round {rnd + 1} {mode:13s} {c.target.label:22s} tps"
                        f" {result.tps:9.1f}  latency {result.latency_ms or 0:7.3f} ms  failed"
                        f" {result.failed + result.aborted_clients}"
                        f"  cpu {', '.join(f'{k} {v:.0f}%' for k, v in cpu.items())}",
                        flush=True,
                    )
    finally:
        pin(_postgres_pids(backend.postmaster_pid), everywhere)
    return ThroughputResult(
        cells=cells,
        settings=settings,
        auth_note=(
            "clients log in through auth_query with the charm's auth lookup"
            " (postgres.auth.install_auth) and SCRAM pass-through"
        ),
    )
