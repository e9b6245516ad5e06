"""The operator's actions measured (issue 24): ``python -m bench.actions [audit|pause ...]``.

- ``audit``: ``postgres.audit.audit_tenancy`` (what ``audit-tenancy`` runs) against a fresh
  PostgreSQL 15 holding :data:`TENANTS` tenants made by the charm's own ``grant_database``, each
  with a table, one shared by two relations; :data:`AUDIT_RUNS` runs, each timed, and the
  longest statement wait seen by a tenant session holding locks meanwhile.
- ``pause``: ``pause`` and ``resume`` driven through the charm (Scenario, real PgBouncer, two
  processes) while ``bench.clients`` runs persistent, prepared-statement and reconnecting
  clients; :data:`PAUSE_ROUNDS` rounds, each: load, pause, hold :data:`HOLD_S`, resume. Counted:
  failed connects, cuts and errors (all kinds), transactions during the pause, the longest wait.
- ``pause-db``: ``pause database=appdb`` and ``resume database=appdb`` through the charm (as
  ``pause``) while two tenants' clients run, one load on ``appdb`` and one on ``otherdb``;
  :data:`PAUSE_DB_ROUNDS` interleaved rounds, a pause round then a control round of the same
  timing without the action. Counted: failures of both loads; ``appdb`` transactions started
  during the pause; ``otherdb`` transactions in the hold window, pause round against the
  control round before it (ratio).
- ``rotate``: ``rotate-credentials`` through the charm on a two-unit application (Scenario, a
  real PgBouncer per unit, each in a pod network of its own) while reconnecting and persistent
  clients run through both units, ``server_lifetime = 1`` so that every PgBouncer logs in to
  PostgreSQL as the auth role about every second; :data:`ROTATE_ROUNDS` rounds, alternating a
  rotation (action, the follower's hook, the leader's hook retiring the old password) with a
  control round of the same length and the same hooks (update-status) but no rotation.
  A stand-in Prometheus (``bench.scrape``) scrapes both exporters every 0.25 s. Counted:
  failed logins, cuts and errors; failed scrapes; successful logins per round, rotation
  against the control round before it.

Each part prints its rows and appends them to ``bench/results/actions.md``. Figures move with
the machine's load (FACTS): quote ranges.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "actions.md"
TENANTS = 200
AUDIT_RUNS = 5
PAUSE_ROUNDS = 5
PAUSE_DB_ROUNDS = 6
HOLD_S = 2.0
ROTATE_ROUNDS = 6


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def audit_part() -> list[str]:
    """Time the audit on TENANTS tenants; returns the report rows."""
    from psycopg import sql

    from harness.servers.backend import create_relation_user
    from harness.servers.pg import start_postgres
    from postgres.audit import audit_tenancy
    from postgres.auth import install_auth
    from postgres.clients import grant_database
    from postgres.passwords import generate_password
    from state.names import auth_username_for
    from state.tenants import TenantRecord, client_username, owner_role_for

    server = start_postgres(prefix="pgbk8s-bench-audit-")
    rows: list[str] = []
    try:
        creds = create_relation_user(server, "bench")
        tag = f"{uuid.uuid4()}/pgbouncer-k8s"
        install_auth(
            creds,
            auth_user=auth_username_for(creds.user),
            auth_password=generate_password(),
            owner_tag=tag,
        )
        record, live = TenantRecord(), set()
        made = time.monotonic()
        for rel in range(1, TENANTS + 1):
            database = f"tenant_{rel:03d}" if rel != TENANTS else "tenant_001"
            record = grant_database(
                creds, record, username=client_username(rel, tag),
                password=generate_password(), database=database, extra_roles=[],
                owner_tag=tag, relation_id=rel, app=f"app{rel:03d}" if rel != TENANTS else "app001",
                live=live, consent={},
            )  # fmt: skip
            live.add(rel)
        made = time.monotonic() - made
        print(f"  {TENANTS} tenants made in {made:.0f} s", flush=True)
        for rel in (1, 2, 3):
            db = f"tenant_{rel:03d}"
            server.execute(f"CREATE TABLE t{rel} (x int)", dbname=db)
            owner = sql.Identifier(owner_role_for(db, tag))
            server.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(
                sql.Identifier(f"t{rel}"), owner), dbname=db)  # fmt: skip
        # A session holding an exclusive lock on a tenant table the whole time, and another
        # querying a tenant table in a loop: the audit must wait on neither, nor hold them up.
        holder = server.connect("tenant_001")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE t1 IN ACCESS EXCLUSIVE MODE")
        seconds, findings, kinds = [], [], []
        stop = threading.Event()
        waits: list[float] = []

        def probe() -> None:  # a second tenant's trivial query, timed, while the audit runs
            with server.connect("tenant_002") as conn:
                while not stop.is_set():
                    start = time.monotonic()
                    conn.execute("SELECT count(*) FROM t2")
                    waits.append(time.monotonic() - start)
                    time.sleep(0.05)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        for _ in range(AUDIT_RUNS):
            start = time.monotonic()
            found = audit_tenancy(creds, record, live, owner_tag=tag)
            seconds.append(time.monotonic() - start)
            findings.append(len(found))
            kinds = sorted({f"{v.kind}:{v.detail}" for v in found})
        stop.set()
        prober.join(timeout=10)
        holder.rollback()
        holder.close()
        rows.append(
            f"| audit-tenancy, {TENANTS} tenants ({len(record.databases)} databases, "
            f"{len(record.roles)} logins), {AUDIT_RUNS} runs | {_spread(seconds)} s per audit; "
            f"findings {sorted(set(findings))} {kinds}; a tenant's query meanwhile at most "
            f"{max(waits) * 1000:.0f} ms over {len(waits)} queries |"
        )
    finally:
        server.destroy()
    return rows


def pause_part(work: Path) -> list[str]:
    """Pause and resume under load through the charm; returns the report rows."""
    from bench.changes import Load
    from bench.pgbench import Target
    from charm import PgBouncerK8sCharm
    from harness.juju import Application, limit_cpus
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres
    from harness.servers.system import free_port
    from harness.story import Deployment

    server = start_postgres(prefix="pgbk8s-bench-pause-")
    app = Application(
        PgBouncerK8sCharm,
        num_units=1,
        config={"listen_port": free_port(), "pool_mode": "transaction"},
    )
    failed, during, waited, totals = [], [], [], []
    try:
        unit = app.leader
        cgroup = work / "cgroup"
        cgroup.mkdir()
        limit_cpus(unit, cgroup, 2)
        d = Deployment(app, FakePostgresqlCharm(server))
        d.deploy()
        d.relate_backend("plain")
        creds = d.credentials(d.relate_client("bench-client", "benchdb"))
        host, port = unit.address()
        target = Target("charm", host, port, creds.database, creds.username, creds.password)
        kinds = ("txn", "prepared", "connector")
        workers = {"txn": 4, "prepared": 2, "connector": 4}
        for n in range(PAUSE_ROUNDS):
            load = Load(target, workers, work, f"pause{n}")
            try:
                time.sleep(2.0)
                unit.run_action("pause")
                paused = time.time()
                time.sleep(HOLD_S)
                resumed = time.time()
                unit.run_action("resume")
                time.sleep(2.0)
            finally:
                record = load.stop()
            bad = [e for e in record.events if e[3] in ("connect_fail", "cut", "error")]
            failed.append(len(bad))
            during.append(record.window(paused + 0.5, resumed, kinds)[0])
            waited.append(record.window(paused - 0.5, resumed + 0.5, kinds)[1] / 1000)
            totals.append(record.window(0, time.time() + 1, kinds)[0])
            print(f"  round {n + 1}: failed {len(bad)}, {bad[:3]}", flush=True)
        rows = [
            f"| pause/resume under load ({sum(workers.values())} clients: 4 persistent, "
            f"2 prepared, 4 reconnecting; 2 processes; hold {HOLD_S:.0f} s), {PAUSE_ROUNDS} "
            f"rounds | failed {min(failed)}-{max(failed)} per round (of {min(totals)}-"
            f"{max(totals)} transactions); started during the pause and done after it "
            f"{min(during)}-{max(during)}; longest client wait {_spread(waited)} s |"
        ]
    finally:
        app.close()
        server.destroy()
    return rows


def pause_db_part(work: Path, rounds: int = PAUSE_DB_ROUNDS) -> list[str]:
    """One database paused under two tenants' load, rounds interleaved with controls."""
    from bench.changes import Load
    from bench.pgbench import Target
    from charm import PgBouncerK8sCharm
    from harness.juju import Application, limit_cpus
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres
    from harness.servers.system import free_port
    from harness.story import Deployment

    server = start_postgres(prefix="pgbk8s-bench-pausedb-")
    app = Application(
        PgBouncerK8sCharm,
        num_units=1,
        config={"listen_port": free_port(), "pool_mode": "transaction"},
        pod_network=True,
        reach=(server.port,),
    )
    kinds = ("txn", "prepared", "connector")
    workers = {"txn": 2, "prepared": 1, "connector": 2}
    failed: dict[str, list[int]] = {"pause": [], "control": []}
    held, ratio, other = [], [], {"pause": [], "control": []}
    try:
        unit = app.leader
        cgroup = work / "cgroup"
        cgroup.mkdir()
        limit_cpus(unit, cgroup, 2)
        d = Deployment(app, FakePostgresqlCharm(server))
        d.deploy()
        d.relate_backend("plain")
        creds = {
            db: d.credentials(d.relate_client(f"bench-{db}", db)) for db in ("appdb", "otherdb")
        }
        host, port = unit.address()
        for n in range(rounds):
            kind = "pause" if n % 2 == 0 else "control"
            loads = {
                db: Load(
                    Target("charm", host, port, db, c.username, c.password),
                    workers,
                    work,
                    f"pausedb{n}{db}",
                )
                for db, c in creds.items()
            }
            try:
                time.sleep(2.0)
                if kind == "pause":
                    unit.run_action("pause", {"database": "appdb"})
                paused = time.time()
                time.sleep(HOLD_S)
                resumed = time.time()
                if kind == "pause":
                    unit.run_action("resume", {"database": "appdb"})
                time.sleep(2.0)
            finally:
                records = {db: load.stop() for db, load in loads.items()}
            bad = [
                e
                for r in records.values()
                for e in r.events
                if e[3] in ("connect_fail", "cut", "error")
            ]
            failed[kind].append(len(bad))
            flowing = records["otherdb"].window(paused + 0.5, resumed - 0.1, kinds)[0]
            other[kind].append(flowing)
            if kind == "pause":
                # Up to the bucket before ``resumed``: the 100 ms bucket holding it also counts
                # transactions started after it (waiting for the RESUME about to be sent).
                held.append(records["appdb"].window(paused + 0.5, resumed - 0.1, kinds)[0])
            elif other["pause"]:
                ratio.append(other["pause"][-1] / max(1, flowing))
            print(f"  round {n + 1} ({kind}): failed {len(bad)} {bad[:3]}, otherdb {flowing}")
        rows = [
            f"| pause database=appdb under two tenants' load (each {sum(workers.values())} "
            f"clients: 2 persistent, 1 prepared, 2 reconnecting; 2 processes; hold "
            f"{HOLD_S:.0f} s), {rounds} interleaved rounds ({len(held)} pauses, "
            f"{len(other['control'])} controls) | failed {min(failed['pause'])}-"
            f"{max(failed['pause'])} per pause round, {min(failed['control'])}-"
            f"{max(failed['control'])} per control round (both databases); appdb transactions "
            f"started during the pause {min(held)}-{max(held)}; otherdb transactions in the hold "
            f"window {min(other['pause'])}-{max(other['pause'])} (pause) and "
            f"{min(other['control'])}-{max(other['control'])} (control), ratio "
            f"{min(ratio):.2f}-{max(ratio):.2f} |"
        ]
    finally:
        app.close()
        server.destroy()
    return rows


def rotate_part(work: Path, rounds: int = ROTATE_ROUNDS) -> list[str]:
    """Rotations under load against control rounds, interleaved; returns the report rows."""
    from ops import testing

    from bench.changes import Load
    from bench.pgbench import Target
    from bench.scrape import Scraper
    from charm import PgBouncerK8sCharm
    from harness.juju import Application
    from harness.postgresql_charm import FakePostgresqlCharm
    from harness.servers.pg import start_postgres
    from harness.servers.system import free_port
    from harness.story import Deployment
    from pgbouncer.exporter import EXPORTER_SERVICE
    from relations.metrics import METRICS_RELATION

    server = start_postgres(prefix="pgbk8s-bench-rotate-")
    app = Application(
        PgBouncerK8sCharm,
        num_units=2,
        config={"listen_port": free_port(), "pool_mode": "transaction", "server_lifetime": 1},
        processes=range(2),
        pod_network=True,
        reach=(server.port,),
    )
    failed: dict[str, list[int]] = {"rotation": [], "control": []}
    logins: dict[str, list[int]] = {"rotation": [], "control": []}
    ratios: list[float] = []
    generations: list[str] = []
    try:
        d = Deployment(app, FakePostgresqlCharm(server))
        d.deploy()
        d.relate_backend("plain")
        creds = d.credentials(d.relate_client("bench-client", "benchdb"))
        for unit in app.units:  # the image's exporter, on PATH
            assert unit.runner is not None
            unit.runner.path_dirs.append(str(ROOT / ".build" / "exporter" / "bin"))
            unit.runner.quiet.add(EXPORTER_SERVICE)
        rid = app.add_relation(
            testing.Relation(
                METRICS_RELATION, remote_app_name="prometheus", remote_units_data={0: {}}
            )
        )
        for unit in sorted(app.units, key=lambda u: (not u.is_leader, u.unit_id)):
            unit.relation_joined(rid, remote_unit=0)
        d.settle_peers()
        scraper = Scraper(app.units)
        workers = {"txn": 2, "connector": 3}
        for n in range(rounds):
            kind = "rotation" if n % 2 else "control"
            loads = []
            for unit in app.units:
                host, port = unit.address()
                target = Target(
                    unit.name, host, port, creds.database, creds.username, creds.password
                )
                loads.append(Load(target, workers, work, f"rotate{n}-{unit.unit_id}"))
            try:
                time.sleep(2.0)
                started = time.time()
                if kind == "rotation":
                    result = app.leader.run_action("rotate-credentials")
                    generations.append(result["to"])
                else:
                    app.leader.update_status()
                time.sleep(1.0)
                # The follower switches; then, once the exporters surely re-read their
                # configuration, every unit reports and the leader retires the old ones.
                if kind == "rotation":
                    d.settle_peers()
                else:
                    for unit in app.units:
                        unit.update_status()
                time.sleep(5.5)
                if kind == "rotation":
                    d.settle_peers()
                else:
                    for unit in app.units:
                        unit.update_status()
                time.sleep(2.0)
                ended = time.time()
            finally:
                records = [load.stop() for load in loads]
            bad = [
                e for r in records for e in r.events if e[3] in ("connect_fail", "cut", "error")
            ]
            done = sum(r.window(started, ended, ("connector",))[0] for r in records)
            failed[kind].append(len(bad))
            logins[kind].append(done)
            if kind == "rotation" and logins["control"]:
                ratios.append(done / max(logins["control"][-1], 1))
            print(
                f"  round {n + 1} ({kind}, {started:.1f}-{ended:.1f}): failed {len(bad)}, "
                f"logins {done}, {bad[:3]}",
                flush=True,
            )
        scraper.stop()
        for failure in scraper.failed:
            print(f"  failed scrape: {failure}", flush=True)
        pending = app.leader.relation(app.peer_relation_id).local_app_data.get("rotation")
        rows = [
            f"| rotate-credentials (auth role and stats user) under load (2 units, each 2 "
            f"persistent + 3 reconnecting "
            f"clients, server_lifetime 1 s), {rounds} interleaved rounds ({len(ratios)} "
            f"rotations, {len(failed['control'])} controls) | failed "
            f"{min(failed['rotation'])}-{max(failed['rotation'])} per rotation round, "
            f"{min(failed['control'])}-{max(failed['control'])} per control round; logins in "
            f"the window {min(logins['rotation'])}-{max(logins['rotation'])} (rotation) "
            f"and {min(logins['control'])}-{max(logins['control'])} (control), ratio "
            f"{min(ratios):.2f}-{max(ratios):.2f}; generations handed out "
            f"{' '.join('g2' if g.endswith('_g2') else 'g1' for g in generations)}; rotation left running: "
            f"{'yes' if pending else 'no'}; scrapes (every 0.25 s, both units) "
            f"{sum(scraper.ok.values())} ok, {len(scraper.failed)} failed |"
        ]
    finally:
        app.close()
        server.destroy()
    return rows


def main(argv: list[str]) -> int:
    """Run the parts named (default: all) and append their rows to the report."""
    parts = argv or ["audit", "pause", "pause-db", "rotate"]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pgbk8s-bench-actions-") as tmp:
        if "audit" in parts:
            rows += audit_part()
        if "pause" in parts:
            rows += pause_part(Path(tmp))
        if "pause-db" in parts:
            pause_db_dir = Path(tmp) / "pause-db"
            pause_db_dir.mkdir()
            rows += pause_db_part(pause_db_dir)
        if "rotate" in parts:
            rotate_dir = Path(tmp) / "rotate"
            rotate_dir.mkdir()
            rows += rotate_part(rotate_dir)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = not RESULTS.exists()
    with RESULTS.open("a") as out:
        if header:
            out.write("# Actions (issue 24): `python -m bench.actions`\n\n")
            out.write("| what | result |\n|---|---|\n")
        for row in rows:
            out.write(row[:-1] + f" ({stamp}) |\n")
    print("\n".join(rows))
    print(json.dumps({"written": str(RESULTS)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
