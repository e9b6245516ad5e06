"""The operator's actions (docs/actions.md) run through ``ops.testing`` on real servers.

Each action runs as Juju runs it: one hook on one unit, here with Scenario, in the unit's pod
network (the charm container shares it), against the real PostgreSQL and the real PgBouncer
processes started from the charm's Pebble plan. Under load, the clients run in a process of
their own (``bench.clients``) and count every failed connect, cut and error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from ops import testing
from psycopg import sql

from bench.changes import Load
from bench.pgbench import Target
from harness.juju import Unit, limit_cpus
from harness.servers.pg import PostgresServer
from harness.servers.system import pgbouncer_version_tuple
from harness.story import Deployment
from pgbouncer import console
from pgbouncer.exporter import EXPORTER_SERVICE
from postgres.auth import definer_role_for
from relations.admin import ADMIN_SECRET_LABEL, ADMIN_USER
from relations.metrics import METRICS_RELATION
from state.tenants import owner_role_for

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
ROOT = Path(__file__).resolve().parents[2]
FAILURES = ("connect_fail", "cut", "error")


def relate_metrics(d: Deployment) -> None:
    """``juju integrate prometheus:metrics-endpoint pgbouncer-k8s``: the stats user appears."""
    app = d.app
    for unit in app.units:
        if unit.runner is not None:  # the exporter is on the image's PATH
            unit.runner.path_dirs.append(str(ROOT / ".build" / "exporter" / "bin"))
            unit.runner.quiet.add(EXPORTER_SERVICE)  # it logs nothing at start
    rid = app.add_relation(
        testing.Relation(METRICS_RELATION, remote_app_name="prometheus", remote_units_data={0: {}})
    )
    for unit in sorted(app.units, key=lambda u: (not u.is_leader, u.unit_id)):
        unit.relation_joined(rid, remote_unit=0)
    d.settle_peers()


def catalog(pg: PostgresServer, databases: list[str]) -> list:
    """A fingerprint of what the audit could change: roles, databases, settings, objects."""
    rows = pg.execute(
        """SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM (
             SELECT ROW(rolname, rolcanlogin, rolpassword, rolsuper, rolcreaterole,
                        rolbypassrls)::text AS x FROM pg_authid
             UNION ALL SELECT ROW(datname, datallowconn, datacl, datistemplate)::text
               FROM pg_database
             UNION ALL SELECT ROW(setrole, setdatabase, setconfig)::text FROM pg_db_role_setting
             UNION ALL SELECT ROW(roleid, member)::text FROM pg_auth_members) AS t"""
    )
    for db in databases:
        rows += pg.execute(
            "SELECT md5(string_agg(oid::text || proname || coalesce(proacl::text, ''), ','"
            " ORDER BY oid)) FROM pg_proc",
            dbname=db,
        )
    return rows


def audit(unit: Unit) -> tuple[bool, list[dict[str, str]]]:
    results = unit.run_action("audit-tenancy")
    return results["ok"] == "true", json.loads(results["violations"])


# Planted as the superuser (in the client database unless "@auth": the auth database), with
# what the audit must report; the undo puts it back.
PLANTS = {
    "flag": (
        "ALTER DATABASE {db} IS_TEMPLATE true",
        "ALTER DATABASE {db} IS_TEMPLATE false",
        "database-flag",
    ),
    "connect": (
        "GRANT CONNECT ON DATABASE {db} TO PUBLIC",
        "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC",
        "database-grant",
    ),
    "db-setting": (
        "ALTER DATABASE {db} SET search_path = trap, pg_catalog",
        "ALTER DATABASE {db} RESET search_path",
        "database-setting",
    ),
    "membership": (
        "GRANT pg_read_all_data TO {login}",
        "REVOKE pg_read_all_data FROM {login}",
        "role-membership",
    ),
    "definer": (
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
        " ALTER FUNCTION public.f() OWNER TO {owner}",
        "DROP FUNCTION public.f()",
        "security-definer",
    ),
    "default-public": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO PUBLIC",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE SELECT ON TABLES FROM PUBLIC",
        "default-privilege",
    ),
    "stray-object": (
        "CREATE TABLE public.planted (x int)",
        "DROP TABLE public.planted",
        "object-owner",
    ),
    "lookup-grant": (
        "GRANT EXECUTE ON FUNCTION {auth}.get_auth(text) TO PUBLIC @auth",
        "REVOKE EXECUTE ON FUNCTION {auth}.get_auth(text) FROM PUBLIC @auth",
        "lookup",
    ),
    "auth-setting": (
        "ALTER ROLE {auth} SET search_path = trap, pg_catalog",
        "ALTER ROLE {auth} RESET search_path",
        "auth-role",
    ),
    "auth-member": (
        "GRANT {definer} TO {login}",
        "REVOKE {definer} FROM {login}",
        "auth-role",
    ),
    "password": (
        "ALTER ROLE {login} PASSWORD 'changed-inside'",
        None,
        "password",
    ),
}


def test_audit_tenancy_is_clean_then_reports_each_planted_violation_and_changes_nothing(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """A clean cluster: ``ok`` true. Each plant: reported, ``ok`` false, the catalog unchanged."""
    d = make_deployment()
    d.deploy()
    d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    d.relate_client("app-two", "otherdb")
    leader = d.app.leader
    follower = next(u for u in d.app.units if u is not leader)

    ok, found = audit(leader)
    assert (ok, found) == (True, [])
    with pytest.raises(testing.ActionFailed, match="runs on the leader"):
        follower.run_action("audit-tenancy")

    auth_user = next(r for (r,) in pg.execute("SELECT rolname FROM pg_roles") if "auth" in r)
    auth_db = d.provider_data()["database"]
    names = {
        "db": sql.Identifier("appdb"),
        "login": sql.Identifier(creds.username),
        "owner": sql.Identifier(owner_role_for("appdb", leader_owner_tag(d))),
        "auth": sql.Identifier(auth_user),
        "definer": sql.Identifier(definer_role_for(auth_user)),
    }
    for plant, (statement, undo, kind) in PLANTS.items():
        run_as_superuser(pg, statement, names, auth_db)
        before = catalog(pg, ["appdb", auth_db])
        ok, found = audit(leader)
        assert catalog(pg, ["appdb", auth_db]) == before, plant
        assert kind in {v["kind"] for v in found}, (plant, found)
        for violation in found:
            assert {"kind", "database", "object", "detail", "severity"} <= violation.keys()
        # A hazard is reported, but the boundary holds: ok stays true.
        assert ok == (plant in ("definer", "default-public")), plant
        if undo is not None:
            run_as_superuser(pg, undo, names, auth_db)
    # The changed password is put back by update-status (the repair), not by the audit.
    leader.update_status()
    assert audit(leader) == (True, [])
    assert "changed-inside" not in json.dumps(found)


def run_as_superuser(pg: PostgresServer, text: str, names: dict, auth_db: str) -> None:
    """A plant (or its undo): statements split on ``;``, in the database it names."""
    text, _, where = text.partition(" @")
    for statement in text.split(";"):
        composed = sql.SQL(statement.strip()).format(**names)  # type: ignore[arg-type]
        pg.execute(composed, dbname=auth_db if where == "auth" else "appdb")


def leader_owner_tag(d: Deployment) -> str:
    """``<model uuid>/<app>``, as the charm marks what it creates."""
    return f"{d.app.leader.state.model.uuid}/{d.app.name}"


def test_audit_tenancy_does_not_wait_on_tenant_locks(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """A tenant's locks in an open transaction do not hold the audit up.

    The tenant holds an exclusive lock on its table and the lock on its own role row that
    ``ALTER ROLE`` takes: the audit still answers (its lock timeout would fail it otherwise).
    """
    d = make_deployment(1)
    d.deploy()
    d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    unit = d.app.leader
    with d.connect(unit, creds) as conn:
        conn.execute("CREATE TABLE t (x int)")
    with d.connect(unit, creds) as tenant:
        tenant.autocommit = False
        tenant.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        tenant.execute("SET ROLE NONE")  # its sessions act as the owner role
        tenant.execute("ALTER ROLE CURRENT_USER PASSWORD 'uncommitted-change'")
        results = unit.run_action("audit-tenancy")
        tenant.rollback()
    assert results["ok"] == "true", results["violations"]


def two_process_unit(make_deployment: MakeDeployment, tmp_path: Path) -> tuple[Deployment, Unit]:
    d = make_deployment(1)
    unit = d.app.leader
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    limit_cpus(unit, cgroup, 2)
    d.app.set_config(pool_mode="transaction")
    d.deploy()
    d.relate_backend("plain")
    relate_metrics(d)
    return d, unit


def test_show_pools_reads_each_process_through_the_stats_user(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path: Path
):
    d, unit = two_process_unit(make_deployment, tmp_path)
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    held = [d.connect(unit, creds) for _ in range(6)]
    conns = [c.__enter__() for c in held]
    for conn in conns:
        conn.execute("SELECT 1")
    try:
        results = unit.run_action("show-pools")
    finally:
        for c in held:
            c.__exit__(None, None, None)
    processes = json.loads(results["processes"])
    assert [p["service"] for p in processes] == ["pgbouncer_0", "pgbouncer_1"]
    assert json.loads(results["not-reached"]) == []
    assert json.loads(results["paused"]) == []
    total = {(p["database"], p["user"]): p for p in json.loads(results["total"])}
    mine = total[("appdb", creds.username)]
    per_process = sum(
        pool["cl_active"]
        for p in processes
        for pool in p["pools"]
        if (pool["database"], pool["user"]) == ("appdb", creds.username)
    )
    assert mine["cl_active"] == per_process == 6
    assert mine["pool_mode"] == "transaction"
    assert creds.password not in json.dumps(results)


def test_show_pools_works_without_the_metrics_relation(
    make_deployment: MakeDeployment, pg: PostgresServer
):
    """The stats user exists from the start: show-pools reads the pools; no exporter runs."""
    d = make_deployment(1)
    d.deploy()
    d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    unit = d.app.leader
    assert EXPORTER_SERVICE not in unit.state.get_container("pgbouncer").plan.services
    with d.connect(unit, creds) as conn:
        conn.execute("SELECT 1")
        results = unit.run_action("show-pools")
    processes = json.loads(results["processes"])
    assert [p["service"] for p in processes] == ["pgbouncer_0"]
    total = {(p["database"], p["user"]): p for p in json.loads(results["total"])}
    assert total[("appdb", creds.username)]["cl_active"] == 1


def modes(unit: Unit) -> set[str]:
    """The pool modes in the unit's ini files (serving and draining slots)."""
    found = set()
    for path in unit.mount_dir.glob("pgbouncer_*.ini"):
        for line in path.read_text().splitlines():
            if line.startswith("pool_mode = "):
                found.add(line.split(" = ")[1])
    return found


def test_pause_and_resume_under_load_fail_no_client(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path: Path
):
    """Persistent and reconnecting clients through a two-process unit; pause, hold, resume.

    No client fails; while paused the processes say so, the status shows it, a hook keeps it
    paused and applies nothing; after resume the clients' queries go through again.
    """
    d, unit = two_process_unit(make_deployment, tmp_path)
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    host, port = unit.address()
    target = Target("charm", host, port, creds.database, creds.username, creds.password)
    load = Load(target, {"txn": 4, "prepared": 2, "connector": 2}, tmp_path, "pause")
    try:
        time.sleep(1.0)
        results = unit.run_action("pause")
        paused_at = time.time()
        assert json.loads(results["paused"]) == ["pgbouncer_0", "pgbouncer_1"]
        assert json.loads(results["draining-left-alone"]) == []
        assert unit.state.unit_status == testing.MaintenanceStatus(
            "paused (pause action): clients wait until resume"
        )
        pools = unit.run_action("show-pools")
        assert json.loads(pools["paused"]) == ["pgbouncer_0", "pgbouncer_1"]
        # A hook while paused changes nothing and keeps the unit paused.
        d.app.set_config(pool_mode="session")
        unit.config_changed()
        assert modes(unit) == {"transaction"}
        assert unit.state.unit_status.name == "maintenance"
        time.sleep(1.5)
        resumed_at = time.time()
        results = unit.run_action("resume")
        assert json.loads(results["resumed"]) == ["pgbouncer_0", "pgbouncer_1"]
        assert results["was-paused"] == "true"
        assert unit.state.unit_status.name == "active"
        # What was held back applied at resume.
        assert "session" in modes(unit)
        time.sleep(1.5)
    finally:
        record = load.stop()
    failures = [e for e in record.events if e[3] in FAILURES]
    assert failures == []
    kinds = ("txn", "prepared", "connector")
    during, _ = record.window(paused_at + 0.5, resumed_at, kinds)
    after, _ = record.window(resumed_at, time.time(), kinds)
    assert after > 0
    assert during <= 8  # at most what was in flight as PAUSE arrived, nothing new
    pools = unit.run_action("show-pools")
    assert json.loads(pools["paused"]) == []


def in_flight_refusal(event: tuple) -> bool:
    """A connector's login refused because its process was stopping (PgBouncer >= 1.25)."""
    return event[1] == "connector" and event[3] == "connect_fail" and SHUTTING_DOWN in event[4]


SHUTTING_DOWN = "pooler is shutting down"


def secret_content(unit: Unit, label: str) -> dict[str, str]:
    secret = next(s for s in unit.state.secrets if s.label == label)
    return dict(secret.latest_content or {})


def paused_per_process(unit: Unit, serving: list[str]) -> dict[str, set[str]]:
    """Which databases each serving process says are paused (``SHOW DATABASES``)."""
    password = secret_content(unit, ADMIN_SECRET_LABEL)["password"]
    done, missed = console.on_each_process(
        unit.address()[1], ADMIN_USER, password, serving, lambda c, _: console.paused_databases(c)
    )
    assert missed == []
    return done


def in_pod(unit: Unit, hook: str) -> None:
    """Run ``hook`` as Juju does, in the pod's network (the charm container shares it).

    A paused database is held through the consoles on the pod's ``127.0.0.1``.
    """
    unit.run(lambda on, _: getattr(on, hook)(), in_pod=True)


PAUSED_APPDB = "database appdb paused (pause action): its clients wait until resume"


def test_pause_one_database_holds_its_clients_and_not_the_others_under_load(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path: Path
):
    """Two tenants' clients through a two-process unit; ``pause database=appdb``, a hook, resume.

    No client of either fails; while appdb is paused its clients' new transactions wait (at most
    what was in flight goes through) while otherdb's keep flowing; each process says appdb (and
    only appdb) is paused; the status names it; a hook keeps it paused and applies nothing;
    after resume the held-back change applies and appdb's clients go on.
    """
    d, unit = two_process_unit(make_deployment, tmp_path)
    creds = {
        db: d.credentials(d.relate_client(name, db))
        for name, db in (("app-one", "appdb"), ("app-two", "otherdb"))
    }
    host, port = unit.address()
    workers = {"txn": 3, "prepared": 1, "connector": 2}
    loads = {
        db: Load(Target("charm", host, port, db, c.username, c.password), workers, tmp_path, db)
        for db, c in creds.items()
    }
    serving = ["pgbouncer_0", "pgbouncer_1"]
    try:
        time.sleep(1.0)
        results = unit.run_action("pause", {"database": "appdb"})
        paused_at = time.time()
        assert results["database"] == "appdb"
        assert sorted(json.loads(results["paused"]) + json.loads(results["pausing"])) == serving
        assert json.loads(results["not-reached"]) == []
        assert unit.state.unit_status == testing.MaintenanceStatus(PAUSED_APPDB)
        assert paused_per_process(unit, serving) == {s: {"appdb"} for s in serving}
        # A hook while paused keeps appdb paused and applies nothing.
        d.app.set_config(pool_mode="session")
        in_pod(unit, "config_changed")
        assert modes(unit) == {"transaction"}
        assert unit.state.unit_status == testing.MaintenanceStatus(PAUSED_APPDB)
        time.sleep(1.5)
        resumed_at = time.time()
        results = unit.run_action("resume", {"database": "appdb"})
        assert json.loads(results["resumed"]) == serving
        assert results["was-paused"] == "true"
        assert unit.state.unit_status.name == "active"
        assert not (unit.mount_dir / "paused.json").exists()
        assert "session" in modes(unit)  # what was held back applied at resume
        time.sleep(1.5)
    finally:
        records = {db: load.stop() for db, load in loads.items()}
    kinds = ("txn", "prepared", "connector")
    for db, record in records.items():
        failed = [e for e in record.events if e[3] in FAILURES]
        # PgBouncer >= 1.25 refuses a login in flight when its process gets SIGTERM: the held-back
        # hand-over at resume may cost a connector that, at most once per old process
        # (docs/workload.md, "Same-port hand-over on PgBouncer 1.25+"). Nothing else may fail.
        if pgbouncer_version_tuple() >= (1, 25):
            cut = [e for e in failed if e[0] >= resumed_at and in_flight_refusal(e)]
            assert len(cut) <= len(serving), cut
            failed = [e for e in failed if e not in cut]
        assert failed == [], db
        after, _ = record.window(resumed_at, time.time(), kinds)
        assert after > 0, db
    # Up to the 100 ms bucket before resumed_at: that bucket also counts transactions started
    # after it (they waited for the RESUME about to be sent).
    held, _ = records["appdb"].window(paused_at + 0.5, resumed_at - 0.1, kinds)
    flowing, _ = records["otherdb"].window(paused_at + 0.5, resumed_at - 0.1, kinds)
    assert held <= 6  # at most what was in flight as PAUSE arrived, nothing new
    assert flowing > 50, flowing  # otherdb's clients were not held
    now_serving = [p["service"] for p in json.loads(unit.run_action("show-pools")["processes"])]
    assert now_serving == ["pgbouncer_0_twin", "pgbouncer_1_twin"]  # the held-back hand-over
    assert paused_per_process(unit, now_serving) == {s: set() for s in now_serving}
    for c in creds.values():
        assert c.password not in json.dumps(results)


def test_a_paused_database_survives_a_process_restart_and_a_whole_unit_resume_ends_it(
    make_deployment: MakeDeployment, pg: PostgresServer, tmp_path: Path
):
    """The marker keeps appdb paused over a process restart; a whole-unit resume ends it.

    A process Pebble restarted is paused again by the next hook; an unknown database is refused
    and changes nothing; the admin user opens nothing but the console; ``resume`` without a
    database releases appdb too.
    """
    d, unit = two_process_unit(make_deployment, tmp_path)
    creds = d.credentials(d.relate_client("app-one", "appdb"))
    serving = ["pgbouncer_0", "pgbouncer_1"]
    # PAUSE waits for the database's transactions: bounded, it is cut and the pause stays.
    password = secret_content(unit, ADMIN_SECRET_LABEL)["password"]
    port = unit.address()[1]
    with d.connect(unit, creds) as client:
        client.execute("BEGIN")
        client.execute("SELECT 1")  # holds a server connection of appdb on one process
        done, _ = console.on_each_process(
            port, ADMIN_USER, password, serving, lambda c, _: console.pause_database(c, "appdb", 1)
        )
        assert sorted(done.values()) == [console.PAUSED, console.PENDING]
        client.execute("COMMIT")
    assert paused_per_process(unit, serving) == {s: {"appdb"} for s in serving}
    console.on_each_process(
        port, ADMIN_USER, password, serving, lambda c, _: console.resume_database(c, "appdb")
    )
    unit.run_action("pause", {"database": "appdb"})
    marker = json.loads((unit.mount_dir / "paused.json").read_text())
    assert marker["databases"] == ["appdb"] and marker["unit"] is False
    assert unit.runner is not None
    unit.runner.restart(["pgbouncer_1"], ready="process up")
    assert paused_per_process(unit, serving)["pgbouncer_1"] == set()
    in_pod(unit, "update_status")
    assert paused_per_process(unit, serving) == {s: {"appdb"} for s in serving}
    assert unit.state.unit_status == testing.MaintenanceStatus(PAUSED_APPDB)
    # A database the unit does not pool is refused, naming what it pools; nothing changes.
    with pytest.raises(testing.ActionFailed, match=r"pools no database 'nosuch'.*appdb"):
        unit.run_action("pause", {"database": "nosuch"})
    assert json.loads((unit.mount_dir / "paused.json").read_text()) == marker
    # The admin user is the console's only: as a client of appdb it gets nothing.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=unit.address()[0], port=unit.address()[1], user=ADMIN_USER,
            password=password, dbname="appdb", connect_timeout=5,
        ).close()  # fmt: skip
    # Its password is in its secret only: not in the plan, the ini, the auth file or a databag.
    plan = json.dumps(unit.state.get_container("pgbouncer").plan.to_dict())
    files = "".join(p.read_text() for p in unit.mount_dir.glob("*") if p.is_file())
    bags = json.dumps([dict(r.local_app_data) for r in unit.state.relations])
    for where in (plan, files, bags):
        assert password not in where
    assert "admin_users = pgbouncer_admin" in (unit.mount_dir / "pgbouncer_0.ini").read_text()
    results = unit.run_action("resume")
    assert json.loads(results["databases-resumed"]) == ["appdb"]
    assert not (unit.mount_dir / "paused.json").exists()
    assert paused_per_process(unit, serving) == {s: set() for s in serving}
    assert unit.state.unit_status.name == "active"
    assert d.query(unit, creds, "SELECT 1") == (1,)
