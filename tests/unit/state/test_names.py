"""Name validation: what may reach SQL or pgbouncer.ini."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.names import (
    InvalidNameError,
    validate_database_name,
    validate_host,
    validate_port,
    validate_role_name,
)

UNSAFE = [" ", "\t", "\n", "=", ";", "'", '"', "\\", "\x00", "#", "%"]


@pytest.mark.parametrize(
    "bad", ["", "a b", "x=y", "db;", "q'uote", 'd"q', "new\nline", "ä", "1db", "a" * 64]
)
def test_database_names_refused(bad):
    with pytest.raises(InvalidNameError):
        validate_database_name(bad)


@pytest.mark.parametrize("reserved", ["pgbouncer", "PgBouncer", "pgb_authdb", "app_readonly"])
def test_reserved_database_keys_refused(reserved):
    with pytest.raises(InvalidNameError, match="reserved"):
        validate_database_name(reserved)


def test_error_never_echoes_the_value():
    with pytest.raises(InvalidNameError) as err:
        validate_role_name("s3cret value")
    assert "s3cret" not in str(err.value)


@given(st.text(max_size=70))
def test_accepted_database_names_are_safe(value):
    try:
        name = validate_database_name(value)
    except InvalidNameError:
        return
    assert not any(ch in name for ch in UNSAFE)
    assert len(name.encode()) <= 63


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "::1", "pg-0.pg-endpoints.model.svc.cluster.local", "localhost"]
)
def test_hosts_accepted(host):
    assert validate_host(host) == host


@pytest.mark.parametrize("host", ["", "a b", "-bad.example", "x;y", "a=b", "h\n"])
def test_hosts_refused(host):
    with pytest.raises(InvalidNameError):
        validate_host(host)


def test_ports():
    assert validate_port("5432") == 5432
    for bad in ("0", "65536", "-1", "5a", True, None, "٣"):
        with pytest.raises(InvalidNameError):
            validate_port(bad)
