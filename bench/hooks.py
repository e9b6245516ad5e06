"""Part 4: the cost of one hook of our charm in a fresh Python process, beside a do-nothing charm.

Juju runs every hook as a new process (``dispatch`` → ``src/charm.py``): Python starts, imports
ops and the charm, builds the model, handles one event and exits. Here each hook runs the same
way, in a fresh ``python -m bench.hook_child`` process, with ``ops.testing`` standing in for Juju's
hook tools and Pebble (what Scenario adds is paid by both charms alike). The states before each
hook are prepared by driving our charm through its life with the end-to-end harness, on a real
PostgreSQL, so that each hook does its real work: ``backend created`` installs the auth lookup in
PostgreSQL, ``pebble-ready`` and ``config-changed`` render and write the configuration files.

The floor is ``bench/floor_charm``: an ops charm with the same metadata that observes nothing, run
on the very same states and events. Wall time of the whole process and its peak RSS (``VmHWM``, read by
the child at the end of the hook), median of the repeats, ours and the floor interleaved; the container's files are
restored to their pre-hook snapshot before every run.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ROOT
from bench.settings import Settings

HOOKS = ("install", "pebble-ready", "backend created", "config-changed", "update-status")


@dataclass
class HookRun:
    """One fresh-process run of one hook."""

    wall_ms: float
    rss_mib: float
    import_ms: float
    run_ms: float
    status: str


@dataclass
class ImportCost:
    """``python -X importtime`` of the charm module: where its import time goes.

    Attributes:
        total_ms: cumulative import time of ``charm`` (with ``-X importtime``'s own overhead).
        packages: top-level package → cumulative ms where it is first imported (nested:
            a package imported inside another counts in both).
    """

    total_ms: float = 0.0
    packages: dict[str, float] = field(default_factory=dict)


WATCHED_PACKAGES = (
    "ops",
    "psycopg",
    "dpcharmlibs.interfaces",
    "pydantic",
    "cryptography",
    "tenacity",
    "yaml",
    "relations.client_database",
    "postgres.auth",
    "pgbouncer.config",
)


def import_profile() -> ImportCost:
    """Profile ``import charm`` once in a fresh process."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-W", "ignore", "-c", "import charm"],
        cwd=ROOT / "src",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    cost = ImportCost()
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, cumulative = parts[2].strip(), int(parts[1]) / 1000
        if name == "charm":
            cost.total_ms = cumulative
        elif name in WATCHED_PACKAGES and name not in cost.packages:
            cost.packages[name] = cumulative
    return cost


@dataclass
class HookCost:
    """All runs of one hook, for ours and for the floor."""

    hook: str
    ours: list[HookRun] = field(default_factory=list)
    floor: list[HookRun] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[HookRun], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs) if runs else 0.0

    def median(self, who: str, attr: str) -> float:
        """Median of ``attr`` over ``who``'s runs (``ours`` or ``floor``)."""
        return self._median(getattr(self, who), attr)

    def ratio(self, attr: str) -> float:
        """Median ours over median floor."""
        floor = self.median("floor", attr)
        return self.median("ours", attr) / floor if floor else 0.0


def _prepare(tmp: Path) -> tuple[list[tuple[str, Path, Path]], Any, Any]:
    """Drive our charm through its life; pickle the state before each measured hook.

    Returns:
        (hook, pickle file, snapshot of the container's files) per hook, the application and
        the PostgreSQL server (the caller closes and destroys them).
    """
    from ops import testing

    from charm import PgBouncerK8sCharm
    from harness.juju import DEFAULT_JUJU_VERSION, Application
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres

    server = start_postgres(prefix="pgbk8s-bench-hooks-")
    app = None
    try:
        app = Application(PgBouncerK8sCharm, num_units=1, processes=())
        unit = app.leader
        ctx = {"app_name": app.name, "unit_id": 0, "juju_version": DEFAULT_JUJU_VERSION}
        prepared: list[tuple[str, Path, Path]] = []

        def snapshot(hook: str, event: tuple) -> None:
            path = tmp / f"{len(prepared)}.pickle"
            path.write_bytes(pickle.dumps({"state": unit.state, "event": event, "ctx": ctx}))
            snap = tmp / f"{len(prepared)}.files"
            subprocess.run(["cp", "-a", str(unit.mount_dir), str(snap)], check=True)
            prepared.append((hook, path, snap))

        snapshot("install", ("install",))
        unit.install()
        unit.leader_elected()
        unit.config_changed()
        unit.start()
        snapshot("pebble-ready", ("pebble_ready", "pgbouncer"))
        unit.pebble_ready()
        rel = app.add_relation(
            testing.Relation("backend-database", remote_app_name="postgresql-k8s")
        )
        unit.relation_created(rel)
        fake = FakePostgresqlCharm(server)
        data, _ = fake.provide(
            unit.relation(rel).local_app_data["database"],
            "SUPERUSER",
            relation_id=rel,
            use_secret=False,
        )
        app.set_remote(rel, remote_app_data=data)
        snapshot("backend created", ("relation_changed", rel, 0))
        unit.relation_changed(rel, remote_unit=0)
        app.set_config(max_db_connections=50)
        snapshot("config-changed", ("config_changed",))
        unit.config_changed()
        snapshot("update-status", ("update_status",))
        return prepared, app, server
    except BaseException:
        if app is not None:
            app.close()
        server.destroy()
        raise


def _run_child(which: str, state: Path, mount_dir: Path, snap: Path) -> HookRun:
    subprocess.run(["rm", "-rf", str(mount_dir)], check=True)
    subprocess.run(["cp", "-a", str(snap), str(mount_dir)], check=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.hook_child", which, str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} hook failed: {err.decode(errors='replace')[-1500:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    return HookRun(
        wall_ms=wall,
        rss_mib=report["hwm_kib"] / 1024,
        import_ms=report["import_ms"],
        run_ms=report["run_ms"],
        status=report["status"],
    )


@dataclass
class HookResult:
    """Part 4's figures."""

    costs: list[HookCost]
    imports: ImportCost


def run(settings: Settings, workdir: Path) -> HookResult:
    """Measure every hook, ours and the floor, ``settings.hook_repeats`` times each."""
    tmp = workdir / "hooks"
    tmp.mkdir(parents=True, exist_ok=True)
    prepared, app, server = _prepare(tmp)
    mount_dir = app.leader.mount_dir
    costs = []
    try:
        for hook, state, snap in prepared:
            cost = HookCost(hook)
            for _ in range(settings.hook_repeats):
                cost.ours.append(_run_child("ours", state, mount_dir, snap))
                cost.floor.append(_run_child("floor", state, mount_dir, snap))
            costs.append(cost)
            print(
                f"  {hook:16s} ours {cost.median('ours', 'wall_ms'):6.0f} ms"
                f" {cost.median('ours', 'rss_mib'):5.1f} MiB | floor"
                f" {cost.median('floor', 'wall_ms'):6.0f} ms {cost.median('floor', 'rss_mib'):5.1f} MiB"
                f" | ratio {cost.ratio('wall_ms'):.2f}x time, {cost.ratio('rss_mib'):.2f}x RSS;"
                f" status after: {cost.ours[-1].status}",
                flush=True,
            )
    finally:
        app.close()
        server.destroy()
    imports = import_profile()
    print(
        f"  import charm: {imports.total_ms:.0f} ms under -X importtime; "
        + ", ".join(f"{k} {v:.0f}" for k, v in imports.packages.items()),
        flush=True,
    )
    return HookResult(costs, imports)


def section(result: HookResult) -> list[str]:
    """Markdown of part 4."""
    costs = result.costs
    n = len(costs[0].ours) if costs else 0
    lines = [
        "## 4. Hook cost: one hook in a fresh Python process",
        "",
        f"Median of {n} runs each, ours and the floor (`bench/floor_charm`, an ops charm that"
        " observes nothing) interleaved, same states and events, `ops.testing` standing in for"
        " Juju's hook tools and Pebble. Wall = the whole process (interpreter start, imports,"
        " dispatch, exit); imports = ops, ops.testing and the charm module; dispatch ="
        " `Context.run` of the one event (ours talks to a real PostgreSQL in `backend created`).",
        "",
        "| hook | ours wall (ms) | floor wall (ms) | ratio | ours imports / dispatch (ms) | floor imports / dispatch (ms) | ours peak RSS (MiB) | floor peak RSS (MiB) | ratio | status after (ours) |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for c in costs:
        lines.append(
            f"| {c.hook} | {c.median('ours', 'wall_ms'):.0f} | {c.median('floor', 'wall_ms'):.0f}"
            f" | {c.ratio('wall_ms'):.2f} | {c.median('ours', 'import_ms'):.0f} /"
            f" {c.median('ours', 'run_ms'):.0f} | {c.median('floor', 'import_ms'):.0f} /"
            f" {c.median('floor', 'run_ms'):.0f} | {c.median('ours', 'rss_mib'):.1f} |"
            f" {c.median('floor', 'rss_mib'):.1f} | {c.ratio('rss_mib'):.2f} |"
            f" {c.ours[-1].status} |"
        )
    imp = result.imports
    lines += [
        "",
        f"Where our import time goes (`python -X importtime -c 'import charm'`, one run, with the"
        f" profiler's own overhead): `charm` {imp.total_ms:.0f} ms cumulative; first import of"
        " each package, cumulative ms (nested packages count in their parent too):",
        "",
        "| package | ms |",
        "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in imp.packages.items()],
    ]
    return lines
