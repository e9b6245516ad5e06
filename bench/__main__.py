"""``python -m bench``: run every benchmark part, print the figures, write the report.

A part that fails is reported as such (with its error) and the others still run; every server a
part starts is stopped in that part's ``finally``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import incumbent, report, scale, throughput
from bench.settings import Settings, load
from bench.stack import Backend, Pooler, Stack, pooler_config, set_max_connections
from harness.servers.system import free_port

THROUGHPUT_MAX_CONNECTIONS = 200
"""Room for every pooler's idle server connections plus the direct runs, so that part 1
measures throughput only."""
SCALE_MAX_CONNECTIONS = 50


def _contenders(stack: Stack, backend: Backend) -> tuple[list[throughput.Contender], list[Pooler]]:
    """Direct, our configuration (N=1, N=2), the incumbent's, and the pinned trio."""
    n1 = stack.pooler("N=1", pooler_config(backend, free_port(), 1), backend)
    n2 = stack.pooler("N=2", pooler_config(backend, free_port(), 2), backend)
    cores = os.cpu_count() or 1
    inc = incumbent.start(stack, f"incumbent ({cores} proc.)", backend, free_port(), cores)
    poolers = [n1, n2, inc]
    contenders = [
        throughput.Contender(backend.direct(), []),
        *(throughput.Contender(p.target(), p.pids) for p in poolers),
    ]
    if len(throughput.all_cpus()) >= 2:
        # PgBouncer alone on CPU 1; PostgreSQL and pgbench on CPU 0 (set per run).
        n1p = stack.pooler("N=1, pinned", pooler_config(backend, free_port(), 1), backend)
        incp = incumbent.start(stack, "incumbent, pinned", backend, free_port(), 1)
        for pooler in (n1p, incp):
            throughput.pin(pooler.pids, {1})
        direct_pinned = backend.direct()
        direct_pinned.label = "direct, pinned"
        contenders += [
            throughput.Contender(direct_pinned, [], pinned=True),
            throughput.Contender(n1p.target(), n1p.pids, pinned=True),
            throughput.Contender(incp.target(), incp.pids, pinned=True),
        ]
        poolers += [n1p, incp]
    return contenders, poolers


def _pools_and_scale(settings: Settings, results: report.Results, work: Path) -> None:
    stack = Stack()
    try:
        print(
            f"setting up PostgreSQL (scale {settings.scale}) and PgBouncer units ...", flush=True
        )
        backend = stack.backend(settings.scale, max_connections=THROUGHPUT_MAX_CONNECTIONS)
        if "throughput" in settings.parts:
            contenders, poolers = _contenders(stack, backend)
            print("part 1: throughput (pgbench -S)", flush=True)
            results.throughput = _guard(
                results,
                "1. Throughput",
                lambda: throughput.run(settings, backend, contenders, work),
            )
            for pooler in poolers:
                stack.stop_pooler(pooler)
        if "scale" in settings.parts:
            print(
                f"part 2: connection scale (max_connections={SCALE_MAX_CONNECTIONS})", flush=True
            )
            set_max_connections(backend, SCALE_MAX_CONNECTIONS)
            results.scale = _guard(
                results, "2. Connection scale", lambda: scale.run(settings, backend, stack, work)
            )
    finally:
        stack.close()


def _guard(results: report.Results, part: str, body: Callable[[], object]) -> object:
    try:
        return body()
    except Exception:
        text = traceback.format_exc(limit=6)
        print(f"{part} failed:\n{text}", file=sys.stderr, flush=True)
        results.failures[part] = text
        return None


def main() -> int:
    """Run the parts chosen by the settings; returns the process exit code."""
    settings = load()
    results = report.Results(settings=settings, started=dt.datetime.now(dt.UTC))
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pgbk8s-bench-"))
    mode = "QUICK (figures not meaningful) " if settings.quick else ""
    print(f"bench: {mode}parts {', '.join(settings.parts)}", flush=True)
    try:
        if {"throughput", "scale"} & set(settings.parts):
            _guard(results, "setup", lambda: _pools_and_scale(settings, results, work))
        if "reconfig" in settings.parts:
            from bench import reconfig

            print("part 3: reconfiguration under load", flush=True)
            results.reconfig = _guard(
                results, "3. Reconfiguration", lambda: reconfig.run(settings, work)
            )
        if "changes" in settings.parts:
            from bench import changes

            print("part 6: planned changes through the charm, under load", flush=True)
            results.changes = _guard(
                results, "6. Planned changes", lambda: changes.run(settings, work)
            )
        if "tls" in settings.parts:
            from bench import tls

            print("part 5: the cost of TLS between clients and PgBouncer", flush=True)
            results.tls = _guard(results, "5. TLS cost", lambda: tls.run(settings, work))
        if "hooks" in settings.parts:
            from bench import hooks

            print("part 4: hook cost", flush=True)
            results.hooks = _guard(results, "4. Hook cost", lambda: hooks.run(settings, work))
        if "jujupath" in settings.parts:
            from bench import jujupath

            print("part 4a: hook cost on Juju's real path (dispatch, ops.main)", flush=True)
            results.jujupath = _guard(
                results, "4a. Hook cost, real path", lambda: jujupath.run(settings, work)
            )
    finally:
        results.seconds = time.monotonic() - t0
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    path = report.write(results)
    print(report.summary(results))
    print(f"bench: done in {results.seconds:.0f} s; report in {path}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
