"""What another application writes cannot cut clients off, crash a hook or lower security.

Issue 22, on real processes: a serving unit (real PostgreSQL 15, real PgBouncer 1.24 started from
the Pebble plan the charm produced) is given a bad value by the PostgreSQL charm, the
``certificates`` provider or a client, or leaves the backend relation itself; every test checks
what a client sees (a connection made before keeps querying, a new one is served), what
PgBouncer reads (the files are byte-identical, no signal was sent) and what the status says.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from ops import testing

from harness.certificates import CertificatesProvider
from harness.juju import Unit
from harness.servers.tls import cert_pem, make_ca, peer_certificate_serial
from harness.story import ClientCredentials, Deployment, connect_at

pytestmark = pytest.mark.needs_root

MakeDeployment = Callable[..., Deployment]
DAY = datetime.timedelta(days=1)


def served_files(unit: Unit) -> dict[str, str]:
    """A digest of every file PgBouncer reads in the unit's container, by name.

    Digests, not contents: a failing comparison must not print the auth file's password.
    """
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(unit.mount_dir).glob("*"))
        if p.is_file()
    }


def signals_since(unit: Unit, mark: int) -> list[tuple]:
    """What the unit's Pebble did to its processes since ``mark`` (SIGHUP, start, stop)."""
    return list(unit.runner.history[mark:]) if unit.runner else []


def history_mark(unit: Unit) -> int:
    return len(unit.runner.history) if unit.runner else 0


def serving(
    make_deployment: MakeDeployment, num_units: int = 1
) -> tuple[Deployment, ClientCredentials]:
    """A deployed application with a backend and one client, served through every unit."""
    d = make_deployment(num_units=num_units)
    d.deploy()
    d.relate_backend("plain")
    creds = d.credentials(d.relate_client("app", "appdb"))
    for unit in d.app.units:
        assert d.query(unit, creds, "SELECT current_database()") == ("appdb",)
    return d, creds


def test_a_bad_endpoints_value_keeps_the_last_good_configuration_serving(make_deployment):
    # Defect 1: the unit used to write an empty [databases] and no auth settings, and reload.
    d, creds = serving(make_deployment)
    unit = d.app.leader
    held = connect_at(unit.address(), creds, autocommit=True)
    try:
        before, mark = served_files(unit), history_mark(unit)
        assert d.backend_id is not None
        bad = {**d.provider_data(), "endpoints": "primary host:5432"}
        d.app.set_remote(d.backend_id, remote_app_data=bad)
        out = unit.relation_changed(d.backend_id, remote_unit=0)
        assert out.unit_status.name == "blocked", out.unit_status
        message = out.unit_status.message
        assert message.startswith("invalid backend-database endpoints: "), message
        assert message.endswith("; the last good configuration keeps serving"), message
        assert served_files(unit) == before
        assert signals_since(unit, mark) == []
        assert held.execute("SELECT 1").fetchone() == (1,)
        assert d.query(unit, creds, "SELECT session_user") == (creds.username,)
        # The same holds when the provider takes its endpoints away altogether.
        d.app.set_remote(d.backend_id, remote_app_data={**bad, "endpoints": ""})
        out = unit.update_status()
        assert out.unit_status.name == "blocked", out.unit_status
        assert "last good configuration" in out.unit_status.message
        assert served_files(unit) == before
        assert d.query(unit, creds, "SELECT 1") == (1,)
        # A good value again: served, active.
        good = {**bad, "endpoints": d.postgresql.server.endpoint}
        d.app.set_remote(d.backend_id, remote_app_data=good)
        out = unit.relation_changed(d.backend_id, remote_unit=0)
        assert out.unit_status.name == "active", out.unit_status
        assert d.query(unit, creds, "SELECT 1") == (1,)
    finally:
        held.close()


def test_relation_broken_on_the_departing_unit_leaves_its_configuration(make_deployment):
    # Defect 6 (SPEC 3.3.1): departing flag set -> return; the unit's clients drain untouched.
    d, creds = serving(make_deployment, num_units=2)
    leaving = next(u for u in d.app.units if not u.is_leader)
    assert d.backend_id is not None
    held = connect_at(leaving.address(), creds, autocommit=True)
    try:
        before, mark = served_files(leaving), history_mark(leaving)
        d.app.set_planned_units(1)
        leaving.relation_departed(d.backend_id, remote_unit=0, departing=leaving.name)
        leaving.relation_broken(d.backend_id)
        assert served_files(leaving) == before
        assert signals_since(leaving, mark) == []
        assert held.execute("SELECT current_database()").fetchone() == ("appdb",)
        assert d.query(leaving, creds, "SELECT 1") == (1,)
    finally:
        held.close()


# -- the certificates provider ----------------------------------------------------------------
GARBAGE_PEM = "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZSwgbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


def tls_query(unit: Unit, creds: ClientCredentials, ca_pem: str) -> tuple:
    """A verify-full client, as an application would connect with the published ``tls-ca``."""
    ca_file = Path(unit.mount_dir).parent / f"client-ca-{unit.unit_id}.crt"
    ca_file.write_text(ca_pem)
    host = creds.endpoints.rsplit(":", 1)[0]
    _, port = unit.address()
    conninfo = (
        f"host={host} hostaddr=127.0.0.1 port={port} dbname={creds.database}"
        f" user={creds.username} sslmode=verify-full sslrootcert={ca_file} connect_timeout=5"
    )
    with psycopg.connect(conninfo, password=creds.password, autocommit=True) as conn:
        assert conn.info.pgconn.ssl_in_use
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return tuple(row)


def serving_tls(make_deployment: MakeDeployment):
    """One unit serving a client, with a certificate from the provider; its serial."""
    d, creds = serving(make_deployment)
    provider = CertificatesProvider(d)
    provider.relate()
    provider.sign_all()
    unit = d.app.leader
    serial = peer_certificate_serial(*unit.address())
    assert tls_query(unit, creds, provider.ca.pem) == ("appdb",)
    assert unit.state.unit_status.name == "active", unit.state.unit_status
    return d, creds, provider, unit, serial


def assert_still_serving(unit: Unit, creds, provider, serial: int, before, mark: int) -> None:
    assert served_files(unit) == before
    assert signals_since(unit, mark) == []
    assert peer_certificate_serial(*unit.address()) == serial
    assert tls_query(unit, creds, provider.ca.pem) == ("appdb",)


def test_a_garbage_certificate_fails_no_hook_and_tls_stays_on(make_deployment):
    # Defect 2: the library raised TLSCertificatesError in its relation-changed handler.
    _, creds, provider, unit, serial = serving_tls(make_deployment)
    before, mark = served_files(unit), history_mark(unit)
    provider.publish([provider.entry(unit, certificate=GARBAGE_PEM)])  # raises if a hook does
    out = unit.state
    assert out.unit_status.name == "blocked", out.unit_status
    assert out.unit_status.message.startswith("serving an older certificate until "), out
    assert "certificates" in out.unit_status.message
    assert_still_serving(unit, creds, provider, serial, before, mark)
    # Truncated, and not JSON at all: the same.
    good = provider.entry(unit)
    provider.publish([{**good, "certificate": good["certificate"][:200]}])
    assert unit.state.unit_status.name == "blocked"
    provider.publish("[{not json")
    assert_still_serving(unit, creds, provider, serial, before, mark)
    # A good certificate again is served (by reload) and the unit is active.
    provider.publish([good])
    assert unit.state.unit_status.name == "active", unit.state.unit_status
    assert peer_certificate_serial(*unit.address()) != serial


def test_a_certificate_for_another_key_keeps_the_older_certificate(make_deployment):
    # Defect 3: the charm deleted key and certificate and PgBouncer answered N to SSLRequest.
    d, creds, provider, unit, serial = serving_tls(make_deployment)
    before, mark = served_files(unit), history_mark(unit)
    stranger = provider.ca.leaf("pgbouncer-k8s-0")  # signed for a key that is not the unit's
    provider.publish([provider.entry(unit, certificate=cert_pem(stranger.cert))])
    status = unit.state.unit_status
    assert status.name == "blocked", status
    assert status.message.startswith("serving an older certificate until "), status
    assert "does not match its private key" in status.message, status
    assert_still_serving(unit, creds, provider, serial, before, mark)
    # Expired, not yet valid, from another CA: never served, the older one stays.
    now = datetime.datetime.now(datetime.UTC)
    for bad, words in (
        (provider.sign(unit, not_before=now - DAY * 3, not_after=now - DAY), "expired"),
        (provider.sign(unit, not_before=now + DAY), "not yet valid"),
        (provider.sign(unit, ca=make_ca("rogue CA")), "not signed by the CA"),
    ):
        provider.publish([provider.entry(unit, certificate=cert_pem(bad))])
        assert words in unit.state.unit_status.message, unit.state.unit_status
        assert_still_serving(unit, creds, provider, serial, before, mark)
    # The operator removes the relation: that (and only that) turns TLS off.
    assert provider.relation_id is not None
    unit.relation_broken(provider.relation_id)
    d.app.remove_relation(provider.relation_id)
    unit.update_status()
    assert not (Path(unit.mount_dir) / "client-tls.crt").exists()
    assert d.query(unit, creds, "SELECT 1") == (1,)


# -- a v0 client that does not use secrets ----------------------------------------------------
V0_PROVIDER_REQUIRED = ("database", "username", "password", "endpoints")
"""``postgresql_client`` v0 provider.json: required keys, all strings."""


def test_a_v0_client_without_requested_secrets_gets_plain_credentials(make_deployment):
    # Defect 5: it got only secret-user, which it cannot read.
    d, secret_creds = serving(make_deployment)
    rid = d.app.add_relation(
        testing.Relation(
            "database",
            remote_app_name="legacy",
            remote_app_data={"database": "legacydb"},
            remote_units_data={0: {}},
        )
    )
    unit = d.app.leader
    unit.relation_created(rid)
    unit.relation_joined(rid, remote_unit=0)
    unit.relation_changed(rid, remote_unit=0)
    unit.update_status()  # the publish barrier: answered once the unit serves legacydb
    answer = d.app.relation_data(rid)
    assert all(isinstance(answer.get(k), str) and answer[k] for k in V0_PROVIDER_REQUIRED), sorted(
        answer
    )
    assert "secret-user" not in answer
    assert answer["database"] == "legacydb" and answer["tls"] == "false"
    uri = answer["uris"]
    assert uri.startswith(f"postgresql://{answer['username']}:") and uri.endswith("/legacydb")
    creds = ClientCredentials(
        username=answer["username"],
        password=answer["password"],
        database="legacydb",
        endpoints=answer["endpoints"],
    )
    assert d.query(unit, creds, "SELECT session_user, current_database()") == (
        answer["username"],
        "legacydb",
    )
    # The client that asked for secrets still gets them only through secret-user.
    secret_answer = d.app.relation_data(d.clients["app"].relation_id)
    assert "secret-user" in secret_answer and "password" not in secret_answer
    assert d.query(unit, secret_creds, "SELECT 1") == (1,)
