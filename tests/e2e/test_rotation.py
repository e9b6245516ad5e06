"""``rotate-credentials`` through ``ops.testing`` on real servers, under load (docs/actions.md).

Two units, each with its own real PgBouncer in a pod network of its own, clients logging in
through both the whole time. ``server_lifetime = 1`` makes every PgBouncer replace its auth
connection (the one ``auth_query`` runs on) about every second, so each unit logs in to
PostgreSQL as the auth role again and again during the rotation: a generation whose password
went (or changed) before a unit stopped using it fails that unit's next client logins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from ops import testing

from bench.changes import Load, Record
from bench.pgbench import Target
from bench.scrape import Scraper
from harness.juju import Unit
from harness.servers.pg import PostgresServer
from harness.story import Deployment
from pgbouncer.exporter import EXPORTER_RELOAD_S, STATS_USERS
from relations.metrics import STATS_SECRET_LABEL
from relations.peers import AUTH_SECRET_LABEL
from state.rotation import ROTATION_KEY, alternate_auth_user
from tests.e2e.test_actions import relate_metrics

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
FAILURES = ("connect_fail", "cut", "error")
CHURN_S = 2.5
"""Long enough for every PgBouncer to open a new auth connection (``server_lifetime`` 1 s)."""


def auth_secret(unit: Unit, label: str = AUTH_SECRET_LABEL) -> dict[str, str]:
    """The auth (or stats) secret's latest content as the leader holds it."""
    secret = next(s for s in unit.state.secrets if s.label == label)
    return dict(secret.latest_content or {})


def rotation_value(d: Deployment) -> str | None:
    peer = d.app.leader.relation(d.app.peer_relation_id)
    return peer.local_app_data.get(ROTATION_KEY)


def auth_sessions(pg: PostgresServer, roles: tuple[str, ...]) -> dict[str, int]:
    rows = pg.execute(
        "SELECT usename, count(*) FROM pg_stat_activity WHERE usename = ANY(%s) GROUP BY 1",
        (list(roles),),
    )
    return {str(name): int(n) for name, n in rows}


def password_opens(pg: PostgresServer, role: str, password: str, dbname: str) -> bool:
    """Whether ``role`` logs in to PostgreSQL directly with ``password``."""
    try:
        with psycopg.connect(
            host=pg.host, port=pg.port, dbname=dbname, user=role, password=password,
            connect_timeout=5,
        ):  # fmt: skip
            return True
    except psycopg.OperationalError:
        return False


def failures(record: Record) -> list[tuple]:
    return [e for e in record.events if e[3] in FAILURES]


def test_rotate_credentials_under_load_fails_no_login_and_survives_a_leader_change(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path: Path
):
    d = make_deployment(2)
    d.app.set_config(pool_mode="transaction", server_lifetime=1)
    d.deploy()
    d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    leader = d.app.leader
    follower = next(u for u in d.app.units if u is not leader)
    auth_db = d.provider_data()["database"]
    relate_metrics(d)
    first, stats_first = auth_secret(leader), auth_secret(leader, STATS_SECRET_LABEL)
    gen1 = first["username"]
    gen2 = alternate_auth_user(gen1)
    scraper = Scraper([leader, follower])
    marks: list[tuple[float, str]] = []

    loads = []
    for unit in (leader, follower):
        host, port = unit.address()
        target = Target(unit.name, host, port, creds.database, creds.username, creds.password)
        loads.append(
            Load(target, {"txn": 2, "connector": 3}, tmp_path, unit.name.replace("/", "-"))
        )
    logs: list[str] = []
    try:
        time.sleep(CHURN_S)
        # 1. The action: the second generation gets a password; the leader uses it at once.
        marks.append((time.time(), "action"))
        results = leader.run_action("rotate-credentials")
        marks.append((time.time(), f"action done {leader.last_report}"))
        logs += [line.message for line in leader.ctx.juju_log]
        assert (results["from"], results["to"]) == (gen1, gen2)
        assert (results["stats-from"], results["stats-to"]) == STATS_USERS
        # At the action every unit still used gen1; the leader switched as its hook ended.
        assert json.loads(results["waiting-for"]) == sorted([leader.name, follower.name])
        second = auth_secret(leader)
        assert second["username"] == gen2 and second["password"] != first["password"]
        assert rotation_value(d) is not None
        # The leader too: its exporter has not surely re-read its configuration yet.
        note = f"rotating credentials: waiting for {leader.name}, {follower.name}"
        assert note in leader.state.unit_status.message
        # A second start while this one runs is refused.
        with pytest.raises(testing.ActionFailed, match="still running"):
            leader.run_action("rotate-credentials")
        time.sleep(CHURN_S)
        # Both generations serve now: the leader's PgBouncer as gen2, the follower's as gen1.
        assert set(auth_sessions(pg, (gen1, gen2))) == {gen1, gen2}
        assert password_opens(pg, gen1, first["password"], auth_db)

        # 2. The follower's hook (the peer data changed): it switches. Both stats users are
        # served while the exporters move; a unit reports the new one once its exporter has
        # surely re-read its configuration (EXPORTER_RELOAD_S after it was written).
        follower.relation_changed(d.app.peer_relation_id, remote_unit=leader.unit_id)
        logs += [line.message for line in follower.ctx.juju_log]
        ini = (follower.mount_dir / "pgbouncer_0.ini").read_text()
        assert f"auth_user = {gen2}" in ini
        assert f"stats_users = {STATS_USERS[1]}, {STATS_USERS[0]}" in ini
        time.sleep(max(CHURN_S, EXPORTER_RELOAD_S + 0.5))
        follower.update_status()
        assert "waiting for" in follower.state.unit_status.message

        # 3. The leader changes before it saw every report: the new leader finishes, once
        # the old leader (now a follower) reported in its next hook.
        d.app.set_leader(follower.unit_id)
        leader.update_status()
        follower.leader_elected()
        logs += [line.message for line in follower.ctx.juju_log]
        assert rotation_value(d) is None
        assert "rotating" not in follower.state.unit_status.message
        assert not password_opens(pg, gen1, first["password"], auth_db)
        assert password_opens(pg, gen2, second["password"], auth_db)
        time.sleep(CHURN_S)
        assert set(auth_sessions(pg, (gen1, gen2))) == {gen2}
        stats_second = auth_secret(follower, STATS_SECRET_LABEL)
        assert set(stats_second) == {"user", "password"}
        for unit in (leader, follower):  # each drops the old stats user at its next hook
            unit.update_status()
            ini = (unit.mount_dir / "pgbouncer_0.ini").read_text()
            assert f"stats_users = {STATS_USERS[1]}\n" in ini

        # 4. The next rotation goes back to the first generation, driven the same way.
        new_leader, old_leader = follower, leader
        results = new_leader.run_action("rotate-credentials")
        assert (results["from"], results["to"]) == (gen2, gen1)
        third = auth_secret(new_leader)
        time.sleep(CHURN_S)
        d.settle_peers()
        time.sleep(EXPORTER_RELOAD_S + 0.5)
        d.settle_peers()
        logs += [line.message for u in d.app.units for line in u.ctx.juju_log]
        assert rotation_value(d) is None
        time.sleep(CHURN_S)
    finally:
        records = [load.stop() for load in loads]
        scraper.stop()
    assert scraper.failed == [], (scraper.failed, marks)
    assert min(scraper.ok.values()) > 20
    for record in records:
        assert failures(record) == []
        assert record.window(0, time.time(), ("connector",))[0] > 20
    assert password_opens(pg, gen1, third["password"], auth_db)
    assert not password_opens(pg, gen2, second["password"], auth_db)
    assert f"auth_user = {gen1}" in (old_leader.mount_dir / "pgbouncer_0.ini").read_text()
    # The audit knows both generations: a clean cluster after two rotations.
    assert new_leader.run_action("audit-tenancy")["ok"] == "true"
    text = "\n".join(logs) + json.dumps(results)
    for secret in (first, second, third, stats_first, stats_second):
        assert secret["password"] not in text


def test_rotate_credentials_is_refused_on_a_follower_and_without_a_backend(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    d = make_deployment(2)
    d.deploy()
    leader = d.app.leader
    follower = next(u for u in d.app.units if u is not leader)
    with pytest.raises(testing.ActionFailed, match="runs on the leader"):
        follower.run_action("rotate-credentials")
    with pytest.raises(testing.ActionFailed, match="no auth plumbing"):
        leader.run_action("rotate-credentials")
