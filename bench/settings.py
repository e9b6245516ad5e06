"""How long and how hard each benchmark runs: the full run, or a quick one for development.

``BENCH_QUICK=1`` shrinks every duration and repetition so that a run takes about a minute and
writes to ``bench/results/tmp/`` (git-ignored) instead of ``bench/results/latest.md``.
``BENCH_PARTS=throughput,scale,reconfig,hooks,jujupath,tls,changes`` runs only the parts named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench import ROOT

PARTS = ("throughput", "scale", "reconfig", "hooks", "jujupath", "tls", "changes")


@dataclass(frozen=True)
class Settings:
    """Durations and sizes of one benchmark run.

    Attributes:
        quick: a development run (figures not meaningful, not recorded as results).
        scale: ``pgbench -i`` scale factor (10 is 1,000,000 rows in ``pgbench_accounts``).
        clients: pgbench clients for the throughput part.
        threads: pgbench threads (``-j``).
        run_seconds: length of one throughput run.
        rounds: rounds of the throughput matrix, interleaved; figures are their median and range.
        scale_clients: client counts of the connection-scale part.
        scale_seconds: length of one connection-scale run.
        reconfig_seconds: length of the pgbench run that reconfiguration happens under.
        hook_repeats: fresh-process runs per hook under ``ops.testing``; the median is reported.
        jujupath_runs: interleaved rounds of the production-path hook benchmark.
        jujupath_more_rounds: its rounds with 20 clients (0: not measured).
        parts: which parts to run.
    """

    quick: bool
    scale: int
    clients: int
    threads: int
    run_seconds: int
    rounds: int
    scale_clients: tuple[int, ...]
    scale_seconds: int
    reconfig_seconds: int
    hook_repeats: int
    jujupath_runs: int
    jujupath_more_rounds: int
    parts: tuple[str, ...]

    @property
    def results_dir(self):
        """Where this run's report and chart go."""
        base = ROOT / "bench" / "results"
        return base / "tmp" if self.quick else base


def load() -> Settings:
    """The settings for this run, from ``BENCH_QUICK`` and ``BENCH_PARTS``."""
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    wanted = os.environ.get("BENCH_PARTS", "")
    parts = tuple(p for p in PARTS if not wanted or p in wanted.split(","))
    if quick:
        return Settings(
            quick=True,
            scale=1,
            clients=20,
            threads=2,
            run_seconds=2,
            rounds=2,
            scale_clients=(300, 1000),
            scale_seconds=3,
            reconfig_seconds=16,
            hook_repeats=1,
            jujupath_runs=int(os.environ.get("BENCH_JUJUPATH_ROUNDS", "2")),
            jujupath_more_rounds=1,
            parts=parts,
        )
    return Settings(
        quick=False,
        scale=10,
        clients=20,
        threads=2,
        run_seconds=7,
        rounds=3,
        scale_clients=(300, 1000),
        scale_seconds=8,
        reconfig_seconds=40,
        hook_repeats=5,
        jujupath_runs=int(os.environ.get("BENCH_JUJUPATH_ROUNDS", "12")),
        jujupath_more_rounds=3,
        parts=parts,
    )
