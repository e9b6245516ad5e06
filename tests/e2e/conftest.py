"""Fixtures of the end-to-end tier: a fresh PostgreSQL per test and a deployed application.

Each scenario gets its own PostgreSQL 15 cluster (about a second to create), so that checks on
cluster-wide catalogs (``pg_roles``) see only what that scenario's charm did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from charm import PgBouncerK8sCharm
from harness.juju import Application
from harness.postgresql_charm import FakePostgresqlCharm
from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.system import free_port, is_root
from harness.story import Deployment
from tests.conftest import ROOT_REASON


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 cluster of this test's own, destroyed afterwards."""
    if not is_root():
        pytest.skip(ROOT_REASON)
    server = start_postgres(prefix="pgbk8s-e2e-pg-")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def make_deployment(pg: PostgresServer) -> Iterator[Callable[..., Deployment]]:
    """Build a two-unit pgbouncer-k8s deployment in front of ``pg``; all closed at teardown.

    Both units run real PgBouncer processes, each unit in a network namespace of its own (as
    pods have), so that a client can query through either unit on the same ``listen_port``.
    """
    apps: list[Application] = []

    def make(num_units: int = 2, charm_dirs: bool = False) -> Deployment:
        app = Application(
            PgBouncerK8sCharm,
            num_units=num_units,
            config={"listen_port": free_port()},
            processes=range(num_units),
            pod_network=True,
            reach=(pg.port,),
            charm_dirs=charm_dirs,
        )
        apps.append(app)
        return Deployment(app, FakePostgresqlCharm(pg))

    try:
        yield make
    finally:
        for app in apps:
            app.close()
