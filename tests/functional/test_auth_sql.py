"""The auth lookup plumbing on a real PostgreSQL 15, and PgBouncer 1.24 logging users in with it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql

from harness.servers.backend import create_relation_user
from harness.servers.pg import PostgresServer, start_postgres
from harness.servers.pgb import PgBouncerFactory, PgBouncerProcess
from harness.servers.system import free_port
from postgres.auth import (
    AuthQuery,
    auth_username_for,
    definer_role_for,
    find_leftovers,
    generate_password,
    install_auth,
    remove_auth,
    remove_leftovers,
    retire_generation,
)
from postgres.clients import create_client
from postgres.connection import (
    BackendAuthFailed,
    BackendCredentials,
    BackendDatabaseMissing,
    BackendSQLError,
    BackendUnreachable,
    ForeignObjectError,
    connect,
)
from state.rotation import alternate_auth_user
from state.tenants import app_hash, group_role_for, owner_role_for

pytestmark = pytest.mark.needs_root

SEARCH_PATH = ["search_path=pg_catalog, pg_temp"]
# What PgBouncer answers for every refusal (wrong password, superuser, unknown role alike).
REFUSED = "SASL authentication failed"


@dataclass
class Backend:
    """One test's corner of the shared cluster: a relation user (superuser) and its database."""

    server: PostgresServer
    suffix: str
    creds: BackendCredentials
    owner_tag: str

    def name(self, stem: str) -> str:
        return f"{stem}_{self.suffix}"

    def auth_user(self) -> str:
        return auth_username_for(self.creds.user)


def make_backend(server: PostgresServer, suffix: str) -> Backend:
    """What the PostgreSQL charm does for a relation: a SUPERUSER relation user and a database."""
    creds = create_relation_user(server, suffix)
    return Backend(server, suffix, creds, f"{uuid.uuid4()}/pgbouncer-k8s")


def cleanup(server: PostgresServer, suffix: str, owner_tag: str | None = None) -> None:
    """Drop every database and role named with ``suffix`` or ``owner_tag``'s hash.

    Databases first; the tenant roles (owner, group, orphan) carry the owner tag's hash.
    """
    with server.connect() as conn:
        dbs = conn.execute(
            "SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0", (suffix,)
        ).fetchall()
        for (db,) in dbs:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
        tag_hash = app_hash(owner_tag) if owner_tag else suffix
        roles = conn.execute(
            """SELECT rolname FROM pg_roles WHERE strpos(rolname, %s) > 0
                OR (rolname LIKE 'pgbouncer\\_%%' AND strpos(rolname, %s) > 0)
                ORDER BY rolname LIKE 'pgbouncer\\_client\\_%%' DESC""",
            (suffix, tag_hash),
        ).fetchall()
        for (role,) in roles:
            rid = sql.Identifier(role)
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(rid))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(rid))
            conn.execute(sql.SQL("DROP ROLE {}").format(rid))


@pytest.fixture
def backend(postgres: PostgresServer) -> Iterator[Backend]:
    suffix = uuid.uuid4().hex[:10]
    b = make_backend(postgres, suffix)
    yield b
    cleanup(postgres, suffix, b.owner_tag)


def role_connect(
    b: Backend, user: str, password: str, dbname: str | None = None
) -> psycopg.Connection:
    return psycopg.connect(
        host=b.server.host,
        port=b.server.port,
        user=user,
        password=password,
        dbname=dbname or b.creds.dbname,
        connect_timeout=5,
        autocommit=True,
    )


def catalog_snapshot(b: Backend, roles: list[str]) -> dict[str, list[tuple]]:
    """Everything install_auth may touch, as the superuser sees it in the auth database."""
    with b.server.connect(b.creds.dbname) as conn:
        q: dict[str, LiteralString] = {
            "roles": """SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb,
                               rolcanlogin, rolreplication, rolbypassrls, rolconnlimit,
                               rolpassword, rolvaliduntil, shobj_description(oid, 'pg_authid'),
                               ARRAY(SELECT roleid::regrole::text FROM pg_auth_members
                                      WHERE member = a.oid ORDER BY 1)
                          FROM pg_authid a WHERE rolname = ANY(%(roles)s) ORDER BY rolname""",
            "schemas": """SELECT nspname, nspowner::regrole::text, nspacl::text[],
                                 obj_description(oid, 'pg_namespace')
                            FROM pg_namespace WHERE nspname = ANY(%(roles)s) ORDER BY 1""",
            "functions": """SELECT p.oid::regprocedure::text, proowner::regrole::text,
                                   prosecdef, proconfig, proacl::text[], prosrc, provolatile,
                                   proisstrict, obj_description(p.oid, 'pg_proc')
                              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                             WHERE nspname = ANY(%(roles)s) ORDER BY 1""",
            "database": """SELECT datname, datacl::text[] FROM pg_database
                            WHERE datname = current_database()""",
            "authid_columns": """SELECT attname, attacl::text[] FROM pg_attribute
                                  WHERE attrelid = 'pg_catalog.pg_authid'::regclass
                                    AND attacl IS NOT NULL ORDER BY 1""",
        }
        return {k: conn.execute(v, {"roles": roles}).fetchall() for k, v in q.items()}


def enroll(b: Backend, role: str) -> None:
    """Make ``role`` a member of the application's client group (the lookup's allow-list)."""
    b.server.execute(
        sql.SQL("GRANT {} TO {}")
        .format(sql.Identifier(group_role_for(b.owner_tag)), sql.Identifier(role))
        .as_string()
    )


def start_auth_pooler(
    factory: PgBouncerFactory,
    b: Backend,
    aq: AuthQuery,
    auth_password: str,
    databases: dict[str, str],
) -> tuple[PgBouncerProcess, Callable[[str, str, str], psycopg.Connection]]:
    """A real PgBouncer logging users in through ``aq`` (hand-written ini: the SQL under test).

    Args:
        factory: the PgBouncer process factory fixture.
        b: the test's backend.
        aq: the installed lookup.
        auth_password: the auth role's plain password (the auth file's only line).
        databases: ``[databases]`` key → database name on the backend.

    Returns:
        The process, and ``connect(user, password, key)`` through it.
    """
    host, port, listen = b.server.host, b.server.port, free_port()
    workdir = factory.workdir()
    factory.write(workdir, "userlist.txt", f'"{aq.auth_user}" "{auth_password}"\n')
    entries = "".join(
        f"{key} = host={host} port={port} dbname={name}\n" for key, name in databases.items()
    )
    ini = f"""[databases]
pgb_authdb = host={host} port={port} dbname={aq.dbname}
{entries}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir = {workdir}
auth_type = scram-sha-256
auth_file = {workdir}/userlist.txt
auth_user = {aq.auth_user}
auth_query = {aq.auth_query}
auth_dbname = pgb_authdb
"""
    pgb = factory.start(ini, listen, workdir)

    def connect(user: str, password: str, dbname: str) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=listen,
            user=user,
            password=password,
            dbname=dbname,
            connect_timeout=5,
            autocommit=True,
        )

    return pgb, connect


def install(b: Backend, password: str | None = None) -> tuple[AuthQuery, str]:
    password = password or generate_password()
    aq = install_auth(
        b.creds, auth_user=b.auth_user(), auth_password=password, owner_tag=b.owner_tag
    )
    return aq, password


def lookup(conn: psycopg.Connection, aq: AuthQuery, name: str) -> list[tuple]:
    """Run the auth_query exactly as PgBouncer sends it ($1 bound to the user name)."""
    res = conn.pgconn.exec_params(aq.auth_query.encode(), [name.encode()])
    if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise AssertionError(res.error_message.decode())
    return [
        tuple(None if v is None else v.decode() for v in (res.get_value(r, c) for c in range(2)))
        for r in range(res.ntuples)
    ]


def test_install_twice_leaves_the_same_catalog(backend):
    auth_user = backend.auth_user()
    roles = [auth_user, definer_role_for(auth_user)]
    _, password = install(backend)
    first = catalog_snapshot(backend, roles)
    aq, _ = install(backend, password)
    assert catalog_snapshot(backend, roles) == first
    # The snapshot is not trivially equal: it holds what we made.
    assert [r[0] for r in first["roles"]] == sorted(roles)
    assert [s[0] for s in first["schemas"]] == [auth_user]
    assert [f[0] for f in first["functions"]] == [f"{auth_user}.get_auth(text)"]
    expected_query = f'SELECT usename, passwd FROM "{auth_user}".get_auth($1)'  # noqa: S608
    assert aq.auth_query == expected_query
    assert aq.dbname == backend.creds.dbname and aq.auth_user == auth_user
    # A new password is a real change, and only the verifier changes.
    install(backend, generate_password())
    after = catalog_snapshot(backend, roles)
    assert after["roles"] != first["roles"]
    assert {k: v for k, v in after.items() if k != "roles"} == {
        k: v for k, v in first.items() if k != "roles"
    }


def test_auth_role_is_plain_and_cannot_read_pg_authid(backend):
    aq, password = install(backend)
    row = backend.server.execute(
        """SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolinherit,
                  rolcanlogin, rolpassword, shobj_description(oid, 'pg_authid')
             FROM pg_authid WHERE rolname = %s""",
        (aq.auth_user,),
    )[0]
    assert row[:7] == (False, False, False, False, False, False, True)
    assert row[7].startswith("SCRAM-SHA-256$4096:")
    assert row[8] == f"pgbouncer-k8s owner={backend.owner_tag} kind=auth"
    with role_connect(backend, aq.auth_user, password) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rolpassword FROM pg_catalog.pg_authid")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rolname FROM pg_catalog.pg_authid")
        assert conn.execute("SELECT current_user").fetchone() == (aq.auth_user,)


def test_lookup_gives_a_password_only_to_enrolled_ordinary_login_roles(backend):
    aq, password = install(backend)
    names = {k: backend.name(k) for k in ("app", "future", "su", "repl", "nologin", "expired")}
    names.update({k: backend.name(k) for k in ("stranger", "createrole", "bypassrls")})
    names["long"] = backend.name("long").ljust(63, "x")  # the longest name a role can have
    pw = "Aa1" + generate_password()
    with backend.server.connect() as conn:
        for key, attrs in {
            "app": "LOGIN",
            "long": "LOGIN",
            "future": "LOGIN VALID UNTIL '2999-01-01'",
            "su": "LOGIN SUPERUSER",
            "repl": "LOGIN REPLICATION",
            "nologin": "NOLOGIN",
            "expired": "LOGIN VALID UNTIL '2000-01-01'",
            "stranger": "LOGIN",
            "createrole": "LOGIN CREATEROLE",
            "bypassrls": "LOGIN BYPASSRLS",
        }.items():
            conn.execute(
                sql.SQL("CREATE ROLE {} " + attrs + " PASSWORD {}").format(  # type: ignore[operator]
                    sql.Identifier(names[key]), sql.Literal(pw)
                )
            )
            if key != "stranger":
                # Enrolled: a member of the application's client group (how an operator lets
                # one of their own roles log in through the pooler, docs/tenancy.md).
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(
                        sql.Identifier(group_role_for(backend.owner_tag)),
                        sql.Identifier(names[key]),
                    )
                )
    with role_connect(backend, aq.auth_user, password) as conn:
        for key in ("app", "long", "future"):
            ((user, secret),) = lookup(conn, aq, names[key])
            assert user == names[key]
            assert secret is not None and secret.startswith("SCRAM-SHA-256$"), key
        refused = [
            names[k]
            for k in ("su", "repl", "nologin", "expired", "stranger", "createrole", "bypassrls")
        ]
        refused += [backend.name("unknown"), aq.auth_user, "postgres", backend.creds.user]
        refused += [definer_role_for(aq.auth_user)]
        for name in refused:
            assert lookup(conn, aq, name) == [(name, None)], name
        # A longer name is not truncated onto the 63-byte role's verifier.
        assert lookup(conn, aq, names["long"] + "yy") == [(names["long"], None)]


def test_function_is_pinned_and_only_the_auth_role_may_run_it(backend):
    aq, _ = install(backend)
    auth_user, definer = aq.auth_user, definer_role_for(aq.auth_user)
    other = backend.name("other")
    backend.server.execute(
        sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(other)).as_string()
    )
    fn = f'"{auth_user}".get_auth(text)'
    with backend.server.connect(backend.creds.dbname) as conn:
        row = conn.execute(
            """SELECT prosecdef, proconfig, proowner::regrole::text, prolang::regproc::text
                 FROM pg_proc WHERE oid = %s::regprocedure""",
            (fn,),
        ).fetchone()
        lang = conn.execute(
            "SELECT lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang WHERE p.oid = %s::regprocedure",
            (fn,),
        ).fetchone()
        assert row is not None and lang == ("sql",)
        assert row[0] is True and row[1] == SEARCH_PATH and row[2] == definer
        privilege = "SELECT has_function_privilege(%s, %s, 'EXECUTE')"
        assert conn.execute(privilege, (auth_user, fn)).fetchone() == (True,)
        for role in ("public", other, definer):
            assert conn.execute(privilege, (role, fn)).fetchone() == (False,), role
        usage = "SELECT has_schema_privilege(%s, %s, 'USAGE')"
        assert conn.execute(usage, (auth_user, auth_user)).fetchone() == (True,)
        for role in ("public", other):
            assert conn.execute(usage, (role, auth_user)).fetchone() == (False,), role
        # The definer: no login, no attributes, not in pg_read_all_data; reads six columns.
        attrs = conn.execute(
            """SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication,
                      rolbypassrls, pg_has_role(%s, 'pg_read_all_data', 'MEMBER')
                 FROM pg_roles WHERE rolname = %s""",
            (definer, definer),
        ).fetchone()
        assert attrs == (False, False, False, False, False, False, False)
        readable = conn.execute(
            """SELECT attname FROM pg_attribute
                WHERE attrelid = 'pg_catalog.pg_authid'::regclass AND attnum > 0
                  AND has_column_privilege(%s, attrelid, attnum, 'SELECT') ORDER BY 1""",
            (definer,),
        ).fetchall()
        assert [r[0] for r in readable] == sorted(
            [
                "rolname",
                "rolpassword",
                "rolcanlogin",
                "rolsuper",
                "rolreplication",
                "rolvaliduntil",
            ]
        )
    # The other role cannot connect to the auth database at all (CONNECT revoked from PUBLIC).
    backend.server.execute(
        sql.SQL("ALTER ROLE {} PASSWORD 'x-pass-1234'").format(sql.Identifier(other)).as_string()
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        role_connect(backend, other, "x-pass-1234")


def test_a_shadowing_operator_in_the_callers_schema_changes_nothing(backend):
    """The pinned search_path keeps objects in other schemas out of the function."""
    aq, password = install(backend)
    app = backend.name("app")
    backend.server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'p-1234567890'")
        .format(sql.Identifier(app))
        .as_string()
    )
    enroll(backend, app)
    with backend.server.connect(backend.creds.dbname) as conn:
        conn.execute(
            "CREATE FUNCTION public.always_true(name, text) RETURNS bool LANGUAGE sql AS 'SELECT true'"
        )
        conn.execute(
            "CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.always_true)"
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(backend.creds.dbname), sql.Identifier(app)
            )
        )
    with role_connect(backend, aq.auth_user, password) as conn:
        conn.execute("SET search_path = public, pg_catalog")
        assert lookup(conn, aq, "postgres") == [("postgres", None)]
        assert lookup(conn, aq, app)[0][1].startswith("SCRAM-SHA-256$")


def test_the_function_outlives_the_relation_user(backend):
    """The PostgreSQL charm drops the relation user when the relation goes; logins go on."""
    aq, password = install(backend)
    app, relation_user = backend.name("app"), backend.creds.user
    backend.server.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'p-1234567890'")
        .format(sql.Identifier(app))
        .as_string()
    )
    enroll(backend, app)
    with backend.server.connect(backend.creds.dbname) as conn:
        for stmt in ("REASSIGN OWNED BY {} TO postgres", "DROP OWNED BY {}"):
            conn.execute(sql.SQL(stmt).format(sql.Identifier(relation_user)))  # type: ignore[arg-type]
    with backend.server.connect() as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(relation_user)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(relation_user)))
    with role_connect(backend, aq.auth_user, password) as conn:
        assert lookup(conn, aq, app)[0][1].startswith("SCRAM-SHA-256$")


def test_remove_leaves_nothing_and_can_run_again(backend):
    aq, _ = install(backend)
    roles = [aq.auth_user, definer_role_for(aq.auth_user)]
    remove_auth(backend.creds, auth_user=aq.auth_user, owner_tag=backend.owner_tag)
    snap = catalog_snapshot(backend, roles)
    assert snap["roles"] == [] and snap["schemas"] == [] and snap["functions"] == []
    assert snap["authid_columns"] == [] or all(
        not any(r in str(acl) for r in roles) for _, acl in snap["authid_columns"]
    )
    assert not any(aq.auth_user in entry for entry in snap["database"][0][1] or [])
    remove_auth(backend.creds, auth_user=aq.auth_user, owner_tag=backend.owner_tag)
    # Without an owner tag, any pgbouncer-k8s auth mark counts.
    install(backend)
    remove_auth(backend.creds, auth_user=aq.auth_user)
    assert catalog_snapshot(backend, roles)["roles"] == []


def test_unmarked_look_alikes_are_never_touched(backend):
    auth_user = backend.auth_user()
    with backend.server.connect(backend.creds.dbname) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(auth_user)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(auth_user)))
    with pytest.raises(ForeignObjectError, match="without this application's pgbouncer-k8s mark"):
        install(backend)
    remove_auth(backend.creds, auth_user=auth_user, owner_tag=backend.owner_tag)
    remove_auth(backend.creds, auth_user=auth_user)
    snap = catalog_snapshot(backend, [auth_user, definer_role_for(auth_user)])
    assert [r[0] for r in snap["roles"]] == [auth_user]  # the failed install left no definer
    assert [s[0] for s in snap["schemas"]] == [auth_user]
    assert snap["roles"][0][11] is None


def test_leftovers_are_removed_and_nothing_else(backend, postgres):
    """An earlier relation's auth roles go; the current one, another app's and look-alikes stay."""
    b = backend
    old_users = [b.name("relation_old1"), b.name("relation_old2")]
    with postgres.connect() as conn:
        for user in old_users:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(b.creds.password)
                )
            )
    for user in old_users:
        old = BackendCredentials(
            b.server.host, b.server.port, user, b.creds.password, b.creds.dbname
        )
        install_auth(
            old,
            auth_user=auth_username_for(user),
            auth_password=generate_password(),
            owner_tag=b.owner_tag,
        )
    current, password = install(b)
    other_app_tag = f"{uuid.uuid4()}/other-pgbouncer"
    other_app = auth_username_for(b.name("relation_other"))
    install_auth(
        b.creds, auth_user=other_app, auth_password=generate_password(), owner_tag=other_app_tag
    )
    foreign = auth_username_for(b.name("relation_foreign"))
    near_miss = auth_username_for(b.name("relation_nearmiss"))
    with postgres.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(foreign)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(near_miss)))
        conn.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(near_miss),
                sql.Literal(f"pgbouncer-k8s owner={b.owner_tag} kind=auth "),
            )
        )
    old_auth = [auth_username_for(u) for u in old_users]
    expected = sorted(old_auth + [definer_role_for(a) for a in old_auth])
    assert find_leftovers(b.creds, owner_tag=b.owner_tag, keep=current.auth_user) == expected
    assert remove_leftovers(b.creds, owner_tag=b.owner_tag, keep=current.auth_user) == expected
    assert find_leftovers(b.creds, owner_tag=b.owner_tag, keep=current.auth_user) == []
    assert remove_leftovers(b.creds, owner_tag=b.owner_tag, keep=current.auth_user) == []
    gone = catalog_snapshot(b, expected)
    assert gone["roles"] == [] and gone["schemas"] == [] and gone["functions"] == []
    kept = catalog_snapshot(b, [current.auth_user, other_app, foreign, near_miss])
    assert [r[0] for r in kept["roles"]] == sorted(
        [current.auth_user, other_app, foreign, near_miss]
    )
    assert [s[0] for s in kept["schemas"]] == sorted([current.auth_user, other_app])
    with role_connect(b, current.auth_user, password) as conn:
        assert lookup(conn, current, "postgres") == [("postgres", None)]
    # keep=None: everything of ours goes, still nothing foreign.
    assert remove_leftovers(b.creds, owner_tag=b.owner_tag, keep=None) == sorted(
        [current.auth_user, definer_role_for(current.auth_user)]
    )
    left = catalog_snapshot(b, [current.auth_user, other_app, foreign, near_miss])
    assert [r[0] for r in left["roles"]] == sorted([other_app, foreign, near_miss])


def test_second_generation_serves_beside_the_first_then_the_first_loses_its_password(backend):
    """rotate-credentials' SQL: two generations of the auth role, one lookup.

    Both log in and run the lookup side by side; retiring one removes its password only;
    clean-up and the leftover sweep take both.
    """
    b = backend
    aq, first_password = install(b)
    second = alternate_auth_user(aq.auth_user)
    second_password = generate_password()
    install_auth(
        b.creds,
        auth_user=aq.auth_user,
        auth_password=second_password,
        owner_tag=b.owner_tag,
        login_role=second,
    )
    for user, password in ((aq.auth_user, first_password), (second, second_password)):
        with role_connect(b, user, password) as conn:
            assert lookup(conn, aq, "postgres") == [("postgres", None)]
            # Neither generation is given a password by the lookup.
            assert lookup(conn, aq, second) == [(second, None)]
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    with pytest.raises(ValueError, match="not a generation"):
        install_auth(
            b.creds, auth_user=aq.auth_user, auth_password=second_password,
            owner_tag=b.owner_tag, login_role=b.name("someone_else"),
        )  # fmt: skip
    assert retire_generation(b.creds, role=aq.auth_user, owner_tag=b.owner_tag)
    assert not retire_generation(b.creds, role=aq.auth_user, owner_tag=b.owner_tag)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        role_connect(b, aq.auth_user, first_password).close()
    with role_connect(b, second, second_password) as conn:
        assert lookup(conn, aq, "postgres") == [("postgres", None)]
    # The sweep spares the alternate of the role kept, and takes both of a role not kept.
    assert find_leftovers(b.creds, owner_tag=b.owner_tag, keep=aq.auth_user) == []
    everything = sorted([aq.auth_user, second, definer_role_for(aq.auth_user)])
    assert sorted(find_leftovers(b.creds, owner_tag=b.owner_tag, keep=None)) == everything
    assert remove_leftovers(b.creds, owner_tag=b.owner_tag, keep=None) == everything
    # remove_auth takes the second generation too.
    install(b)
    install_auth(
        b.creds, auth_user=aq.auth_user, auth_password=second_password, owner_tag=b.owner_tag,
        login_role=second,
    )  # fmt: skip
    remove_auth(b.creds, auth_user=aq.auth_user, owner_tag=b.owner_tag)
    assert catalog_snapshot(b, everything)["roles"] == []


def test_auth_role_cannot_connect_to_a_client_database(backend):
    aq, password = install(backend)
    client, client_db, client_pw = backend.name("app"), backend.name("appdb"), generate_password()
    create_client(
        backend.creds,
        username=client,
        password=client_pw,
        database=client_db,
        extra_roles=[],
        owner_tag=backend.owner_tag,
        relation_id=7,
    )
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        role_connect(backend, aq.auth_user, password, client_db)
    with role_connect(backend, client, client_pw, client_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (client_db,)


def test_no_password_or_verifier_reaches_the_server_log():
    server = start_postgres(
        {
            "log_statement": "all",
            "log_min_duration_statement": "0",
            "log_min_error_statement": "info",
        }
    )
    try:
        suffix = uuid.uuid4().hex[:10]
        b = make_backend(server, suffix)
        _, password = install(b, generate_password())
        create_client(
            b.creds,
            username=b.name("app"),
            password=(client_pw := generate_password()),
            database=b.name("appdb"),
            extra_roles=[],
            owner_tag=b.owner_tag,
            relation_id=1,
        )
        install(b, generate_password())  # a password change is logged neither
        log = (server.base / "server.log").read_text()
        assert "ALTER ROLE" in log or "CREATE ROLE" in log  # statements are being logged
        assert password not in log and client_pw not in log
        assert "SCRAM-SHA-256$" not in log
    finally:
        server.destroy()


def test_connection_errors_are_typed_and_hold_no_password(backend):
    c = backend.creds
    assert c.password not in repr(c)
    wrong = BackendCredentials(c.host, c.port, c.user, "Wrong-" + c.password, c.dbname)
    with pytest.raises(BackendAuthFailed) as info, connect(wrong):
        pass
    assert wrong.password not in str(info.value) and c.password not in str(info.value)
    with (
        pytest.raises(BackendAuthFailed),
        connect(BackendCredentials(c.host, c.port, backend.name("nobody"), c.password, c.dbname)),
    ):
        pass
    with pytest.raises(BackendDatabaseMissing), connect(c, backend.name("nodb")):
        pass
    closed = BackendCredentials(c.host, free_port(), c.user, c.password, c.dbname)
    with pytest.raises(BackendUnreachable) as info, connect(closed):
        pass
    assert c.password not in str(info.value)
    with pytest.raises(BackendSQLError) as info, connect(c) as conn:
        conn.execute("SET statement_timeout = 50")
        conn.execute("SELECT pg_sleep(2)")
    assert info.value.sqlstate == "57014"
    with connect(c) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("15s",)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,pg_temp",)


def test_pgbouncer_logs_users_in_through_the_auth_query(backend, pgbouncer_factory):
    """install_auth + create_client on PostgreSQL 15, PgBouncer 1.24 with auth_dbname."""
    aq, auth_password = install(backend)
    client, client_db, client_pw = backend.name("app"), backend.name("appdb"), generate_password()
    create_client(
        backend.creds,
        username=client,
        password=client_pw,
        database=client_db,
        extra_roles=[],
        owner_tag=backend.owner_tag,
        relation_id=3,
    )
    su = backend.name("su")
    backend.server.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}")
        .format(sql.Identifier(su), sql.Literal(client_pw))
        .as_string()
    )
    port = backend.server.port
    pgb, via_pgbouncer = start_auth_pooler(
        pgbouncer_factory, backend, aq, auth_password, {client_db: client_db, su: "postgres"}
    )

    with via_pgbouncer(client, client_pw, client_db) as conn:
        row = conn.execute(
            "SELECT session_user, current_database(), current_setting('port')::int"
        ).fetchone()
        assert row == (client, client_db, port)
        # Its session acts as the database's owner role (docs/tenancy.md).
        assert conn.execute("SELECT current_user").fetchone() == (
            owner_role_for(client_db, backend.owner_tag),
        )
    with pytest.raises(psycopg.OperationalError, match=REFUSED):
        via_pgbouncer(client, "wrong-" + client_pw, client_db)
    with pytest.raises(psycopg.OperationalError, match=REFUSED):
        via_pgbouncer(su, client_pw, su)
    with pytest.raises(psycopg.OperationalError, match=REFUSED):
        via_pgbouncer(backend.name("unknown"), client_pw, client_db)
    # The auth role itself is in the auth file: it gets in only where CONNECT lets it.
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        via_pgbouncer(aq.auth_user, auth_password, client_db).execute("SELECT 1")
    assert pgb.alive()
    assert auth_password not in pgb.log() and client_pw not in pgb.log()
