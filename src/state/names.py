"""Validation of every name that reaches SQL or ``pgbouncer.ini``.

Databag values come from other applications. Before one is used as a database name, a role name
or a host, it must pass one of these checks; a failure raises :class:`InvalidNameError` naming
the field, and nothing is written.
"""

from __future__ import annotations

import ipaddress
import re

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated by the server."""

RESERVED_DATABASE_KEYS = frozenset({"pgbouncer", "pgb_authdb"})
"""``pgbouncer`` is PgBouncer's admin console; ``pgb_authdb`` is our auth database key."""

# Letters, digits, underscore and dash; first character a letter or underscore. Wide enough for
# every name the PostgreSQL charms generate (relation_18, myapp-db) and narrow enough that it
# needs no quoting in pgbouncer.ini and cannot carry whitespace, '=', ';', quotes or newlines.
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
# Role names we create or read: the same, as the charms name relation users.
_ROLE_NAME = _DB_NAME
# A plain lower-case identifier (no quoting needed anywhere): what we generate ourselves.
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Every character a host may hold once written into pgbouncer.ini or a libpq conninfo: DNS
# names, dotted IPv4, IPv6 without scope id. Checked before any parser is asked (Python's
# ipaddress accepts any text after an IPv6 '%', line breaks included).
_HOST_CHARS = re.compile(r"[A-Za-z0-9.:-]+")
READONLY_KEY_SUFFIX = "_readonly"
MAX_CLIENT_DATABASE_BYTES = MAX_IDENTIFIER_BYTES - len(READONLY_KEY_SUFFIX)
"""A client database name must leave room for its ``<name>_readonly`` key (54 bytes)."""


class InvalidNameError(ValueError):
    """A value that may not be used as a name; ``field`` says which input it came from."""

    def __init__(self, field: str, value: object, reason: str):
        self.field = field
        self.reason = reason
        # Never echo the value itself: it may be long, hostile or a secret.
        super().__init__(f"invalid {field}: {reason}")


def _check(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidNameError(field, value, "empty or not a string")
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidNameError(field, value, f"longer than {MAX_IDENTIFIER_BYTES} bytes")
    if not pattern.fullmatch(value):
        raise InvalidNameError(field, value, what)
    return value


def validate_database_name(value: object, field: str = "database") -> str:
    """A database name usable as a ``[databases]`` key and a PostgreSQL identifier."""
    name = _check(
        field,
        value,
        _DB_NAME,
        "only letters, digits, '_' and '-' allowed, starting with a letter or '_'",
    )
    if name.lower() in RESERVED_DATABASE_KEYS or name.lower().endswith(READONLY_KEY_SUFFIX):
        raise InvalidNameError(field, value, "reserved name")
    return name


def validate_client_database_name(value: object, field: str = "database") -> str:
    """A database a client may ask for: a valid key whose ``_readonly`` twin is valid too.

    Refused when requested, not later: a name that fits but whose twin would not would make
    every later render fail as soon as the backend has replicas.
    """
    name = validate_database_name(value, field)
    if len(name.encode()) > MAX_CLIENT_DATABASE_BYTES:
        raise InvalidNameError(
            field,
            value,
            f"longer than {MAX_CLIENT_DATABASE_BYTES} bytes (its {READONLY_KEY_SUFFIX} twin "
            f"must fit {MAX_IDENTIFIER_BYTES})",
        )
    return name


def validate_target_dbname(value: object, field: str = "database") -> str:
    """A database name as a connection target (``dbname=``): same rules, no reserved keys."""
    return _check(
        field,
        value,
        _DB_NAME,
        "only letters, digits, '_' and '-' allowed, starting with a letter or '_'",
    )


def validate_role_name(value: object, field: str = "username") -> str:
    """A role name as the PostgreSQL charms generate them."""
    return _check(
        field,
        value,
        _ROLE_NAME,
        "only letters, digits, '_' and '-' allowed, starting with a letter or '_'",
    )


def validate_plain_identifier(value: object, field: str) -> str:
    """A lower-case identifier that needs no quoting anywhere (names we generate)."""
    return _check(field, value, _PLAIN_IDENTIFIER, "not a plain lower-case identifier")


def validate_host(value: object, field: str = "endpoints") -> str:
    """A DNS name or an IP address (IPv6 without brackets)."""
    if not isinstance(value, str) or not value:
        raise InvalidNameError(field, value, "empty host")
    if len(value) > 253:
        raise InvalidNameError(field, value, "host longer than 253 characters")
    if not _HOST_CHARS.fullmatch(value):
        raise InvalidNameError(
            field, value, "a host may hold only letters, digits, '.', ':' and '-'"
        )
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise InvalidNameError(field, value, "not a host name or IP address")
    return value


def validate_port(value: object, field: str = "endpoints") -> int:
    """A TCP port number, 1 to 65535, from an int or a decimal string."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidNameError(field, value, "port must be an integer from 1 to 65535")
    return value


AUTH_ROLE_PREFIX = "pgbouncer_auth_"


def auth_username_for(backend_user: str) -> str:
    """The auth role name for a relation user: ``pgbouncer_auth_<user>``, ``-`` → ``_``.

    Raises:
        InvalidNameError: the result is not a plain lower-case identifier of at most 63 bytes.
    """
    if not isinstance(backend_user, str) or not backend_user:
        raise InvalidNameError("username", backend_user, "empty or not a string")
    return validate_plain_identifier(
        AUTH_ROLE_PREFIX + backend_user.replace("-", "_"), "auth username"
    )


def auth_query_for(auth_user: str) -> str:
    """PgBouncer's ``auth_query``: ``SELECT usename, passwd FROM "<role>".get_auth($1)``.

    Pure, so that every unit renders it without a database driver. A plain identifier (checked
    here) needs no escaping inside double quotes: the text equals what ``psycopg.sql`` composes.

    Raises:
        InvalidNameError: ``auth_user`` is not a plain identifier.
    """
    validate_plain_identifier(auth_user, "auth username")
    return f'SELECT usename, passwd FROM "{auth_user}".get_auth($1)'  # noqa: S608 (checked plain identifier)
