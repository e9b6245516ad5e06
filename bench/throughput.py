"""Part 1: select-only throughput, direct vs. through our rendered configuration (N=1, N=2).

Every run uses the same data and the same pgbench options; the matrix (target x connection mode)
is run ``rounds`` times, the order of targets reversed every other round so that drift (cache
warm-up, other load on the machine) falls on every target alike. Figures are the mean of the
rounds. During each run the CPU of pgbench, of PostgreSQL (postmaster and backends) and of every
PgBouncer process is recorded, to show which one is the bottleneck.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.pgbench import CpuMeter, PgbenchResult, Target, run_pgbench
from bench.settings import Settings
from bench.stack import Backend, Pooler

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

    @property
    def tps(self) -> float:
        """Mean tps over the rounds."""
        return statistics.fmean(r.tps for r in self.runs)

    @property
    def latency_ms(self) -> float:
        """Mean of the rounds' mean latencies."""
        return statistics.fmean(r.latency_ms or 0.0 for r in self.runs)

    @property
    def failed(self) -> int:
        """Failed transactions plus aborted clients, all rounds."""
        return sum(r.failed + r.aborted_clients for r in self.runs)

    def mean_cpu(self) -> dict[str, float]:
        """Mean CPU percent per process group over the rounds."""
        keys = self.cpu[0].keys() if self.cpu else []
        return {k: statistics.fmean(c.get(k, 0.0) for c in self.cpu) for k in keys}


@dataclass
class ThroughputResult:
    """The whole matrix and how it was run."""

    cells: dict[tuple[str, str], Cell]
    settings: Settings
    auth_note: str

    def cell(self, target: str, mode: str) -> Cell:
        """The cell of ``target`` in ``mode``."""
        return self.cells[(target, mode)]

    def ratio(self, num: str, den: str, mode: str) -> float:
        """The tps of ``num`` over the tps of ``den`` in ``mode``."""
        den_tps = self.cell(den, mode).tps
        return self.cell(num, mode).tps / den_tps if den_tps else 0.0


def run(
    settings: Settings, backend: Backend, poolers: list[Pooler], workdir: Path
) -> ThroughputResult:
    """Run the interleaved matrix and return its cells.

    Args:
        settings: durations, clients, rounds.
        backend: the PostgreSQL server (target ``direct``).
        poolers: the PgBouncer units to compare (``N=1``, ``N=2``), all in front of ``backend``.
        workdir: where pgbench output goes.
    """
    targets: list[tuple[Target, list[int]]] = [(backend.direct(), [])]
    targets += [(p.target(), p.pids) for p in poolers]
    cells = {(t.label, m): Cell(t.label, m) for t, _ in targets for m in MODES}
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
    for rnd in range(settings.rounds):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for mode, extra in MODES.items():
            for target, pids in order:
                meter = CpuMeter(
                    single={"PgBouncer": pids} if pids else {},
                    trees={"PostgreSQL": backend.postmaster_pid},
                )
                meter.start()
                result = run_pgbench(
                    target,
                    [*base_args, *extra],
                    workdir,
                    timeout=settings.run_seconds + 120,
                    name=f"tput-{rnd}-{target.label}-{extra[0] if extra else 'p'}",
                )
                cpu = meter.stop()
                cpu["pgbench"] = 100.0 * result.cpu_s / max(result.wall_s, 1e-6)
                cell = cells[(target.label, mode)]
                cell.runs.append(result)
                cell.cpu.append(cpu)
                print(
                    f"  round {rnd + 1} {mode:13s} {target.label:6s} tps {result.tps:9.1f}"
                    f"  latency {result.latency_ms or 0:7.3f} ms  failed"
                    f" {result.failed + result.aborted_clients}"
                    f"  cpu {', '.join(f'{k} {v:.0f}%' for k, v in cpu.items())}",
                    flush=True,
                )
    return ThroughputResult(
        cells=cells,
        settings=settings,
        auth_note=(
            "clients log in through auth_query with the charm's auth lookup"
            " (postgres.auth.install_auth) and SCRAM pass-through"
        ),
    )
