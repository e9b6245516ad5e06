"""The demo: deploy, relate PostgreSQL, relate a client, query through the pooler, clean up.

Every step checks its real effect and the demo exits non-zero at the first that fails; every
process and server it started is stopped (by its own PID) however it ends.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

WHO = "SELECT session_user, current_database(), inet_server_port()"
READ_ONLY = "SELECT pg_is_in_recovery(), current_database(), inet_server_addr()::text"
ACTIVE = "active: 1 PgBouncer process"
NO_BACKEND = "blocked: waiting for a backend-database relation"


class StepFailedError(RuntimeError):
    """A step did not have the effect it should have had."""


def say(text: str = "") -> None:
    """Print one paragraph of narration (flushed, so it interleaves with nothing)."""
    print(text, flush=True)


def step(number: int, title: str) -> None:
    """Print a step heading."""
    say()
    say(f"== {number}. {title}")


def indent(text: str) -> str:
    """Indent a block under its step."""
    return textwrap.indent(text, "   ")


def expect(condition: bool, message: str) -> None:
    """Fail the demo with ``message`` unless ``condition``."""
    if not condition:
        raise StepFailedError(message)


def quiet() -> None:
    """Keep the narration readable: no framework chatter, no pydantic warnings."""
    logging.basicConfig(level=logging.ERROR)
    # ops sets the root logger to DEBUG at every hook (for juju-log): filter at the handler.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    for name in ("ops", "scenario", "ops-scenario", "dpcharmlibs", "charm", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pydantic")


def status_text(status) -> str:
    """``name: message`` of a unit status."""
    return f"{status.name}: {status.message}" if status.message else status.name


def show_statuses(d) -> dict[str, str]:
    """Print every unit's status; return them as text."""
    shown = {name: status_text(st) for name, st in d.statuses().items()}
    for name, text in shown.items():
        say(f"   {name:<18} {text}")
    return shown


def show_roles(server, title: str) -> list[str]:
    """Print PostgreSQL's login and group roles (not its built-in pg_* roles)."""
    from harness.story import role_names

    names = role_names(server)
    say(f"   {title}: {', '.join(names)}")
    return names


def scrape(host: str, port: int, timeout: float = 20.0) -> str:
    """``/metrics`` of an exporter, retried while it starts (a Python process: about 1 s)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
                return answer.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def show_dashboard(app) -> None:
    """Relate a Grafana; decode what the leader published as Grafana's library does."""
    import base64
    import json
    import lzma

    from ops import testing

    from relations.grafana_dashboard import DASHBOARD_RELATION

    rid = app.add_relation(
        testing.Relation(DASHBOARD_RELATION, remote_app_name="grafana", remote_units_data={0: {}})
    )
    for unit in sorted(app.units, key=lambda u: (not u.is_leader, u.unit_id)):
        unit.relation_joined(rid, remote_unit=0)
    published = app.relation_data(rid)
    expect("dashboards" in published, "no dashboards in the grafana-dashboard databag")
    templates = json.loads(published["dashboards"])["templates"]
    size = len(published["dashboards"])
    say(f"   application databag: dashboards ({size} bytes of JSON), templates {list(templates)}")
    for key, entry in templates.items():
        raw = lzma.decompress(base64.b64decode(entry["content"].encode()))
        dashboard = json.loads(raw)
        variables = [v["name"] for v in dashboard["templating"]["list"]]
        say(f"   {key}, decoded as Grafana's library does (base64, then LZMA):")
        say(f"      title {dashboard['title']!r}, uid {dashboard['uid']}, {len(raw)} bytes")
        say(f"      tags {dashboard['tags']}, {len(dashboard['panels'])} panels")
        say(f"      dropdowns {variables}")
        say(f"      juju_topology {entry['juju_topology']}")
        expect(
            entry["juju_topology"].get("application") == app.name
            and {"juju_model", "juju_application", "juju_unit"} <= set(variables),
            f"{key} is not templated by the Juju topology",
        )


def show_metrics(app, d) -> None:
    """Relate a Prometheus; scrape each unit's exporter; show a few live lines."""
    import json

    from ops import testing

    from pgbouncer.exporter import EXPORTER_PORT, EXPORTER_SERVICE
    from relations.metrics import METRICS_RELATION

    exporter_bin = ROOT / ".build" / "exporter" / "bin"
    for unit in app.units:
        if unit.runner is not None:  # the image's PATH: the exporter is installed there
            unit.runner.path_dirs.append(str(exporter_bin))
    ready, app.process_ready = app.process_ready, None  # the exporter logs nothing at start
    try:
        rid = app.add_relation(
            testing.Relation(
                METRICS_RELATION, remote_app_name="prometheus", remote_units_data={0: {}}
            )
        )
        for unit in sorted(app.units, key=lambda u: (not u.is_leader, u.unit_id)):
            unit.relation_joined(rid, remote_unit=0)
        d.settle_peers()
    finally:
        app.process_ready = ready
    published = app.relation_data(rid)
    jobs = json.loads(published["scrape_jobs"])
    rules = json.loads(published["alert_rules"])
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    say(f"   scrape job: {jobs[0]['job_name']} {jobs[0]['static_configs'][0]['targets']}")
    say(f"   alert rules: {', '.join(alerts)}")
    for unit in app.units:
        running = unit.runner.running() if unit.runner else set()
        expect(EXPORTER_SERVICE in running, f"{unit.name}: no {EXPORTER_SERVICE} running")
        host, port = unit.address(EXPORTER_PORT)
        lines = [
            ln
            for ln in scrape(host, port).splitlines()
            if ln.startswith("pgbouncer_up")
            or (
                ln.startswith(("pgbouncer_stats_queries_total", "pgbouncer_pools_client_active"))
                and 'database="appdb"' in ln
            )
        ]
        say(f"   {unit.name} /metrics (a few lines, after the client's query):")
        say(indent(indent("\n".join(lines))))
        up = [ln for ln in lines if ln.startswith("pgbouncer_up")]
        expect(bool(up) and all(ln.endswith(" 1.0") for ln in up), f"{unit.name}: {up}")
        queries = sum(
            float(ln.rsplit(" ", 1)[1])
            for ln in lines
            if ln.startswith("pgbouncer_stats_queries_total")
        )
        expect(queries >= 1, f"{unit.name}: the client's query is not counted")


def run() -> None:
    """The life story; raises :class:`StepFailedError` at the first step without its effect."""
    from ops import testing

    from charm import PgBouncerK8sCharm
    from harness.juju import Application
    from harness.postgresql_charm import FakePostgresqlCharm, server_version
    from harness.servers.pg import start_postgres
    from harness.servers.system import free_port, pgbouncer_version
    from harness.story import (
        Deployment,
        auth_functions,
        auth_roles,
        auth_schemas,
        connect_at,
        databag_table,
        standby_pair,
    )

    say("pgbouncer-k8s: the charm's life story")
    say()
    say("SIMULATED: Juju (hooks, relation databags, secrets, leadership) and Pebble's process")
    say("  management, by ops.testing (Scenario) and the harness in harness: it records")
    say("  what the charm asks Pebble for and replays it on real processes.")
    say("REAL: PostgreSQL 15 and PgBouncer 1.24 processes, the SQL the charm runs, the files it")
    say("  writes, and the client's connection through the pooler. Each unit's PgBouncer runs in")
    say("  a network namespace of its own, as a pod would; the client reaches it on 127.0.0.1")
    say("  where the charm publishes <app>.<model>.svc.cluster.local:<port> (no Kubernetes here).")

    pg = start_postgres(prefix="pgbk8s-demo-pg-")
    standbys = []
    app = None
    try:
        standbys = standby_pair(pg)
        say()
        say(f"PostgreSQL {server_version(pg)} on 127.0.0.1:{pg.port}; {pgbouncer_version()}.")
        say(
            f"   its replicas: two pg_basebackup hot standbys on 127.0.0.2 and 127.0.0.3,"
            f" port {standbys[0].port}, streaming from it"
        )
        show_roles(pg, "PostgreSQL roles at the start")
        listen_port = free_port()
        app = Application(
            PgBouncerK8sCharm,
            num_units=2,
            config={"listen_port": listen_port},
            processes=(0, 1),
            pod_network=True,
            reach=(pg.port, *((s.host, s.port) for s in standbys)),
            model=testing.Model(name="demo"),
        )
        d = Deployment(
            app, FakePostgresqlCharm(pg, read_only=standbys[0], more_read_only=(standbys[1],))
        )

        step(1, f"juju deploy pgbouncer-k8s -n 2 --config listen_port={listen_port}")
        d.deploy()
        shown = show_statuses(d)
        expect(set(shown.values()) == {NO_BACKEND}, f"statuses after deploy: {shown}")
        for unit in app.units:
            expect(unit.runner is not None, f"{unit.name} runs no processes")
            pid = unit.runner.processes["pgbouncer_0"].pid  # type: ignore[union-attr]
            say(f"   {unit.name}: PgBouncer running, pid {pid}")

        step(2, "juju integrate pgbouncer-k8s:backend-database postgresql-k8s")
        say("   The PostgreSQL charm answers with the seed's plain fields (username, password),")
        say("   and its two replicas as read-only-endpoints.")
        rid = d.relate_backend("plain")
        say()
        say(indent(databag_table(app.relation_data(rid), d.provider_data())))
        say()
        expect(
            d.provider_data().get("read-only-endpoints") == ",".join(s.endpoint for s in standbys),
            "no read-only-endpoints in the backend databag",
        )
        auth = auth_roles(pg)
        auth_user = f"pgbouncer_auth_relation_{rid}"
        expect(
            [r[0] for r in auth] == [auth_user, f"{auth_user}_definer"],
            f"auth roles after relating: {auth}",
        )
        say(f"   auth role created: {auth_user} (login, not superuser)")
        say(f"   lookup function: {', '.join(auth_functions(pg))} (in database pgbouncer)")
        ini = (app.units[0].mount_dir / "pgbouncer_0.ini").read_text()
        lines = [ln for ln in ini.splitlines() if ln.startswith(("auth_", "pgb_authdb"))]
        say("   pgbouncer-k8s/0's pgbouncer_0.ini now holds:")
        say(indent(indent("\n".join(lines))))
        shown = show_statuses(d)
        expect(set(shown.values()) == {ACTIVE}, f"statuses after relating: {shown}")

        step(3, "juju integrate app-one:database pgbouncer-k8s  (app-one asks for 'appdb')")
        client = d.relate_client("app-one", "appdb")
        creds = d.credentials(client)
        answer = app.relation_data(client.relation_id)
        say(f"   app-one got: endpoints={creds.endpoints} database={creds.database}")
        say(f"                secret-user={answer['secret-user']} (username {creds.username})")
        say(f"   {WHO}")
        for unit in app.units:
            _, port = unit.address()
            row = d.query(unit, creds, WHO)
            say(f"     through {unit.name} (127.0.0.1:{port}) -> {row}")
            expect(row == (creds.username, "appdb", pg.port), f"query through {unit.name}: {row}")
        d.postgresql.wait_replayed()  # the client's role and database reach the replica
        readonly = creds.database + "_readonly"
        ini = (app.units[0].mount_dir / "pgbouncer_0.ini").read_text()
        say("   pgbouncer-k8s/0's [databases] entry for it (every replica, round-robin):")
        say(indent(indent(next(ln for ln in ini.splitlines() if ln.startswith(readonly)))))
        say(f"   {READ_ONLY}, in database {readonly}, 4 clients in a transaction at once:")
        ro_creds = dataclasses.replace(creds, database=readonly)
        for unit in app.units:
            clients = [connect_at(unit.address(), ro_creds) for _ in range(4)]
            try:
                rows = [c.execute(READ_ONLY).fetchone() for c in clients]
            finally:
                for c in clients:
                    c.close()
            say(f"     through {unit.name} -> {rows}")
            served = sorted({row[2].split("/")[0] for row in rows if row})
            expect(
                served == ["127.0.0.2", "127.0.0.3"] and all(r and r[0] for r in rows),
                f"read-only through {unit.name} not spread over both standbys: {rows}",
            )
        shown = show_statuses(d)
        expect(set(shown.values()) == {ACTIVE}, f"statuses with a client: {shown}")
        show_roles(pg, "PostgreSQL roles now")

        tls_step(d, pg.port)

        step(4, "juju integrate prometheus:metrics-endpoint pgbouncer-k8s")
        show_metrics(app, d)
        actions_step(d, creds)

        step(4, "(b) juju integrate grafana:grafana-dashboard pgbouncer-k8s")
        show_dashboard(app)

        step(5, "juju remove-relation app-one pgbouncer-k8s")
        d.remove_client(client)
        expect(creds.username not in show_roles(pg, "PostgreSQL roles"), "client user left")
        kept = pg.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'appdb'")
        expect(kept == [(1,)], "database appdb was dropped with its client")
        say(f"   {creds.username} is gone; database appdb and its data stay.")

        step(6, "juju remove-relation pgbouncer-k8s postgresql-k8s")
        show_roles(pg, "PostgreSQL roles before clean-up")
        marks = {u.name: len(u.runner.history) if u.runner else 0 for u in app.units}
        d.remove_backend()
        after = show_roles(pg, "PostgreSQL roles after clean-up")
        data_owners = [
            r
            for r in after
            if r.startswith(("pgbouncer_owner_", "pgbouncer_orphans_", "pgbouncer_databases_"))
        ]
        expect([r for r in after if r not in data_owners] == ["postgres"], f"roles left: {after}")
        logins = pg.execute(
            "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = ANY(%s) AND rolcanlogin",
            (data_owners,),
        )
        expect(logins == [(0,)], "a data-owning role can log in")
        say("   What is left owns the clients' data and cannot log in: " + ", ".join(data_owners))
        leftovers = [r[0] for r in auth_roles(pg)]
        say(f"   schemas {auth_schemas(pg)}, functions {auth_functions(pg)} in database pgbouncer")
        for unit in app.units:
            text = (unit.mount_dir / "pgbouncer_0.ini").read_text()
            for key in ("auth_user", "auth_query", "auth_dbname", "pgb_authdb"):
                expect(key not in text, f"{unit.name}'s pgbouncer_0.ini still has {key}")
            auth_file = (unit.mount_dir / "userlist.txt").read_text()
            # Only the PgBouncer-only console users' lines (SCRAM verifiers): the stats user (its
            # second generation since 4 (c)) and the admin user of pause database=<db>.
            console_users = ('"pgbouncer_stats" ', '"pgbouncer_stats_g2" ', '"pgbouncer_admin" ')
            kept = [ln for ln in auth_file.splitlines() if not ln.startswith(console_users)]
            expect(kept == [], f"{unit.name}'s auth file still has {len(kept)} other line(s)")
            history = unit.runner.history[marks[unit.name] :] if unit.runner else []
            expect(("SIGHUP", "pgbouncer_0") in history, f"{unit.name}'s PgBouncer not reloaded")
        say("   auth_user, auth_query, auth_dbname and the backend databases left both units'")
        say("   pgbouncer.ini; both auth files hold only the stats user's verifier; PgBouncer")
        say("   reloaded.")
        shown = show_statuses(d)
        expect(set(shown.values()) == {NO_BACKEND}, f"statuses after removal: {shown}")
        say()
        say(f"Leftover auth roles: {leftovers}")
        expect(leftovers == [], f"auth roles left behind: {leftovers}")
        for unit in app.units:
            exited = unit.runner.exited() if unit.runner is not None else {}
            expect(exited == {}, f"{unit.name}'s PgBouncer died: {exited}")
    finally:
        if app is not None:
            app.close()
        for standby in standbys:
            standby.destroy()
        pg.destroy()
        say("(stopped every PgBouncer and PostgreSQL process the demo started)")


def actions_step(d, creds) -> None:
    """The operator's actions: audit-tenancy on the leader, show-pools on each unit."""
    import json

    say()
    say("== 4. (b) juju run pgbouncer-k8s/leader audit-tenancy")
    results = d.app.leader.run_action("audit-tenancy")
    say(f"   ok={results['ok']} violations={results['violations']} counts={results['counts']}")
    say(f"   ({results['tenants']} tenant database(s), {results['seconds']} s)")
    expect(results["ok"] == "true", f"the audit of the demo's cluster: {results}")
    with d.connect(d.app.leader, creds) as held:
        held.execute("SELECT 1")
        for unit in d.app.units:
            say(
                f"   juju run {unit.name} show-pools   (a client holds a connection to the leader)"
            )
            pools = unit.run_action("show-pools")
            for process in json.loads(pools["processes"]):
                state = "paused" if process["state"].get("paused") == "yes" else "serving"
                say(f"     {process['service']} (peer_id {process['peer_id']}, {state}):")
                for pool in process["pools"]:
                    say(
                        f"       {pool['database']}/{pool['user']}: cl_active "
                        f"{pool['cl_active']}, cl_waiting {pool['cl_waiting']}, sv_active "
                        f"{pool['sv_active']}, sv_idle {pool['sv_idle']}, {pool['pool_mode']}"
                    )
            for pool in json.loads(pools["total"]):
                say(
                    f"     unit total {pool['database']}/{pool['user']}: cl_active "
                    f"{pool['cl_active']}, sv_active {pool['sv_active']}, sv_idle "
                    f"{pool['sv_idle']} over {pool['processes']} process(es)"
                )
            expect(json.loads(pools["not-reached"]) == [], f"{unit.name}: {pools}")
    expect(creds.password not in json.dumps(results), "the client's password in the results")
    rotate_step(d, creds)


def rotate_step(d, creds) -> None:
    """rotate-credentials: the second generation handed out, the old password gone at the end."""
    import time

    from pgbouncer.exporter import EXPORTER_RELOAD_S

    say()
    say("== 4. (c) juju run pgbouncer-k8s/leader rotate-credentials")
    leader = d.app.leader
    rotated = leader.run_action("rotate-credentials")
    say(
        f"   auth role {rotated['from']} -> {rotated['to']}, stats user "
        f"{rotated['stats-from']} -> {rotated['stats-to']}"
    )
    say(f"   {leader.name}: {leader.state.unit_status.message}")
    d.settle_peers()  # each unit switches and reports
    time.sleep(EXPORTER_RELOAD_S + 0.5)  # until every exporter surely re-read its configuration
    d.settle_peers()  # each unit confirms; the leader removes the old password
    d.settle_peers()  # the followers see the rotation ended (and drop the old stats user)
    for unit in d.app.units:
        say(f"   {unit.name}: {unit.state.unit_status.message}")
        expect("rotating" not in unit.state.unit_status.message, f"{unit.name} still rotating")
        row = d.query(unit, creds, "SELECT session_user")
        say(f"   {unit.name} still serves the client (session_user {row[0]})")


def tls_step(d, pg_port: int) -> None:
    """3b: a certificates provider signs each unit's CSR; a client connects with verify-full."""
    import json

    import psycopg
    from cryptography import x509
    from ops import testing

    from harness.servers.tls import make_ca, peer_certificate_serial

    app = d.app
    step(3, "(b) juju integrate pgbouncer-k8s:certificates self-signed-certificates")
    ca = make_ca("self-signed-certificates demo CA")
    rid = app.add_relation(
        testing.Relation(
            "certificates", remote_app_name="self-signed-certificates", remote_units_data={0: {}}
        )
    )
    for unit in d._leader_first():
        unit.relation_created(rid)
    entries = []
    for unit in app.units:
        bag = unit.relation(rid).local_unit_data
        csr_pem = json.loads(bag["certificate_signing_requests"])[0]["certificate_signing_request"]
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cn = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        cert = ca.sign(
            csr.public_key(),
            str(cn),
            dns=tuple(san.get_values_for_type(x509.DNSName)),
            ips=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        )
        entries.append(
            {
                "certificate_signing_request": csr_pem,
                "certificate": cert.public_bytes(serialization_pem()).decode(),
                "ca": ca.pem,
                "chain": [cert.public_bytes(serialization_pem()).decode(), ca.pem],
            }
        )
        names = sorted(san.get_values_for_type(x509.DNSName), key=len)
        say(f"   {unit.name} asked for: {', '.join(names)}")
    app.set_remote(rid, remote_app_data={"certificates": json.dumps(entries)})
    marks = {u.name: len(u.runner.history) if u.runner else 0 for u in app.units}
    for unit in d._leader_first():
        unit.relation_joined(rid, remote_unit=0)
        unit.relation_changed(rid, remote_unit=0)
    for unit in app.units:
        text = (unit.mount_dir / "pgbouncer_0.ini").read_text()
        expect("client_tls_sslmode = prefer" in text, f"{unit.name} serves no TLS")
        history = unit.runner.history[marks[unit.name] :] if unit.runner else []
        expect(("SIGHUP", "pgbouncer_0") in history, f"{unit.name}'s PgBouncer not reloaded")
        expect(
            not any(event[0] in ("start", "stop") for event in history),
            f"{unit.name}'s PgBouncer was restarted: {history}",
        )
        for name in ("client-tls.key", "client-tls.crt", "client-tls-ca.crt"):
            mode = (unit.mount_dir / name).stat().st_mode & 0o777
            expect(mode == 0o600, f"{unit.name}'s {name} has mode {mode:o}")
    say("   both units' pgbouncer_0.ini: client_tls_sslmode = prefer, key/cert/CA files 0600;")
    say("   PgBouncer reloaded (no restart).")

    # A client asking for the TLS fields gets tls and tls-ca in its secret-tls secret.
    request = {
        "database": "tlsdb",
        "requested-secrets": json.dumps(["username", "password", "tls", "tls-ca"]),
    }
    crid = app.add_relation(
        testing.Relation(
            "database",
            remote_app_name="app-tls",
            remote_app_data=request,
            remote_units_data={0: {}},
        )
    )
    for unit in d._leader_first():
        unit.relation_created(crid)
    for unit in d._leader_first():
        unit.relation_joined(crid, remote_unit=0)
        unit.relation_changed(crid, remote_unit=0)
    d.settle_peers()
    answer = app.relation_data(crid)
    user = app.leader.secret(answer["secret-user"]).latest_content
    tls = app.leader.secret(answer["secret-tls"]).latest_content
    expect(tls.get("tls") == "true" and tls.get("tls-ca") == ca.pem, "no tls/tls-ca published")
    say("   app-tls (asks for tls, tls-ca) got: tls=true, tls-ca=<the provider's CA>")
    ca_file = app.units[0].mount_dir.parent / "published-tls-ca.crt"
    ca_file.write_text(tls["tls-ca"])
    host = answer["endpoints"].rsplit(":", 1)[0]
    for unit in app.units:
        _, port = unit.address()
        conninfo = (
            f"host={host} hostaddr=127.0.0.1 port={port} dbname=tlsdb user={user['username']}"
            f" sslmode=verify-full sslrootcert={ca_file} connect_timeout=5"
        )
        with psycopg.connect(conninfo, password=user["password"]) as conn:
            in_use = conn.info.pgconn.ssl_in_use
            row = conn.execute("SELECT current_user, inet_server_port()").fetchone()
        serial = peer_certificate_serial("127.0.0.1", port)
        say(f'   psql "host={host} sslmode=verify-full sslrootcert=…" through {unit.name}:')
        say(f"     verified, TLS in use: {in_use}, {row}, certificate serial {serial:x}"[:100])
        expect(in_use and row is not None and row[1] == pg_port, f"TLS query via {unit.name}")
    wrong = app.units[0].mount_dir.parent / "wrong-ca.crt"
    wrong.write_text(make_ca("another CA").pem)
    _, port = app.units[0].address()
    try:
        psycopg.connect(
            f"host={host} hostaddr=127.0.0.1 port={port} dbname=tlsdb user={user['username']}"
            f" sslmode=verify-full sslrootcert={wrong} connect_timeout=5",
            password=user["password"],
        ).close()
        expect(False, "a client trusting another CA was let in")
    except psycopg.OperationalError as exc:
        refused = "certificate verify failed" in str(exc)
        expect(refused, f"unexpected refusal: {str(exc).splitlines()[0]}")
        say("   the same client trusting another CA: refused (certificate verify failed)")
    d._remove_relation(crid, remote_units=(0,))


def serialization_pem():
    """PEM encoding (kept out of the step's imports for brevity)."""
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    """Run the story; 0 when every step had its effect."""
    quiet()
    signal.signal(signal.SIGTERM, _on_sigterm)

    from harness.servers.system import is_root

    if not is_root():
        say("The demo needs root: PostgreSQL and PgBouncer run as the postgres OS user, and")
        say("each unit's PgBouncer runs in a network namespace of its own.")
        return 2

    started = time.monotonic()
    try:
        run()
    except StepFailedError as exc:
        say()
        say(f"DEMO FAILED: {exc}")
        return 1
    except Exception as exc:
        say()
        say(f"DEMO FAILED: {type(exc).__name__}: {exc}")
        return 1
    say()
    say(f"Every step had its effect. Demo took {time.monotonic() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
