"""Benchmarks of pgbouncer-k8s on real PostgreSQL and PgBouncer processes (``make bench``).

``python -m bench`` measures, in one run: throughput direct vs. through our rendered
configuration (one and two PgBouncer processes), connection scale beyond ``max_connections``,
reconfiguration under load, and the cost of one charm hook. Figures go to stdout and to
``bench/results/latest.md`` (``bench/results/tmp/`` in quick mode). See ``bench/README.md``.

The charm's own modules live in ``src/`` (the charm root puts them on ``sys.path``, as Juju's
dispatch does); the throwaway-server helpers live in ``harness/servers``. Both are made importable
here so that ``python -m bench`` works from the repository root without installation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

for _path in (ROOT / "src", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
