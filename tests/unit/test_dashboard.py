"""The Grafana dashboard: valid JSON, every query valid PromQL (promtool), only promised metrics.

``promtool check rules`` parses each panel query, wrapped as a recording rule, with Grafana's
variables replaced by what Grafana would put there (``.*`` for "All", ``5m`` for
``$__rate_interval``). Every metric a query names must be one docs/observability.md promises.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "src" / "grafana_dashboards" / "pgbouncer.json"
DOC = ROOT / "docs" / "observability.md"
_METRIC = re.compile(r"\b(pgbouncer_[a-z_]+)\b")


def _queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"]) for panel in dash["panels"] for target in panel["targets"]
    ]


def _substitute(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r'"\$[a-z_]+"', '".*"', expr)


def test_every_panel_query_is_valid_promql(tmp_path: Path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.fail("promtool missing: run `make setup`")
    queries = _queries()
    assert len(queries) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": _substitute(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_query_is_caught(tmp_path: Path):
    """The check above can fail: an unbalanced parenthesis is refused."""
    promtool = shutil.which("promtool")
    assert promtool
    path = tmp_path / "broken.yaml"
    rules = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(pgbouncer_up"}]}]}
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, check=False)
    assert out.returncode != 0


def test_the_dashboard_uses_only_promised_metrics_and_shows_units_and_processes():
    promised = set(_METRIC.findall(DOC.read_text()))
    used: set[str] = set()
    for _, expr in _queries():
        used |= set(_METRIC.findall(expr))
    # A regex over the server connection states names them through __name__.
    used.discard("pgbouncer_pools_server_")
    assert used <= promised, used - promised
    exprs = " ".join(expr for _, expr in _queries())
    assert "by (juju_unit)" in exprs and "by (juju_unit, process)" in exprs
    for _, expr in _queries():
        assert 'process=~"$process"' in expr, expr
