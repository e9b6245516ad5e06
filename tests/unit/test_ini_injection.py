"""Provider values written into pgbouncer.ini: checked against the ini grammar, then read back.

Issue 15's defect 4: an IPv6 scope id carrying a line break passed ``validate_host`` (Python's
``ipaddress`` accepts any text after ``%``) and the renderer wrote an extra ``[databases]`` key
with a forced user. Now a host holds only ``[A-Za-z0-9.:-]``, and every rendered file is parsed
back and compared with what was meant before anything is written.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ops import testing

import pgbouncer.config as config_module
from pgbouncer.config import (
    AUTH_DATABASE_KEY,
    AuthSettings,
    DatabaseTarget,
    PgBouncerConfig,
    render_files,
)
from pgbouncer.ini import RenderError, parse_ini
from state.backend import InvalidBackendDataError, parse_endpoints
from state.names import InvalidNameError, validate_client_database_name, validate_host
from tests.unit.conftest import (
    SEED_PROVIDER,
    auth_secret,
    backend_relation,
    make_container,
    peer_relation,
)

STOLEN = "[fe80::1%x\nstolen = host=10.66.66.66 port=5432 dbname=postgres user=relation_18]:5432"
METACHARACTERS = "\n\r\x00\t\x0b\x0c =;'\"#[]%\\"


def cfg_with_host(host: str) -> PgBouncerConfig:
    return PgBouncerConfig(
        listen_port=6432,
        pool_mode="session",
        max_db_connections=10,
        max_prepared_statements=100,
        processes=1,
        databases=(
            DatabaseTarget(AUTH_DATABASE_KEY, host, 5432, "pgbouncer"),
            DatabaseTarget("app", host, 5432, "app"),
        ),
        auth=AuthSettings(
            "pgbouncer_auth_relation_18", 'SELECT usename, passwd FROM "s".get_auth($1)'
        ),
    )


@pytest.mark.parametrize("field", ["endpoints", "read-only-endpoints"])
def test_the_reported_injection_is_refused_on_a_follower(ctx, dirs, field):
    """A follower renders from relation-changed without connecting anywhere: refused there."""
    secret = auth_secret()
    rel = backend_relation(remote={**SEED_PROVIDER, field: STOLEN})
    state = testing.State(
        leader=False,
        relations={rel, peer_relation(secret)},
        containers={make_container(dirs)},
        secrets={secret},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)

    assert out.unit_status.name == "blocked"
    assert f"invalid backend-database {field}" in out.unit_status.message
    text = "".join(p.read_text() for p in dirs.pgb.glob("*.ini"))
    assert "stolen" not in text and "10.66.66.66" not in text


@given(
    prefix=st.sampled_from(["fe80::1", "10.0.0.1", "db.example", "::1"]),
    bad=st.sampled_from(list(METACHARACTERS) + [chr(c) for c in range(0x20)] + ["\u2028", "é"]),
    tail=st.text(alphabet=string.ascii_letters + "\n =", max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_no_host_with_a_metacharacter_or_control_character_passes(prefix, bad, tail):
    host = prefix + bad + tail
    with pytest.raises(InvalidNameError):
        validate_host(host)
    with pytest.raises(InvalidBackendDataError):
        parse_endpoints(f"[{host}]:5432" if ":" in prefix else f"{host}:5432")


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(
            r"[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,18}[a-z0-9])?){0,3}",
            fullmatch=True,
        ),
    ),
    port=st.integers(1, 65535),
)
@settings(max_examples=200, deadline=None)
def test_every_valid_endpoint_round_trips_through_the_rendered_file(host, port):
    (endpoint,) = parse_endpoints(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    cfg = cfg_with_host(endpoint.host)
    text = render_files(cfg, "/srv/pgb")["/srv/pgb/pgbouncer_0.ini"]
    databases = parse_ini(text)["databases"]
    assert set(databases) == {AUTH_DATABASE_KEY, "app"}
    assert databases["app"] == f"host={endpoint.host} port=5432 dbname=app"


def test_the_round_trip_check_catches_what_validation_missed(monkeypatch):
    """Mutation: turn host validation off; the read-back still refuses the injected file."""
    monkeypatch.setattr(config_module, "validate_host", lambda value, field="": value)
    with pytest.raises(RenderError, match="read back"):
        render_files(cfg_with_host("fe80::1%x\nstolen = host=10.66.66.66 dbname=postgres"))
    with pytest.raises(RenderError, match="read back"):
        render_files(cfg_with_host("10.0.0.1 user=postgres"))


def test_a_name_whose_readonly_twin_cannot_fit_is_refused_when_requested():
    assert validate_client_database_name("a" * 54) == "a" * 54
    with pytest.raises(InvalidNameError, match="_readonly twin"):
        validate_client_database_name("a" * 55)
