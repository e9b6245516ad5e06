"""``logging`` (loki_push_api): the pushed endpoints become Pebble log targets (Scenario).

Tested at the Pebble boundary: the plan the charm leaves in the container.
"""

from __future__ import annotations

import json

import pytest
from ops import testing

from relations.logging import (
    LAYER_LABEL,
    LOGGING_RELATION,
    build_log_layer,
    check_url,
    parse_endpoints,
)
from relations.metrics import JujuTopology
from tests.unit.conftest import make_container, peer_relation

MODEL_UUID = "f0e1d2c3-b4a5-4697-8899-aabbccddeeff"
URL0 = "http://loki-0.loki-endpoints.cos.svc.cluster.local:3100/loki/api/v1/push"
URL1 = "http://loki-1.loki-endpoints.cos.svc.cluster.local:3100/loki/api/v1/push"


def loki(*urls: str, rid: int = 9) -> testing.Relation:
    return testing.Relation(
        LOGGING_RELATION,
        id=rid,
        remote_app_name="loki",
        remote_units_data={i: {"endpoint": json.dumps({"url": u})} for i, u in enumerate(urls)},
    )


def _state(dirs, relations, container=None, *, leader=True):
    return testing.State(
        leader=leader,
        relations=relations,
        containers={container or make_container(dirs)},
        model=testing.Model(name="dev", uuid=MODEL_UUID),
    )


def test_every_pushed_endpoint_becomes_a_log_target_for_every_service(ctx, dirs):
    rel = loki(URL0, URL1)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    container = out.get_container("pgbouncer")
    assert LAYER_LABEL in container.layers
    targets = {name: t.to_dict() for name, t in container.plan.log_targets.items()}
    assert set(targets) == {"loki-loki-0", "loki-loki-1"}
    assert targets["loki-loki-0"]["location"] == URL0
    assert targets["loki-loki-1"]["location"] == URL1
    for target in targets.values():
        assert target["type"] == "loki"
        # "all": each PgBouncer process (every slot) and the exporter
        assert target["services"] == ["all"]
        assert target["labels"]["juju_application"] == "pgbouncer-k8s"
        assert target["labels"]["juju_model"] == "dev"
        assert target["labels"]["juju_unit"] == "pgbouncer-k8s/0"
    # PgBouncer's own services are untouched by the log layer.
    assert {s for s in container.plan.services if s.startswith("pgbouncer_")}


def test_a_follower_forwards_its_own_logs_too(ctx, dirs):
    rel = loki(URL0)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0),
        _state(dirs, {peer_relation(), rel}, leader=False),
    )
    assert set(out.get_container("pgbouncer").plan.log_targets) == {"loki-loki-0"}


def test_a_departed_loki_unit_stops_receiving(ctx, dirs):
    rel = loki(URL0, URL1)
    first = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    container = first.get_container("pgbouncer")
    gone = loki(URL0)
    out = ctx.run(
        ctx.on.relation_departed(gone, remote_unit=1, departing_unit=1),
        _state(dirs, {peer_relation(), gone}, container),
    )
    targets = out.get_container("pgbouncer").plan.log_targets
    assert targets["loki-loki-0"].services == ["all"]
    assert targets["loki-loki-1"].services[-1] == "-all"


def test_the_relation_removed_stops_every_target(ctx, dirs):
    rel = loki(URL0)
    first = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), _state(dirs, {peer_relation(), rel})
    )
    out = ctx.run(
        ctx.on.relation_broken(rel),
        _state(dirs, {peer_relation(), rel}, first.get_container("pgbouncer")),
    )
    targets = out.get_container("pgbouncer").plan.log_targets
    assert targets["loki-loki-0"].services[-1] == "-all"


def test_nothing_is_added_without_a_relation(ctx, dirs):
    out = ctx.run(ctx.on.update_status(), _state(dirs, {peer_relation()}))
    assert LAYER_LABEL not in out.get_container("pgbouncer").layers


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://loki:3100/push", "scheme"),
        ("http://user:secret@loki:3100/loki/api/v1/push", "credentials"),
        ("http://loki:3100/push\nservices: [x]", "whitespace"),
        ("http:///loki/api/v1/push", "no host"),
        ("http://loki:99999/push", "bad port"),
        ("http://" + "a" * 2100, "longer"),
        (None, "no url"),
    ],
)
def test_a_bad_url_is_refused(url, reason):
    with pytest.raises(ValueError, match=reason):
        check_url(url)


def test_bad_endpoints_are_skipped_and_named_good_ones_kept():
    found = parse_endpoints(
        [
            ("loki/0", {"endpoint": json.dumps({"url": URL0})}),
            ("loki/1", {"endpoint": "not json"}),
            ("loki/2", {"endpoint": json.dumps({"url": "http://u:p@loki/push"})}),
            ("loki/3", {}),
        ]
    )
    assert found.urls == {"loki-loki-0": URL0}
    assert [r.split(":")[0] for r in found.refused] == ["loki/1", "loki/2"]
    assert "p@" not in " ".join(found.refused), "a refusal never echoes the url"


def test_the_layer_is_pure_and_only_turns_off_our_own_targets():
    topology = JujuTopology("dev", MODEL_UUID, "pgb", "pgbouncer-k8s", "pgb/0")
    layer = build_log_layer({"loki-loki-0": URL0}, ["loki-loki-1", "operator-target"], topology)
    targets = layer.get("log-targets", {})
    assert set(targets) == {"loki-loki-0", "loki-loki-1"}
    assert targets["loki-loki-1"] == {"override": "merge", "services": ["-all"]}
