"""How to reach the backend: a value object that imports neither psycopg nor cryptography.

Separate from :mod:`postgres.connection` so that a hook that builds credentials but opens no
connection (a leader's hook with nothing to do on the backend) does not load psycopg
(issue 23, "Hooks that pay for what they do"). :mod:`postgres.connection` re-exports it.
"""

from __future__ import annotations

import dataclasses

from state.names import validate_host, validate_port, validate_role_name


@dataclasses.dataclass(frozen=True)
class BackendCredentials:
    """How to reach the backend as the relation user.

    Attributes:
        host: host name or IP address of the primary.
        port: TCP port.
        user: the relation user's role name.
        password: its password (never shown by ``repr``).
        dbname: the database to connect to by default.
        sslrootcert: the backend's CA in a file (TLS, issue 12): when set, connections are
            ``verify-full`` against it (``state.tls.libpq_tls_params``); None keeps libpq's
            default (``prefer``, unverified), for a backend without TLS.
    """

    host: str
    port: int
    user: str
    password: str = dataclasses.field(repr=False)
    dbname: str
    sslrootcert: str | None = None

    def __post_init__(self) -> None:
        validate_host(self.host, "endpoints")
        validate_port(self.port, "endpoints")
        validate_role_name(self.user, "username")
        # Role and database names follow the same pattern; the reserved-key check of
        # validate_database_name does not apply to a name we only connect to.
        validate_role_name(self.dbname, "database")
        if not isinstance(self.password, str) or not self.password:
            raise ValueError("invalid password: empty or not a string")

    def with_dbname(self, dbname: str) -> BackendCredentials:
        """The same credentials for another database."""
        return dataclasses.replace(self, dbname=dbname)

    def as_user(self, user: str, password: str) -> BackendCredentials:
        """The same server, database and TLS verification, logged in as another role.

        Every connection of ours verifies what PgBouncer verifies (issue 22): a copy made field
        by field could leave ``sslrootcert`` behind and fall back to libpq's unverified
        ``prefer``.
        """
        return dataclasses.replace(self, user=user, password=password)
