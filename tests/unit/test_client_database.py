"""The client ``database`` relation, one event per test (Scenario).

The PostgreSQL connection is the boundary faked here: :class:`FakeClientSQL` replaces the three
``postgres.clients`` functions (their record decisions stay real: ``state.tenants``) as ``relations.client_database`` sees them and records what the
charm asked for. ``tests/functional/test_client_pooling.py`` runs the same functions against a
real PostgreSQL and PgBouncer.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from dpcharmlibs.interfaces import RequirerCommonModel, RequirerDataContractV1, gen_hash
from ops import testing

from pgbouncer.drain import DRAIN_GRACE_S
from postgres.clients import RefusedDatabaseError
from postgres.connection import BackendError, BackendUnreachable, ForeignObjectError
from relations.client_database import CLIENT_SECRET_LABEL_PREFIX, client_username
from state.tenants import TenantRecord, grant_decision, owner_role_for, roles_to_drop
from tests.unit.conftest import (
    OUR_REQUEST,
    SEED_PROVIDER,
    Effects,
    auth_secret,
    backend_relation,
    make_container,
    peer_relation,
)

MODEL = testing.Model(name="dev", uuid="9a8b7c6d-0000-4000-8000-00000000c0de")
OWNER_TAG = f"{MODEL.uuid}/pgbouncer-k8s"
POOLER = "pgbouncer-k8s.dev.svc.cluster.local:6432"
V0_REQUEST = {"database": "myapp", "requested-secrets": '["username", "password"]'}
# The provider.json schema of postgresql_client v0 (charm-relation-interfaces), as the client sees
# our databag once the `secret-user` content is merged in: these keys are required, all strings.
CLIENTS_STORE = "PgBouncerK8sCharm/ClientDatabaseRelation[client-database]"
PROVIDER_REQUIRED = ("database", "username", "password", "endpoints")
PROVIDER_OPTIONAL = ("uris", "read-only-endpoints", "read-only-uris", "version", "tls", "tls-ca")


@dataclass
class FakeClientSQL:
    """Stands in for ``postgres.clients``: records calls, fails on demand."""

    fail: Exception | None = None
    created: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    version_asked: int = 0

    def grant_database(
        self,
        creds,
        record,
        *,
        username,
        password,
        database,
        extra_roles,
        owner_tag,
        relation_id,
        app,
        live,
        consent=None,
    ):
        if self.fail is not None:
            raise self.fail
        decision = grant_decision(
            record, database=database, relation=relation_id, app=app, live=set(live),
            consent=consent,
        )  # fmt: skip
        if decision.action == "refuse":
            raise RefusedDatabaseError(decision.reason)
        self.created.append(
            {
                "username": username,
                "password": password,
                "database": database,
                "extra_roles": tuple(extra_roles),
                "owner_tag": owner_tag,
                "relation_id": relation_id,
                "as": creds.user,
                "action": decision.action,
            }
        )
        db_oid = decision.database.oid if decision.database else 20000 + len(self.created)
        return record.with_grant(
            role=username,
            role_oid=10000 + relation_id,
            relation=relation_id,
            app=app,
            database=database,
            database_oid=db_oid,
            owner=owner_role_for(database, owner_tag),
        )

    def revoke_client(self, creds, record, *, username, owner_tag):
        if self.fail is not None:
            raise self.fail
        self.dropped.append(username)
        return record.without_role(username)

    def backend_version(self, creds):
        self.version_asked += 1
        return "15.99"

    def repair_tenancy(self, creds, record, live, *, owner_tag):
        if self.fail is not None:
            raise self.fail
        return []

    def drop_gone(self, creds, record, live, *, owner_tag):
        failures = {}
        for username in roles_to_drop(record, live):
            try:
                record = self.revoke_client(creds, record, username=username, owner_tag=owner_tag)
            except BackendError as exc:
                failures[username] = str(exc)
        return record, failures


@pytest.fixture
def fake_clients(effects: Effects) -> FakeClientSQL:
    effects.clients = FakeClientSQL()
    return effects.clients


def tenants(held: dict[str, tuple[int, str]]) -> str:
    """A leader-written tenant record: database → (the relation holding it, its application)."""
    record = TenantRecord()
    for oid, (database, (rel_id, app)) in enumerate(sorted(held.items()), start=1):
        record = record.with_grant(
            role=client_username(rel_id, OWNER_TAG),
            role_oid=10000 + rel_id,
            relation=rel_id,
            app=app,
            database=database,
            database_oid=20000 + oid,
            owner=owner_role_for(database, OWNER_TAG),
        )
    return record.to_json()


def peer_tenants(out: testing.State) -> TenantRecord:
    peers = next(r for r in out.relations if r.endpoint == "pgb-peers")
    return TenantRecord.from_json(peers.local_app_data.get("tenants"))


def two_clients_peers(secret: testing.Secret) -> testing.PeerRelation:
    """Peer data after answering relations 11 (alpha, app-one) and 12 (beta, app-two)."""
    return peer_relation(
        secret,
        {"alpha": 11, "beta": 12},
        tenants=tenants({"alpha": (11, "app-one"), "beta": (12, "app-two")}),
    )


def client_relation(remote: dict[str, str], app: str = "myapp", **kwargs) -> testing.Relation:
    return testing.Relation(
        "database",
        remote_app_name=app,
        remote_app_data=remote,
        remote_units_data={0: {}},
        **kwargs,
    )


def state_with(
    *relations,
    backend_ready: bool = True,
    leader: bool = True,
    dirs,
    databases=None,
    secrets=(),
    config=None,
    tenants=None,
) -> testing.State:
    secret = auth_secret()
    rels = set(relations)
    if backend_ready:
        rels.add(backend_relation())
        rels.add(peer_relation(secret, databases=databases, tenants=tenants))
    else:
        rels.add(peer_relation(databases=databases, tenants=tenants))
    return testing.State(
        leader=leader,
        model=MODEL,
        relations=rels,
        containers={make_container(dirs)},
        secrets={secret, *secrets},
        config=config or {},
    )


def changed(ctx, state, relation):
    return ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)


def secret_by_id(out: testing.State, secret_id: str) -> testing.Secret:
    return next(s for s in out.secrets if s.id == secret_id)


def secret_by_label(out: testing.State, label: str) -> testing.Secret | None:
    return next((s for s in out.secrets if s.label == label), None)


def peer_databases(out: testing.State) -> dict[str, int]:
    peers = next(r for r in out.relations if r.endpoint == "pgb-peers")
    raw = json.loads(peers.local_app_data.get("databases", "{}"))
    return {name: entry["relation_id"] for name, entry in raw.items()}


def ini(dirs) -> str:
    return (dirs.pgb / "pgbouncer_0.ini").read_text()


def assert_no_password_in_databags(out: testing.State, password: str) -> None:
    for relation in out.relations:
        for databag in (relation.local_app_data, relation.local_unit_data):
            assert password not in json.dumps(dict(databag))


def assert_valid_v0_answer(databag: Mapping[str, str], secret_content: Mapping[str, str]) -> None:
    """Our databag, with the ``secret-user`` content merged in, as provider.json requires."""
    merged = {**databag, **secret_content}
    for key in PROVIDER_REQUIRED:
        assert isinstance(merged.get(key), str) and merged[key], key
    for key in PROVIDER_OPTIONAL:
        assert key not in merged or isinstance(merged[key], str), key
    # never plain credentials in the databag itself
    assert "username" not in databag and "password" not in databag


# -- a request before the backend is ready ----------------------------------------------------


def test_request_before_backend_ready_waits_and_creates_nothing(ctx, dirs, fake_clients):
    rel = client_relation(V0_REQUEST)
    with ctx(
        ctx.on.relation_changed(rel, remote_unit=0),
        state_with(rel, backend_ready=False, dirs=dirs),
    ) as mgr:
        out = mgr.run()
        client_statuses = client_statuses_of(mgr.charm)

    assert fake_clients.created == []
    assert out.deferred == []  # not deferred: the reconcile answers it later
    local = out.get_relation(rel.id).local_app_data
    assert "secret-user" not in local and "endpoints" not in local
    assert not any(s.label and s.label.startswith(CLIENT_SECRET_LABEL_PREFIX) for s in out.secrets)
    assert peer_databases(out) == {}
    assert client_statuses == [
        testing.WaitingStatus(f"client relation(s) {rel.id} waiting for the backend database")
    ]
    # the missing backend relation outranks the waiting client
    assert out.unit_status == testing.BlockedStatus("waiting for a backend-database relation")


def client_statuses_of(charm) -> list:
    return [s for s in charm._statuses() if "client" in s.message]


def test_requests_waiting_for_the_auth_user_are_all_named(ctx, dirs, fake_clients, fake_sql):
    fake_sql.fail = True  # the leader's set-up attempt fails: the backend is not usable yet
    one = client_relation(V0_REQUEST, app="one")
    two = client_relation({**V0_REQUEST, "database": "other"}, app="two")
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={one, two, backend_relation(), peer_relation()},  # no auth user yet
        containers={make_container(dirs)},
    )
    with ctx(ctx.on.relation_changed(two, remote_unit=0), state) as mgr:
        out = mgr.run()
        client_statuses = client_statuses_of(mgr.charm)

    assert fake_clients.created == []
    assert peer_databases(out) == {}
    ids = ", ".join(str(i) for i in sorted((one.id, two.id)))
    assert client_statuses == [
        testing.WaitingStatus(f"client relation(s) {ids} waiting for the backend database")
    ]
    assert out.unit_status == testing.WaitingStatus(
        "backend unreachable: connection to the backend refused"
    )


# -- a request after the backend is ready -----------------------------------------------------


def test_v0_request_creates_user_and_database_and_answers(ctx, dirs, fake_clients):
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    username = client_username(rel.id, OWNER_TAG)
    assert username.startswith(f"pgbouncer_client_{rel.id}_")
    [call] = fake_clients.created
    assert call["username"] == username
    assert call["database"] == "myapp"
    assert call["extra_roles"] == ()
    assert call["owner_tag"] == OWNER_TAG
    assert call["relation_id"] == rel.id
    assert call["as"] == SEED_PROVIDER["username"]
    password = call["password"]
    assert len(password) >= 32

    local = dict(out.get_relation(rel.id).local_app_data)
    assert local["database"] == "myapp"
    assert local["endpoints"] == POOLER
    # the backend has replicas: the same address, reached through the `_readonly` database
    assert local["read-only-endpoints"] == POOLER
    assert local["version"] == "15.18"
    user_secret = secret_by_id(out, local["secret-user"])
    content = user_secret.latest_content
    assert content["username"] == username
    assert content["password"] == password
    assert content["uris"] == f"postgresql://{username}:{password}@{POOLER}/myapp"
    assert (
        content["read-only-uris"] == f"postgresql://{username}:{password}@{POOLER}/myapp_readonly"
    )
    assert user_secret.owner == "app"
    assert user_secret.remote_grants == {rel.id: {"myapp"}}
    assert_valid_v0_answer(local, content)
    assert_no_password_in_databags(out, password)

    # the password is also kept in our own secret, so that answering again reuses it
    ours = secret_by_label(out, f"{CLIENT_SECRET_LABEL_PREFIX}{rel.id}")
    assert ours is not None and ours.latest_content == {"username": username, "password": password}
    assert ours.remote_grants == {}

    assert peer_databases(out) == {"myapp": rel.id}
    text = ini(dirs)
    assert "myapp = host=postgresql-k8s-primary.dev.svc.cluster.local" in text
    assert "myapp_readonly = host=postgresql-k8s-replicas.dev.svc.cluster.local" in text
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_v0_request_with_allowed_extra_role_passes_it_on(ctx, dirs, fake_clients):
    rel = client_relation({**V0_REQUEST, "extra-user-roles": "createdb"})
    changed(ctx, state_with(rel, dirs=dirs), rel)
    assert [c["extra_roles"] for c in fake_clients.created] == [("CREATEDB",)]


def test_v1_request_is_answered_in_the_requests_list(ctx, dirs, fake_clients):
    # The wire format exactly as the library's v1 requirer writes it (write_model: non-string
    # values JSON-encoded, None fields left out).
    request = RequirerCommonModel(resource="orders", salt="0123456789abcdef")
    request.request_id = gen_hash(request.resource, request.salt)
    dumped = RequirerDataContractV1[RequirerCommonModel](requests=[request]).model_dump(
        mode="json"
    )
    remote = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in dumped.items() if v is not None
    }
    assert remote["version"] == "v1"
    rel = client_relation(remote, app="orders-app")
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    [call] = fake_clients.created
    assert call["database"] == "orders"
    local = dict(out.get_relation(rel.id).local_app_data)
    assert "endpoints" not in local  # v1 answers live in `requests`, not flat
    [response] = json.loads(local["requests"])
    assert response["request-id"] == request.request_id
    assert response["resource"] == "orders"
    assert response["endpoints"] == POOLER
    assert response["read-only-endpoints"] == POOLER
    assert response["version"] == "15.18"
    assert response.get("password") is None and response.get("username") is None
    content = secret_by_id(out, response["secret-user"]).latest_content
    assert content["username"] == call["username"]
    assert content["password"] == call["password"]
    # the library's v1 requirer matches answers through our `data` field, keyed by request id
    assert request.request_id in json.loads(local["data"])
    assert peer_databases(out) == {"orders": rel.id}


def test_answer_without_replicas_has_no_read_only_fields(ctx, dirs, fake_clients):
    rel = client_relation(V0_REQUEST)
    state = state_with(rel, dirs=dirs)
    backend = next(r for r in state.relations if r.endpoint == "backend-database")
    no_replicas = {k: v for k, v in SEED_PROVIDER.items() if k != "read-only-endpoints"}
    state = testing.State(
        leader=True,
        model=MODEL,
        relations=(state.relations - {backend}) | {backend_relation(no_replicas)},
        containers=state.containers,
        secrets=state.secrets,
    )
    out = changed(ctx, state, rel)

    local = dict(out.get_relation(rel.id).local_app_data)
    assert local["endpoints"] == POOLER
    assert "read-only-endpoints" not in local
    assert "read-only-uris" not in secret_by_id(out, local["secret-user"]).latest_content
    assert "myapp_readonly" not in ini(dirs)


def test_listen_port_is_the_published_port(ctx, dirs, fake_clients):
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs, config={"listen_port": 7432}), rel)
    local = out.get_relation(rel.id).local_app_data
    assert local["endpoints"] == "pgbouncer-k8s.dev.svc.cluster.local:7432"


# -- refused requests -------------------------------------------------------------------------


def test_forbidden_extra_role_is_blocked_by_name_and_nothing_created(ctx, dirs, fake_clients):
    rel = client_relation({**V0_REQUEST, "extra-user-roles": "SUPERUSER,createdb"})
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    assert fake_clients.created == []
    assert "secret-user" not in out.get_relation(rel.id).local_app_data
    assert peer_databases(out) == {}
    assert out.unit_status.name == "blocked"
    assert f"client relation {rel.id}" in out.unit_status.message
    assert "SUPERUSER" in out.unit_status.message


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("my;db", "only letters"),
        ("pgbouncer", "reserved"),
        ("app_readonly", "reserved"),
        ("x" * 64, "longer than 63"),
        ("app*", "prefixes are not supported"),
    ],
)
def test_invalid_database_name_is_blocked_and_nothing_created(
    ctx, dirs, fake_clients, name, reason
):
    rel = client_relation({**V0_REQUEST, "database": name})
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    assert fake_clients.created == []
    assert peer_databases(out) == {}
    assert "secret-user" not in out.get_relation(rel.id).local_app_data
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(f"client relation {rel.id}: ")
    assert reason in out.unit_status.message
    assert name not in out.unit_status.message or name == "pgbouncer"


def test_database_held_by_a_live_relation_of_the_same_application_is_shared(
    ctx, dirs, fake_clients
):
    first = client_relation(V0_REQUEST, app="shop")
    second = client_relation(V0_REQUEST, app="shop")
    state = state_with(
        first,
        second,
        dirs=dirs,
        databases={"myapp": first.id},
        tenants=tenants({"myapp": (first.id, "shop")}),
    )
    out = changed(ctx, state, second)

    assert [(c["database"], c["relation_id"], c["action"]) for c in fake_clients.created] == [
        ("myapp", second.id, "join")
    ]
    assert peer_tenants(out).holders("myapp", {first.id, second.id}) == {first.id, second.id}
    assert peer_databases(out) == {"myapp": min(first.id, second.id)}
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_database_held_by_another_application_is_refused_naming_it_and_the_holder(
    ctx, dirs, fake_clients
):
    first = client_relation(V0_REQUEST, app="first")
    second = client_relation(V0_REQUEST, app="second")
    state = state_with(
        first,
        second,
        dirs=dirs,
        databases={"myapp": first.id},
        tenants=tenants({"myapp": (first.id, "first")}),
    )
    out = changed(ctx, state, second)

    assert fake_clients.created == []
    assert peer_tenants(out).holders("myapp", {first.id, second.id}) == {first.id}
    assert "secret-user" not in out.get_relation(second.id).local_app_data
    assert out.unit_status == testing.BlockedStatus(
        f"client relation {second.id}: database myapp is held by application first; "
        "to share it, add myapp=second to database_sharing"
    )


def test_database_held_by_another_application_is_shared_when_the_operator_allows_it(
    ctx, dirs, fake_clients
):
    first = client_relation(V0_REQUEST, app="first")
    second = client_relation(V0_REQUEST, app="second")
    state = state_with(
        first,
        second,
        dirs=dirs,
        databases={"myapp": first.id},
        tenants=tenants({"myapp": (first.id, "first")}),
        config={"database_sharing": "other=x myapp=third,second"},
    )
    out = changed(ctx, state, second)

    assert [(c["database"], c["action"]) for c in fake_clients.created] == [("myapp", "join")]
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_database_left_by_another_application_is_refused(ctx, dirs, fake_clients):
    """A database nobody live holds goes back only to the application that held it."""
    newcomer = client_relation(V0_REQUEST, app="newcomer")
    state = state_with(newcomer, dirs=dirs, tenants=tenants({"myapp": (3, "shop")}))
    out = changed(ctx, state, newcomer)

    assert fake_clients.created == []
    assert peer_databases(out) == {}
    assert out.unit_status == testing.BlockedStatus(
        f"client relation {newcomer.id}: database myapp holds data left by application shop; "
        "only that application may take it back (or add myapp=newcomer to database_sharing)"
    )


def test_leader_change_keeps_the_drops_of_the_old_leader(ctx, dirs, fake_clients):
    """The record is in peer app data: a new leader drops roles whose relation is gone."""
    live = client_relation(V0_REQUEST, app="shop")
    record = tenants({"myapp": (live.id, "shop"), "gone": (99, "old")})
    state = state_with(live, dirs=dirs, databases={"myapp": live.id}, tenants=record)
    out = ctx.run(ctx.on.leader_elected(), state)

    assert fake_clients.dropped == [client_username(99, OWNER_TAG)]
    assert set(peer_tenants(out).roles) == {client_username(live.id, OWNER_TAG)}
    assert set(peer_tenants(out).databases) == {"myapp", "gone"}  # the data stays recorded


def test_backend_unreachable_waits_with_the_reason_and_retries_later(ctx, dirs, fake_clients):
    fake_clients.fail = BackendUnreachable("cannot reach PostgreSQL at 10.1.1.1:5432: timeout")
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    assert peer_databases(out) == {}
    assert "secret-user" not in out.get_relation(rel.id).local_app_data
    assert out.deferred == []
    assert out.unit_status == testing.WaitingStatus(
        f"client relation {rel.id}: cannot reach PostgreSQL at 10.1.1.1:5432: timeout"
    )


def test_foreign_database_is_blocked(ctx, dirs, fake_clients):
    fake_clients.fail = ForeignObjectError(
        "database 'myapp' exists and was not created by this application"
    )
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs), rel)

    assert peer_databases(out) == {}
    assert out.unit_status == testing.BlockedStatus(
        f"client relation {rel.id}: database 'myapp' exists and was not created by this application"
    )


def test_follower_creates_nothing_and_reports_waiting(ctx, dirs, fake_clients):
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs, leader=False), rel)

    assert fake_clients.created == []
    assert out.get_relation(rel.id).local_app_data == {}
    assert out.unit_status == testing.WaitingStatus(
        f"client relation(s) {rel.id} waiting for the backend database"
    )


# -- a pending request answered once the backend is ready --------------------------------------


def test_pending_request_is_answered_when_the_backend_is_set_up(ctx, dirs, fake_clients, fake_sql):
    rel = client_relation(V0_REQUEST)
    backend = backend_relation()
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={rel, backend, peer_relation()},  # no auth yet
        containers={make_container(dirs)},
    )
    out = ctx.run(ctx.on.relation_changed(backend, remote_unit=0), state)

    assert fake_sql.installed  # the backend's created chart ran...
    assert [c["database"] for c in fake_clients.created] == ["myapp"]  # ...then answered us
    local = out.get_relation(rel.id).local_app_data
    assert local["endpoints"] == POOLER
    assert local["database"] == "myapp"
    assert secret_by_id(out, local["secret-user"]).latest_content["username"] == client_username(
        rel.id, OWNER_TAG
    )
    assert peer_databases(out) == {"myapp": rel.id}
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


# -- answered relations follow the backend ------------------------------------------------------


def answered(
    rel_id: int, database: str, app: str
) -> tuple[testing.Relation, list[testing.Secret]]:
    """A client relation as we left it after answering (hand-built, library wire format)."""
    username = client_username(rel_id, OWNER_TAG)
    password = f"{database}-Passw0rd".ljust(40, "x")
    uri = f"postgresql://{username}:{password}@{POOLER}/{database}"
    user_secret = testing.Secret(
        {
            "username": username,
            "password": password,
            "uris": uri,
            "read-only-uris": uri + "_readonly",
        },
        owner="app",
        label=f"database.{rel_id}.user.secret",
        remote_grants={rel_id: {app}},
    )
    ours = testing.Secret(
        {"username": username, "password": password},
        owner="app",
        label=f"{CLIENT_SECRET_LABEL_PREFIX}{rel_id}",
    )
    relation = testing.Relation(
        "database",
        id=rel_id,
        remote_app_name=app,
        remote_app_data={**V0_REQUEST, "database": database},
        remote_units_data={0: {}},
        local_app_data={
            "database": database,
            "resource": database,
            "endpoints": POOLER,
            "read-only-endpoints": POOLER,
            "version": "15.18",
            "secret-user": user_secret.id,
            "data": json.dumps(
                {"resource": database, "requested-secrets": ["username", "password"]}
            ),
        },
    )
    return relation, [user_secret, ours]


def test_backend_endpoint_change_reaches_every_client(ctx, dirs, fake_clients, fake_sql):
    one, one_secrets = answered(11, "alpha", "app-one")
    two, two_secrets = answered(12, "beta", "app-two")
    # the backend lost its replicas and moved to 16.4
    new_remote = {**SEED_PROVIDER, "version": "16.4"}
    del new_remote["read-only-endpoints"]
    old_tracked = json.dumps(
        {k: SEED_PROVIDER[k] for k in ("endpoints", "read-only-endpoints", "version")},
        sort_keys=True,
    )
    backend = backend_relation(new_remote, local={**OUR_REQUEST, "data": old_tracked})
    secret = auth_secret()
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={one, two, backend, two_clients_peers(secret)},
        containers={make_container(dirs)},
        secrets={secret, *one_secrets, *two_secrets},
    )
    out = ctx.run(ctx.on.relation_changed(backend, remote_unit=0), state)

    assert fake_clients.created == []  # nothing to create: only the answers change
    for rel, database in ((one, "alpha"), (two, "beta")):
        local = dict(out.get_relation(rel.id).local_app_data)
        assert local["endpoints"] == POOLER
        assert local["version"] == "16.4"
        assert "read-only-endpoints" not in local
        content = secret_by_id(out, local["secret-user"]).latest_content
        assert "read-only-uris" not in content
        assert content["uris"].endswith(f"@{POOLER}/{database}")
    text = ini(dirs)
    assert "alpha = host=" in text and "beta = host=" in text
    assert "_readonly" not in text


def test_config_change_of_listen_port_reaches_every_client(ctx, dirs, fake_clients):
    one, one_secrets = answered(11, "alpha", "app-one")
    two, two_secrets = answered(12, "beta", "app-two")
    secret = auth_secret()
    state = testing.State(
        leader=True,
        model=MODEL,
        config={"listen_port": 7000},
        relations={one, two, backend_relation(), two_clients_peers(secret)},
        containers={make_container(dirs)},
        secrets={secret, *one_secrets, *two_secrets},
    )
    out = ctx.run(ctx.on.config_changed(), state)

    new = "pgbouncer-k8s.dev.svc.cluster.local:7000"
    for rel in (one, two):
        local = out.get_relation(rel.id).local_app_data
        assert local["endpoints"] == new
        assert f"@{new}/" in secret_by_id(out, local["secret-user"]).latest_content["uris"]
    # the same passwords: answering again never rotates them
    for rel, secrets in ((one, one_secrets), (two, two_secrets)):
        before = secrets[0].tracked_content["password"]
        after = secret_by_id(out, out.get_relation(rel.id).local_app_data["secret-user"])
        assert after.latest_content["password"] == before
    assert fake_clients.created == []


def test_a_new_port_is_published_only_once_every_unit_listens_on_it(ctx, dirs, fake_clients):
    """Issue 16: clients are told a port only when every unit serves it.

    The follower still listens on 6432 (its last report): the leader, already moved to 7000,
    keeps publishing 6432, which every unit still serves (its old processes drain there). Once
    the follower reports 7000, the leader's peer relation-changed publishes 7000.
    """
    one, one_secrets = answered(11, "alpha", "app-one")
    secret = auth_secret()
    peers = two_clients_peers(secret)
    still_old = {1: {"applied-databases": '["alpha", "beta"]', "applied-port": "6432"}}
    peers = dataclasses.replace(
        peers,
        local_app_data={**peers.local_app_data, "published_port": "6432"},
        peers_data=still_old,
    )
    state = testing.State(
        leader=True,
        model=MODEL,
        config={"listen_port": 7000},
        relations={one, backend_relation(), peers},
        containers={make_container(dirs)},
        secrets={secret, *one_secrets},
    )
    out = ctx.run(ctx.on.config_changed(), state)
    assert out.get_relation(one.id).local_app_data["endpoints"] == POOLER  # still 6432
    assert out.get_relation(peers.id).local_app_data["published_port"] == "6432"
    assert out.get_relation(peers.id).local_unit_data["applied-port"] == "7000"

    moved = {1: {"applied-databases": '["alpha", "beta"]', "applied-port": "7000"}}
    peers_after = dataclasses.replace(out.get_relation(peers.id), peers_data=moved)
    later = ctx.run(
        ctx.on.relation_changed(peers_after, remote_unit=1),
        dataclasses.replace(
            out, relations={*(r for r in out.relations if r.id != peers.id), peers_after}
        ),
    )
    new = "pgbouncer-k8s.dev.svc.cluster.local:7000"
    assert later.get_relation(one.id).local_app_data["endpoints"] == new
    assert later.get_relation(peers.id).local_app_data["published_port"] == "7000"


def test_a_follower_keeps_its_old_port_until_the_new_one_is_published(ctx, dirs, monkeypatch):
    """The old processes drain only DRAIN_GRACE_S after this unit saw the new port published."""
    peers = peer_relation(auth_secret())
    state = testing.State(
        leader=False,
        model=MODEL,
        relations={
            dataclasses.replace(
                peers, local_app_data={**peers.local_app_data, "published_port": "6432"}
            )
        },
        containers={make_container(dirs)},
    )
    out = ctx.run(ctx.on.config_changed(), state)  # first apply on 6432
    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"listen_port": 7000}))
    assert {p.port for p in out.opened_ports} == {6432, 7000}
    out = ctx.run(ctx.on.update_status(), out)  # a hook while 6432 is still the published port
    later = time.time() + DRAIN_GRACE_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    out = ctx.run(ctx.on.update_status(), out)  # the leader still publishes 6432
    assert {p.port for p in out.opened_ports} == {6432, 7000}
    rel = out.get_relation(peers.id)
    told = dataclasses.replace(
        rel, local_app_data={**rel.local_app_data, "published_port": "7000"}
    )
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations={told}))
    assert {p.port for p in out.opened_ports} == {6432, 7000}  # just told: the grace begins
    much_later = later + DRAIN_GRACE_S + 1
    monkeypatch.setattr(time, "time", lambda: much_later)
    out = ctx.run(ctx.on.update_status(), out)
    assert {p.port for p in out.opened_ports} == {7000}


# -- relation broken --------------------------------------------------------------------------


def test_broken_drops_its_own_user_and_database_entry_only(ctx, dirs, fake_clients):
    one, one_secrets = answered(11, "alpha", "app-one")
    two, two_secrets = answered(12, "beta", "app-two")
    secret = auth_secret()
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={one, two, backend_relation(), two_clients_peers(secret)},
        containers={make_container(dirs)},
        secrets={secret, *one_secrets, *two_secrets},
    )
    out = ctx.run(ctx.on.relation_broken(one), state)

    assert fake_clients.dropped == [client_username(11, OWNER_TAG)]
    assert peer_databases(out) == {"beta": 12}
    text = ini(dirs)
    assert "alpha" not in text
    assert "beta = host=" in text and "beta_readonly = host=" in text
    labels = {s.label for s in out.secrets}
    assert f"{CLIENT_SECRET_LABEL_PREFIX}11" not in labels
    assert "database.11.user.secret" not in labels
    assert {f"{CLIENT_SECRET_LABEL_PREFIX}12", "database.12.user.secret"} <= labels
    # The other relation's answer is untouched (re-answering may add the library's salt and its
    # secret-tls, which says tls=False).
    after = dict(out.get_relation(two.id).local_app_data)
    after.pop("salt", None)
    after.pop("secret-tls", None)
    assert after == dict(two.local_app_data)
    assert out.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_broken_with_backend_unreachable_keeps_the_drop_for_later(ctx, dirs, fake_clients):
    fake_clients.fail = BackendUnreachable("cannot reach PostgreSQL")
    one, one_secrets = answered(11, "alpha", "app-one")
    secret = auth_secret()
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={
            one,
            backend_relation(),
            peer_relation(secret, {"alpha": 11}, tenants=tenants({"alpha": (11, "app-one")})),
        },
        containers={make_container(dirs)},
        secrets={secret, *one_secrets},
    )
    out = ctx.run(ctx.on.relation_broken(one), state)

    assert fake_clients.dropped == []
    assert peer_databases(out) == {}
    assert "alpha" not in ini(dirs)
    # The drop is not lost: the role stays in the leader-written record until it is gone.
    assert set(peer_tenants(out).roles) == {client_username(11, OWNER_TAG)}


def test_pending_drop_is_retried_by_the_next_refresh(ctx, dirs, fake_clients):
    username = client_username(11, OWNER_TAG)
    secret = auth_secret()
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={
            backend_relation(),
            peer_relation(secret, tenants=tenants({"alpha": (11, "app-one")})),
        },
        containers={make_container(dirs)},
        secrets={secret},
    )
    out = ctx.run(ctx.on.update_status(), state)

    assert fake_clients.dropped == [username]
    assert peer_tenants(out).roles == {}


def test_broken_on_a_follower_does_nothing(ctx, dirs, fake_clients):
    one, one_secrets = answered(11, "alpha", "app-one")
    secret = auth_secret()
    state = testing.State(
        leader=False,
        model=MODEL,
        relations={
            one,
            backend_relation(),
            peer_relation(secret, {"alpha": 11}, tenants=tenants({"alpha": (11, "app-one")})),
        },
        containers={make_container(dirs)},
        secrets={secret, *one_secrets},
    )
    out = ctx.run(ctx.on.relation_broken(one), state)
    assert fake_clients.dropped == []
    assert peer_databases(out) == {"alpha": 11}


# -- the publish barrier ----------------------------------------------------------------------


def test_credentials_wait_until_every_unit_serves_the_database(ctx, dirs, fake_clients):
    """Issue 16: a client's first connection to any unit must find its database."""
    rel = client_relation(V0_REQUEST)
    secret = auth_secret()
    follower_serves_nothing = {1: {"applied-databases": "[]"}}
    peers = peer_relation(secret)
    state = testing.State(
        leader=True,
        model=MODEL,
        relations={
            rel,
            backend_relation(),
            dataclasses.replace(peers, peers_data=follower_serves_nothing),
        },
        containers={make_container(dirs)},
        secrets={secret},
    )
    out = changed(ctx, state, rel)

    assert [c["database"] for c in fake_clients.created] == ["myapp"]  # granted...
    assert "secret-user" not in out.get_relation(rel.id).local_app_data  # ...not published
    assert out.unit_status == testing.WaitingStatus(
        f"client relation {rel.id}: waiting for pgbouncer-k8s/1 to serve myapp"
    )

    # The follower applied and said so: the leader's peer relation-changed publishes.
    peers_after = out.get_relation(peers.id)
    served = dataclasses.replace(peers_after, peers_data={1: {"applied-databases": '["myapp"]'}})
    later = ctx.run(
        ctx.on.relation_changed(served, remote_unit=1),
        dataclasses.replace(
            out, relations={*(r for r in out.relations if r.id != peers.id), served}
        ),
    )
    assert "secret-user" in later.get_relation(rel.id).local_app_data
    assert later.unit_status == testing.ActiveStatus("1 PgBouncer process")


def test_a_steady_leader_hook_rewrites_no_client_databag(ctx, dirs, fake_clients):
    """Nothing changed, nothing written: the answer (salt included) is the same hook after hook.

    Each rewrite would wake every unit of the client application with a relation-changed.
    """
    rel = client_relation(V0_REQUEST)
    out = changed(ctx, state_with(rel, dirs=dirs), rel)
    first = dict(out.get_relation(rel.id).local_app_data)
    assert "secret-user" in first and "salt" in first
    for hook in (ctx.on.update_status(), ctx.on.config_changed(), ctx.on.update_status()):
        out = ctx.run(hook, out)
        assert dict(out.get_relation(rel.id).local_app_data) == first
