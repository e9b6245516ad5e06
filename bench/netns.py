"""Run one bench module in a private network namespace (loopback only) and read its JSON.

The charm renders ``listen_addr = *``; parts that drive the charm run their servers, PgBouncer
and clients inside ``unshare --net`` so that nothing listens beyond a loopback the host never
sees. The module is started as ``python -m <module> <out>`` and must write its figures to
``<out>`` as JSON.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import ROOT


def run_module(module: str, out: Path, timeout: float, what: str) -> dict[str, Any]:
    """Run ``module`` in a new network namespace; its JSON output, parsed.

    Raises:
        RuntimeError: it timed out (it is terminated, then killed), failed or wrote nothing.
    """
    cmd = [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        f'ip link set lo up && exec "$0" -m {module} "$1"',
        sys.executable,
        str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise RuntimeError(f"the {what} benchmark timed out") from None
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"the {what} benchmark failed (exit {proc.returncode})")
    return json.loads(out.read_text())
