"""The grant decision: who may be handed a database (docs/tenancy.md, "Sharing by consent")."""

from __future__ import annotations

import pytest

from state.tenants import TenantRecord, grant_decision, owner_role_for

TAG = "model/pgbouncer-k8s"


def held(*grants: tuple[int, str, str]) -> TenantRecord:
    """Grants in order; an application named "friend" or "evil" holds it as a guest."""
    record = TenantRecord()
    for relation, app, database in grants:
        record = record.with_grant(
            role=f"pgbouncer_client_{relation}_x",
            role_oid=100 + relation,
            relation=relation,
            app=app,
            database=database,
            database_oid=200,
            owner=owner_role_for(database, TAG),
            guest=app in ("friend", "evil"),
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
        # consent is for that application: not for a third one, whoever holds it now
        (
            held((1, "shop", "db"), (3, "friend", "db")),
            2,
            "evil",
            {1, 2, 3},
            {"db": frozenset({"friend"})},
            "refuse",
        ),
        (held((3, "friend", "db")), 2, "evil", {2, 3}, {"db": frozenset({"friend"})}, "refuse"),
        # the owning application still joins while a consented one holds it too
        (
            held((1, "shop", "db"), (3, "friend", "db")),
            2,
            "shop",
            {1, 2, 3},
            {"db": frozenset({"friend"})},
            "join",
        ),
        (held((3, "friend", "db")), 2, "shop", {2, 3}, {"db": frozenset({"friend"})}, "refuse"),
        # left by this application: reclaimed; left by another (or by several): consent only
        (held((1, "shop", "db")), 2, "shop", {2}, None, "reclaim"),
        (held((1, "shop", "db")), 2, "evil", {2}, None, "refuse"),
        # shared by consent, both gone: the owner takes it back (after a backend change, say)
        (
            held((1, "shop", "db"), (3, "friend", "db")),
            2,
            "shop",
            {2},
            {"db": frozenset({"friend"})},
            "reclaim",
        ),
        (
            held((1, "shop", "db"), (3, "friend", "db")),
            2,
            "friend",
            {2},
            {"db": frozenset({"friend"})},
            "reclaim",
        ),
        # consent withdrawn: a guest does not come back on its own
        (held((1, "shop", "db"), (3, "friend", "db")), 2, "friend", {2}, None, "refuse"),
        (held((1, "shop", "db"), (3, "friend", "db")), 2, "friend", {1, 2}, None, "refuse"),
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


def test_the_record_keeps_guests_apart_and_round_trips():
    record = held((1, "shop", "db"), (3, "friend", "db"))
    assert record.databases["db"].apps == ("shop",)
    assert record.databases["db"].guests == ("friend",)
    assert TenantRecord.from_json(record.to_json()) == record
