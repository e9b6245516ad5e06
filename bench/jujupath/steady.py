"""The steady state part 4a measures, prepared on a real PostgreSQL (issue 23).

A two-unit application driven through its life with the end-to-end harness
(:class:`harness.story.Deployment`): deployed, related to the PostgreSQL charm (played on a real
server, credentials in a secret as the PostgreSQL charm sends them), ``clients`` client
applications related and answered, then every unit runs update-status until nothing it sees
changes any more (the peer data settled, status active). Each unit's state is then what Juju
would hand the next hook: nothing new, nothing drifted in the catalog.

:func:`prepare` returns one :class:`Snapshot` per unit, per client count (the states with
a count each have a deployment and a server of their own), for :mod:`bench.jujupath` to
measure.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTLE_ROUNDS = 3
"""update-status rounds on every unit before the states are taken (the leader publishes answers
once every unit reports it serves them; one round more shows the status no longer moves)."""


@dataclass
class Snapshot:
    """One unit's state before a hook, and a copy of its container's files."""

    clients: int
    leader: bool
    state: Any
    files: Path
    app_name: str
    unit_id: int
    client_relations: list[tuple[int, str]]


def _settle(dep: Any) -> None:
    for _ in range(SETTLE_ROUNDS):
        for unit in sorted(dep.app.units, key=lambda u: (not u.is_leader, u.unit_id)):
            unit.update_status()
        dep.settle_peers()


def _snap(dep: Any, tmp: Path, clients: int) -> list[Snapshot]:
    out = []
    for unit in dep.app.units:
        files = tmp / f"files-{clients}-{unit.unit_id}"
        subprocess.run(["cp", "-a", str(unit.mount_dir), str(files)], check=True)
        status = unit.state.unit_status
        if status.name != "active":
            raise RuntimeError(f"{unit.name} is not in a steady state: {status}")
        out.append(
            Snapshot(
                clients=clients,
                leader=unit.is_leader,
                state=unit.state,
                files=files,
                app_name=dep.app.name,
                unit_id=unit.unit_id,
                client_relations=[(c.relation_id, c.name) for c in dep.clients.values()],
            )
        )
    return out


def prepare(tmp: Path, counts: tuple[int, ...]) -> tuple[list[Snapshot], list[Any], str]:
    """A deployment of its own for each client count in ``counts``, settled and snapshotted.

    Each count gets its own PostgreSQL server: the leader's backend check reads the tenant
    model back and forgets what its record does not hold, so two states measured against one
    server would undo each other's catalog in every round.

    Returns:
        The snapshots, what to close afterwards (applications and servers, call ``close`` or
        ``destroy``), and the container path the unit's files are mounted at.
    """
    from charm import PgBouncerK8sCharm
    from harness.juju import Application
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres
    from harness.story import Deployment

    snapshots: list[Snapshot] = []
    owned: list[Any] = []
    mount_location = ""
    try:
        for count in counts:
            server = start_postgres(prefix=f"pgbk8s-bench-steady{count}-")
            owned.append(server)
            app = Application(PgBouncerK8sCharm, num_units=2, processes=())
            owned.append(app)
            mount_location = app.mount_location
            dep = Deployment(app, FakePostgresqlCharm(server))
            dep.deploy()
            dep.relate_backend("secret")
            for i in range(count):
                dep.relate_client(f"client{i}", f"db{i}")
                dep.credentials(dep.clients[f"client{i}"])  # answered, or LookupError
            _settle(dep)
            snapshots += _snap(dep, tmp, count)
        return snapshots, owned, mount_location
    except BaseException:
        close(owned)
        raise


def close(owned: list[Any]) -> None:
    """Close the applications and destroy the servers :func:`prepare` made."""
    for thing in reversed(owned):
        if hasattr(thing, "destroy"):
            thing.destroy()
        else:
            thing.close()
