"""The benchmark report: figures as Markdown tables (``latest.md``) and a chart (PNG)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import describe
from bench.settings import Settings


@dataclass
class Results:
    """Everything one run measured; a part left None was not run."""

    settings: Settings
    started: dt.datetime
    seconds: float = 0.0
    throughput: Any = None
    scale: Any = None
    reconfig: Any = None
    hooks: Any = None
    jujupath: Any = None
    failures: dict[str, str] = field(default_factory=dict)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cpu_text(cpu: dict[str, float]) -> str:
    groups: dict[str, list[float]] = {}
    for key, value in cpu.items():
        groups.setdefault(key.split("[")[0], []).append(value)
    parts = []
    for name, values in groups.items():
        if len(values) > 1:
            each = " + ".join(f"{v:.0f}" for v in values)
            parts.append(f"{name} {each} %")
        else:
            parts.append(f"{name} {values[0]:.0f} %")
    return ", ".join(parts)


def throughput_section(tput) -> list[str]:
    """Markdown of part 1."""
    s = tput.settings
    lines = [
        "## 1. Throughput: pgbench select-only",
        "",
        f"`pgbench -S -c {s.clients} -j {s.threads} -T {s.run_seconds}`, scale {s.scale}, mean of"
        f" {s.rounds} interleaved round(s); transaction pool mode; {tput.auth_note}."
        " CPU is percent of one core over the run (2 cores = 200 %), per PgBouncer process.",
        "",
        "| connections | target | tps | mean latency (ms) | failed | vs direct | CPU (pgbench, PostgreSQL, PgBouncer) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for mode in ("persistent", "connect (-C)"):
        for target in ("direct", "N=1", "N=2"):
            cell = tput.cell(target, mode)
            ratio = tput.ratio(target, "direct", mode)
            lines.append(
                f"| {mode} | {target} | {_fmt(cell.tps)} | {_fmt(cell.latency_ms, 3)} |"
                f" {cell.failed} | {ratio:.2f}x | {_cpu_text(cell.mean_cpu())} |"
            )
    lines += [
        "",
        "| ratio | persistent | connect (-C) |",
        "|---|---:|---:|",
    ]
    for label, num, den in (
        ("N=1 / direct", "N=1", "direct"),
        ("N=2 / direct", "N=2", "direct"),
        ("N=2 / N=1", "N=2", "N=1"),
    ):
        lines.append(
            f"| {label} | {tput.ratio(num, den, 'persistent'):.2f} |"
            f" {tput.ratio(num, den, 'connect (-C)'):.2f} |"
        )
    lines += ["", "Per round (tps):", ""]
    lines += [
        "| connections | target | " + " | ".join(f"round {i + 1}" for i in range(s.rounds)) + " |"
    ]
    lines += ["|---|---|" + "---:|" * s.rounds]
    for mode in ("persistent", "connect (-C)"):
        for target in ("direct", "N=1", "N=2"):
            cell = tput.cell(target, mode)
            lines.append(
                f"| {mode} | {target} | " + " | ".join(_fmt(r.tps) for r in cell.runs) + " |"
            )
    return lines


def scale_section(rows) -> list[str]:
    """Markdown of part 2."""
    lines = [
        "## 2. Connection scale: PostgreSQL `max_connections = 50`",
        "",
        "Pooled: our rendered configuration, two processes, transaction pool,"
        " `max_db_connections = 40` for the unit (20 per process). pgbench `-S -j 2`;"
        " the load generator is `bench/loadgen.py` (asyncio + psycopg, one process: its rate is"
        " bounded by its own CPU and only compares with itself).",
        "",
        "| clients | target | pgbench tps | pgbench outcome | loadgen connected / refused / failed | loadgen qps | peak server connections |",
        "|---:|---|---:|---|---|---:|---:|",
    ]
    for row in rows:
        b, load = row.pgbench, row.load
        if b.returncode == 0 and not b.errors:
            outcome = f"ok, {b.failed + b.aborted_clients} failed"
        else:
            first = b.errors[0].replace("|", "/") if b.errors else ""
            outcome = f"exit {b.returncode}: {first}"
        lines.append(
            f"| {row.clients} | {row.target} | {_fmt(b.tps)} | {outcome} |"
            f" {load.connected} / {load.refused} / {load.failed} | {_fmt(load.qps)} |"
            f" {row.peak_server_connections} |"
        )
    errors = {e for row in rows for e in row.load.errors}
    if errors:
        lines += ["", "Load generator errors seen: " + "; ".join(f"`{e}`" for e in sorted(errors))]
    return lines


def targets_section(results: Results) -> list[str]:
    """The issue's targets beside this run's figures (reported, never asserted)."""
    rows: list[tuple[str, str, bool | None]] = []
    tput = results.throughput
    if tput is not None:
        for label in ("N=1", "N=2"):
            r = tput.ratio(label, "direct", "persistent")
            rows.append((f"pooled ({label}) >= 0.85x direct, persistent", f"{r:.2f}x", r >= 0.85))
            r = tput.ratio(label, "direct", "connect (-C)")
            rows.append((f"pooled ({label}) >= 1.9x direct, -C", f"{r:.2f}x", r >= 1.9))
        for mode in ("persistent", "connect (-C)"):
            r = tput.ratio("N=2", "N=1", mode)
            rows.append((f"N=2 >= N=1 ({mode})", f"{r:.2f}x", r >= 1.0))
            busy = tput.cell("N=2", mode).mean_cpu().get("machine", 0.0)
            rows.append(
                (
                    f"N=2 >= 1.3x N=1 where client load is not the bottleneck ({mode})",
                    f"{r:.2f}x; all cores busy {busy:.0f} % of {100 * (os.cpu_count() or 1)} %",
                    r >= 1.3,
                )
            )
    if results.scale is not None:
        for row in results.scale:
            if row.target == "direct":
                continue
            errors = row.pgbench.failed + row.pgbench.aborted_clients + row.load.refused
            errors += row.load.failed + (0 if row.pgbench.returncode == 0 else 1)
            rows.append((f"{row.clients} clients pooled: 0 errors", str(errors), errors == 0))
    if results.reconfig is not None:
        rc = results.reconfig
        failed = rc.failed + rc.aborted_clients
        rows.append(("0 failed transactions during reconfiguration", str(failed), failed == 0))
    if results.hooks is not None:
        worst = max(results.hooks.costs, key=lambda c: c.ratio("wall_ms"))
        rows.append(
            (
                "hook cost <= 1.5x the minimal charm (wall, worst hook)",
                f"{worst.ratio('wall_ms'):.2f}x ({worst.hook})",
                worst.ratio("wall_ms") <= 1.5,
            )
        )
    if not rows:
        return []
    lines = [
        "## Targets of the issue (reported, not asserted)",
        "",
        "| target | this run | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {'yes' if ok else '**no**'} |" for t, v, ok in rows]
    lines += [
        "",
        "Why a target is missed, with evidence, and what would fix it: `bench/README.md`.",
    ]
    return lines


def chart(tput, path: Path) -> Path | None:
    """Bar chart of part 1 (tps per target, persistent and -C side by side)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    targets = ["direct", "N=1", "N=2"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, mode in zip(axes, ("persistent", "connect (-C)"), strict=True):
        values = [tput.cell(t, mode).tps for t in targets]
        bars = ax.bar(targets, values, color=["#888888", "#3b7dd8", "#1f4e9c"])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_title(f"pgbench -S, {mode}")
        ax.set_ylabel("tps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: Results) -> Path:
    """Write ``latest.md`` (and the chart) into the settings' results directory."""
    out = results.settings.results_dir
    out.mkdir(parents=True, exist_ok=True)
    machine = describe()
    lines = [
        "# pgbouncer-k8s benchmark results",
        "",
        f"Run {results.started:%Y-%m-%d %H:%M} UTC, {results.seconds:.0f} s in all"
        + (
            " (QUICK mode: durations shrunk, figures not meaningful)"
            if results.settings.quick
            else ""
        )
        + ". Produced by `make bench`; what each figure means: `bench/README.md`.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
    ]
    if results.throughput is not None:
        lines += throughput_section(results.throughput)
        png = chart(results.throughput, out / "throughput.png")
        if png is not None:
            lines += ["", f"![throughput]({png.name})"]
        lines.append("")
    if results.scale is not None:
        lines += [*scale_section(results.scale), ""]
    if results.reconfig is not None:
        from bench.reconfig import section

        lines += [*section(results.reconfig), ""]
    if results.hooks is not None:
        from bench.hooks import section as hook_section

        lines += [*hook_section(results.hooks), ""]
    if results.jujupath is not None:
        from bench.jujupath import section as jujupath_section

        lines += [*jujupath_section(results.jujupath), ""]
    lines += [*targets_section(results), ""]
    for part, error in results.failures.items():
        lines += [f"## {part}: did not complete", "", f"```\n{error}\n```", ""]
    path = out / "latest.md"
    path.write_text("\n".join(lines))
    return path


def summary(results: Results) -> str:
    """The report's tables, for the terminal."""
    return (results.settings.results_dir / "latest.md").read_text()
