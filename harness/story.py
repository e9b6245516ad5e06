"""The charm's life as Juju would drive it, in steps a test or the demo can call one by one.

:class:`Deployment` holds a pgbouncer-k8s :class:`~harness.juju.Application` (units in
their own pod networks, real PgBouncer processes), a :class:`FakePostgresqlCharm` on a real
PostgreSQL, and the client applications related to us. Each method runs the hooks Juju would run
for one operator action (``juju integrate``, ``juju remove-relation``, ``juju scale-application``,
a PostgreSQL failover), on every unit, in Juju's order, then lets the followers see what the
leader shared through the peer relation. Nothing here asserts: the tests and the demo look at
the real effects (PostgreSQL catalogs, files, processes, client connections).

Clients connect to a unit at :meth:`Unit.address` (``127.0.0.1`` on the host, relayed into the
unit's pod network) where the charm publishes ``<app>.<model>.svc.cluster.local:<listen_port>``:
there is no Kubernetes service here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from ops import testing

from harness.juju import Application, Unit

if TYPE_CHECKING:
    # What ``testing.State.unit_status`` is declared as; for annotations only, never imported.
    from scenario.state import _EntityStatus
from harness.postgresql_charm import FakePostgresqlCharm
from harness.servers.pg import PostgresServer
from harness.servers.system import (
    PG_BIN,
    as_service_user,
    free_port,
    service_ids,
    service_tempdir,
    write_service_file,
)

BackendMode = Literal["plain", "secret", "dpcharmlibs"]
"""How the fake PostgreSQL charm answers: the seed's plain fields, ``secret-user`` written by
hand, or ``secret-user`` from dpcharmlibs-interfaces' real provider."""

BACKEND = "backend-database"
CLIENT = "database"
POSTGRESQL_APP = "postgresql-k8s"
AUTH_PATTERN = "pgbouncer\\_auth\\_%"
"""``LIKE`` pattern of the auth roles and schemas (``pgbouncer_auth_<relation user>``)."""


@dataclasses.dataclass
class ClientApp:
    """A client application related to us on ``database`` (one unit, ``<name>/0``).

    Attributes:
        name: the client application's name.
        relation_id: the relation's id.
        database: the database it asked for.
    """

    name: str
    relation_id: int
    database: str


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """What a client got from us: the secret's content and the databag's fields."""

    username: str
    password: str
    database: str
    endpoints: str

    def __repr__(self) -> str:  # never show the password
        return f"ClientCredentials(username={self.username!r}, database={self.database!r})"


def connect_at(
    address: tuple[str, int], creds: ClientCredentials, **kwargs: Any
) -> psycopg.Connection:
    """A client connection to ``address`` (host, port) with ``creds``; ``kwargs`` to psycopg."""
    return psycopg.connect(
        host=address[0],
        port=address[1],
        dbname=creds.database,
        user=creds.username,
        password=creds.password,
        connect_timeout=5,
        **kwargs,
    )


class Deployment:
    """pgbouncer-k8s related to a (fake) PostgreSQL charm and to client applications.

    Args:
        app: the pgbouncer-k8s application (units' hooks are run through it).
        postgresql: the PostgreSQL charm, played on a real server.
    """

    def __init__(self, app: Application, postgresql: FakePostgresqlCharm):
        self.app = app
        self.postgresql = postgresql
        self.backend_id: int | None = None
        self.backend_mode: BackendMode | None = None
        self.clients: dict[str, ClientApp] = {}

    # -- deploy -----------------------------------------------------------------------------
    def deploy(self, *, pebble_ready: bool = True) -> None:
        """Run install on every unit, leader-elected on the leader, then (or not yet) pebble-ready.

        With ``pebble_ready=False`` the containers stay unreachable, as before Pebble starts.
        """
        for unit in self.app.units:
            if not pebble_ready:
                unit.can_connect = False
            unit.install()
        self.app.leader.leader_elected()
        for unit in self.app.units:
            unit.config_changed()
        if pebble_ready:
            self.pebble_ready()

    def pebble_ready(self) -> None:
        """Pebble starts in every container: pebble-ready on every unit, leader first."""
        for unit in self._leader_first():
            unit.can_connect = True
            unit.pebble_ready()
        self.settle_peers()

    def _leader_first(self) -> list[Unit]:
        return sorted(self.app.units, key=lambda u: (not u.is_leader, u.unit_id))

    def settle_peers(self) -> None:
        """Peer relation-changed as Juju runs it, both ways.

        Each follower for what the leader shared, then the leader for what each follower
        reported (what it applied: the publish barrier waits for it).
        """
        leader = self.app.leader
        followers = [unit for unit in self.app.units if unit is not leader]
        for unit in followers:
            unit.relation_changed(self.app.peer_relation_id, remote_unit=leader.unit_id)
        for unit in followers:
            leader.relation_changed(self.app.peer_relation_id, remote_unit=unit.unit_id)

    # -- backend-database ---------------------------------------------------------------------
    def relate_backend(self, mode: BackendMode) -> int:
        """``juju integrate pgbouncer-k8s:backend-database postgresql-k8s``.

        relation-created on every unit (the leader writes our request), the PostgreSQL charm
        answers (creating its relation user and the ``pgbouncer`` database on the real server),
        then relation-joined and relation-changed on every unit, leader first.
        """
        rid = self.app.add_relation(
            testing.Relation(BACKEND, remote_app_name=POSTGRESQL_APP, remote_units_data={0: {}})
        )
        self.backend_id, self.backend_mode = rid, mode
        for unit in self._leader_first():
            unit.relation_created(rid)
        self.provider_answers()
        for unit in self._leader_first():
            unit.relation_joined(rid, remote_unit=0)
            unit.relation_changed(rid, remote_unit=0)
        self.settle_peers()
        return rid

    def provider_answers(self) -> None:
        """The PostgreSQL charm reads our request and writes its databag (and secret)."""
        rid, mode = self._backend()
        request = self.app.relation_data(rid)
        if mode == "dpcharmlibs":
            data, secret = self.postgresql.provide_with_dpcharmlibs(request, relation_id=rid)
        else:
            data, secret = self.postgresql.provide(
                request["database"],
                request.get("extra-user-roles"),
                relation_id=rid,
                use_secret=mode == "secret",
            )
        if secret is not None:
            self.app.add_secret(secret)
        self.app.set_remote(rid, remote_app_data=data)

    def _backend(self) -> tuple[int, BackendMode]:
        if self.backend_id is None or self.backend_mode is None:
            raise RuntimeError("no backend relation")
        return self.backend_id, self.backend_mode

    def provider_data(self) -> dict[str, str]:
        """The PostgreSQL charm's application databag, as our units see it."""
        rid, _ = self._backend()
        relation = self.app.leader.relation(rid)
        assert isinstance(relation, testing.Relation)
        return dict(relation.remote_app_data)

    def fail_over(self, new_primary: PostgresServer) -> None:
        """The PostgreSQL charm publishes a new primary: ``endpoints`` change, relation-changed.

        The new server must already hold what the old one held (see :func:`promoted_copy`).
        """
        rid, _ = self._backend()
        self.app.reach(new_primary.port)
        self.postgresql.server = new_primary
        data = {**self.provider_data(), "endpoints": new_primary.endpoint}
        self.app.set_remote(rid, remote_app_data=data)
        for unit in self._leader_first():
            unit.relation_changed(rid, remote_unit=0)
        self.settle_peers()

    def remove_backend(self, *, postgresql_first: bool = False) -> None:
        """``juju remove-relation pgbouncer-k8s postgresql-k8s``.

        Every unit of ours runs relation-departed for each remote unit (which is no longer in
        the relation), then relation-broken, leader first; the PostgreSQL charm drops its
        relation user. Juju orders nothing between the two applications: by default ours run
        first; ``postgresql_first`` drops the relation user before any of our hooks.
        """
        rid, _ = self._backend()
        if postgresql_first:
            self.postgresql.revoke(rid)
        self._remove_relation(rid, remote_units=(0,))
        if not postgresql_first:
            self.postgresql.revoke(rid)
        self.backend_id = self.backend_mode = None

    def _remove_relation(self, rid: int, remote_units: tuple[int, ...]) -> None:
        self.app.set_remote(rid, remote_units_data={})
        for unit in self._leader_first():
            for remote in remote_units:
                unit.relation_departed(rid, remote_unit=remote)
            unit.relation_broken(rid)
        self.app.remove_relation(rid)
        self.settle_peers()

    # -- clients ------------------------------------------------------------------------------
    def relate_client(self, name: str, database: str) -> ClientApp:
        """``juju integrate <name>:database pgbouncer-k8s``: a v0 client asking for ``database``."""
        request = {"database": database, "requested-secrets": json.dumps(["username", "password"])}
        rid = self.app.add_relation(
            testing.Relation(
                CLIENT, remote_app_name=name, remote_app_data=request, remote_units_data={0: {}}
            )
        )
        for unit in self._leader_first():
            unit.relation_created(rid)
        for unit in self._leader_first():
            unit.relation_joined(rid, remote_unit=0)
            unit.relation_changed(rid, remote_unit=0)
        self.settle_peers()
        client = ClientApp(name, rid, database)
        self.clients[name] = client
        return client

    def credentials(self, client: ClientApp) -> ClientCredentials:
        """What the client reads: our databag's fields and the ``secret-user`` we granted it."""
        answer = self.app.relation_data(client.relation_id)
        secret_id = answer.get("secret-user")
        if not secret_id:
            raise LookupError(f"no answer to {client.name} yet: {sorted(answer)}")
        content = self.app.leader.secret(secret_id).latest_content
        return ClientCredentials(
            username=content["username"],
            password=content["password"],
            database=answer["database"],
            endpoints=answer["endpoints"],
        )

    def remove_client(self, client: ClientApp) -> None:
        """``juju remove-relation <client> pgbouncer-k8s``: departed then broken on every unit."""
        self._remove_relation(client.relation_id, remote_units=(0,))
        del self.clients[client.name]

    # -- scale ----------------------------------------------------------------------------------
    def scale_down(self) -> Unit:
        """``juju scale-application pgbouncer-k8s <n-1>``: the highest unit leaves, as on k8s.

        The departing unit runs relation-departed for every remote unit of every relation with
        itself as the departing unit (``JUJU_DEPARTING_UNIT=pgbouncer-k8s/<n>``), then
        relation-broken for each relation; its pod goes; the remaining units run
        pgb-peers-relation-departed for it. Returns the departed unit (no longer in the app).
        """
        leaving = max(self.app.units, key=lambda u: u.unit_id)
        self.app.set_planned_units(len(self.app.units) - 1)
        peer_id = self.app.peer_relation_id
        relation_ids = [r.id for r in leaving.state.relations if r.id != peer_id]
        for rid in relation_ids:
            relation = leaving.relation(rid)
            assert isinstance(relation, testing.Relation)
            for remote in sorted(relation.remote_units_data):
                leaving.relation_departed(rid, remote_unit=remote, departing=leaving.name)
        others = [u for u in self.app.units if u is not leaving]
        for other in others:
            leaving.relation_departed(peer_id, remote_unit=other.unit_id, departing=leaving.name)
        for rid in [*relation_ids, peer_id]:
            leaving.relation_broken(rid)
        self.app.remove_unit(leaving.unit_id)
        for other in others:
            other.relation_departed(peer_id, remote_unit=leaving.unit_id, departing=leaving.name)
        return leaving

    # -- looking ------------------------------------------------------------------------------
    def statuses(self) -> dict[str, _EntityStatus]:
        """Each unit's status after its last hook."""
        return {unit.name: unit.state.unit_status for unit in self.app.units}

    @contextmanager
    def connect(self, unit: Unit, creds: ClientCredentials) -> Iterator[psycopg.Connection]:
        """A client connection through ``unit``'s PgBouncer with the published credentials."""
        with connect_at(unit.address(), creds, autocommit=True) as conn:
            yield conn

    def query(self, unit: Unit, creds: ClientCredentials, sql: str) -> tuple:
        """One row of ``sql`` run through ``unit``'s PgBouncer."""
        with self.connect(unit, creds) as conn:
            row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return tuple(row)


def _base_backup(primary: PostgresServer, prefix: str) -> Path:
    """``pg_basebackup`` of ``primary`` into a fresh directory (``-c fast``, WAL streamed).

    The superuser's password goes through ``PGPASSWORD``, never the command line.
    """
    base = service_tempdir(prefix)
    sock = base / "sock"
    sock.mkdir()
    os.chown(sock, *service_ids())
    env = {**os.environ, "PGPASSWORD": primary.password}
    res = subprocess.run(
        as_service_user(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                primary.user,
                "-D",
                str(base / "data"),
                "-c",
                "fast",
                "-X",
                "stream",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if res.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_basebackup failed: {res.stderr[-1000:]}")
    return base


def promoted_copy(primary: PostgresServer) -> PostgresServer:
    """A new server holding a byte-identical copy of ``primary``: a replica promoted on failover.

    ``pg_basebackup`` copies the whole cluster: roles with their SCRAM verifiers, the
    ``pgbouncer`` database with the auth function, client databases. Started without
    ``standby.signal`` it comes up as a primary on a port of its own.
    """
    base = _base_backup(primary, "pgbk8s-pg-promoted-")
    server = PostgresServer(
        base=base, port=free_port(), password=primary.password, settings=dict(primary.settings)
    )
    try:
        server.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server


def hot_standby(
    primary: PostgresServer,
    timeout: float = 30.0,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    name: str = "pgbk8s_standby",
) -> PostgresServer:
    """A streaming hot standby of ``primary``: the PostgreSQL charm's replica, on this machine.

    A base backup started with ``standby.signal`` and a ``primary_conninfo`` whose password is
    read from a 0600 passfile owned by ``postgres`` (not written into the configuration). Every
    role, verifier and database made on the primary reaches it by replication; it refuses writes
    and answers ``pg_is_in_recovery()`` with true. Returns once it streams from the primary.

    Args:
        primary: the server to replicate.
        timeout: seconds to wait for streaming.
        host: the loopback address it listens on: replicas on one port need distinct
            addresses (``127.0.0.2``, ``127.0.0.3``…), as pods of a Kubernetes service have.
        port: its port (a free one by default).
        name: its ``application_name`` on the primary (one per standby).
    """
    base = _base_backup(primary, "pgbk8s-pg-standby-")
    passfile = base / "pgpass"
    write_service_file(
        passfile, f"{primary.host}:{primary.port}:*:{primary.user}:{primary.password}\n"
    )
    conninfo = (
        f"host={primary.host} port={primary.port} user={primary.user} passfile={passfile}"
        f" application_name={name}"
    )
    with (base / "data" / "postgresql.auto.conf").open("a") as conf:
        conf.write(f"primary_conninfo = '{conninfo}'\n")
    write_service_file(base / "data" / "standby.signal", "")
    server = PostgresServer(
        base=base,
        port=port or free_port(),
        password=primary.password,
        host=host,
        settings=dict(primary.settings),
    )
    try:
        server.start()
        deadline = time.monotonic() + timeout
        while not primary.execute(
            "SELECT 1 FROM pg_catalog.pg_stat_replication"
            " WHERE application_name = %s AND state = 'streaming'",
            (name,),
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby is not streaming after {timeout}s")
            time.sleep(0.05)
    except Exception:
        server.destroy()
        raise
    return server


def standby_pair(primary: PostgresServer) -> list[PostgresServer]:
    """Two hot standbys of ``primary`` on one port, at ``127.0.0.2`` and ``127.0.0.3``.

    A Kubernetes PostgreSQL cluster's replicas all listen on 5432 at addresses of their own; on
    one machine that is one port on two loopback addresses.
    """
    port = free_port()
    first = hot_standby(primary, host="127.0.0.2", port=port, name="pgbk8s_standby_1")
    try:
        return [first, hot_standby(primary, host="127.0.0.3", port=port, name="pgbk8s_standby_2")]
    except BaseException:
        first.destroy()
        raise


# -- the seed's databag table ------------------------------------------------------------------


def databag_table(
    ours: Mapping[str, str],
    theirs: Mapping[str, str],
    *,
    our_unit: str = "pgbouncer-k8s/0",
    their_unit: str = "postgresql-k8s/0",
    our_endpoint: str = BACKEND,
    their_endpoint: str = CLIENT,
) -> str:
    """Both sides of ``backend-database`` in the seed document's table layout (markdown).

    Columns: category, keys, ours, theirs. Rows: metadata ``endpoint`` and ``leader``, then the
    union of both application databags' keys, sorted. A ``password`` cell shows ``<redacted>``;
    ``secret-*`` cells show the secret's id (that is all a databag holds). A value containing a
    known password (a URI) is redacted too.
    """
    secrets_seen = {theirs.get("password"), ours.get("password")} - {None, ""}

    def cell(data: Mapping[str, str], key: str) -> str:
        if key not in data:
            return ""
        value = data[key]
        if key == "password" or any(p and p in value for p in secrets_seen):
            return "<redacted>"
        return value.replace("|", "\\|")

    rows = [
        ("metadata", "endpoint", repr(our_endpoint), repr(their_endpoint)),
        ("", "leader", "True", "True"),
    ]
    for i, key in enumerate(sorted(set(ours) | set(theirs))):
        rows.append(
            ("application data" if i == 0 else "", key, cell(ours, key), cell(theirs, key))
        )
    header = ("category", "keys", our_unit, their_unit)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    return "\n".join(lines)


# -- what PostgreSQL holds -------------------------------------------------------------------


def auth_roles(server: PostgresServer) -> list[tuple[str, bool, bool]]:
    """Roles named like our auth plumbing: ``(name, can_login, superuser)``, sorted."""
    rows = server.execute(
        "SELECT rolname, rolcanlogin, rolsuper FROM pg_catalog.pg_roles"
        " WHERE rolname LIKE %s ORDER BY rolname",
        (AUTH_PATTERN,),
    )
    return [(str(name), bool(login), bool(sup)) for name, login, sup in rows]


def auth_schemas(server: PostgresServer, dbname: str = "pgbouncer") -> list[str]:
    """Schemas named like our auth plumbing in ``dbname`` (``pg_namespace``)."""
    rows = server.execute(
        "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE %s ORDER BY nspname",
        (AUTH_PATTERN,),
        dbname=dbname,
    )
    return [str(name) for (name,) in rows]


def auth_functions(server: PostgresServer, dbname: str = "pgbouncer") -> list[str]:
    """``schema.get_auth`` functions in ``dbname`` (``pg_proc``)."""
    rows = server.execute(
        "SELECT n.nspname || '.' || p.proname FROM pg_catalog.pg_proc p"
        " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
        " WHERE p.proname = 'get_auth' ORDER BY 1",
        dbname=dbname,
    )
    return [str(name) for (name,) in rows]


def role_names(server: PostgresServer, pattern: str = "%") -> list[str]:
    """Role names matching a ``LIKE`` pattern, without PostgreSQL's own ``pg_*`` roles."""
    rows = server.execute(
        "SELECT rolname FROM pg_catalog.pg_roles"
        " WHERE rolname LIKE %s AND rolname NOT LIKE 'pg\\_%%' ORDER BY rolname",
        (pattern,),
    )
    return [str(name) for (name,) in rows]
