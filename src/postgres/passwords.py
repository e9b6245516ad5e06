"""Passwords we generate and set on roles we own.

A role's password is sent to the server as a SCRAM-SHA-256 verifier computed by libpq itself
(``PQencryptPasswordConn``, what psql's password command uses), never as plain text and never as
an md5 hash: the server stores SCRAM, and the plain password reaches neither the server log,
``pg_stat_activity`` nor ``pg_stat_statements``. The statement that carries the verifier runs
with statement logging switched off for its transaction.

Setting a password is change-gated: when the stored verifier already matches the password
(checked here with the verifier's own salt and iteration count), nothing is written, so running
the set-up twice leaves the catalog byte-identical.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import string

import psycopg
from psycopg import sql

from postgres.connection import BackendSQLError
from postgres.queries import query

PASSWORD_LENGTH = 48
# Letters and digits only: safe unquoted in a libpq conninfo, in a URI, in PgBouncer's auth
# file and in a Juju secret. 48 of them carry about 285 bits.
PASSWORD_ALPHABET = string.ascii_letters + string.digits

_MAX_ITERATIONS = 1_000_000


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A random password from :data:`PASSWORD_ALPHABET`, ``secrets``-based.

    Args:
        length: number of characters; at least 32.

    Raises:
        ValueError: length below 32.
    """
    if length < 32:
        raise ValueError("a password needs at least 32 characters")
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def scram_verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether ``verifier`` (``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``) is ``password``'s.

    Passwords that are not printable ASCII are never reported as matching (SASLprep would
    apply to them and is not implemented here): they are simply set again.

    Args:
        verifier: ``pg_authid.rolpassword`` of the role, or None.
        password: the plain password.
    """
    if not verifier or not password.isascii() or not password.isprintable():
        return False
    try:
        method, iterations_salt, keys = verifier.split("$")
        iterations_text, salt_b64 = iterations_salt.split(":")
        stored_b64, server_b64 = keys.split(":")
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_b64, validate=True)
        stored_key = base64.b64decode(stored_b64, validate=True)
        server_key = base64.b64decode(server_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if method != "SCRAM-SHA-256" or not 1 <= iterations <= _MAX_ITERATIONS:
        return False
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    expected_stored = hashlib.sha256(client_key).digest()
    expected_server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hmac.compare_digest(expected_stored, stored_key) and hmac.compare_digest(
        expected_server, server_key
    )


def set_password(conn: psycopg.Connection, role: str, password: str, current: str | None) -> bool:
    """Give ``role`` the SCRAM verifier of ``password`` unless ``current`` already matches.

    Must run inside a transaction (``conn.transaction()``): the logging settings are local to it.

    Args:
        conn: a connection as a superuser, in a transaction.
        role: the role name.
        password: the plain password.
        current: the role's stored ``rolpassword``.

    Returns:
        Whether the password was changed.

    Raises:
        BackendSQLError: the server refused; the message holds neither password nor verifier.
    """
    if scram_verifier_matches(current, password):
        return False
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    try:
        conn.execute(query("common.sql", "quiet_transaction"))
        conn.execute(
            query("common.sql", "set_password").format(
                role=sql.Identifier(role), verifier=sql.Literal(verifier.decode("ascii"))
            )
        )
    except psycopg.Error as exc:
        raise BackendSQLError(
            f"setting the password of role {role!r} failed", sqlstate=exc.sqlstate
        ) from None
    return True
