"""The PostgreSQL charm's side of ``backend-database``, played on a real PostgreSQL server.

Two ways to answer our requirer databag:

- :meth:`FakePostgresqlCharm.provide`: written by hand after the seed's table. It creates the
  relation user ``relation_<id>`` (random password, ``SUPERUSER`` and the other role attributes
  asked for) and the requested database on the real server(s), and returns the provider
  application databag: ``database``, ``endpoints``, ``read-only-endpoints`` (when a read-only
  server is given), ``version`` (the server's own), and the credentials either plain
  (``username``, ``password``, ``uris``: the seed's provider) or in a Juju secret named by
  ``secret-user`` whose content holds ``username``, ``password`` and ``uris`` (a provider that
  supports secrets keeps the password-bearing URI out of the databag too).
- :meth:`FakePostgresqlCharm.provide_with_dpcharmlibs`: runs the real provider of the PyPI
  package ``dpcharmlibs-interfaces`` (``ResourceProviderEventHandler``) inside a tiny charm
  class with its own ``testing.Context``, fed our requirer databag; its ``resource_requested``
  handler creates the user on the real server and answers with ``set_response``. The databag
  and the secret it produced are returned, for a test to hand to our charm.

:meth:`FakePostgresqlCharm.revoke` drops a relation user the way the PostgreSQL charm does when
the relation goes (``REASSIGN OWNED``, ``DROP OWNED`` in every database, then ``DROP ROLE``).
Every identifier and literal goes through ``psycopg.sql``; no password reaches a command line.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any, LiteralString
from urllib.parse import quote

import ops
from ops import testing
from psycopg import sql

from harness.servers.pg import PostgresServer

APP_NAME = "postgresql-k8s"
ENDPOINT = "database"
ROLE_ATTRIBUTES: dict[str, LiteralString] = {
    a: a for a in ("SUPERUSER", "CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS")
}
"""The role attributes a client may ask for, each as the SQL keyword it is."""

PROVIDER_META: dict[str, Any] = {
    "name": APP_NAME,
    "provides": {ENDPOINT: {"interface": "postgresql_client"}},
}


def server_version(server: PostgresServer) -> str:
    """The server's version number as the PostgreSQL charm publishes it (``15.14``)."""
    return str(server.execute("SHOW server_version")[0][0]).split()[0]


@dataclasses.dataclass
class Credentials:
    """A relation user made on the real server(s)."""

    username: str
    password: str
    database: str


class FakePostgresqlCharm:
    """The PostgreSQL charm, as far as ``backend-database`` can tell, backed by real servers.

    Args:
        server: the primary (``endpoints``).
        read_only: a second server for ``read-only-endpoints``; None for a single unit. A hot
            standby of ``server`` (``pg_is_in_recovery()``) gets users and databases by
            replication: they are made on the primary only, and each change waits until the
            standby replayed it. Any other server stands in for replication: they are made on
            it too.
        app_name: the remote application name.
        more_read_only: further replicas, published after ``read_only`` in
            ``read-only-endpoints`` (a comma list, as the PostgreSQL charm writes for several);
            hot standbys like ``read_only``.
    """

    def __init__(
        self,
        server: PostgresServer,
        read_only: PostgresServer | None = None,
        app_name: str = APP_NAME,
        more_read_only: tuple[PostgresServer, ...] = (),
    ):
        self.server = server
        self.read_only = read_only
        self.more_read_only = more_read_only
        self.app_name = app_name
        self.users: dict[int, Credentials] = {}
        self.created_databases: set[str] = set()
        self.standby = read_only is not None and bool(
            read_only.execute("SELECT pg_catalog.pg_is_in_recovery()")[0][0]
        )

    @property
    def servers(self) -> list[PostgresServer]:
        """Every server a relation user is made on (a standby gets them by replication)."""
        return [self.server] + ([self.read_only] if self.read_only and not self.standby else [])

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """With a standby: block until it replayed everything the primary wrote so far.

        The target is the WAL *insert* position: the servers run with ``synchronous_commit=off``,
        so a commit may not be written yet when its statement returns (the WAL writer flushes it
        within ``wal_writer_delay``), and the standby receives only what was flushed.
        """
        if self.read_only is None or not self.standby:
            return
        target = self.server.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        for replica in (self.read_only, *self.more_read_only):
            while not replica.execute(
                "SELECT pg_catalog.pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            )[0][0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby has not replayed {target} after {timeout}s")
                time.sleep(0.02)

    @property
    def read_only_endpoints(self) -> str | None:
        """``read-only-endpoints`` as published: every replica's ``host:port``, comma-separated."""
        if self.read_only is None:
            return None
        return ",".join(r.endpoint for r in (self.read_only, *self.more_read_only))

    def uri(self, creds: Credentials, server: PostgresServer | None = None) -> str:
        """The libpq URI of a relation user (password URL-encoded)."""
        server = server or self.server
        return (
            f"postgresql://{quote(creds.username, safe='')}:{quote(creds.password, safe='')}"
            f"@{server.host}:{server.port}/{quote(creds.database, safe='')}"
        )

    # -- the real server ---------------------------------------------------------------------

    def create_user(
        self, relation_id: int, database: str, extra_user_roles: str | None
    ) -> Credentials:
        """Create (or reset the password of) ``relation_<id>`` and its database, on every server."""
        creds = self.users.get(relation_id) or Credentials(
            username=f"relation_{relation_id}",
            password=secrets.token_urlsafe(24),
            database=database,
        )
        creds.database = database
        roles = [r.strip().upper() for r in (extra_user_roles or "").split(",") if r.strip()]
        attributes: list[LiteralString] = [
            ROLE_ATTRIBUTES[r] for r in roles if r in ROLE_ATTRIBUTES
        ]
        granted = [r.lower() for r in roles if r not in ROLE_ATTRIBUTES]
        user = sql.Identifier(creds.username)
        db = sql.Identifier(database)
        for server in self.servers:
            with server.connect() as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (creds.username,)
                ).fetchone()
                verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
                conn.execute(
                    sql.SQL("{} ROLE {} WITH LOGIN {} PASSWORD {}").format(
                        verb,
                        user,
                        sql.SQL(" ").join(sql.SQL(a) for a in attributes),
                        sql.Literal(creds.password),
                    )
                )
                for role in granted:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), user))
                has_db = conn.execute(
                    "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if not has_db:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
                    self.created_databases.add(database)
                conn.execute(sql.SQL("GRANT ALL PRIVILEGES ON DATABASE {} TO {}").format(db, user))
            with server.connect(database) as conn:
                conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(user))
        self.users[relation_id] = creds
        self.wait_replayed()
        return creds

    def revoke(self, relation_id: int) -> None:
        """Drop the relation's user as the PostgreSQL charm does when the relation goes."""
        creds = self.users.pop(relation_id, None)
        if creds is None:
            return
        user = sql.Identifier(creds.username)
        for server in self.servers:
            exists = server.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (creds.username,)
            )
            if not exists:
                continue
            databases = [
                row[0]
                for row in server.execute(
                    "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname"
                )
            ]
            for database in databases:
                with server.connect(database) as conn:
                    conn.execute(
                        sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                            user, sql.Identifier(server.user)
                        )
                    )
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(user))
            with server.connect() as conn:
                conn.execute(sql.SQL("DROP ROLE {}").format(user))
        self.wait_replayed()

    def cleanup(self) -> None:
        """Drop every relation user and every database this fake created (test teardown)."""
        for relation_id in list(self.users):
            self.revoke(relation_id)
        for database in sorted(self.created_databases):
            for server in self.servers:
                server.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                    .format(sql.Identifier(database))
                    .as_string()
                )
        self.created_databases.clear()

    # -- answering by hand -------------------------------------------------------------------

    def provide(
        self,
        requested_database: str,
        extra_user_roles: str | None,
        *,
        relation_id: int,
        use_secret: bool,
    ) -> tuple[dict[str, str], testing.Secret | None]:
        """Create the user and database, and answer as a PostgreSQL charm would.

        Args:
            requested_database: our databag's ``database``.
            extra_user_roles: our databag's ``extra-user-roles`` (comma list) or None.
            relation_id: the relation's id (names the user, ``relation_<id>``).
            use_secret: send the credentials as a Juju secret (``secret-user``) rather than plain.

        Returns:
            the provider application databag, and the secret (owned by the remote application:
            ``owner=None`` from our side) when ``use_secret``.
        """
        creds = self.create_user(relation_id, requested_database, extra_user_roles)
        data = {
            "database": creds.database,
            "endpoints": self.server.endpoint,
            "version": server_version(self.server),
        }
        user_content = {
            "username": creds.username,
            "password": creds.password,
            "uris": self.uri(creds),
        }
        if self.read_only is not None:
            data["read-only-endpoints"] = self.read_only_endpoints or ""
            user_content["read-only-uris"] = self.uri(creds, self.read_only)
        if not use_secret:
            return {**data, **user_content}, None
        secret = testing.Secret(user_content, owner=None, label=None)
        data["secret-user"] = secret.id
        return data, secret

    # -- answering with dpcharmlibs-interfaces -----------------------------------------------

    def provide_with_dpcharmlibs(
        self,
        requirer_app_data: dict[str, str],
        *,
        relation_id: int,
        requirer_app: str = "pgbouncer-k8s",
        juju_version: str = "3.6.2",
    ) -> tuple[dict[str, str], testing.Secret | None]:
        """Run dpcharmlibs' provider on our requirer databag; its databag and user secret.

        Args:
            requirer_app_data: our application databag (``database``, ``extra-user-roles``,
                ``requested-secrets``, ...).
            relation_id: the relation's id (the same on both sides in Juju).
            requirer_app: our application's name.
            juju_version: the Juju version Scenario pretends to be.

        Returns:
            the provider application databag it wrote, and its ``secret-user`` secret as our
            side sees it (``owner=None``, content tracked), or None if it sent none.
        """
        charm_type = self._provider_charm_class()
        ctx = testing.Context(
            charm_type,
            meta=PROVIDER_META,
            app_name=self.app_name,
            unit_id=0,
            juju_version=juju_version,
        )
        relation = testing.Relation(
            ENDPOINT,
            interface="postgresql_client",
            id=relation_id,
            remote_app_name=requirer_app,
            remote_app_data=dict(requirer_app_data),
            remote_units_data={0: {}},
        )
        state = testing.State(leader=True, relations={relation})
        out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)
        data = dict(out.get_relation(relation_id).local_app_data)
        secret_id = data.get("secret-user")
        if not secret_id:
            return data, None
        produced = next(s for s in out.secrets if s.id == secret_id)
        ours = testing.Secret(dict(produced.latest_content), id=produced.id, owner=None)
        return data, ours

    def _provider_charm_class(self) -> type:
        from dpcharmlibs.interfaces import (  # slow import, only when used
            RequirerCommonModel,
            ResourceProviderEventHandler,
            ResourceProviderModel,
        )

        fake = self

        class FakePostgresqlProviderCharm(ops.CharmBase):
            """The provider half of a PostgreSQL charm: dpcharmlibs plus a real server."""

            def __init__(self, framework: ops.Framework):
                super().__init__(framework)
                self.provider = ResourceProviderEventHandler(self, ENDPOINT, RequirerCommonModel)
                framework.observe(self.provider.on.resource_requested, self._on_resource_requested)

            def _on_resource_requested(self, event: Any) -> None:
                request = event.request
                creds = fake.create_user(
                    event.relation.id, request.resource, request.extra_user_roles
                )
                response = ResourceProviderModel(
                    salt=request.salt,
                    request_id=request.request_id,
                    resource=creds.database,
                    username=creds.username,
                    password=creds.password,
                    uris=fake.uri(creds),
                    endpoints=fake.server.endpoint,
                    read_only_endpoints=fake.read_only_endpoints,
                    read_only_uris=fake.uri(creds, fake.read_only) if fake.read_only else None,
                    version=server_version(fake.server),
                )
                self.provider.set_response(event.relation.id, response)

        return FakePostgresqlProviderCharm
