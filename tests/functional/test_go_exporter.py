"""The default image's Go ``pgbouncer_exporter``, driven as the charm drives it, for real.

Real PostgreSQL 15, two real PgBouncer processes rendered by ``pgbouncer.config`` (the rig of
``test_exporter``), and the real Go exporter: prometheus-community's ``pgbouncer_exporter`` as
Debian packages it (0.12.0, fetched by ``scripts/setup-system.sh`` into
``.build/go-exporter``; the default image carries 0.7.0, whose flags and names
docs/image.md sets side by side). The Pebble service ``go_exporter_service`` builds is run
as-is (its command through ``shlex``, as the ``postgres`` user, the image's PATH only) on the
targets file ``render_targets`` writes. Then the real Prometheus (Debian's, beside promtool)
scrapes it with the scrape jobs we publish, target ``*`` replaced by the unit address and the
Juju labels added as the COS consumer does, loads our alert rules, and is asked for every
series the rules name, per process.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml

from harness.servers.system import (
    PROJECT_ROOT,
    as_service_user,
    free_port,
    stop_process,
    wait_for_port,
    write_service_file,
)
from pgbouncer.exporter import EXPORTER_SERVICE, exporter_config_path, passfile_path
from pgbouncer.go_exporter import ADMIN_USER, render_targets, scrape_jobs
from pgbouncer.plan import build_layer
from pgbouncer.slots import run_dir
from relations.metrics import (
    JOB_NAME,
    METRICS_PATH,
    JujuTopology,
    load_alert_rules,
    render_alert_rules,
)
from tests.functional.test_exporter import (  # noqa: F401 (the rig fixture)
    CLIENTS,
    Rig,
    _pgbench,
    metric_sum,
    parse_metrics,
    pools_of,
    rig,
)

pytestmark = pytest.mark.needs_root

GO_BIN = PROJECT_ROOT / ".build" / "go-exporter" / "bin"
TOPOLOGY = JujuTopology(
    "dev", "f0e1d2c3-b4a5-4697-8899-aabbccddeeff", "pgb", "pgbouncer-k8s", "pgb/0"
)


def _two_free_ports() -> int:
    """A port p with p and p + 1 free on every address (the exporters listen on ``:p``)."""
    for _ in range(50):
        first = free_port()
        try:
            for port in (first, first + 1):
                with socket.socket() as sock:
                    sock.bind(("", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no two consecutive free ports")


@dataclass
class GoExporters:
    proc: subprocess.Popen
    first_port: int
    log_path: Path

    def scrape(self, index: int) -> str:
        url = f"http://127.0.0.1:{self.first_port + index}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start(the_rig: Rig, first_port: int) -> GoExporters:
    base = str(the_rig.base)
    write_service_file(
        Path(exporter_config_path(base)),
        render_targets(2, the_rig.port, base, first_port=first_port),
    )
    layer = build_layer(2, the_rig.port, base, exporter="go")
    service = layer.get("services", {})[EXPORTER_SERVICE]
    assert service.get("user") == "postgres" and "environment" not in service
    command = service.get("command", "")
    assert the_rig.stats_password not in command
    log_path = the_rig.base / "go-exporter.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            as_service_user(shlex.split(command)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": f"{GO_BIN}:/usr/bin:/bin"},  # the image's PATH, nothing of ours
        )
    exp = GoExporters(proc, first_port, log_path)
    wait_for_port(first_port, timeout=20)
    wait_for_port(first_port + 1, timeout=20)
    return exp


@pytest.fixture
def go_exporters(rig: Rig) -> Iterator[GoExporters]:  # noqa: F811
    if not (GO_BIN / "pgbouncer_exporter").exists():
        pytest.skip("the Go pgbouncer_exporter was not fetched (scripts/setup-system.sh)")
    exp = _start(rig, _two_free_ports())
    try:
        yield exp
    finally:
        stop_process(exp.proc, signal.SIGTERM, grace=8)


def test_each_process_is_read_through_its_socket_without_a_password(
    rig: Rig,  # noqa: F811
    go_exporters: GoExporters,
):
    assert not Path(passfile_path(str(rig.base))).exists()  # nothing holds a password
    benches = [_pgbench(rig, i, n, 20) for i, n in CLIENTS.items()]
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if [c for c, _ in (pools_of(rig, i) for i in CLIENTS)] == list(CLIENTS.values()):
                break
            time.sleep(0.3)
        seen: dict[int, int] = {}
        truth: dict[int, int] = {}
        for _attempt in range(10):
            seen = {}
            for i in CLIENTS:
                samples = parse_metrics(go_exporters.scrape(i))
                seen[i] = int(
                    metric_sum(samples, "pgbouncer_pools_client_active_connections")
                    + metric_sum(samples, "pgbouncer_pools_client_waiting_connections")
                    - metric_sum(
                        samples, "pgbouncer_pools_client_active_connections", database="pgbouncer"
                    )
                )
            truth = {i: pools_of(rig, i)[0] for i in CLIENTS}
            if seen == truth == CLIENTS:
                break
            time.sleep(0.5)
        assert seen == truth == CLIENTS, (seen, truth, go_exporters.log())
        for i in CLIENTS:
            samples = parse_metrics(go_exporters.scrape(i))
            assert metric_sum(samples, "pgbouncer_up") == 1.0
    finally:
        for bench in benches:
            bench.wait(timeout=60)
    assert all(b.returncode == 0 for b in benches)


def test_the_passwordless_console_login_is_for_the_same_uid_only(rig: Rig):  # noqa: F811
    """What the Go path relies on (PgBouncer's usage docs, "Admin console"), both ways."""
    with pytest.raises(psycopg.OperationalError):  # this test runs as root, not as postgres
        psycopg.connect(
            host=run_dir(0, str(rig.base)),
            port=rig.port,
            dbname="pgbouncer",
            user=ADMIN_USER,
            connect_timeout=5,
        ).close()
    same_uid = subprocess.run(
        as_service_user(
            [
                "psql",
                "-XAtq",
                f"host={run_dir(0, str(rig.base))} port={rig.port} dbname=pgbouncer "
                f"user={ADMIN_USER} connect_timeout=5",
                "-c",
                "SHOW VERSION",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": ""},
    )
    assert same_uid.returncode == 0 and "PgBouncer" in same_uid.stdout, same_uid.stderr


def test_one_exporter_ending_restarts_the_lot_and_sigterm_stops_every_one(
    rig: Rig,  # noqa: F811
    go_exporters: GoExporters,
):
    children = subprocess.run(
        ["pgrep", "-P", str(go_exporters.proc.pid), "pgbouncer_expor"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(children) == 2
    subprocess.run(["kill", "-KILL", children[1]], check=True)
    assert go_exporters.proc.wait(timeout=10) == 1  # Pebble restarts on failure
    for port in (go_exporters.first_port, go_exporters.first_port + 1):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "an exporter ended" in go_exporters.log()

    again = _start(rig, go_exporters.first_port)
    pids = subprocess.run(
        ["pgrep", "-P", str(again.proc.pid), "pgbouncer_expor"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    again.proc.send_signal(signal.SIGTERM)  # the harness's stop: the main process only
    assert again.proc.wait(timeout=10) == 0
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    assert alive == [], f"exporters left running: {alive}"


def _prometheus_config(first_port: int, rules_file: Path) -> dict:
    """Our jobs as the COS consumer turns them into a scrape configuration.

    ``*`` becomes the unit's address (here the loopback, the exporters' port shifted to the free ones) and the
    Juju topology is added to the target labels.
    """
    jobs = scrape_jobs(2, JOB_NAME, METRICS_PATH)
    for job in jobs:
        for static in job["static_configs"]:
            index = int(static["labels"]["process"])
            static["targets"] = [f"127.0.0.1:{first_port + index}"]
            static["labels"].update(
                {
                    "juju_model": TOPOLOGY.model,
                    "juju_model_uuid": TOPOLOGY.model_uuid,
                    "juju_application": TOPOLOGY.application,
                    "juju_unit": TOPOLOGY.unit,
                    "juju_charm": TOPOLOGY.charm_name,
                }
            )
        job["scrape_interval"] = "1s"
    return {
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": jobs,
    }


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_sees_every_series_the_alert_rules_name_per_process(
    rig: Rig,  # noqa: F811
    go_exporters: GoExporters,
    tmp_path: Path,
):
    rules = render_alert_rules(load_alert_rules(), TOPOLOGY)
    # One client per process holding a pool of the application's database (pools and stats
    # exist per pool), as an application would.
    clients = [
        psycopg.connect(
            host=run_dir(i, str(rig.base)),
            port=rig.port,
            dbname=rig.database,
            user=rig.app_user,
            password=rig.app_password,
            connect_timeout=5,
            autocommit=True,
        )
        for i in range(2)
    ]
    for client in clients:
        client.execute("SELECT 1")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rules))
    config_file = tmp_path / "prometheus.yaml"
    config_file.write_text(yaml.safe_dump(_prometheus_config(go_exporters.first_port, rules_file)))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            "nice",
            "prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        names = sorted(
            set(re.findall(r"\b(pgbouncer_[a-z_]+)\{", json.dumps(rules)))
            | {"pgbouncer_stats_queries_total", "pgbouncer_stats_transactions_total"}
        )
        missing: list[str] = ["(not scraped yet)"]
        deadline = time.monotonic() + 40
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            missing = []
            for name in names:
                per = {s["metric"].get("process") for s in _query(port, f'{name}{{job=~".+"}}')}
                if per != {"0", "1"}:
                    missing.append(f"{name}: processes {sorted(p or '-' for p in per)}")
        assert not missing, f"series the rules need are missing: {missing}"
        # Labels as promised: the entry is `database`, the backend one `backend_database`,
        # the admin console left out, the share of max_db_connections (20 over 2) per process.
        shares = _query(
            port, f'pgbouncer_databases_database_max_connections{{database="{rig.database}"}}'
        )
        assert sorted(
            (s["metric"]["process"], s["metric"]["backend_database"], s["value"][1])
            for s in shares
        ) == [("0", rig.database, "10"), ("1", rig.database, "10")]
        assert _query(port, '{database="pgbouncer"}') == []
        assert _query(port, '{__name__=~"pgbouncer_.+", name!=""}') == []
        limits = _query(port, "pgbouncer_config_max_client_conn")
        assert {s["metric"]["process"] for s in limits} == {"0", "1"}
        assert all(float(s["value"][1]) > 0 for s in limits)
        assert {s["metric"]["juju_unit"] for s in limits} == {TOPOLOGY.unit}
        # Every rule loads and evaluates without error against these series.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        health = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
        assert len(health) == 5 and set(health.values()) == {"ok"}, health
    finally:
        stop_process(prom, signal.SIGTERM, grace=10)
        log.close()
        for client in clients:
            client.close()
