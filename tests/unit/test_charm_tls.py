"""TLS through the whole charm (Scenario): certificates in, PgBouncer's files and clients out.

The provider side of ``certificates`` is played by the test: it signs the CSR the charm's
library put in the unit databag with a CA made here. The backend's ``tls``/``tls-ca`` come in
the ``backend-database`` databag as the PostgreSQL charm writes them.
"""

from __future__ import annotations

import dataclasses
import json
import stat

import pytest
from cryptography import x509
from ops import testing

from harness.servers.tls import make_ca
from tests.unit.conftest import SEED_PROVIDER, backend_relation
from tests.unit.test_client_database import (
    MODEL,
    V0_REQUEST,
    client_relation,
    fake_clients,  # noqa: F401 (fixture)
    ini,
    state_with,
)
from tests.unit.test_tls_relation import network, provider_databag, sign

# What a v0 client such as postgresql_client's requirer library asks for, TLS fields included.
TLS_REQUEST = {
    "database": "myapp",
    "requested-secrets": '["username", "password", "tls", "tls-ca", "uris", "read-only-uris"]',
}
CA = make_ca("self-signed-certificates CA")
PG_CA = make_ca("postgresql CA")


def cert_relation(**kwargs) -> testing.Relation:
    return testing.Relation(
        "certificates",
        interface="tls-certificates",
        remote_app_name="self-signed-certificates",
        remote_units_data={0: {}},
        **kwargs,
    )


def with_certificate(
    ctx, state: testing.State, **sign_kwargs
) -> tuple[testing.State, x509.Certificate]:
    """Relate ``certificates``, let the charm ask, answer with a certificate from CA."""
    rel = cert_relation()
    state = dataclasses.replace(state, relations={*state.relations, rel})
    out = ctx.run(ctx.on.relation_created(rel), state)
    asked = out.get_relation(rel.id)
    csr_pem = json.loads(asked.local_unit_data["certificate_signing_requests"])[0][
        "certificate_signing_request"
    ]
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    cert = sign(CA, csr, **sign_kwargs)
    answered = cert_relation(
        id=rel.id,
        remote_app_data=provider_databag(csr, cert, CA),
        local_unit_data=asked.local_unit_data,
    )
    others = {r for r in out.relations if r.id != rel.id}
    out = ctx.run(
        ctx.on.relation_changed(answered, remote_unit=0),
        dataclasses.replace(out, relations={*others, answered}),
    )
    return out, cert


def base_state(dirs, *extra, config=None, backend=None) -> testing.State:
    state = state_with(*extra, dirs=dirs, config=config)
    if backend is not None:
        rels = {r for r in state.relations if r.endpoint != "backend-database"}
        state = dataclasses.replace(state, relations={*rels, backend})
    return dataclasses.replace(state, networks={network()}, model=MODEL)


@pytest.fixture
def tls_ctx(effects) -> testing.Context:
    from tests.unit.conftest import charm_with

    return testing.Context(charm_with(effects))


def test_a_certificate_is_served_and_published_to_clients(tls_ctx, dirs, fake_clients):  # noqa: F811
    out, cert = with_certificate(tls_ctx, base_state(dirs))
    text = ini(dirs)
    assert "client_tls_sslmode = prefer\n" in text
    key = dirs.pgb / "client-tls.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert x509.load_pem_x509_certificate((dirs.pgb / "client-tls.crt").read_bytes()) == cert
    assert (dirs.pgb / "client-tls-ca.crt").read_text() == CA.pem
    assert not (dirs.pgb / "server-tls-ca.crt").exists()  # the backend announced no TLS
    assert "server_tls_sslmode" not in text
    assert out.unit_status.name == "active", out.unit_status

    # A client relating now is told TLS, with the CA to verify PgBouncer (in the tls secret,
    # as it asked for "tls" and "tls-ca" in requested-secrets).
    client = client_relation(TLS_REQUEST)
    out = tls_ctx.run(
        tls_ctx.on.relation_changed(client, remote_unit=0),
        dataclasses.replace(out, relations={*out.relations, client}),
    )
    local = out.get_relation(client.id).local_app_data
    published = {**local, **tls_secret_content(out, local)}
    assert published.get("tls") in ("True", "true"), dict(local)
    assert published.get("tls-ca") == CA.pem


def tls_secret_content(out: testing.State, local) -> dict[str, str]:
    secret_id = local.get("secret-tls")
    if not secret_id:
        return {}
    secret = next(s for s in out.secrets if s.id == secret_id)
    return dict(secret.latest_content or secret.tracked_content)


def test_a_client_answered_before_the_certificate_learns_of_tls(tls_ctx, dirs, fake_clients):  # noqa: F811
    client = client_relation(TLS_REQUEST)
    out, _ = with_certificate(tls_ctx, base_state(dirs, client))
    local = out.get_relation(client.id).local_app_data
    published = {**local, **tls_secret_content(out, local)}
    assert published.get("tls") in ("True", "true"), dict(local)


def test_without_a_certificate_clients_are_told_no_tls(tls_ctx, dirs, fake_clients):  # noqa: F811
    client = client_relation(V0_REQUEST)
    out = tls_ctx.run(tls_ctx.on.relation_changed(client, remote_unit=0), base_state(dirs, client))
    local = out.get_relation(client.id).local_app_data
    assert local.get("tls") in ("False", None), dict(local)
    assert "tls-ca" not in local
    assert "client_tls" not in ini(dirs)


def test_require_without_a_certificate_blocks_and_writes_nothing(tls_ctx, dirs):
    out = tls_ctx.run(
        tls_ctx.on.config_changed(), base_state(dirs, config={"client_tls_mode": "require"})
    )
    assert out.unit_status == testing.BlockedStatus(
        "client_tls_mode is require: waiting for a certificate"
    )
    assert not (dirs.pgb / "pgbouncer_0.ini").exists()


def test_require_with_a_certificate_refuses_plain(tls_ctx, dirs):
    _, _ = with_certificate(tls_ctx, base_state(dirs, config={"client_tls_mode": "require"}))
    assert "client_tls_sslmode = require\n" in ini(dirs)


def test_a_bad_client_tls_mode_blocks(tls_ctx, dirs):
    out = tls_ctx.run(
        tls_ctx.on.config_changed(), base_state(dirs, config={"client_tls_mode": "allow"})
    )
    assert out.unit_status.name == "blocked"
    assert "client_tls_mode" in out.unit_status.message


def test_backend_tls_is_verified_with_its_ca(tls_ctx, dirs):
    backend = backend_relation({**SEED_PROVIDER, "tls": "True", "tls-ca": PG_CA.pem})
    tls_ctx.run(tls_ctx.on.config_changed(), base_state(dirs, backend=backend))
    text = ini(dirs)
    assert "server_tls_sslmode = verify-full\n" in text
    assert (dirs.pgb / "server-tls-ca.crt").read_text() == PG_CA.pem
    assert stat.S_IMODE((dirs.pgb / "server-tls-ca.crt").stat().st_mode) == 0o600


def test_the_charms_own_connections_verify_the_backend_too(tls_ctx, dirs, fake_sql):
    """update-status checks the plumbing; that connection checks the server with its CA."""
    backend = backend_relation({**SEED_PROVIDER, "tls": "True", "tls-ca": PG_CA.pem})
    tls_ctx.run(tls_ctx.on.update_status(), base_state(dirs, backend=backend))
    assert fake_sql.checked, "the plumbing was not checked"
    for creds in fake_sql.creds_seen:
        assert creds.sslrootcert is not None, "a connection without the backend's CA"
        with open(creds.sslrootcert) as ca:
            assert ca.read() == PG_CA.pem


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"tls": "True", "tls-ca": "garbage"}, "blocked", "backend-database tls-ca"),
        ({"tls": "True"}, "waiting", "tls is True but tls-ca is empty"),
        ({"tls": "yes", "tls-ca": PG_CA.pem}, "blocked", "backend-database tls"),
    ],
)
def test_hostile_backend_tls_keeps_the_last_configuration(tls_ctx, dirs, fields, status, words):
    good = backend_relation({**SEED_PROVIDER, "tls": "True", "tls-ca": PG_CA.pem})
    out = tls_ctx.run(tls_ctx.on.config_changed(), base_state(dirs, backend=good))
    before = ini(dirs)
    ca_before = (dirs.pgb / "server-tls-ca.crt").read_text()
    bad = backend_relation({**SEED_PROVIDER, **fields}, relation_id=good.id)
    others = {r for r in out.relations if r.endpoint != "backend-database"}
    out = tls_ctx.run(
        tls_ctx.on.config_changed(), dataclasses.replace(out, relations={*others, bad})
    )
    assert ini(dirs) == before
    assert (dirs.pgb / "server-tls-ca.crt").read_text() == ca_before
    assert out.unit_status.name == status
    assert words in out.unit_status.message


def test_removing_certificates_goes_back_to_plain(tls_ctx, dirs):
    out, _ = with_certificate(tls_ctx, base_state(dirs))
    assert "client_tls_sslmode" in ini(dirs)
    rel = next(r for r in out.relations if r.endpoint == "certificates")
    out = tls_ctx.run(tls_ctx.on.relation_broken(rel), out)
    assert "client_tls" not in ini(dirs)
    assert not (dirs.pgb / "client-tls.key").exists()
    assert out.unit_status.name == "active", out.unit_status


@pytest.mark.parametrize(
    "fields",
    [{"tls": "True", "tls-ca": "garbage"}, {"tls": "True"}, {"tls": "yes", "tls-ca": PG_CA.pem}],
)
def test_a_refused_backend_ca_never_makes_the_charm_connect_unverified(
    tls_ctx, dirs, fake_sql, fields
):
    """Issue 22: the charm's own connections keep the last good CA when the new one is refused."""
    good = backend_relation({**SEED_PROVIDER, "tls": "True", "tls-ca": PG_CA.pem})
    out = tls_ctx.run(tls_ctx.on.update_status(), base_state(dirs, backend=good))
    assert fake_sql.creds_seen
    fake_sql.creds_seen.clear()
    bad = backend_relation({**SEED_PROVIDER, **fields}, relation_id=good.id)
    others = {r for r in out.relations if r.endpoint != "backend-database"}
    tls_ctx.run(tls_ctx.on.update_status(), dataclasses.replace(out, relations={*others, bad}))
    for creds in fake_sql.creds_seen:
        assert creds.sslrootcert is not None, "a connection without the backend's CA"
        with open(creds.sslrootcert) as ca:
            assert ca.read() == PG_CA.pem


def test_backend_tls_through_secret_tls_is_verified(tls_ctx, dirs):
    """The provider may send tls and tls-ca in a secret-tls secret (postgresql_client v0)."""
    secret = testing.Secret({"tls": "True", "tls-ca": PG_CA.pem}, owner=None)
    backend = backend_relation({**SEED_PROVIDER, "secret-tls": secret.id})
    state = dataclasses.replace(base_state(dirs, backend=backend), secrets={secret})
    tls_ctx.run(tls_ctx.on.config_changed(), state)
    assert "server_tls_sslmode = verify-full\n" in ini(dirs)
    assert (dirs.pgb / "server-tls-ca.crt").read_text() == PG_CA.pem
    # A secret-tls that cannot be read blocks, naming it; nothing is written.
    before = ini(dirs)
    lost = backend_relation({**SEED_PROVIDER, "secret-tls": "secret:nope"}, relation_id=backend.id)
    out = tls_ctx.run(tls_ctx.on.config_changed(), base_state(dirs, backend=lost))
    assert out.unit_status.name == "blocked" and "secret-tls" in out.unit_status.message
    assert ini(dirs) == before
