"""No secret leaves its place: a whole life of the charm, then every place a secret must not be.

The story (two units, real PgBouncer, the PostgreSQL charm on a real server answering plain, with
a hand-written ``secret-user``, or through dpcharmlibs' provider): deploy, relate the backend,
relate a client, query through each unit, rotate nothing, remove the client, remove the backend.
Then, for every password of the story (the relation user's, the auth role's, the client's) and
the auth file's content:

- not in any line the charm logged (``ctx.juju_log`` of every unit, every hook: Python logging
  goes there through ops);
- not in the Pebble plan (every service's command and environment, every layer);
- not in any command the charm ran in the container (``ctx.exec_history``);
- not in any databag we write (our application and unit databags of every relation, the peer
  databags);

and the auth file and every ``pgbouncer_<i>.ini`` are mode 0600, owned by the workload user
(the harness applies the ownership Pebble would, so a forgotten ``user=`` fails here).
"""

from __future__ import annotations

import json
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest
from ops import testing

from harness.servers.pg import PostgresServer
from harness.story import Deployment

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
WORKLOAD_USER = "postgres"


def places(d: Deployment, units) -> dict[str, str]:
    """Everything a secret must not reach, as text, per place."""
    found: dict[str, str] = {}
    for unit in units:
        name = unit.name
        found[f"{name} juju-log"] = "\n".join(line.message for line in unit.ctx.juju_log)
        container = unit.state.get_container("pgbouncer")
        found[f"{name} plan"] = json.dumps(container.plan.to_dict())
        found[f"{name} layers"] = json.dumps(
            {label: layer.to_dict() for label, layer in container.layers.items()}
        )
        found[f"{name} exec"] = json.dumps(
            [
                {"command": list(args.command), "env": dict(args.environment or {})}
                for args in unit.ctx.exec_history.get("pgbouncer", [])
            ]
        )
        bags = []
        for relation in unit.state.relations:
            bags.append(dict(relation.local_app_data))
            bags.append(dict(relation.local_unit_data))
            if isinstance(relation, testing.PeerRelation):
                bags.extend(dict(bag) for bag in relation.peers_data.values())
        found[f"{name} databags"] = json.dumps(bags)
    return found


def assert_files_private(unit) -> list[Path]:
    files = [unit.mount_dir / "userlist.txt", *sorted(unit.mount_dir.glob("pgbouncer_*.ini"))]
    uid = pwd.getpwnam(WORKLOAD_USER).pw_uid
    for path in files:
        st = path.stat()
        assert st.st_mode & 0o777 == 0o600, (path.name, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (uid, pwd.getpwnam(WORKLOAD_USER).pw_gid), path.name
    return files


@pytest.mark.parametrize("mode", ["plain", "secret", "dpcharmlibs"])
def test_no_secret_in_logs_plan_commands_or_databags(
    make_deployment: MakeDeployment, pg: PostgresServer, mode
):
    d = make_deployment()
    d.deploy()
    rid = d.relate_backend(mode)  # type: ignore[arg-type]
    secrets: dict[str, str] = {"relation user password": d.postgresql.users[rid].password}
    leader = d.app.leader
    auth_file = (leader.mount_dir / "userlist.txt").read_text()
    auth = next(s for s in leader.state.secrets if s.label == "pgbouncer-auth")
    secrets["auth role password"] = auth.latest_content["password"]
    secrets["auth file"] = auth_file.strip()
    admin = next(s for s in leader.state.secrets if s.label == "pgbouncer-admin")
    secrets["console admin password"] = admin.latest_content["password"]
    assert secrets["auth role password"] in auth_file

    client = d.relate_client("app", "appdb")
    creds = d.credentials(client)
    secrets["client password"] = creds.password
    for unit in d.app.units:
        assert d.query(unit, creds, "SELECT session_user") == (creds.username,)
        files = assert_files_private(unit)
        assert [f.name for f in files] == ["userlist.txt", "pgbouncer_0.ini"]
        assert (unit.mount_dir / "userlist.txt").read_text() == auth_file

    d.remove_client(client)
    d.remove_backend()

    units = d.app.units
    checked = places(d, units)
    assert all(checked[f"{u.name} juju-log"] for u in units), "the logs were captured"
    assert all("pgbouncer_0" in checked[f"{u.name} plan"] for u in units)
    assert any("--version" in checked[f"{u.name} exec"] for u in units)
    for what, secret in secrets.items():
        assert len(secret) >= 14
        for place, text in checked.items():
            assert secret not in text, f"{what} found in {place}"
