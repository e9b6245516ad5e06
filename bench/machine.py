"""What machine and software a run happened on, for the report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from bench.pgbench import PGBENCH


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def describe() -> dict[str, str]:
    """Cores, CPU model, memory, OS, and the versions of what was measured."""
    from harness.servers.system import PG_BIN, pgbouncer_version

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    os_name = "unknown"
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": f"{os_name}, kernel {platform.release()}",
        "Python": platform.python_version(),
        "PostgreSQL": _first_line([str(PG_BIN / "postgres"), "--version"]),
        "pgbench": _first_line([str(PGBENCH), "--version"]),
        "PgBouncer": pgbouncer_version(),
    }
