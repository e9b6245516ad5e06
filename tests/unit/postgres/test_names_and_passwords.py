"""Pure parts of src/postgres: generated names, passwords, SCRAM verifier check, SQL loading."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postgres.auth import auth_query_for, auth_username_for, definer_role_for, mark_for
from postgres.clients import ForbiddenRoleError, check_extra_roles, client_mark
from postgres.connection import BackendCredentials
from postgres.passwords import PASSWORD_ALPHABET, generate_password, scram_verifier_matches
from postgres.queries import SQL_DIR, _statements, query
from state.names import InvalidNameError


def scram_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """RFC 5802/7677 verifier in PostgreSQL's text form, built independently for the test."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def test_auth_username_follows_the_spec():
    assert auth_username_for("relation-18") == "pgbouncer_auth_relation_18"
    assert auth_username_for("relation_id_7") == "pgbouncer_auth_relation_id_7"
    for bad in ("", "Relation_18", "a b", "x" * 49, 'r"; drop'):
        with pytest.raises(InvalidNameError):
            auth_username_for(bad)
    assert len(auth_username_for("x" * 48)) == 63


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=48))
def test_definer_names_are_valid_unique_and_short(user):
    auth = auth_username_for(user)
    definer = definer_role_for(auth)
    assert definer != auth and len(definer.encode()) <= 63
    assert definer_role_for(auth) == definer  # deterministic
    assert definer.endswith("_definer")


def test_auth_query_is_quoted_and_pure():
    expected = 'SELECT usename, passwd FROM "pgbouncer_auth_relation_18".get_auth($1)'
    assert auth_query_for("pgbouncer_auth_relation_18") == expected
    with pytest.raises(InvalidNameError):
        auth_query_for('x".get_auth($1); --')


def test_long_definer_names_differ():
    a, b = auth_username_for("a" * 47 + "1"), auth_username_for("a" * 47 + "2")
    assert definer_role_for(a) != definer_role_for(b)


def test_marks():
    tag = "0f0e8b8a-6c1d-4c58-9a1e-2b7a9e0c1d2e/pgbouncer-k8s"
    assert mark_for(tag) == f"pgbouncer-k8s owner={tag} kind=auth"
    assert client_mark(tag, 4) == f"pgbouncer-k8s owner={tag} kind=client relation=4"
    for bad in ("", "no-slash", "uuid/App", "uuid/app kind=auth", "a/b\nc"):
        with pytest.raises(InvalidNameError):
            mark_for(bad)
    with pytest.raises(InvalidNameError):
        client_mark(tag, -1)


def test_generated_passwords():
    seen = {generate_password() for _ in range(50)}
    assert len(seen) == 50
    for pw in seen:
        assert len(pw) >= 32 and set(pw) <= set(PASSWORD_ALPHABET)
    with pytest.raises(ValueError, match="32"):
        generate_password(31)


def test_scram_verifier_check():
    salt = os.urandom(16)
    verifier = scram_verifier("correct horse", salt)
    assert scram_verifier_matches(verifier, "correct horse")
    assert not scram_verifier_matches(verifier, "correct hors")
    assert not scram_verifier_matches(None, "x")
    assert not scram_verifier_matches("md5" + "0" * 32, "x")
    assert not scram_verifier_matches(
        verifier.replace("SCRAM-SHA-256", "SCRAM-SHA-1"), "correct horse"
    )
    assert not scram_verifier_matches("SCRAM-SHA-256$99999999:AA==$AA==:AA==", "x")
    assert not scram_verifier_matches("SCRAM-SHA-256$garbage", "x")
    # Non-ASCII passwords are always set again rather than compared.
    assert not scram_verifier_matches(scram_verifier("pässwort", salt), "pässwort")


def test_extra_roles_allow_list():
    assert check_extra_roles([]) == frozenset()
    assert check_extra_roles(["createdb", " CREATEDB "]) == frozenset({"CREATEDB"})
    with pytest.raises(ForbiddenRoleError) as info:
        check_extra_roles(["createdb", "superuser", "pg_monitor", "bad name!"])
    assert info.value.roles == ("SUPERUSER", "BAD NAME!", "PG_MONITOR")
    assert "SUPERUSER" in str(info.value) and "<unprintable>" in str(info.value)
    with pytest.raises(TypeError):
        check_extra_roles("CREATEDB")


def test_every_sql_file_parses_and_has_no_stray_formatting():
    for path in sorted(SQL_DIR.glob("*.sql")):
        statements = _statements(path.name)
        assert statements, path
        for name, text in statements.items():
            assert not text.endswith(";"), name
            assert "--" not in text.splitlines()[0], name
    assert "SECURITY DEFINER" in query("auth.sql", "create_function").as_string()
    with pytest.raises(KeyError):
        query("auth.sql", "nope")


def test_credentials_hide_the_password_and_validate():
    creds = BackendCredentials("10.0.0.1", 5432, "relation_18", "s3cret-pw", "pgbouncer")
    assert "s3cret-pw" not in repr(creds) and "s3cret-pw" not in str(creds)
    assert creds.with_dbname("other").dbname == "other"
    assert creds.with_dbname("other").password == "s3cret-pw"
    with pytest.raises(InvalidNameError):
        BackendCredentials("bad host!", 5432, "relation_18", "pw", "pgbouncer")
    with pytest.raises(InvalidNameError):
        BackendCredentials("h", 70000, "relation_18", "pw", "pgbouncer")
    with pytest.raises(ValueError, match="password"):
        BackendCredentials("h", 5432, "relation_18", "", "pgbouncer")


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,40}", fullmatch=True))
def test_the_pure_auth_query_equals_what_psycopg_sql_composes(role):
    """The auth_query is rendered without a driver on every unit; it must be the same text."""
    from psycopg import sql

    from postgres.queries import query
    from state.names import auth_query_for as pure

    composed = query("auth.sql", "auth_query").format(schema=sql.Identifier(role)).as_string()
    assert pure(role) == composed
