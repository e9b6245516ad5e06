"""BackendDatabase and endpoint parsing, from plain dicts as the provider writes them."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from state.backend import (
    BackendDatabase,
    Endpoint,
    InvalidBackendDataError,
    diff_tracked,
    parse_endpoints,
    tracked_data,
)

SEED = {
    "endpoints": "postgresql-k8s-primary.dev.svc.cluster.local:5432",
    "read-only-endpoints": "postgresql-k8s-replicas.dev.svc.cluster.local:5432",
    "password": "18cqKCp19xOPBh",
    "username": "relation_18",
    "version": "12.9",
}


def test_seed_databag_builds_a_backend():
    backend = BackendDatabase.from_databag(SEED, None, "pgbouncer")
    assert backend is not None
    assert backend.primary == Endpoint("postgresql-k8s-primary.dev.svc.cluster.local", 5432)
    assert backend.read_only_endpoints == (
        Endpoint("postgresql-k8s-replicas.dev.svc.cluster.local", 5432),
    )
    assert (backend.username, backend.database, backend.version) == (
        "relation_18",
        "pgbouncer",
        "12.9",
    )
    assert "18cqKCp19xOPBh" not in repr(backend)


def test_secret_credentials_win_over_plain_fields():
    data = {"endpoints": "10.0.0.1:5432", "secret-user": "secret:abc", "database": "pgb"}
    backend = BackendDatabase.from_databag(
        data, {"username": "relation_2", "password": "x" * 40}, "pgbouncer"
    )
    assert backend is not None
    assert (backend.username, backend.database) == ("relation_2", "pgb")


@pytest.mark.parametrize("missing", ["endpoints", "username", "password"])
def test_incomplete_databag_is_none(missing):
    data = {k: v for k, v in SEED.items() if k != missing}
    assert BackendDatabase.from_databag(data, None, "pgbouncer") is None


def test_empty_databag_is_none():
    assert BackendDatabase.from_databag({}, None, "pgbouncer") is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**SEED, "endpoints": "host:notaport"}, "endpoints"),
        ({**SEED, "endpoints": "bad host:5432"}, "endpoints"),
        ({**SEED, "endpoints": "h;drop:5432"}, "endpoints"),
        ({**SEED, "read-only-endpoints": "x:99999"}, "read-only-endpoints"),
        ({**SEED, "username": "relation 18; DROP ROLE x"}, "username"),
        ({**SEED, "username": "r" * 64}, "username"),
        ({**SEED, "password": "a\x00b"}, "password"),
        ({**SEED, "database": "db name"}, "database"),
        ({**SEED, "version": "12.9\nfoo"}, "version"),
    ],
)
def test_hostile_values_are_refused_naming_the_field(data, field):
    with pytest.raises(InvalidBackendDataError) as err:
        BackendDatabase.from_databag(data, None, "pgbouncer")
    assert err.value.field == field


def test_endpoint_forms():
    assert parse_endpoints("a:1,b,[::1]:6000, a:1") == (
        Endpoint("a", 1),
        Endpoint("b", 5432),
        Endpoint("::1", 6000),
    )
    assert str(Endpoint("::1", 6000)) == "[::1]:6000"
    assert parse_endpoints("") == ()
    with pytest.raises(InvalidBackendDataError):
        parse_endpoints("::1:5432")


def test_tracked_data_leaves_credentials_out_and_diffs():
    stored = tracked_data(SEED)
    assert "18cqKCp19xOPBh" not in stored and "relation_18" not in stored
    assert json.loads(stored)["endpoints"] == SEED["endpoints"]
    assert diff_tracked(stored, SEED) == set()
    moved = {**SEED, "endpoints": "other:5432"}
    assert diff_tracked(stored, moved) == {"endpoints"}
    assert "endpoints" in diff_tracked(None, SEED)
    assert "endpoints" in diff_tracked("not json", SEED)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "endpoints",
                "read-only-endpoints",
                "username",
                "password",
                "version",
                "database",
                "secret-user",
            ]
        ),
        st.text(max_size=80),
    )
)
def test_any_databag_gives_a_backend_none_or_a_named_refusal(data):
    try:
        backend = BackendDatabase.from_databag(data, None, "pgbouncer")
    except InvalidBackendDataError as err:
        assert err.field in {
            "endpoints",
            "read-only-endpoints",
            "username",
            "password",
            "version",
            "database",
        }
        return
    if backend is not None:
        for endpoint in backend.endpoints + backend.read_only_endpoints:
            assert not any(ch in endpoint.host for ch in " \t\n=;'\"")
        assert backend.username.replace("_", "a").replace("-", "a").isalnum()
