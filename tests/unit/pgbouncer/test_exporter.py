"""The exporter's files and the stats identity, rendered (pure; the real thing is functional)."""

from __future__ import annotations

import json

import pytest

from pgbouncer.config import (
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    render_ini,
)
from pgbouncer.exporter import (
    STATS_USER,
    exporter_service,
    render_exporter_config,
    render_exporter_files,
    render_passfile,
    render_stats_auth_line,
    retarget,
    scram_verifier,
)
from pgbouncer.ini import RenderError, parse_ini
from pgbouncer.plan import build_layer
from postgres.passwords import generate_password, scram_verifier_matches

PASSWORD = generate_password()


def test_the_config_names_each_process_socket_and_labels_it():
    config = json.loads(render_exporter_config(3, 6432, "/var/lib/pgbouncer"))
    assert config["exporter_host"] == "0.0.0.0"  # noqa: S104 (Prometheus scrapes the pod)
    assert config["exporter_port"] == 9127
    targets = config["pgbouncers"]
    assert [t["extra_labels"] for t in targets] == [
        {"process": "0"},
        {"process": "1"},
        {"process": "2"},
    ]
    for index, target in enumerate(targets):
        assert f"host=/var/lib/pgbouncer/run/{index} port=6432 " in target["dsn"]
        assert "passfile=/var/lib/pgbouncer/exporter.pgpass" in target["dsn"]
        assert "password" not in target["dsn"].replace("passfile", "")
        assert target["exclude_databases"] == ["pgbouncer"]
        assert "$" not in target["dsn"]  # the exporter would expand $(NAME) from its environment


@pytest.mark.parametrize("base_dir", ["/tmp/a b", "/tmp/a'b", "/tmp/$(HOME)", "/tmp/a=b"])
def test_a_path_that_would_need_quoting_in_a_conninfo_is_refused(base_dir):
    with pytest.raises(RenderError):
        render_exporter_config(1, 6432, base_dir)


@pytest.mark.parametrize(
    "password",
    ["short", "a" * 31, "a" * 101, "x" * 40 + ":*", "x" * 40 + "\n*:*:*:postgres:y", "é" * 40, 42],
)
def test_a_password_the_charm_would_not_generate_is_refused(password):
    with pytest.raises(RenderError):
        render_passfile(password)  # type: ignore[arg-type]
    with pytest.raises(RenderError):
        render_stats_auth_line(password)  # type: ignore[arg-type]


def test_the_verifier_is_scram_of_the_password_and_stable():
    verifier = scram_verifier(PASSWORD)
    # Checked by the project's independent verifier check (postgres.passwords).
    assert scram_verifier_matches(verifier, PASSWORD)
    assert not scram_verifier_matches(verifier, generate_password())
    assert scram_verifier(PASSWORD) == verifier  # same password, same file: no reload
    assert scram_verifier(generate_password()) != verifier
    line = render_stats_auth_line(PASSWORD)
    assert line == f'"{STATS_USER}" "{verifier}"\n'
    assert PASSWORD not in line


def test_the_passfile_and_the_plan_hold_the_password_only_where_intended():
    files = render_exporter_files(2, 6432, PASSWORD)
    assert (
        files["/var/lib/pgbouncer/exporter.pgpass"] == f"*:*:pgbouncer:{STATS_USER}:{PASSWORD}\n"
    )
    assert PASSWORD not in files["/var/lib/pgbouncer/exporter.yaml"]
    layer = build_layer(2, 6432, exporter=True)
    assert "services" in layer
    assert layer["services"]["metrics_exporter"] == exporter_service()
    assert PASSWORD not in json.dumps(layer)
    without = build_layer(2, 6432)
    assert "services" in without
    assert "metrics_exporter" not in without["services"]


def _cfg(**kw) -> PgBouncerConfig:
    base = {
        "listen_port": 6432,
        "pool_mode": "session",
        "max_db_connections": 10,
        "max_prepared_statements": 0,
        "processes": 1,
        "databases": (DatabaseTarget("app", "10.0.0.1", 5432, "app"),),
    }
    return PgBouncerConfig(**(base | kw))


def test_stats_users_is_rendered_only_when_asked():
    assert "stats_users" not in render_ini(_cfg(), 0)
    ini = parse_ini(render_ini(_cfg(stats_user=STATS_USER), 0))
    assert ini["pgbouncer"]["stats_users"] == STATS_USER
    assert "admin_users" not in ini["pgbouncer"]


@pytest.mark.parametrize("user", ["a b", "x\nadmin_users = x", "", "x,postgres"])
def test_a_hostile_stats_user_is_refused(user):
    with pytest.raises(RenderError):
        render_ini(_cfg(stats_user=user), 0)


def test_the_auth_user_cannot_be_the_stats_user():
    auth = AuthSettings(auth_user="pgbouncer_auth_x", auth_query="SELECT 1", auth_dbname="app")
    with pytest.raises(RenderError, match="stats_user"):
        render_ini(_cfg(auth=auth, stats_user="pgbouncer_auth_x"), 0)


def test_retarget_reads_each_process_through_its_serving_slot():
    config = render_exporter_config(3, 6432, "/var/lib/pgbouncer")
    assert retarget(config, {0: 0, 1: 0}) == config
    moved = json.loads(retarget(config, {0: 2, 1: 0, 2: 1}))
    hosts = [t["dsn"].split()[0] for t in moved["pgbouncers"]]
    assert hosts == [
        "host=/var/lib/pgbouncer/run/0_twin2",
        "host=/var/lib/pgbouncer/run/1",
        "host=/var/lib/pgbouncer/run/2_twin",
    ]
    assert [t["extra_labels"] for t in moved["pgbouncers"]] == [
        {"process": str(i)} for i in range(3)
    ]


@pytest.mark.parametrize("config", ["", "[]", '{"pgbouncers": [{"dsn": "host=/elsewhere"}]}'])
def test_retarget_refuses_a_configuration_it_did_not_render(config):
    with pytest.raises(RenderError):
        retarget(config, {0: 1})
