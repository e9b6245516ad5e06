"""The rotation's pure part: generation names, the databag value, what it waits for."""

import pytest

from state.names import InvalidNameError
from state.peers import AuthData
from state.rotation import Rotation, alternate_auth_user, generations, next_generation

A = "pgbouncer_auth_relation_3"


def test_generations_take_turns_and_stay_apart_from_the_definer():
    b = alternate_auth_user(A)
    assert generations(A) == (A, b)
    assert next_generation(A, A) == b
    assert next_generation(A, b) == A
    assert b not in (A, f"{A}_definer")


def test_a_long_name_is_shortened_to_a_unique_identifier():
    long_a = "pgbouncer_auth_" + "x" * 48
    other = "pgbouncer_auth_" + "x" * 47 + "y"
    assert len(long_a) == 63
    b = alternate_auth_user(long_a)
    assert len(b.encode()) <= 63 and b.endswith("_g2")
    assert b != alternate_auth_user(other)
    with pytest.raises(InvalidNameError):
        alternate_auth_user("Not-Plain")


def test_databag_round_trip_and_damaged_values():
    rotation = Rotation(source=A, target=alternate_auth_user(A), started=12.5)
    assert Rotation.from_databag(rotation.to_databag()) == rotation
    for damaged in (None, "", "{", "[]", '{"from": "a"}', '{"from": "a", "to": "a"}',
                    '{"from": "a;b", "to": "c"}'):  # fmt: skip
        assert Rotation.from_databag(damaged) is None


def test_it_waits_for_every_unit_not_reporting_the_target():
    rotation = Rotation(source=A, target=alternate_auth_user(A), started=0)
    reports = {"app/0": rotation.target, "app/1": A, "app/2": None}
    assert rotation.waiting_for(reports) == ["app/1", "app/2"]
    assert rotation.status_note(reports) == "rotating credentials: waiting for app/1, app/2"
    done = dict.fromkeys(reports, rotation.target)
    assert rotation.waiting_for(done) == []


def test_auth_data_keeps_the_lookup_schema_of_the_second_generation():
    b = AuthData(alternate_auth_user(A), "p" * 40, schema=A)
    assert b.lookup_schema == A
    assert AuthData.from_secret(b.to_secret()) == b
    first = AuthData(A, "p" * 40)
    assert first.lookup_schema == A and "schema" not in first.to_secret()
