"""The alert rules, rendered as the charm publishes them, checked and unit-tested by promtool.

``promtool check rules`` checks the syntax; ``promtool test rules`` evaluates each rule over
input series and compares the alerts that fire with the ones expected. Every rule has cases
with series that fire it and series that must not (below the threshold, too short, another
application's series). promtool is Debian's (``scripts/setup-system.sh`` installs it).

The promtool test file is built here from the cases below (the labels every alert carries are
filled in once, rather than repeated in YAML), written next to the rendered rules, and run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from relations.metrics import JujuTopology, load_alert_rules, render_alert_rules

TOPOLOGY = JujuTopology(
    model="prod",
    model_uuid="00000000-0000-4000-8000-000000000001",
    application="pgbouncer-k8s",
    charm_name="pgbouncer-k8s",
    unit="pgbouncer-k8s/0",
)
UNIT = "pgbouncer-k8s/0"
OTHER_APP = 'juju_model="prod",juju_model_uuid="00000000-0000-4000-8000-000000000001",juju_application="other",juju_unit="other/0",juju_charm="pgbouncer-k8s"'
OURS = (
    f'juju_model="{TOPOLOGY.model}",juju_model_uuid="{TOPOLOGY.model_uuid}",'
    f'juju_application="{TOPOLOGY.application}",juju_unit="{UNIT}",juju_charm="pgbouncer-k8s"'
)
BASE_LABELS = {
    "juju_model": TOPOLOGY.model,
    "juju_model_uuid": TOPOLOGY.model_uuid,
    "juju_application": TOPOLOGY.application,
    "juju_unit": UNIT,
}
RULE_LABELS = {**TOPOLOGY.labels()}


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool missing: run `make setup` (scripts/setup-system.sh installs it)")
    return found


def _alert(severity: str, summary: str, runbook: str, **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": {**BASE_LABELS, "juju_charm": "pgbouncer-k8s", **RULE_LABELS, **labels}
        | {"severity": severity},
        "exp_annotations": {"summary": summary, "runbook": f"docs/observability.md#{runbook}"},
    }


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


# Each case: (description, input series, [(eval_time, alertname, expected alerts)]).
CASES: list[tuple[str, list[dict[str, str]], list[tuple[str, str, list[dict[str, Any]]]]]] = [
    (
        "process 1 down for 3 minutes fires; process 0 up and another app's down process do not",
        [
            _series("pgbouncer_up", f'{OURS},process="0"', "1x10"),
            _series("pgbouncer_up", f'{OURS},process="1"', "1 1 0x8"),
            _series("pgbouncer_up", f'{OTHER_APP},process="0"', "0x10"),
        ],
        [
            ("1m", "PgBouncerProcessDown", []),
            ("3m", "PgBouncerProcessDown", []),  # down since 2m: not yet 2 minutes
            (
                "5m",
                "PgBouncerProcessDown",
                [
                    _alert(
                        "critical",
                        f"PgBouncer {UNIT} process 1 is down",
                        "pgbouncerprocessdown",
                        process="1",
                    )
                ],
            ),
        ],
    ),
    (
        "a down for one minute (a restart) does not fire",
        [_series("pgbouncer_up", f'{OURS},process="0"', "1 1 0 1x7")],
        [("2m", "PgBouncerProcessDown", []), ("6m", "PgBouncerProcessDown", [])],
    ),
    (
        "the exporter not scraped (up == 0) fires",
        [_series("up", f'{OURS},instance="10.1.2.3:9127",job="pgbouncer"', "0x6")],
        [
            (
                "4m",
                "PgBouncerProcessDown",
                [
                    _alert(
                        "critical",
                        f"PgBouncer {UNIT} process  is down",
                        "pgbouncerprocessdown",
                        instance="10.1.2.3:9127",
                        job="pgbouncer",
                    )
                ],
            )
        ],
    ),
    (
        "clients waiting 8 s for 2 minutes fire; 4 s and other apps do not",
        [
            _series(
                "pgbouncer_pools_client_maxwait_seconds",
                f'{OURS},process="0",database="app",user="u1"',
                "8x5",
            ),
            _series(
                "pgbouncer_pools_client_maxwait_seconds",
                f'{OURS},process="1",database="app",user="u1"',
                "4x5",
            ),
            _series(
                "pgbouncer_pools_client_maxwait_seconds",
                f'{OTHER_APP},process="0",database="app",user="u1"',
                "30x5",
            ),
        ],
        [
            ("0m", "PgBouncerClientsWaiting", []),
            (
                "2m",
                "PgBouncerClientsWaiting",
                [
                    {
                        **_alert(
                            "warning",
                            f"Clients of app on {UNIT} process 0 wait 8s for a server connection",
                            "pgbouncerclientswaiting",
                            process="0",
                            database="app",
                        ),
                    }
                ],
            ),
        ],
    ),
    (
        "a pool at max_db_connections with clients waiting fires; full but no queue does not",
        [
            _series(
                "pgbouncer_databases_database_current_connections",
                f'{OURS},process="0",database="app",backend_database="app"',
                "50x10",
            ),
            _series(
                "pgbouncer_databases_database_max_connections",
                f'{OURS},process="0",database="app",backend_database="app"',
                "50x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OURS},process="0",database="app",user="u1"',
                "3x10",
            ),
            # process 1: full, nobody waiting
            _series(
                "pgbouncer_databases_database_current_connections",
                f'{OURS},process="1",database="app",backend_database="app"',
                "50x10",
            ),
            _series(
                "pgbouncer_databases_database_max_connections",
                f'{OURS},process="1",database="app",backend_database="app"',
                "50x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OURS},process="1",database="app",user="u1"',
                "0x10",
            ),
            # unlimited (max_connections 0) never saturates
            _series(
                "pgbouncer_databases_database_current_connections",
                f'{OURS},process="0",database="big",backend_database="big"',
                "90x10",
            ),
            _series(
                "pgbouncer_databases_database_max_connections",
                f'{OURS},process="0",database="big",backend_database="big"',
                "0x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OURS},process="0",database="big",user="u1"',
                "5x10",
            ),
        ],
        [
            ("4m", "PgBouncerPoolSaturated", []),
            (
                "6m",
                "PgBouncerPoolSaturated",
                [
                    _alert(
                        "warning",
                        f"app on {UNIT} process 0 is at max_db_connections with clients waiting",
                        "pgbouncerpoolsaturated",
                        process="0",
                        database="app",
                    )
                ],
            ),
        ],
    ),
    (
        "9,000 of 10,000 client connections fire; 5,000 and other apps do not",
        [
            _series(
                "pgbouncer_pools_client_active_connections",
                f'{OURS},process="0",database="app",user="u1"',
                "8000x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OURS},process="0",database="app",user="u1"',
                "1000x10",
            ),
            _series("pgbouncer_config_max_client_conn", f'{OURS},process="0"', "10000x10"),
            _series(
                "pgbouncer_pools_client_active_connections",
                f'{OURS},process="1",database="app",user="u1"',
                "5000x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OURS},process="1",database="app",user="u1"',
                "0x10",
            ),
            _series("pgbouncer_config_max_client_conn", f'{OURS},process="1"', "10000x10"),
            _series(
                "pgbouncer_pools_client_active_connections",
                f'{OTHER_APP},process="0",database="app",user="u1"',
                "9999x10",
            ),
            _series(
                "pgbouncer_pools_client_waiting_connections",
                f'{OTHER_APP},process="0",database="app",user="u1"',
                "0x10",
            ),
            _series("pgbouncer_config_max_client_conn", f'{OTHER_APP},process="0"', "10000x10"),
        ],
        [
            ("4m", "PgBouncerClientConnectionsNearLimit", []),
            (
                "6m",
                "PgBouncerClientConnectionsNearLimit",
                [
                    _alert(
                        "warning",
                        f"{UNIT} process 0 holds 90% of max_client_conn",
                        "pgbouncerclientconnectionsnearlimit",
                        process="0",
                    )
                ],
            ),
        ],
    ),
    (
        "a server login pending for 6 minutes fires; a login that completes does not",
        [
            _series(
                "pgbouncer_pools_server_login_connections",
                f'{OURS},process="0",database="app",user="u1"',
                "1x10",
            ),
            _series(
                "pgbouncer_pools_server_login_connections",
                f'{OURS},process="1",database="app",user="u1"',
                "1 0 1 0 1 0 1 0 1 0 1",
            ),
        ],
        [
            ("4m", "PgBouncerServerLoginsFailing", []),
            (
                "6m",
                "PgBouncerServerLoginsFailing",
                [
                    _alert(
                        "critical",
                        f"Server logins to app from {UNIT} process 0 keep failing",
                        "pgbouncerserverloginsfailing",
                        process="0",
                        database="app",
                    )
                ],
            ),
        ],
    ),
]


def _test_file(cases: list) -> dict[str, Any]:
    tests = []
    for _name, series, checks in cases:
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert, "exp_alerts": expected}
                    for at, alert, expected in checks
                ],
            }
        )
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


def _write(tmp_path: Path, cases: list, rules: dict[str, Any] | None = None) -> Path:
    rendered = rules or render_alert_rules(load_alert_rules(), TOPOLOGY)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered, sort_keys=False))
    test = tmp_path / "rules_test.yaml"
    test.write_text(yaml.safe_dump(_test_file(cases), sort_keys=False))
    return test


def test_promtool_check_rules_accepts_the_rendered_rules(tmp_path: Path):
    _write(tmp_path, CASES)
    out = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout


def test_promtool_test_rules_every_case(tmp_path: Path):
    test = _write(tmp_path, CASES)
    out = subprocess.run(
        [promtool(), "test", "rules", str(test)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_rule_has_a_firing_case_and_a_silent_case():
    rules = load_alert_rules()
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    fires = {alert for _, _, checks in CASES for _, alert, exp in checks if exp}
    silent = {alert for _, _, checks in CASES for _, alert, exp in checks if not exp}
    assert names == fires == silent, (names, fires, silent)


def test_promtool_reports_a_firing_alert_when_told_none_fires(tmp_path: Path):
    """The tests can fail: expecting silence where the rule fires fails, naming the alert.

    promtool prints the alert that fired (the closing note quotes this output).
    """
    name, series, _ = CASES[0]
    wrong = [(name, series, [("5m", "PgBouncerProcessDown", [])])]
    test = _write(tmp_path, wrong)
    out = subprocess.run(
        [promtool(), "test", "rules", str(test)], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    report = out.stdout + out.stderr
    assert "PgBouncerProcessDown" in report
    assert 'process="1"' in report
    assert 'severity="critical"' in report
    print(report)


def test_rules_without_the_topology_would_fire_on_another_application(tmp_path: Path):
    """The topology matchers keep another application's series out.

    Rendered with no matchers, the other application's down process fires too.
    """
    rules = load_alert_rules()
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace("%%juju_topology%%", "")
            rule["labels"] = {**rule.get("labels", {}), **TOPOLOGY.labels()}
            rule.setdefault("annotations", {})
    name, series, checks = CASES[0]
    test = _write(tmp_path, [(name, series, checks)], rules=rules)
    out = subprocess.run(
        [promtool(), "test", "rules", str(test)], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    assert 'juju_unit="other/0"' in out.stdout + out.stderr


def test_topology_values_are_checked_before_they_reach_promql():
    hostile = JujuTopology(
        model='prod",juju_application=~".*',
        model_uuid=TOPOLOGY.model_uuid,
        application="a",
        charm_name="c",
        unit="a/0",
    )
    with pytest.raises(ValueError, match="model"):
        render_alert_rules(load_alert_rules(), hostile)
