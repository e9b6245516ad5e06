"""Peer application data: round trip, and damaged values dropped rather than trusted."""

from state.peers import AuthData, PeerAppData


def test_round_trip():
    data = PeerAppData(auth_secret_id="secret:x", auth_dbname="pgbouncer", databases={"app": 4})
    parsed = PeerAppData.from_databag(
        {
            "auth_secret_id": "secret:x",
            "auth_dbname": "pgbouncer",
            "databases": data.databases_json(),
        }
    )
    assert parsed == data


def test_empty_databag_parses_to_defaults():
    assert PeerAppData.from_databag({}) == PeerAppData()


def test_damaged_entries_are_dropped():
    parsed = PeerAppData.from_databag(
        {
            "databases": '{"ok": {"relation_id": 3}, "bad name": {"relation_id": 4}, "x": 5, "y": {"relation_id": true}}',
            "auth_dbname": "a;b",
        }
    )
    assert parsed.databases == {"ok": 3}
    assert parsed.auth_dbname is None
    assert PeerAppData.from_databag({"databases": "[not json"}).databases == {}


def test_auth_data_secret_round_trip_and_repr():
    auth = AuthData("pgbouncer_auth_relation_3", "p" * 40)
    assert AuthData.from_secret(auth.to_secret()) == auth
    assert "p" * 40 not in repr(auth)
    assert AuthData.from_secret({"username": "u"}) is None
