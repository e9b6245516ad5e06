"""``grafana-dashboard``: what the leader publishes, decoded exactly as the consumer does.

The consumer (the Grafana charm's library) reads ``dashboards`` from our application databag,
``json.loads`` it, and for each template decodes ``content`` with
``lzma.decompress(base64.b64decode(content.encode("utf-8"))).decode()`` (cosl's
``LZMABase64.decompress``), then ``json.loads`` the dashboard. :func:`consumer_decode` repeats
those steps independently of our encoder.
"""

from __future__ import annotations

import base64
import json
import lzma
from pathlib import Path

from ops import testing

from relations.grafana_dashboard import (
    DASHBOARD_RELATION,
    app_databag,
    build_templates,
    dashboard_uid,
    load_dashboards,
)
from relations.metrics import JujuTopology
from tests.unit.conftest import make_container, peer_relation

ROOT = Path(__file__).resolve().parents[2]
MODEL_UUID = "f0e1d2c3-b4a5-4697-8899-aabbccddeeff"
TOPOLOGY = JujuTopology("dev", MODEL_UUID, "pgb", "pgbouncer-k8s", "pgb/0")


def consumer_decode(app_data: dict[str, str]) -> dict[str, dict]:
    """The consumer's reading of our databag: template id → (entry, decoded dashboard)."""
    body = json.loads(app_data.get("dashboards", "{}"))
    out = {}
    for key, entry in body["templates"].items():
        raw = lzma.decompress(base64.b64decode(entry["content"].encode("utf-8"))).decode()
        out[key] = {"entry": entry, "dashboard": json.loads(raw)}
    return out


def dashboard_relation() -> testing.Relation:
    return testing.Relation(DASHBOARD_RELATION, remote_app_name="grafana")


def _state(dirs, relations, *, leader=True):
    return testing.State(
        leader=leader,
        relations=relations,
        containers={make_container(dirs)},
        model=testing.Model(name="dev", uuid=MODEL_UUID),
    )


def test_the_leader_publishes_the_dashboard_templated_by_juju_topology(ctx, dirs):
    rel = dashboard_relation()
    out = ctx.run(ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel}))
    app_data = dict(out.get_relation(rel.id).local_app_data)
    decoded = consumer_decode(app_data)
    assert list(decoded) == ["file:pgbouncer"]
    entry, dashboard = decoded["file:pgbouncer"]["entry"], decoded["file:pgbouncer"]["dashboard"]
    assert entry["charm"] == "pgbouncer-k8s"
    assert entry["inject_dropdowns"] is True
    assert entry["juju_topology"] == {
        "model": "dev",
        "model_uuid": MODEL_UUID,
        "application": "pgbouncer-k8s",
        "unit": "pgbouncer-k8s/0",
    }
    assert len(entry["dashboard_alt_uid"]) == 16
    # The dashboard itself, as shipped, except the uid and the charm tag.
    shipped = json.loads((ROOT / "src" / "grafana_dashboards" / "pgbouncer.json").read_text())
    assert dashboard["uid"] == dashboard_uid(
        "pgbouncer-k8s", "src/grafana_dashboards/pgbouncer.json"
    )
    assert len(dashboard["uid"]) == 40 and int(dashboard["uid"], 16) >= 0
    assert dashboard["tags"] == [*shipped["tags"], "charm: pgbouncer-k8s"]
    assert dashboard["panels"] == shipped["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"prometheusds", "juju_model", "juju_application", "juju_unit"} <= variables
    # Every panel query reads the datasource the consumer injects topology matchers for.
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == "${prometheusds}", panel["title"]
            assert 'juju_application=~"$juju_application"' in target["expr"], panel["title"]


def test_a_follower_publishes_nothing(ctx, dirs):
    rel = dashboard_relation()
    out = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0),
        _state(dirs, {peer_relation(), rel}, leader=False),
    )
    assert dict(out.get_relation(rel.id).local_app_data) == {}


def test_publishing_the_same_dashboard_twice_changes_nothing(ctx, dirs):
    rel = dashboard_relation()
    first = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    again = ctx.run(ctx.on.update_status(), first)
    assert dict(again.get_relation(rel.id).local_app_data) == dict(
        first.get_relation(rel.id).local_app_data
    )


def test_the_uuid_follows_the_templates():
    one = app_databag(build_templates(load_dashboards(), "pgbouncer-k8s", TOPOLOGY))
    other_model = JujuTopology("prod", MODEL_UUID, "pgb", "pgbouncer-k8s", "pgb/0")
    two = app_databag(build_templates(load_dashboards(), "pgbouncer-k8s", other_model))
    assert one == app_databag(build_templates(load_dashboards(), "pgbouncer-k8s", TOPOLOGY))
    assert json.loads(one["dashboards"])["uuid"] != json.loads(two["dashboards"])["uuid"]


def test_a_topology_value_that_needs_escaping_is_refused():
    import pytest

    bad = JujuTopology('dev"}', MODEL_UUID, "pgb", "pgbouncer-k8s", "pgb/0")
    with pytest.raises(ValueError, match="topology model"):
        build_templates(load_dashboards(), "pgbouncer-k8s", bad)
