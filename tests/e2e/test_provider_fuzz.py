"""A provider fuzzer on a serving unit with real processes (issue 22).

hypothesis draws what another application might write — the PostgreSQL charm's databag and
``secret-user``, its ``tls``/``tls-ca``, the ``certificates`` provider's answer (garbage,
truncated, another key, expired, not yet valid, other names, chains, huge) — and each is applied
to one unit that serves a client over plain and verify-full TLS, through its real PgBouncer 1.24
in front of a real PostgreSQL 15. After every input:

- no hook raised (Scenario raises ``UncaughtCharmError`` if one did);
- the client connected before keeps querying, and a new plain and a new verify-full client are
  served: TLS did not silently turn off;
- what PgBouncer reads is what was meant: ``[databases]`` holds only our keys, each pointing at
  the real server, the auth settings are there, and for a refused input no file changed and no
  signal was sent;
- the status names the input it refused.

Then the good input is put back (one more hook) before the next example.

Bound and seed: ``derandomize=True`` (hypothesis derives its examples from the test's source, so
every run tries the same ones; change an ``@example`` or a strategy to vary them),
``MAX_EXAMPLES`` drawn examples per test (40) plus the explicit ones, one deployment per test:
about 30 s for the three tests on this 2-core machine (27 s measured on 2026-12-08).
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.certificates import CertificatesProvider
from harness.servers.tls import cert_pem, intermediate, make_ca
from harness.story import connect_at
from pgbouncer.ini import parse_ini
from tests.e2e.test_provider_inputs import (
    history_mark,
    served_files,
    serving,
    signals_since,
    tls_query,
)

pytestmark = pytest.mark.needs_root

MAX_EXAMPLES = 40
"""Examples hypothesis draws per test (explicit ``@example``s come on top)."""

FUZZ = settings(
    derandomize=True,
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DAY = datetime.timedelta(days=1)
BAD_CHARS = st.sampled_from([" ", "\n", "\r", "=", ";", "\x00", "é", "'", '"', "\\", "\t", "%"])


@st.composite
def refused_text(draw, max_size: int = 40) -> str:
    """Text our validators must refuse: it holds a character no name, host or version has."""
    head = draw(st.text(max_size=max_size))
    bad = draw(BAD_CHARS)
    tail = draw(st.text(max_size=max_size))
    return draw(st.sampled_from([head + bad + tail, bad + "x" * 20_000]))


def check_serving(d, unit, creds, ca_pem: str | None, held) -> None:
    """The client before, a new plain client and (with TLS) a new verify-full client query."""
    assert held.execute("SELECT 1").fetchone() == (1,)
    assert d.query(unit, creds, "SELECT current_database()") == ("appdb",)
    if ca_pem is not None:
        assert tls_query(unit, creds, ca_pem) == ("appdb",)


def check_meant(d, unit) -> None:
    """What PgBouncer reads: only our [databases], at the real server, with auth settings."""
    ini = parse_ini((unit.mount_dir / "pgbouncer_0.ini").read_text())
    server = d.postgresql.server
    assert set(ini["databases"]) <= {"pgb_authdb", "appdb"}, ini["databases"]
    for entry in ini["databases"].values():
        assert f"host={server.host} port={server.port} " in entry + " ", entry
    for key in ("auth_user", "auth_query", "auth_dbname", "auth_file"):
        assert key in ini["pgbouncer"], key


def check_refused_or_served(unit, before, mark, words: tuple[str, ...]) -> None:
    status = unit.state.unit_status
    if status.name == "active":
        return
    assert status.name in ("blocked", "waiting"), status
    assert any(w in status.message for w in words), status
    assert served_files(unit) == before
    assert signals_since(unit, mark) == []


# -- the PostgreSQL charm's databag and secret-user ---------------------------------------------
BACKEND_FIELDS = ("endpoints", "read-only-endpoints", "username", "database", "version")


def test_backend_databag_fuzz(make_deployment):
    d, creds = serving(make_deployment)
    unit = d.app.leader
    rid = d.backend_id
    assert rid is not None
    good = d.provider_data()
    held = connect_at(unit.address(), creds, autocommit=True)

    @FUZZ
    @given(field=st.sampled_from((*BACKEND_FIELDS, "password", "secret-user")), data=st.data())
    @example(field="endpoints", data=None)
    def one(field, data):
        ran.append(field)
        if data is None:
            value = "10.0.0.1\nauth_type = trust"
        elif field == "password":
            value = data.draw(st.sampled_from(["p" * 1025, "pass\x00word"]))
        else:
            value = data.draw(refused_text())
        before, mark = served_files(unit), history_mark(unit)
        d.app.set_remote(rid, remote_app_data={**good, field: value})
        unit.relation_changed(rid, remote_unit=0)
        status = unit.state.unit_status
        assert status.name == "blocked", (field, status)
        assert "backend-database" in status.message and field.split("-")[-1] in status.message
        assert served_files(unit) == before
        assert signals_since(unit, mark) == []
        check_serving(d, unit, creds, None, held)
        d.app.set_remote(rid, remote_app_data=good)
        unit.relation_changed(rid, remote_unit=0)
        assert unit.state.unit_status.name == "active", unit.state.unit_status
        check_meant(d, unit)

    ran: list[str] = []
    try:
        one()
    finally:
        held.close()
    assert len(ran) >= MAX_EXAMPLES, len(ran)  # the bound was reached: the fuzzer ran


# -- the certificates provider -----------------------------------------------------------------
CERT_KINDS = (
    "garbage",
    "truncated",
    "huge",
    "another key",
    "expired",
    "not yet valid",
    "other names",
    "another CA",
    "CA certificate",
    "chain through an intermediate",
    "not json",
)


def test_certificates_fuzz(make_deployment):
    d, creds = serving(make_deployment)
    unit = d.app.leader
    provider = CertificatesProvider(d)
    provider.relate()
    provider.sign_all()
    held = connect_at(unit.address(), creds, autocommit=True)
    assert "client_tls_sslmode" in (unit.mount_dir / "pgbouncer_0.ini").read_text()

    @FUZZ
    @given(kind=st.sampled_from(CERT_KINDS), noise=st.text(max_size=60), cut=st.integers(30, 400))
    @example(kind="garbage", noise="", cut=30)
    @example(kind="chain through an intermediate", noise="", cut=30)
    def one(kind, noise, cut):
        ran.append(kind)
        now = datetime.datetime.now(datetime.UTC)
        good = provider.entry(unit)
        entries: list | str
        if kind == "garbage":
            entries = [{**good, "certificate": noise or "-----BEGIN CERTIFICATE-----\n"}]
        elif kind == "truncated":
            entries = [{**good, "certificate": good["certificate"][:cut]}]
        elif kind == "huge":
            junk = "A" * (100_000 + cut)
            entries = [
                {
                    **good,
                    "certificate": f"-----BEGIN CERTIFICATE-----\n{junk}\n-----END CERTIFICATE-----\n",
                }
            ]
        elif kind == "another key":
            entries = [{**good, "certificate": cert_pem(provider.ca.leaf("x").cert)}]
        elif kind == "expired":
            bad = provider.sign(unit, not_before=now - 3 * DAY, not_after=now - DAY)
            entries = [{**good, "certificate": cert_pem(bad)}]
        elif kind == "not yet valid":
            entries = [
                {**good, "certificate": cert_pem(provider.sign(unit, not_before=now + DAY))}
            ]
        elif kind == "other names":
            bad = provider.sign(unit, dns=("evil.example",), ips=())
            entries = [{**good, "certificate": cert_pem(bad)}]
        elif kind == "another CA":
            bad = provider.sign(unit, ca=make_ca("rogue"))
            entries = [{**good, "certificate": cert_pem(bad)}]
        elif kind == "CA certificate":
            entries = [{**good, "certificate": cert_pem(provider.sign(unit, is_ca=True))}]
        elif kind == "chain through an intermediate":
            middle = intermediate(provider.ca)
            leaf = cert_pem(provider.sign(unit, ca=middle))
            entries = [{**good, "certificate": leaf, "chain": [leaf, middle.pem, provider.ca.pem]}]
        else:
            entries = "[{" + noise
        before, mark = served_files(unit), history_mark(unit)
        serial = None if kind.startswith("chain") else _serial(unit)
        provider.publish(entries)
        check_refused_or_served(unit, before, mark, ("certificate",))
        if unit.state.unit_status.name != "active":
            assert unit.state.unit_status.message.startswith("serving an older certificate")
            assert _serial(unit) == serial
        else:
            assert kind.startswith("chain"), (kind, "accepted")
        check_serving(d, unit, creds, provider.ca.pem, held)
        check_meant(d, unit)
        provider.publish([provider.entry(unit)])
        assert unit.state.unit_status.name == "active", unit.state.unit_status

    ran: list[str] = []
    try:
        one()
    finally:
        held.close()
    assert len(ran) >= MAX_EXAMPLES, len(ran)  # the bound was reached: the fuzzer ran


def _serial(unit) -> int:
    from harness.servers.tls import peer_certificate_serial

    return peer_certificate_serial(*unit.address())


# -- the PostgreSQL charm's tls / tls-ca ---------------------------------------------------------
def test_backend_tls_fuzz(make_deployment):
    d, creds = serving(make_deployment)
    unit = d.app.leader
    rid = d.backend_id
    assert rid is not None
    good = d.provider_data()
    held = connect_at(unit.address(), creds, autocommit=True)
    leaf = make_ca("pg CA").leaf("pg")

    @FUZZ
    @given(
        flag=st.one_of(st.sampled_from(["True", "yes", "1", "TRUE ", "\x00"]), refused_text(8)),
        ca=st.one_of(
            st.sampled_from(["", "garbage", leaf.cert_pem, make_ca("x").pem[:120], "A" * 70_000]),
            st.text(max_size=80),
        ),
    )
    @example(flag="True", ca="garbage")
    def one(flag, ca):
        ran.append(flag)
        before, mark = served_files(unit), history_mark(unit)
        d.app.set_remote(rid, remote_app_data={**good, "tls": flag, "tls-ca": ca})
        unit.relation_changed(rid, remote_unit=0)
        status = unit.state.unit_status
        assert status.name in ("blocked", "waiting"), (flag, status)
        assert "backend-database tls" in status.message, status
        assert served_files(unit) == before
        assert signals_since(unit, mark) == []
        check_serving(d, unit, creds, None, held)
        d.app.set_remote(rid, remote_app_data=good)
        unit.relation_changed(rid, remote_unit=0)
        assert unit.state.unit_status.name == "active", unit.state.unit_status

    ran: list[str] = []
    try:
        one()
    finally:
        held.close()
    assert len(ran) >= MAX_EXAMPLES, len(ran)  # the bound was reached: the fuzzer ran
