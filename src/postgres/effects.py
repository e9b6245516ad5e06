"""What the leader's reconcile needs from PostgreSQL, done on the real server.

:class:`PostgreSQL` is the production side of :class:`reconcile.BackendEffects`: each method is
one call into :mod:`postgres.auth` or :mod:`postgres.clients`, imported on first use, so that a
hook that never reaches the backend never loads psycopg. Unit tests hand the charm another
object with the same methods instead.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postgres.auth import AuthQuery
    from postgres.connection import BackendCredentials
    from state.tenants import TenantRecord


class PostgreSQL:
    """The backend's effects, on the server ``creds`` name (see each function's docs)."""

    def connect_check(self, creds: BackendCredentials) -> None:
        """Open and close one connection (raises ``BackendError`` when it fails)."""
        from postgres.connection import connect

        with connect(creds):
            pass

    def install_auth(
        self,
        creds: BackendCredentials,
        *,
        auth_user: str,
        auth_password: str,
        owner_tag: str,
        login_role: str | None = None,
    ) -> AuthQuery:
        """:func:`postgres.auth.install_auth`."""
        from postgres.auth import install_auth

        return install_auth(
            creds,
            auth_user=auth_user,
            auth_password=auth_password,
            owner_tag=owner_tag,
            login_role=login_role,
        )

    def check_auth(
        self,
        creds: BackendCredentials,
        *,
        auth_user: str,
        auth_password: str,
        owner_tag: str,
        schema: str | None = None,
    ) -> str | None:
        """:func:`postgres.auth.check_auth`."""
        from postgres.auth import check_auth

        return check_auth(
            creds,
            auth_user=auth_user,
            auth_password=auth_password,
            owner_tag=owner_tag,
            schema=schema,
        )

    def remove_auth(self, creds: BackendCredentials, *, auth_user: str, owner_tag: str) -> None:
        """:func:`postgres.auth.remove_auth`."""
        from postgres.auth import remove_auth

        remove_auth(creds, auth_user=auth_user, owner_tag=owner_tag)

    def remove_leftovers(
        self, creds: BackendCredentials, *, owner_tag: str, keep: str | None
    ) -> list[str]:
        """:func:`postgres.auth.remove_leftovers`."""
        from postgres.auth import remove_leftovers

        return remove_leftovers(creds, owner_tag=owner_tag, keep=keep)

    def grant_database(
        self, creds: BackendCredentials, record: TenantRecord, **request: Any
    ) -> TenantRecord:
        """:func:`postgres.clients.grant_database` (the request's keywords as it names them)."""
        from postgres.clients import grant_database

        return grant_database(creds, record, **request)

    def drop_gone(
        self,
        creds: BackendCredentials,
        record: TenantRecord,
        live: Collection[int],
        *,
        owner_tag: str,
    ) -> tuple[TenantRecord, dict[str, str]]:
        """:func:`postgres.clients.drop_gone`."""
        from postgres.clients import drop_gone

        return drop_gone(creds, record, live, owner_tag=owner_tag)

    def repair_tenancy(
        self,
        creds: BackendCredentials,
        record: TenantRecord,
        live: Collection[int],
        *,
        owner_tag: str,
    ) -> list[str]:
        """:func:`postgres.clients.repair_tenancy`."""
        from postgres.clients import repair_tenancy

        return repair_tenancy(creds, record, live, owner_tag=owner_tag)

    def backend_version(self, creds: BackendCredentials) -> str:
        """:func:`postgres.clients.backend_version`."""
        from postgres.clients import backend_version

        return backend_version(creds)

    def retire_generation(self, creds: BackendCredentials, *, role: str, owner_tag: str) -> bool:
        """:func:`postgres.auth.retire_generation` (rotate-credentials' last step)."""
        from postgres.auth import retire_generation

        return retire_generation(creds, role=role, owner_tag=owner_tag)
