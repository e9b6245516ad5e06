"""Run one hook of the charm in this (fresh) process and report what it imported.

``python -m tests.unit.lean_probe <event> <leader 0|1> <with database relation 0|1>`` runs the
event with ``ops.testing`` on a unit whose backend is configured, as a Juju hook would in a new
process, and prints one JSON line: the top-level packages loaded before the charm was imported
(the harness's own), after the hook, and the unit status. Used by ``test_lean_hooks.py``; kept
out of the test process so that nothing the test runner imported can hide or cause an import.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

WATCHED = ("psycopg", "psycopg_binary", "psycopg_c", "pydantic", "pydantic_core", "dpcharmlibs")


def _loaded() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules} & set(WATCHED))


def main(argv: list[str]) -> None:
    """Build the state, run the event, print the report."""
    event, leader, with_database = argv[1], argv[2] == "1", argv[3] == "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from ops import pebble, testing

    before = _loaded()
    from charm import PgBouncerK8sCharm
    from pgbouncer.plan import build_layer

    tmp = Path(tempfile.mkdtemp(prefix="pgbk8s-lean-"))
    (tmp / "pgb").mkdir()
    (tmp / "cgroup").mkdir()
    (tmp / "cgroup" / "cpu.max").write_text("100000 100000\n")
    layer = pebble.Layer(build_layer(1))  # pyright: ignore[reportArgumentType]
    container = testing.Container(
        "pgbouncer",
        can_connect=True,
        layers={"pgbouncer": layer},
        service_statuses=dict.fromkeys(layer.services, pebble.ServiceStatus.ACTIVE),
        mounts={
            "pgb": testing.Mount(location="/var/lib/pgbouncer", source=tmp / "pgb"),
            "cgroup": testing.Mount(location="/sys/fs/cgroup", source=tmp / "cgroup"),
        },
    )
    secret = testing.Secret(
        {"username": "pgbouncer_auth_relation_18", "password": "P" * 40},
        owner="app",
        label="pgbouncer-auth",
    )
    peers = testing.PeerRelation(
        "pgb-peers", local_app_data={"auth_secret_id": secret.id, "auth_dbname": "pgbouncer"}
    )
    backend = testing.Relation(
        "backend-database",
        remote_app_name="postgresql-k8s",
        remote_app_data={
            "endpoints": "127.0.0.1:1",
            "password": "relation-password-0123456789",
            "username": "relation_18",
            "version": "15.18",
        },
        local_app_data={
            "database": "pgbouncer",
            "extra-user-roles": "SUPERUSER",
            "requested-secrets": '["username", "password"]',
        },
        remote_units_data={0: {}},
    )
    relations: list[testing.RelationBase] = [peers, backend]
    database = testing.Relation(
        "database",
        remote_app_name="client-app",
        remote_app_data={"database": "appdb", "requested-secrets": '["username", "password"]'},
        remote_units_data={0: {}},
    )
    if with_database:
        relations.append(database)
    state = testing.State(
        leader=leader, containers={container}, relations=relations, secrets={secret}
    )
    ctx = testing.Context(PgBouncerK8sCharm)
    if event == "database-relation-changed":
        ev = ctx.on.relation_changed(database, remote_unit=0)
    else:
        ev = getattr(ctx.on, event.replace("-", "_"))()
    out = ctx.run(ev, state)
    print(
        json.dumps(
            {
                "before_charm": before,
                "after_hook": _loaded(),
                "status": str(out.unit_status),
                "deferred": [d.name for d in out.deferred],
                "database_app_data": dict(out.get_relation(database.id).local_app_data)
                if with_database
                else {},
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)
