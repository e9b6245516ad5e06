"""The Go exporters' pure parts: the service, the targets file, the scrape jobs."""

from __future__ import annotations

import shlex

import pytest

from pgbouncer.exporter import exporter_service, retarget
from pgbouncer.go_exporter import (
    SUPERVISOR,
    go_exporter_service,
    is_targets,
    render_targets,
    scrape_jobs,
)
from pgbouncer.ini import RenderError
from pgbouncer.plan import build_layer
from pgbouncer.slots import run_dir


def test_the_command_parses_back_to_the_supervisor_and_names_only_the_targets_file():
    command = go_exporter_service("/var/lib/pgbouncer").get("command", "")
    assert shlex.split(command) == [
        "sh",
        "-c",
        SUPERVISOR,
        "metrics_exporter",
        "/var/lib/pgbouncer/exporter.yaml",
    ]
    assert "'" not in SUPERVISOR  # Pebble's parser sees one quoted word
    # Only the documented flags (docs/image.md), and no password anywhere.
    flags = {word.split("=")[0].strip('"') for word in SUPERVISOR.split() if "--" in word}
    assert flags == {"--log.level", "--web.listen-address", "--pgBouncer.connectionString"}
    assert "password" not in SUPERVISOR.lower()
    assert exporter_service(go=True) == go_exporter_service()


def test_the_layer_runs_the_go_service_under_the_one_exporter_name():
    layer = build_layer(2, 6432, "/var/lib/pgbouncer", exporter="go")
    assert layer.get("services", {})["metrics_exporter"] == go_exporter_service()
    python = build_layer(2, 6432, "/var/lib/pgbouncer", exporter=True)
    assert (
        python.get("services", {})["metrics_exporter"]
        .get("command", "")
        .startswith("pgbouncer-exporter ")
    )


def test_targets_follow_a_hand_over_and_refuse_what_they_cannot_carry():
    text = render_targets(2, 6432, "/var/lib/pgbouncer")
    assert is_targets(text) and not is_targets('{"pgbouncers": []}')
    moved = retarget(text, {1: 1}, "/var/lib/pgbouncer")
    assert moved.splitlines()[1:] == [
        "0 9127 /var/lib/pgbouncer/run/0 6432",
        f"1 9128 {run_dir(1, '/var/lib/pgbouncer', 1)} 6432",
    ]
    assert run_dir(1, "/var/lib/pgbouncer", 1) != run_dir(1, "/var/lib/pgbouncer")
    assert retarget(text, {}, "/var/lib/pgbouncer") == text
    for bad in ("/var/lib/pg bouncer", "/var/lib/$(id)", "relative", "/var/lib/a&b"):
        with pytest.raises(RenderError):
            render_targets(1, 6432, bad)
    for processes in (0, 5):
        with pytest.raises(RenderError):
            render_targets(processes, 6432)
    with pytest.raises(RenderError):
        retarget(text.replace("6432", "x"), {1: 1}, "/var/lib/pgbouncer")


def test_one_job_per_process_each_on_its_port_with_its_label():
    jobs = scrape_jobs(3, "pgbouncer", "/metrics")
    assert [j["static_configs"] for j in jobs] == [
        [{"targets": [f"*:{9127 + i}"], "labels": {"process": str(i)}}] for i in range(3)
    ]
    assert len({j["job_name"] for j in jobs}) == 3
    with pytest.raises(RenderError):
        scrape_jobs(0, "pgbouncer", "/metrics")
