"""The grant decision: who may be handed a database (docs/tenancy.md, "Sharing by consent")."""

from __future__ import annotations

import pytest

from state.tenants import TenantRecord, grant_decision, owner_role_for

TAG = "model/pgbouncer-k8s"


def held(*grants: tuple[int, str, str]) -> TenantRecord:
    record = TenantRecord()
    for oid, (relation, app, database) in enumerate(grants, start=1):
        record = record.with_grant(
            role=f"pgbouncer_client_{relation}_x",
            role_oid=100 + relation,
            relation=relation,
            app=app,
            database=database,
            database_oid=200 + oid,
            owner=owner_role_for(database, TAG),
        )
    return record


@pytest.mark.parametrize(
    ("record", "relation", "app", "live", "consent", "action"),
    [
        (held(), 1, "shop", {1}, None, "create"),
        (held((1, "shop", "db")), 1, "shop", {1}, None, "keep"),
        # relations of one application share
        (held((1, "shop", "db")), 2, "shop", {1, 2}, None, "join"),
        # another application: only with the operator's consent for that database
        (held((1, "shop", "db")), 2, "evil", {1, 2}, None, "refuse"),
        (held((1, "shop", "db")), 2, "evil", {1, 2}, {"other": frozenset({"evil"})}, "refuse"),
        (held((1, "shop", "db")), 2, "evil", {1, 2}, {"db": frozenset({"friend"})}, "refuse"),
        (held((1, "shop", "db")), 2, "evil", {1, 2}, {"db": frozenset({"evil"})}, "join"),
        # a mixed set of holders is still another application
        (held((1, "shop", "db"), (3, "evil", "db")), 2, "shop", {1, 2, 3}, None, "refuse"),
        # left by this application: reclaimed; left by another (or by several): consent only
        (held((1, "shop", "db")), 2, "shop", {2}, None, "reclaim"),
        (held((1, "shop", "db")), 2, "evil", {2}, None, "refuse"),
        (held((1, "shop", "db"), (3, "evil", "db")), 2, "shop", {2}, None, "refuse"),
        (held((1, "shop", "db")), 2, "evil", {2}, {"db": frozenset({"evil"})}, "reclaim"),
    ],
)
def test_grant_decision(record, relation, app, live, consent, action):
    decision = grant_decision(
        record, database="db", relation=relation, app=app, live=live, consent=consent
    )
    assert decision.action == action
    if action == "refuse":
        assert "db" in decision.reason and "database_sharing" in decision.reason


def test_a_refusal_names_the_holding_application():
    decision = grant_decision(
        held((1, "shop", "db")), database="db", relation=2, app="evil", live={1, 2}
    )
    assert decision.reason == (
        "database db is held by application shop; to share it, add db=evil to database_sharing"
    )
