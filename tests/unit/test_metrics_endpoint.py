"""``metrics-endpoint`` (prometheus_scrape): our databags, the published schema, the charm.

Our databags are validated against the published schema, and the charm is seen publishing
them (Scenario), with the stats identity and the exporter's files.

The schema is ``interfaces/prometheus_scrape/v0/schemas/provider.json`` of
``canonical/charm-relation-interfaces`` (commit 1b799a6cbed3ad71c50e705861fe943989308c24),
stored in ``tests/unit/data/`` without its ``examples`` block (content otherwise unchanged).
Two weaknesses of that schema are made up for here: its ``items`` are draft-07 tuple form, so
only the first group, rule, job and target are checked (we check every one against the same
sub-schema), and the unit pattern ``^.*/d+$`` matches no unit name (``app/0``), so unit data is
checked against its sub-schema directly. The fields that the interface's pydantic models
(``schema.py``) require of every rule (``alert``, ``expr``, ``for``, ``labels``,
``annotations``) are checked too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ops import pebble, testing

from harness.processes import PebbleRecorder
from pgbouncer.exporter import (
    EXPORTER_PORT,
    EXPORTER_RELOAD_S,
    EXPORTER_SERVICE,
    STATS_USER,
    STATS_USERS,
)
from pgbouncer.go_exporter import go_exporter_service
from pgbouncer.image import VERSION_MARKER
from pgbouncer.plan import build_layer
from relations.metrics import (
    EXPORTER_KEY,
    STATS_SECRET_KEY,
    STATS_SECRET_LABEL,
    JujuTopology,
    app_databag,
    load_alert_rules,
    unit_databag,
)
from state.rotation import ROTATION_KEY, Rotation
from tests.unit.conftest import backend_relation, make_container, peer_relation

SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "prometheus_scrape_v0_provider.schema.json").read_text()
)
APP_SCHEMA = SCHEMA["properties"]["application-data"]
UNIT_SCHEMA = SCHEMA["properties"]["related-units"]["patternProperties"]["^.*/d+$"]
TOPOLOGY = JujuTopology(
    "dev", "f0e1d2c3-b4a5-4697-8899-aabbccddeeff", "pgb", "pgbouncer-k8s", "pgb/0"
)


def _check(instance: Any, schema: dict[str, Any]) -> None:
    """Validate against a sub-schema of the draft-07 document (its schema was checked whole)."""
    jsonschema.Draft7Validator(schema).validate(instance)


def validate_provider(app: dict[str, str], units: dict[str, dict[str, str]]) -> None:
    """Validate decoded databags as the schema describes them, every list item included."""
    decoded = {key: json.loads(value) for key, value in app.items()}
    document = {
        "application-data": decoded,
        "related-units": {name: {"data": data} for name, data in units.items()},
    }
    jsonschema.validate(document, SCHEMA, cls=jsonschema.Draft7Validator)  # checks SCHEMA
    props = APP_SCHEMA["properties"]
    group_schema = props["alert_rules"]["properties"]["groups"]["items"][0]
    rule_props = group_schema["properties"]["rules"]["items"][0]
    for group in decoded.get("alert_rules", {}).get("groups", []):
        _check(group, group_schema)
        for rule in group["rules"]:
            assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
            for field, sub in rule_props.items():
                _check(rule[field], sub)
    job_schema = props["scrape_jobs"]["items"][0]
    for job in decoded["scrape_jobs"]:
        _check(job, job_schema)
        target_schema = job_schema["properties"]["static_configs"]["items"][0]
        for static in job["static_configs"]:
            _check(static, target_schema)
    for data in units.values():
        _check({"data": data}, UNIT_SCHEMA)


def test_our_databags_validate_against_the_published_schema():
    app = app_databag(TOPOLOGY, load_alert_rules())
    units = {"pgb/0": unit_databag("pgb/0", "10.1.2.3")}
    validate_provider(app, units)
    jobs = json.loads(app["scrape_jobs"])
    assert jobs == [
        {
            "job_name": "pgbouncer",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"*:{EXPORTER_PORT}"]}],
        }
    ]
    rules = json.loads(app["alert_rules"])
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == 5
    for group in rules["groups"]:
        assert group["name"].startswith("dev_pgb_")
        for rule in group["rules"]:
            assert "%%juju_topology%%" not in rule["expr"]
            assert 'juju_application="pgb"' in rule["expr"]
            assert rule["labels"]["juju_model_uuid"] == TOPOLOGY.model_uuid


@pytest.mark.parametrize(
    ("where", "damage"),
    [
        ("app", lambda a, u: a.pop("scrape_metadata")),
        ("app", lambda a, u: a.update(scrape_jobs=json.dumps([{"metrics_path": "/metrics"}]))),
        (
            "app",
            lambda a, u: a.update(
                scrape_jobs=json.dumps(
                    [
                        {"metrics_path": "/m", "static_configs": [{"targets": ["*:1"]}]},
                        {"metrics_path": "/m", "static_configs": [{"targets": [9127]}]},
                    ]
                )
            ),
        ),
        ("unit", lambda a, u: u["pgb/0"].pop("prometheus_scrape_unit_address")),
        ("app", lambda a, u: a.update(alert_rules=json.dumps({"groups": [{"rules": [{}]}]}))),
    ],
)
def test_the_validation_rejects_damaged_databags(where, damage):
    """The check can fail: each damage is caught.

    The second job and the unit data are caught only by our item-by-item and unit checks,
    which the schema alone would let through.
    """
    app = app_databag(TOPOLOGY, load_alert_rules())
    units = {"pgb/0": unit_databag("pgb/0", "10.1.2.3")}
    damage(app, units)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        validate_provider(app, units)


# -- Scenario: the charm publishes ------------------------------------------------------------
def metrics_relation(**kwargs: Any) -> testing.Relation:
    return testing.Relation(
        "metrics-endpoint",
        interface="prometheus_scrape",
        remote_app_name="prometheus",
        remote_units_data={0: {}},
        **kwargs,
    )


def network(address: str) -> testing.Network:
    return testing.Network(
        "metrics-endpoint",
        bind_addresses=[testing.BindAddress([testing.Address(address)])],
        ingress_addresses=[address],
    )


def _state(dirs, relations, *, leader=True, address="10.1.2.3", secrets=(), processes=1):
    return testing.State(
        leader=leader,
        relations=relations,
        containers={make_container(dirs, processes=processes)},
        networks={network(address)},
        secrets=set(secrets),
        model=testing.Model(name="dev", uuid=TOPOLOGY.model_uuid),
    )


def _everything_in_databags(out: testing.State) -> str:
    return json.dumps(
        [
            [dict(r.local_app_data), dict(r.local_unit_data)]
            + (
                [dict(r.remote_app_data)]
                if isinstance(r, testing.Relation | testing.SubordinateRelation)
                else []
            )
            for r in out.relations
        ]
    )


def test_leader_publishes_job_rules_and_address_and_starts_the_exporter(ctx, dirs):
    rel = metrics_relation()
    out = ctx.run(ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel}))
    published = out.get_relation(rel.id)
    app, unit = dict(published.local_app_data), dict(published.local_unit_data)
    unit_name = unit["prometheus_scrape_unit_name"]
    validate_provider(app, {unit_name: unit})
    assert unit["prometheus_scrape_unit_address"] == "10.1.2.3"
    metadata = json.loads(app["scrape_metadata"])
    assert metadata["model"] == "dev" and metadata["charm_name"] == "pgbouncer-k8s"
    # The stats password: generated into an app secret; the peer databag holds only its id.
    secret = out.get_secret(label=STATS_SECRET_LABEL)
    password = secret.tracked_content["password"]
    assert len(password) >= 32
    peer = out.get_relation(next(r.id for r in out.relations if r.endpoint == "pgb-peers"))
    assert peer.local_app_data[STATS_SECRET_KEY]
    assert password not in _everything_in_databags(out)
    # The exporter runs, its files are there, 0600, and nothing secret is in the plan.
    container = out.get_container("pgbouncer")
    service = container.plan.services[EXPORTER_SERVICE]
    assert service.command.startswith("pgbouncer-exporter --config /var/lib/pgbouncer/")
    assert password not in json.dumps(container.plan.to_dict())
    assert stat.S_IMODE((dirs.pgb / "exporter.pgpass").stat().st_mode) == 0o600
    assert password in (dirs.pgb / "exporter.pgpass").read_text()
    assert password not in (dirs.pgb / "exporter.yaml").read_text()
    auth_file = (dirs.pgb / "userlist.txt").read_text()
    assert f'"{STATS_USER}" "SCRAM-SHA-256$' in auth_file
    assert password not in auth_file
    assert f"stats_users = {STATS_USER}" in (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert password not in " ".join(ctx.juju_log[i].message for i in range(len(ctx.juju_log)))


def test_an_address_change_updates_the_unit_job(ctx, dirs):
    rel = metrics_relation()
    first = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    moved = dataclasses.replace(first, networks={network("10.9.8.7")})
    out = ctx.run(ctx.on.update_status(), moved)
    unit = out.get_relation(rel.id).local_unit_data
    assert unit["prometheus_scrape_unit_address"] == "10.9.8.7"
    validate_provider(dict(out.get_relation(rel.id).local_app_data), {"pgb/0": dict(unit)})


def test_without_a_metrics_relation_there_is_a_stats_user_but_no_exporter(ctx, dirs):
    """The stats user serves show-pools from the start; the exporter waits for the relation."""
    out = ctx.run(ctx.on.config_changed(), _state(dirs, {peer_relation()}))
    assert EXPORTER_SERVICE not in out.get_container("pgbouncer").plan.services
    assert any(s.label == STATS_SECRET_LABEL for s in out.secrets)
    assert f'"{STATS_USER}" "SCRAM-SHA-256$' in (dirs.pgb / "userlist.txt").read_text()
    assert f"stats_users = {STATS_USER}\n" in (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert not (dirs.pgb / "exporter.pgpass").exists()
    assert not (dirs.pgb / "exporter.yaml").exists()
    # A follower without the leader's word on metrics runs no exporter either.
    follower = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, leader=False))
    assert EXPORTER_SERVICE not in follower.get_container("pgbouncer").plan.services


def test_a_non_leader_reads_the_shared_secret_and_publishes_only_its_own_address(ctx, dirs):
    secret = testing.Secret({"password": "S" * 40}, owner="app", label=STATS_SECRET_LABEL)
    peer = peer_relation()
    peer = dataclasses.replace(
        peer, local_app_data={STATS_SECRET_KEY: secret.id, EXPORTER_KEY: "true"}
    )
    rel = metrics_relation()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0),
        _state(dirs, {peer, rel}, leader=False, secrets=[secret]),
    )
    published = out.get_relation(rel.id)
    assert dict(published.local_app_data) == {}
    assert published.local_unit_data["prometheus_scrape_unit_address"] == "10.1.2.3"
    assert EXPORTER_SERVICE in out.get_container("pgbouncer").plan.services
    assert "S" * 40 in (dirs.pgb / "exporter.pgpass").read_text()


def test_a_tampered_stats_secret_runs_no_exporter(ctx, dirs):
    """A password the charm would not generate is refused: no exporter, no stats line.

    Here it carries a line break and a second password file entry.
    """
    secret = testing.Secret(
        {"password": "x" * 40 + "\n*:*:*:postgres:y"}, owner="app", label=STATS_SECRET_LABEL
    )
    peer = dataclasses.replace(peer_relation(), local_app_data={STATS_SECRET_KEY: secret.id})
    rel = metrics_relation()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0),
        _state(dirs, {peer, rel}, leader=False, secrets=[secret]),
    )
    assert not (dirs.pgb / "exporter.pgpass").exists()
    assert not (dirs.pgb / "exporter.yaml").exists()
    assert STATS_USER not in (dirs.pgb / "userlist.txt").read_text()
    assert EXPORTER_SERVICE not in out.get_container("pgbouncer").plan.services


# -- the exporter in the workload: restart on its own files only, nothing when nothing changed
def _calls(ctx, state, event):
    with PebbleRecorder(apply_ownership=False) as rec:
        out = ctx.run(event, state)
    return out, [(c.action, c.services, c.signal) for c in rec.for_container("pgbouncer")]


def test_a_second_hook_with_nothing_changed_touches_nothing(ctx, dirs):
    rel = metrics_relation()
    first = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    before = {p.name: p.read_text() for p in dirs.pgb.iterdir() if p.is_file()}
    _, calls = _calls(ctx, first, ctx.on.update_status())
    assert calls == []
    after = {p.name: p.read_text() for p in dirs.pgb.iterdir() if p.is_file()}
    assert after == before  # the stats verifier is the same: no rewrite, no reload


def test_a_stats_password_change_reloads_pgbouncer_and_leaves_the_exporter_running(ctx, dirs):
    """Only the password file changes for the exporter: libpq reads it at each connection."""
    rel = metrics_relation()
    first = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    old = first.get_secret(label=STATS_SECRET_LABEL)
    rotated = dataclasses.replace(
        old, tracked_content={"password": "R" * 40}, latest_content={"password": "R" * 40}
    )
    state = dataclasses.replace(first, secrets={rotated})
    _, calls = _calls(ctx, state, ctx.on.config_changed())
    assert not [c for c in calls if EXPORTER_SERVICE in c[1]]
    assert ("signal", ("pgbouncer_0",), "SIGHUP") in calls  # the auth file's verifier changed
    assert not [c for c in calls if c[0] == "restart" and "pgbouncer_0" in c[1]]
    assert "R" * 40 in (dirs.pgb / "exporter.pgpass").read_text()


def test_a_stats_user_rotation_serves_both_and_sighups_the_exporter(ctx, dirs):
    """rotate-credentials: both generations in stats_users, the auth and password files.

    The exporter re-reads its configuration (SIGHUP, no restart) and logs in as the new one;
    the unit reports that only once the exporter surely re-read it (the rotation barrier).
    """
    rel = metrics_relation()
    first = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    old = first.get_secret(label=STATS_SECRET_LABEL)
    was = old.latest_content["password"]
    content = {
        "user": STATS_USERS[1],
        "password": "R" * 40,
        "previous-user": STATS_USER,
        "previous-password": was,
    }
    rotated = dataclasses.replace(old, tracked_content=content, latest_content=content)
    rotation = Rotation("pgbouncer_auth_x", "pgbouncer_auth_x_g2", 0.0, *STATS_USERS)
    relations = {
        dataclasses.replace(
            r, local_app_data={**r.local_app_data, ROTATION_KEY: rotation.to_databag()}
        )
        if isinstance(r, testing.PeerRelation)
        else r
        for r in first.relations
    }
    state = dataclasses.replace(first, secrets={rotated}, relations=relations)
    out, calls = _calls(ctx, state, ctx.on.config_changed())
    assert ("signal", (EXPORTER_SERVICE,), "SIGHUP") in calls
    assert not [c for c in calls if c[0] == "restart"]
    ini = (dirs.pgb / "pgbouncer_0.ini").read_text()
    assert f"stats_users = {STATS_USERS[1]}, {STATS_USER}\n" in ini
    users = (dirs.pgb / "userlist.txt").read_text()
    assert f'"{STATS_USERS[1]}" "SCRAM-SHA-256$' in users and f'"{STATS_USER}" "SCRAM' in users
    assert "R" * 40 not in users and was not in users
    passfile = (dirs.pgb / "exporter.pgpass").read_text()
    assert f":{STATS_USERS[1]}:{'R' * 40}\n" in passfile and f":{STATS_USER}:{was}\n" in passfile
    assert f"user={STATS_USERS[1]} " in (dirs.pgb / "exporter.yaml").read_text()
    peer = next(r for r in out.relations if isinstance(r, testing.PeerRelation))
    assert "applied-stats-user" not in peer.local_unit_data  # written just now: not yet
    aged = time.time() - EXPORTER_RELOAD_S - 1
    os.utime(dirs.pgb / "exporter.yaml", (aged, aged))
    later = ctx.run(ctx.on.update_status(), out)
    peer = next(r for r in later.relations if isinstance(r, testing.PeerRelation))
    assert peer.local_unit_data["applied-stats-user"] == STATS_USERS[1]


def test_an_exporter_without_a_usable_password_is_stopped_and_disabled(ctx, dirs):
    """The stats secret became unreadable: the exporter is stopped, disabled, its files gone."""
    (dirs.pgb / "exporter.pgpass").write_text("*:*:pgbouncer:pgbouncer_stats:old\n")
    (dirs.pgb / "exporter.yaml").write_text("{}\n")
    container = make_container(dirs)
    layer = pebble.Layer(build_layer(1, exporter=True))  # pyright: ignore[reportArgumentType]
    statuses = dict.fromkeys(layer.services, pebble.ServiceStatus.ACTIVE)
    container = dataclasses.replace(
        container, layers={"pgbouncer": layer}, service_statuses=statuses
    )
    peer = dataclasses.replace(peer_relation(), local_app_data={STATS_SECRET_KEY: "secret:gone"})
    state = testing.State(
        leader=False, relations={peer, metrics_relation()}, containers={container}
    )
    out, calls = _calls(ctx, state, ctx.on.update_status())
    service = out.get_container("pgbouncer").plan.services[EXPORTER_SERVICE]
    assert service.startup == "disabled"
    assert ("stop", (EXPORTER_SERVICE,), None) in calls
    assert not (dirs.pgb / "exporter.pgpass").exists()
    assert not (dirs.pgb / "exporter.yaml").exists()


# -- an image without the exporter (the default image: docs/image.md) ----------------------------
def _image(container: testing.Container, *, exporter: bool, go: bool = False) -> testing.Container:
    """The container as the image check sees it.

    With ``pgbouncer-exporter`` (``exporter``), with only the Go ``pgbouncer_exporter`` (``go``, the default image), or with neither.
    """
    absent = "" if exporter else "absent pgbouncer-exporter\n"
    absent += "" if exporter or go else "absent pgbouncer_exporter\n"
    check = testing.Exec(["sh", "-c"], stdout=f"{absent}{VERSION_MARKER}\nPgBouncer 1.21.0\n")
    others = {e for e in container.execs if list(e.command_prefix) != ["sh", "-c"]}
    return dataclasses.replace(container, execs={check, *others})


def test_an_image_without_the_exporter_runs_none_publishes_no_address_and_says_so(
    ctx, dirs, fake_sql
):
    rel = metrics_relation()
    state = _state(dirs, {peer_relation(), rel, backend_relation()})
    container = _image(state.get_container("pgbouncer"), exporter=False)
    out = ctx.run(
        ctx.on.pebble_ready(container), dataclasses.replace(state, containers={container})
    )
    services = out.get_container("pgbouncer").plan.services
    assert EXPORTER_SERVICE not in services or services[EXPORTER_SERVICE].startup == "disabled"
    assert not (dirs.pgb / "exporter.pgpass").exists()
    assert not (dirs.pgb / "exporter.yaml").exists()
    published = out.get_relation(rel.id)
    assert "prometheus_scrape_unit_address" not in published.local_unit_data
    assert out.unit_status.message.endswith(
        "no metrics: pgbouncer-image has no pgbouncer-exporter nor pgbouncer_exporter"
    )
    assert out.workload_version == "1.21.0"  # read by the same exec

    # A refresh to an image that carries it: the exporter starts and the address is published.
    fixed = _image(out.get_container("pgbouncer"), exporter=True)
    after = ctx.run(ctx.on.upgrade_charm(), dataclasses.replace(out, containers={fixed}))
    assert after.get_container("pgbouncer").plan.services[EXPORTER_SERVICE].startup == "enabled"
    unit = after.get_relation(rel.id).local_unit_data
    assert unit["prometheus_scrape_unit_address"] == "10.1.2.3"
    assert after.unit_status == testing.ActiveStatus("1 PgBouncer process")

    # And back: the address published before is taken back, the exporter stops.
    gone = _image(after.get_container("pgbouncer"), exporter=False)
    back = ctx.run(ctx.on.upgrade_charm(), dataclasses.replace(after, containers={gone}))
    assert "prometheus_scrape_unit_address" not in back.get_relation(rel.id).local_unit_data
    assert back.get_container("pgbouncer").plan.services[EXPORTER_SERVICE].startup == "disabled"
    assert not (dirs.pgb / "exporter.pgpass").exists()


def test_the_default_image_runs_its_go_exporters_without_a_password_one_job_per_process(
    ctx, dirs, fake_sql
):
    """The default image (only the Go ``pgbouncer_exporter``).

    One exporter per process under the one service, a targets file and no password file, one relabelled job per process.
    """
    rel = metrics_relation()
    (dirs.cgroup / "cpu.max").write_text("200000 100000\n")  # two CPUs: two processes
    state = _state(dirs, {peer_relation(), rel, backend_relation()}, processes=2)
    container = _image(state.get_container("pgbouncer"), exporter=False, go=True)
    out = ctx.run(
        ctx.on.pebble_ready(container), dataclasses.replace(state, containers={container})
    )
    service = out.get_container("pgbouncer").plan.services[EXPORTER_SERVICE]
    assert service.startup == "enabled" and service.user == "postgres"
    assert service.command == go_exporter_service("/var/lib/pgbouncer").get("command")
    password = out.get_secret(label=STATS_SECRET_LABEL).tracked_content["password"]
    assert password not in service.command and not service.environment
    assert not (dirs.pgb / "exporter.pgpass").exists()
    targets = (dirs.pgb / "exporter.yaml").read_text()
    assert targets.splitlines()[1:] == [
        "0 9127 /var/lib/pgbouncer/run/0 6432",
        "1 9128 /var/lib/pgbouncer/run/1 6432",
    ]
    assert password not in targets
    published = out.get_relation(rel.id)
    app, unit = dict(published.local_app_data), dict(published.local_unit_data)
    validate_provider(app, {unit["prometheus_scrape_unit_name"]: unit})
    jobs = json.loads(app["scrape_jobs"])
    assert [(j["job_name"], j["static_configs"]) for j in jobs] == [
        ("pgbouncer", [{"targets": ["*:9127"], "labels": {"process": "0"}}]),
        ("pgbouncer_1", [{"targets": ["*:9128"], "labels": {"process": "1"}}]),
    ]
    assert all(j["metric_relabel_configs"] for j in jobs)
    assert unit["prometheus_scrape_unit_address"] == "10.1.2.3"
    assert "no metrics" not in out.unit_status.message
    assert password not in _everything_in_databags(out)

    # A refresh to an image with the Python exporter: its configuration and password file.
    fixed = _image(out.get_container("pgbouncer"), exporter=True)
    after = ctx.run(ctx.on.upgrade_charm(), dataclasses.replace(out, containers={fixed}))
    service = after.get_container("pgbouncer").plan.services[EXPORTER_SERVICE]
    assert service.command.startswith("pgbouncer-exporter --config")
    assert (dirs.pgb / "exporter.pgpass").exists()
    jobs = json.loads(after.get_relation(rel.id).local_app_data["scrape_jobs"])
    assert [j["job_name"] for j in jobs] == ["pgbouncer"]
