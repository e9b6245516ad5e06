"""Builders for Scenario states shared by the unit tests of the charm.

Juju and Pebble are simulated by ``ops.testing``; the container's ``/var/lib/pgbouncer`` is a
real temp directory (``testing.Mount``) so tests read the files the charm wrote, with their
modes. The PostgreSQL connection is the one boundary faked here (:class:`FakeBackendSQL`); the
functional and end-to-end tiers run the same SQL on a real server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import pytest
from ops import pebble, testing

from charm import PgBouncerK8sCharm
from pgbouncer.image import VERSION_MARKER
from pgbouncer.plan import build_layer
from postgres.connection import BackendUnreachable
from postgres.effects import PostgreSQL

PGB_DIR = "/var/lib/pgbouncer"
SEED_PROVIDER = {
    "endpoints": "postgresql-k8s-primary.dev.svc.cluster.local:5432",
    "read-only-endpoints": "postgresql-k8s-replicas.dev.svc.cluster.local:5432",
    "password": "18cqKCp19xOPBh",
    "username": "relation_18",
    "version": "15.18",
}
OUR_REQUEST = {
    "database": "pgbouncer",
    "extra-user-roles": "SUPERUSER",
    "requested-secrets": '["username", "password"]',
}
AUTH_USER = "pgbouncer_auth_relation_18"
AUTH_PASSWORD = "A" * 12 + "uthPassw0rdFromThePeerSecret00"  # 42 chars


class Effects:
    """The backend as the unit tests hand it to the charm (``PgBouncerK8sCharm.effects``).

    The fakes a test asked for (``fake_sql`` for the auth plumbing, ``fake_clients`` for the
    client roles); the real :class:`~postgres.effects.PostgreSQL` for a part no fake stands in
    for (it fails to reach the relation's made-up hosts, as a backend that is down would).
    """

    def __init__(self, auth: FakeBackendSQL | None = None, clients: Any = None):
        self.auth = auth
        self.clients = clients
        self._real = PostgreSQL()

    def connect_check(self, creds):
        if self.auth is None:
            return self._real.connect_check(creds)
        with self.auth.connect(creds):
            return None

    def install_auth(self, creds, **kwargs):
        return (self.auth or self._real).install_auth(creds, **kwargs)

    def check_auth(self, creds, **kwargs):
        return (self.auth or self._real).check_auth(creds, **kwargs)

    def remove_auth(self, creds, **kwargs):
        return (self.auth or self._real).remove_auth(creds, **kwargs)

    def remove_leftovers(self, creds, **kwargs):
        return (self.auth or self._real).remove_leftovers(creds, **kwargs)

    def grant_database(self, creds, record, **kwargs):
        return (self.clients or self._real).grant_database(creds, record, **kwargs)

    def drop_gone(self, creds, record, live, **kwargs):
        return (self.clients or self._real).drop_gone(creds, record, live, **kwargs)

    def repair_tenancy(self, creds, record, live, **kwargs):
        return (self.clients or self._real).repair_tenancy(creds, record, live, **kwargs)

    def backend_version(self, creds):
        return (self.clients or self._real).backend_version(creds)

    def retire_generation(self, creds, **kwargs):
        return (self.auth or self._real).retire_generation(creds, **kwargs)


def charm_with(effects: Effects) -> type[PgBouncerK8sCharm]:
    """The charm class, given ``effects`` as its backend (a subclass: nothing is patched)."""
    # __module__ "charm": Scenario finds charmcraft.yaml from the module the class is in.
    return type(
        "PgBouncerUnderTest", (PgBouncerK8sCharm,), {"effects": effects, "__module__": "charm"}
    )


@pytest.fixture
def effects() -> Effects:
    return Effects()


@pytest.fixture
def ctx(effects: Effects) -> testing.Context:
    return testing.Context(charm_with(effects))


@dataclass
class Dirs:
    pgb: Path
    cgroup: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    pgb = tmp_path / "pgb"
    cgroup = tmp_path / "cgroup"
    pgb.mkdir()
    cgroup.mkdir()
    (cgroup / "cpu.max").write_text("100000 100000\n")  # one CPU
    return Dirs(pgb, cgroup)


def make_container(
    dirs: Dirs,
    *,
    can_connect: bool = True,
    running: bool = True,
    version: str = "1.24.1",
    processes: int = 1,
) -> testing.Container:
    layer = pebble.Layer(build_layer(processes))  # pyright: ignore[reportArgumentType]
    statuses = dict.fromkeys(
        layer.services, pebble.ServiceStatus.ACTIVE if running else pebble.ServiceStatus.INACTIVE
    )
    return testing.Container(
        "pgbouncer",
        can_connect=can_connect,
        layers={"pgbouncer": layer} if running else {},
        service_statuses=statuses if running else {},
        mounts={
            "pgb": testing.Mount(location=PGB_DIR, source=dirs.pgb),
            "cgroup": testing.Mount(location="/sys/fs/cgroup", source=dirs.cgroup),
        },
        execs={
            # The image contract check (pgbouncer.image): a complete image.
            testing.Exec(["sh", "-c"], stdout=f"{VERSION_MARKER}\nPgBouncer {version}\n"),
        },
    )


class _RelationId(TypedDict, total=False):
    id: int


def backend_relation(
    remote: dict[str, str] | None = None,
    local: dict[str, str] | None = None,
    remote_units: tuple[int, ...] = (0,),
    relation_id: int | None = None,
) -> testing.Relation:
    kwargs: _RelationId = {} if relation_id is None else {"id": relation_id}
    return testing.Relation(
        "backend-database",
        remote_app_name="postgresql-k8s",
        remote_app_data=SEED_PROVIDER if remote is None else remote,
        local_app_data=OUR_REQUEST if local is None else local,
        remote_units_data={u: {} for u in remote_units},
        **kwargs,
    )


def auth_secret(username: str = AUTH_USER, password: str = AUTH_PASSWORD) -> testing.Secret:
    return testing.Secret(
        {"username": username, "password": password}, owner="app", label="pgbouncer-auth"
    )


def peer_relation(
    secret: testing.Secret | None = None,
    databases: dict[str, int] | None = None,
    local_unit: dict[str, str] | None = None,
    tenants: str | None = None,
) -> testing.PeerRelation:
    app: dict[str, str] = {}
    if tenants is not None:
        app["tenants"] = tenants
    if secret is not None:
        app["auth_secret_id"] = secret.id
        app["auth_dbname"] = "pgbouncer"
    if databases:
        app["databases"] = json.dumps({k: {"relation_id": v} for k, v in databases.items()})
    return testing.PeerRelation("pgb-peers", local_app_data=app, local_unit_data=local_unit or {})


@dataclass
class FakeBackendSQL:
    """Stands in for the PostgreSQL connection: records what the charm asked for."""

    fail: bool = False
    installed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    leftovers_checked: list[str | None] = field(default_factory=list)
    connects: int = 0
    checked: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    creds_seen: list = field(default_factory=list)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise BackendUnreachable("connection to the backend refused")

    def connect(self, creds, dbname=None):
        self.creds_seen.append(creds)
        self.connects += 1
        self._maybe_fail()
        return _NullConnection()

    def install_auth(self, creds, *, auth_user, auth_password, owner_tag, login_role=None):
        self.creds_seen.append(creds)
        self._maybe_fail()
        self.installed[login_role or auth_user] = auth_password
        return f"SELECT usename, passwd FROM {auth_user}.get_auth($1)"  # noqa: S608

    def remove_auth(self, creds, *, auth_user, owner_tag=None):
        self.creds_seen.append(creds)
        self._maybe_fail()
        self.removed.append(auth_user)

    def check_auth(self, creds, *, auth_user, auth_password, owner_tag, schema=None):
        self.creds_seen.append(creds)
        self._maybe_fail()
        self.checked.append(auth_user)
        return self.broken.pop(0) if self.broken else None

    def retire_generation(self, creds, *, role, owner_tag):
        self._maybe_fail()
        self.retired.append(role)
        return True

    def remove_leftovers(self, creds, *, owner_tag, keep):
        self._maybe_fail()
        self.leftovers_checked.append(keep)
        return []


class _NullConnection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake_sql(effects: Effects) -> FakeBackendSQL:
    effects.auth = FakeBackendSQL()
    return effects.auth
