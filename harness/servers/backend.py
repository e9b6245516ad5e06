"""What the PostgreSQL charm does for our backend relation, on a real server, for SQL tests."""

from __future__ import annotations

from psycopg import sql

from harness.servers.pg import PostgresServer
from postgres.connection import BackendCredentials
from postgres.passwords import generate_password


def create_relation_user(server: PostgresServer, suffix: str) -> BackendCredentials:
    """Create a SUPERUSER relation user ``relation_<suffix>`` and database ``pgbouncer_<suffix>``."""
    user, dbname, password = f"relation_{suffix}", f"pgbouncer_{suffix}", generate_password()
    with server.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return BackendCredentials(server.host, server.port, user, password, dbname)
