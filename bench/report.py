"""The benchmark report: figures as Markdown tables (``latest.md``) and a chart (PNG)."""

from __future__ import annotations

import datetime as dt
import statistics
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
    tls: Any = None
    jujupath: Any = None
    changes: Any = None
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


def _targets(tput) -> list[str]:
    return list(dict.fromkeys(t for t, _ in tput.cells))


def _baseline(tput, target: str) -> str:
    return "direct, pinned" if tput.cell(target, "persistent").pinned else "direct"


def _range(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def throughput_section(tput) -> list[str]:
    """Markdown of part 1."""
    s = tput.settings
    lines = [
        "## 1. Throughput: pgbench select-only",
        "",
        f"`pgbench -S -c {s.clients} -j {s.threads} -T {s.run_seconds}`, scale {s.scale},"
        f" {s.rounds} interleaved rounds, **median (min-max)**; a ratio is taken within each"
        f" round, then its median and range. Transaction pool mode; {tput.auth_note}."
        " `incumbent` = PgBouncer started with the incumbent charm's documented settings for the"
        " same inputs (`bench/incumbent.py`). `pinned` = PostgreSQL and pgbench on CPU 0,"
        " PgBouncer alone on CPU 1 (its direct baseline pinned the same way). CPU is percent of"
        " one core over the run (2 cores = 200 %), median over the rounds, per PgBouncer process;"
        " PgBouncer CPU per transaction is all its processes' CPU time over the transactions.",
        "",
        "| connections | target | tps | mean latency (ms) | failed | vs direct (same pinning) | PgBouncer CPU per txn (us) | CPU (median) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for mode in ("persistent", "connect (-C)"):
        for target in _targets(tput):
            cell = tput.cell(target, mode)
            base = _baseline(tput, target)
            ratio = "1.00" if target == base else tput.ratio_text(target, base, mode)
            us = cell.pgbouncer_us_per_txn()
            lines.append(
                f"| {mode} | {target} | {_range([r.tps for r in cell.runs])} |"
                f" {_fmt(cell.latency_ms, 3)} | {cell.failed} | {ratio} |"
                f" {_range(us, 1) if us else '-'} | {_cpu_text(cell.median_cpu())} |"
            )
    lines += [
        "",
        "| ratio (per round: median (min-max)) | persistent | connect (-C) |",
        "|---|---:|---:|",
    ]
    pairs = [
        ("N=1 / direct", "N=1", "direct"),
        ("N=2 / direct", "N=2", "direct"),
        ("N=2 / N=1", "N=2", "N=1"),
    ]
    targets = _targets(tput)
    inc = next((t for t in targets if t.startswith("incumbent (")), None)
    if inc:
        pairs += [
            (f"ours N=2 / {inc}", "N=2", inc),
            (f"ours N=1 / {inc}", "N=1", inc),
        ]
    if "N=1, pinned" in targets:
        pairs += [
            ("N=1, pinned / direct, pinned", "N=1, pinned", "direct, pinned"),
            ("incumbent, pinned / direct, pinned", "incumbent, pinned", "direct, pinned"),
            ("ours / incumbent, both pinned", "N=1, pinned", "incumbent, pinned"),
        ]
    for label, num, den in pairs:
        lines.append(
            f"| {label} | {tput.ratio_text(num, den, 'persistent')} |"
            f" {tput.ratio_text(num, den, 'connect (-C)')} |"
        )
    lines += ["", "Per round (tps):", ""]
    lines += [
        "| connections | target | " + " | ".join(f"round {i + 1}" for i in range(s.rounds)) + " |"
    ]
    lines += ["|---|---|" + "---:|" * s.rounds]
    for mode in ("persistent", "connect (-C)"):
        for target in targets:
            cell = tput.cell(target, mode)
            lines.append(
                f"| {mode} | {target} | " + " | ".join(_fmt(r.tps) for r in cell.runs) + " |"
            )
    return lines


def scale_section(rows) -> list[str]:
    """Markdown of part 2: one line per (clients, target), median (min-max) over the rounds."""
    groups: dict[tuple[int, str], list] = {}
    for row in rows:
        groups.setdefault((row.clients, row.target), []).append(row)
    rounds = max((len(g) for g in groups.values()), default=0)
    lines = [
        "## 2. Connection scale: PostgreSQL `max_connections = 50`",
        "",
        "Pooled: our rendered configuration, two processes, transaction pool,"
        " `max_db_connections = 40` for the unit (20 per process). pgbench `-S -j 2`;"
        " the load generator is `bench/loadgen.py` (asyncio + psycopg, one process: its rate is"
        f" bounded by its own CPU and only compares with itself). {rounds} interleaved rounds:"
        " median (min-max); outcomes and peaks over all rounds.",
        "",
        "| clients | target | pgbench tps | pgbench outcomes | loadgen connected / refused / failed (min-max) | loadgen qps | peak server connections (max) |",
        "|---:|---|---:|---|---|---:|---:|",
    ]
    for (clients, target), group in groups.items():
        outcomes: list[str] = []
        for row in group:
            b = row.pgbench
            if b.returncode == 0 and not b.errors:
                text = f"ok, {b.failed + b.aborted_clients} failed"
            else:
                first = b.errors[0].replace("|", "/")[:90] if b.errors else ""
                text = f"exit {b.returncode}: {first}"
            if text not in outcomes:
                outcomes.append(text)

        def span(values: list[int]) -> str:
            return (
                f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"
            )

        loads = [r.load for r in group]
        lines.append(
            f"| {clients} | {target} | {_range([r.pgbench.tps for r in group])} |"
            f" {'; '.join(outcomes)} | {span([x.connected for x in loads])} /"
            f" {span([x.refused for x in loads])} / {span([x.failed for x in loads])} |"
            f" {_range([x.qps for x in loads])} |"
            f" {max(r.peak_server_connections for r in group)} |"
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
            rows.append(
                (
                    f"pooled ({label}) >= 0.85x direct, persistent (unpinned)",
                    tput.ratio_text(label, "direct", "persistent"),
                    r >= 0.85,
                )
            )
            r = tput.ratio(label, "direct", "connect (-C)")
            rows.append(
                (
                    f"pooled ({label}) >= 1.9x direct, -C (unpinned)",
                    tput.ratio_text(label, "direct", "connect (-C)"),
                    r >= 1.9,
                )
            )
        for mode in ("persistent", "connect (-C)"):
            r = tput.ratio("N=2", "N=1", mode)
            rows.append((f"N=2 >= N=1 ({mode})", tput.ratio_text("N=2", "N=1", mode), r >= 1.0))
        inc = next((t for t in _targets(tput) if t.startswith("incumbent (")), None)
        if inc:
            for mode in ("persistent", "connect (-C)"):
                r = tput.ratio("N=2", inc, mode)
                rows.append(
                    (
                        f"our configuration >= the incumbent's, same run, unpinned ({mode})",
                        f"N=2 / {inc}: {tput.ratio_text('N=2', inc, mode)}",
                        r >= 1.0,
                    )
                )
        if tput.has("N=1, pinned"):
            for mode, goal in (("persistent", 0.9), ("connect (-C)", 2.0)):
                r = tput.ratio("N=1, pinned", "direct, pinned", mode)
                us = tput.cell("N=1, pinned", mode).pgbouncer_us_per_txn()
                rows.append(
                    (
                        f"PgBouncer on its own core >= {goal}x direct ({mode})",
                        f"{tput.ratio_text('N=1, pinned', 'direct, pinned', mode)};"
                        f" PgBouncer {_range(us, 1)} us CPU per transaction",
                        r >= goal,
                    )
                )
                r = tput.ratio("N=1, pinned", "incumbent, pinned", mode)
                rows.append(
                    (
                        f"our configuration >= the incumbent's, pinned ({mode})",
                        tput.ratio_text("N=1, pinned", "incumbent, pinned", mode),
                        r >= 1.0,
                    )
                )
    if results.scale is not None:
        errors_by_clients: dict[int, int] = {}
        for row in results.scale:
            if row.target == "direct":
                continue
            errors = row.pgbench.failed + row.pgbench.aborted_clients + row.load.refused
            errors += row.load.failed + (0 if row.pgbench.returncode == 0 else 1)
            errors_by_clients[row.clients] = errors_by_clients.get(row.clients, 0) + errors
        for clients, errors in errors_by_clients.items():
            rows.append(
                (f"{clients} clients pooled: 0 errors (all rounds)", str(errors), errors == 0)
            )
    if results.reconfig is not None:
        rc = results.reconfig
        failed = rc.failed + rc.aborted_clients
        rows.append(("0 failed transactions during reconfiguration", str(failed), failed == 0))
    if results.changes is not None:
        from bench.changes import target_rows

        rows += target_rows(results.changes)
    if results.hooks is not None:
        worst = max(results.hooks.costs, key=lambda c: c.ratio("wall_ms"))
        rows.append(
            (
                "Scenario-based: hook cost <= 1.5x the minimal charm (wall, worst hook)",
                f"{worst.ratio('wall_ms'):.2f}x ({worst.hook})",
                worst.ratio("wall_ms") <= 1.5,
            )
        )
    if results.jujupath is not None:
        jp = results.jujupath
        for case in jp.cases():
            ratios = jp.ratios(case)
            worst = max(ratios) if ratios else 0.0
            rows.append(
                (
                    f"real path, steady state: {case} <= 1.5x the minimal charm (wall, per round)",
                    jp.ratio_span(case),
                    bool(ratios) and worst <= 1.5,
                )
            )
        per_count: dict[str, dict[int, int]] = {}
        for case in jp.cases():
            base = case.split(" [")[0]
            clients = int(case.split("[")[1].split()[0]) if "[" in case else 10
            per_count.setdefault(base, {})[clients] = sum(jp.tools(case).values())
        for base, counts in per_count.items():
            if len(counts) > 1:
                rows.append(
                    (
                        f"real path: {base}: hook-tool calls independent of the client count",
                        ", ".join(f"{n} at {c} clients" for c, n in sorted(counts.items())),
                        len(set(counts.values())) == 1,
                    )
                )
        us = next((c for c in jp.cases() if c.startswith("update-status")), None)
        if us:
            rows.append(
                (
                    "update-status <= 0.4x the incumbent charm's",
                    f"ours {jp.median(us, 'ours', 'wall_ms'):.0f} ms; the incumbent charm is not"
                    " runnable here (Charmhub only, no network)",
                    None,
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
    met = {True: "yes", False: "**no**", None: "not measured"}
    lines += [f"| {t} | {v} | {met[ok]} |" for t, v, ok in rows]
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
    targets = _targets(tput)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, mode in zip(axes, ("persistent", "connect (-C)"), strict=True):
        values = [tput.cell(t, mode).tps for t in targets]
        lows = [v - tput.cell(t, mode).tps_range[0] for t, v in zip(targets, values, strict=True)]
        highs = [tput.cell(t, mode).tps_range[1] - v for t, v in zip(targets, values, strict=True)]
        bars = ax.bar(targets, values, yerr=[lows, highs], capsize=3, color="#3b7dd8")
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
        ax.set_title(f"pgbench -S, {mode}: median, bars = min-max")
        ax.set_ylabel("tps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SECTION_OF_PART = {
    "throughput": "## 1. ",
    "scale": "## 2. ",
    "reconfig": "## 3. ",
    "hooks": "## 4. ",
    "jujupath": "## 4a. ",
    "tls": "## 5. ",
    "changes": "## 6. ",
}
"""The heading each part's section (or its "did not complete" note) starts with."""
TARGETS_HEADING = "## Targets of the issue"


def _split(text: str) -> tuple[list[str], list[list[str]]]:
    """A report's lines before the first ``## `` heading, and each ``## `` section's lines."""
    head: list[str] = []
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        else:
            head.append(line)
    return head, sections


def _target_name(line: str) -> str | None:
    cells = line.split("|")
    if len(cells) < 4 or cells[1].strip() in ("target", "") or set(cells[1].strip()) <= {"-"}:
        return None
    return cells[1].strip()


def _merge_targets(old: list[str], new: list[str]) -> list[str]:
    """The new targets table plus the old rows of targets this run did not measure."""
    if not new:
        return old
    fresh = {_target_name(line) for line in new} - {None}
    kept = [line for line in old if _target_name(line) not in (None, *fresh)]
    if not kept:
        return new
    rows = [i for i, line in enumerate(new) if _target_name(line) is not None]
    return [*new[: rows[0]], *kept, *new[rows[0] :]]


def _merge(
    old_text: str, parts_run: tuple[str, ...], when: str, sections: list[list[str]]
) -> list[str]:
    """A partial run's report: its own sections, every other section kept from ``old_text``.

    Sections of parts not run keep their place and text; the targets table keeps the old rows of
    targets this run did not measure; the old header (date and length of the full run) stays,
    with a line saying which parts this run replaced.
    """
    old_head, old_sections = _split(old_text)
    run_prefixes = tuple(SECTION_OF_PART[p] for p in parts_run)

    def owner(section: list[str]) -> str:
        if section[0].startswith(TARGETS_HEADING):
            return TARGETS_HEADING
        return next((pre for pre in SECTION_OF_PART.values() if section[0].startswith(pre)), "")

    new_by_owner: dict[str, list[list[str]]] = {}
    for section in sections:
        new_by_owner.setdefault(owner(section), []).append(section)
    merged: list[list[str]] = []
    for section in old_sections:
        key = owner(section)
        if key == TARGETS_HEADING:
            new = new_by_owner.pop(key, [[]])[0]
            merged.append(_merge_targets(section, new))
        elif key in run_prefixes or (key == "" and key in new_by_owner):
            merged += new_by_owner.pop(key, [])
        else:
            merged.append(section)
    targets_at = next(
        (i for i, s in enumerate(merged) if s[0].startswith(TARGETS_HEADING)), len(merged)
    )
    rest = [s for group in new_by_owner.values() for s in group]
    merged[targets_at:targets_at] = rest
    numbers = [p.strip("# ").rstrip(".") for p in run_prefixes]
    note = (
        f"{'Sections' if len(numbers) > 1 else 'Section'} {', '.join(numbers)}"
        f" {'were' if len(numbers) > 1 else 'was'} re-run"
        f" alone (`BENCH_PARTS={','.join(parts_run)}`) on {when}."
    )
    rest_note = "Every section not named in such a line is from the run above."
    head: list[str] = []
    kept: list[str] = []  # notes of earlier partial runs whose sections this run left alone
    for line in old_head:
        if line == rest_note:
            continue
        if line.startswith(("Section ", "Sections ")):
            earlier = line.split(" were re-run")[0].split(" was re-run")[0].split(" ", 1)[1]
            if not {n.strip() for n in earlier.split(",")} & set(numbers):
                kept.append(line)
            continue
        if line == "" and head[-1:] == [""]:
            continue
        head.append(line)
    machine_at = next(
        (i for i, line in enumerate(head) if line.startswith("| machine")), len(head)
    )
    notes = (*kept, note, rest_note)
    head[machine_at:machine_at] = [line for note_line in notes for line in (note_line, "")]
    return [*head, *[line for s in merged for line in s], ""]


def write(results: Results) -> Path:
    """Write ``latest.md`` (and the chart) into the settings' results directory.

    A run of some parts only (``BENCH_PARTS``) replaces those parts' sections in an existing
    ``latest.md`` and keeps every other section (see :func:`_merge`).
    """
    out = results.settings.results_dir
    out.mkdir(parents=True, exist_ok=True)
    machine = describe()
    header = [
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
    sections: list[list[str]] = []
    if results.throughput is not None:
        lines = throughput_section(results.throughput)
        png = chart(results.throughput, out / "throughput.png")
        if png is not None:
            lines += ["", f"![throughput]({png.name})"]
        sections.append([*lines, ""])
    if results.scale is not None:
        sections.append([*scale_section(results.scale), ""])
    if results.reconfig is not None:
        from bench.reconfig import section

        sections.append([*section(results.reconfig), ""])
    if results.tls is not None:
        from bench.tls import section as tls_section

        sections.append([*tls_section(results.tls), ""])
    if results.hooks is not None:
        from bench.hooks import section as hook_section

        sections.append([*hook_section(results.hooks), ""])
    if results.jujupath is not None:
        from bench.jujupath import section as jujupath_section

        sections.append([*jujupath_section(results.jujupath), ""])
    if results.changes is not None:
        from bench.changes import section as changes_section

        sections.append([*changes_section(results.changes), ""])
    targets = targets_section(results)
    if targets:
        sections.append([*targets, ""])
    for part, error in results.failures.items():
        sections.append([f"## {part}: did not complete", "", f"```\n{error}\n```", ""])
    path = out / "latest.md"
    from bench.settings import PARTS

    if set(results.settings.parts) != set(PARTS) and path.exists():
        when = f"{results.started:%Y-%m-%d %H:%M} UTC ({results.seconds:.0f} s)"
        lines = _merge(path.read_text(), results.settings.parts, when, sections)
    else:
        lines = [*header, *[line for s in sections for line in s]]
    path.write_text("\n".join(lines))
    return path


def summary(results: Results) -> str:
    """The report's tables, for the terminal."""
    return (results.settings.results_dir / "latest.md").read_text()
