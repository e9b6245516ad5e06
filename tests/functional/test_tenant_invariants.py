"""The ten attacks of issue 21, and the search_path one, on a real PostgreSQL 15 (and PgBouncer).

Each test plays a hostile tenant using only its own credentials (or code it left in a shared
database), then lets the charm run its SQL as its hooks would (grant, revoke, the update-status
repair), and asserts what was *not* gained. docs/tenancy.md states the invariants; this file is
"the test" column of that page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import postgres.connection as connection
from harness.servers.pg import PostgresServer
from postgres.auth import install_auth
from postgres.clients import RefusedDatabaseError, repair_tenancy
from postgres.locks import Blocked
from postgres.passwords import generate_password
from state.tenants import client_username, group_role_for, orphan_role_for
from tests.functional.test_auth_sql import REFUSED, role_connect, start_auth_pooler
from tests.functional.test_tenancy import DENIED, Tenants, su
from tests.functional.test_tenancy import t as t

pytestmark = pytest.mark.needs_root

NO_CONNECT = "permission denied for database"


def repair(t: Tenants) -> list[str]:
    """The leader's update-status, reduced to its tenant repair."""
    return repair_tenancy(t.b.creds, t.record, t.live, owner_tag=t.b.owner_tag)


def role_exists(t: Tenants, role: str) -> bool:
    return su(t, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]


def can_connect(t: Tenants, role: str, db: str) -> bool:
    return su(t, "SELECT has_database_privilege(%s, %s, 'CONNECT')", (role, db)) == [(True,)]


@pytest.fixture
def auth(t: Tenants) -> tuple:
    """The auth plumbing installed first, as the charm does before serving any client."""
    password = generate_password()
    aq = install_auth(
        t.b.creds, auth_user=t.b.auth_user(), auth_password=password, owner_tag=t.b.owner_tag
    )
    return aq, password


@pytest.fixture
def idle() -> Iterator[list[psycopg.Connection]]:
    """Sessions a test leaves open, closed at the end (some were terminated by the charm)."""
    sessions: list[psycopg.Connection] = []
    yield sessions
    for conn in sessions:
        conn.close()


# -- 1. another application takes a live database by naming it -----------------------------------


def test_another_application_cannot_take_a_live_database_by_naming_it(t):
    shop = t.b.name("shop")
    t.grant(1, "shopapp", shop)
    with t.connect(1, shop) as conn:
        conn.execute("CREATE TABLE orders (card text)")
        conn.execute("INSERT INTO orders VALUES ('4111')")
    with pytest.raises(RefusedDatabaseError, match="held by application shopapp"):
        t.grant(2, "evil", shop)
    evil = client_username(2, t.b.owner_tag)
    assert not role_exists(t, evil)  # nothing is created for a refused request
    with t.connect(1, shop) as conn:
        assert conn.execute("SELECT card FROM orders").fetchall() == [("4111",)]
    # The operator's consent, for that database and that application only, opens it.
    t.consent = {shop: frozenset({"evil"})}
    t.grant(2, "evil", shop)
    with t.connect(2, shop) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)


# -- 2. a departed co-tenant keeps reading --------------------------------------------------------


def test_a_departed_co_tenant_leaves_no_grant_behind(t):
    shop, mine = t.b.name("shop"), t.b.name("partnerdb")
    t.grant(1, "shopapp", shop)
    t.consent = {shop: frozenset({"partner"})}
    t.grant(2, "partner", shop)
    t.grant(3, "partner", mine)  # the other login it controls
    other = client_username(3, t.b.owner_tag)
    with t.connect(2, shop) as conn:
        conn.execute("CREATE TABLE old (x int)")
        # Not the owner of the database object: the grant of CONNECT gives nothing.
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(shop), sql.Identifier(other)))  # fmt: skip
        conn.execute(sql.SQL("GRANT SELECT ON old TO {}").format(sql.Identifier(other)))
        conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {}").format(
            sql.Identifier(other)))  # fmt: skip
    t.revoke(2)
    with t.connect(1, shop) as conn:
        conn.execute("CREATE TABLE later (secret text)")
        conn.execute("INSERT INTO later VALUES ('written after it left')")
    assert not can_connect(t, other, shop)
    with pytest.raises(psycopg.OperationalError, match=NO_CONNECT):
        t.connect(3, shop)
    # ...and the grants themselves are gone, not only unusable.
    repair(t)
    rows = su(
        t,
        """SELECT count(*) FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = %s AND s.refobjid = %s::regrole""",
        (shop, other),
    )
    assert rows == [(0,)]


# -- 3. a tenant keeps its login by holding a lock on its own role --------------------------------


def test_a_lock_on_its_own_role_does_not_keep_a_tenant_alive(t, idle):
    db = t.b.name("sticky")
    user, _ = t.grant(1, "shop", db)
    holder = t.connect(1, db)
    idle.append(holder)
    holder.execute("SET ROLE NONE")  # back to the login role, which may change its password
    holder.autocommit = False
    holder.execute(sql.SQL("ALTER ROLE {} PASSWORD 'mine-now'").format(sql.Identifier(user)))
    # (left open: the row of pg_authid stays locked for as long as this session lives)
    t.revoke(1)
    assert not role_exists(t, user)
    assert holder.closed or holder.broken or _dead(holder)
    with pytest.raises(psycopg.OperationalError):
        role_connect(t.b, user, "mine-now", db)


def _dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


# -- 4. one tenant freezes onboarding and clean-up for everyone -----------------------------------


def test_locks_on_shared_roles_do_not_freeze_onboarding_or_clean_up(t, idle):
    a_db, b_db = t.b.name("alpha"), t.b.name("beta")
    t.grant(1, "alpha", a_db)
    t.grant(2, "beta", b_db)
    holder = t.connect(1, a_db)
    idle.append(holder)
    # Tenants are no longer members of the client group: no lock on it from here.
    with holder.cursor() as cur, pytest.raises(DENIED):
        cur.execute(sql.SQL("SET ROLE {}").format(
            sql.Identifier(group_role_for(t.b.owner_tag))))  # fmt: skip
    holder.autocommit = False
    # Its session acts as the owner role, which may change its own password: that locks the
    # owner role's row until the transaction ends.
    holder.execute(sql.SQL("ALTER ROLE {} PASSWORD 'x'").format(sql.Identifier(t.owner(a_db))))
    t.grant(3, "alpha", a_db)  # a second relation of alpha joins: the owner role is not altered
    t.grant(4, "gamma", t.b.name("gamma"))  # a new tenant is onboarded
    t.revoke(2)  # another tenant's clean-up
    t.revoke(3)
    assert not role_exists(t, client_username(2, t.b.owner_tag))
    assert not role_exists(t, client_username(3, t.b.owner_tag))
    # Nothing needed the lock, so nobody was cut: the holder's session is still there.
    assert holder.execute("SELECT 1").fetchone() == (1,)
    holder.rollback()


# -- 5. an idle session on template1 blocks every later CREATE DATABASE ---------------------------


def test_an_idle_session_on_template1_does_not_block_new_databases(t, idle):
    t.grant(1, "shop", t.b.name("shop"))
    user = client_username(1, t.b.owner_tag)
    idle.append(role_connect(t.b, user, t.passwords[1], "template1"))  # PUBLIC may connect
    t.grant(2, "other", t.b.name("other"))
    assert su(t, "SELECT datname FROM pg_database WHERE datname = %s", (t.b.name("other"),))


# -- 6. database flags and settings make a role immortal ------------------------------------------


@pytest.mark.parametrize(
    "plant",
    ["ALLOW_CONNECTIONS false", "IS_TEMPLATE true", "CONNECTION LIMIT 0", "SET role = {owner}"],
)
def test_flags_and_settings_on_its_database_do_not_keep_a_tenant_alive(t, plant):
    db = t.b.name("immortal")
    user, _ = t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("SET ROLE NONE")
        conn.execute("CREATE TABLE mine (x int)")  # owned by the login role itself
        for as_owner in (False, True):
            if as_owner:
                conn.execute("RESET ROLE")
            with pytest.raises(DENIED, match="must be owner of database"):
                conn.execute(
                    sql.SQL("ALTER DATABASE {} " + plant).format(  # type: ignore[operator]
                        sql.Identifier(db), owner=sql.Identifier(t.owner(db))
                    )
                )
    # Planted by someone who may (a database from before tenants lost the object, an operator):
    su(t, sql.SQL("ALTER DATABASE {} " + plant).format(  # type: ignore[operator]
        sql.Identifier(db), owner=sql.Identifier(t.owner(db))).as_string())  # fmt: skip
    t.revoke(1)
    assert not role_exists(t, user)
    owners = su(
        t, "SELECT relname, relowner::regrole::text FROM pg_class WHERE relname IN ('t', 'mine')"
        " ORDER BY 1", db=db,
    )  # fmt: skip
    assert owners == [("mine", t.owner(db)), ("t", t.owner(db))]
    # Once nobody holds it, update-status puts the database object back as well.
    repair(t)
    assert su(
        t,
        "SELECT datallowconn, NOT datistemplate, datconnlimit FROM pg_database WHERE datname = %s",
        (db,),
    ) == [(True, True, -1)]
    assert su(
        t,
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d"
        " ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
        (db,),
    ) == [(0,)]


# -- 7. a tenant makes another tenant's role immortal ---------------------------------------------


def test_a_tenant_cannot_keep_another_tenants_role_alive(t):
    a_db, v_db = t.b.name("attacker"), t.b.name("victim")
    t.grant(1, "attacker", a_db)
    victim, _ = t.grant(2, "victim", v_db)
    with t.connect(1, a_db) as conn:
        conn.execute("CREATE TABLE bait (x int)")
        conn.execute(sql.SQL("GRANT SELECT ON bait TO {}").format(sql.Identifier(victim)))
        with pytest.raises(DENIED, match="must be owner of database"):
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                sql.Identifier(a_db)))  # fmt: skip
    su(t, f"ALTER DATABASE {a_db} ALLOW_CONNECTIONS false")  # as a superuser could have
    t.revoke(2)
    assert not role_exists(t, victim)


# -- 8. a victim's own database is handed to the attacker on the victim's clean-up ---------------


def test_a_victims_own_database_is_not_handed_to_another_tenant(t):
    a_db = t.b.name("aaa_first")  # sorts before anything else the victim touches
    t.grant(1, "attacker", a_db)
    victim, _ = t.grant(2, "victim", t.b.name("zzz_victim"), extra=("CREATEDB",))
    own = t.b.name("zzz_own")
    with t.connect(2, t.b.name("zzz_victim")) as conn:
        conn.execute("SET ROLE NONE")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(own)))
    with t.connect(1, a_db) as conn:
        conn.execute("CREATE TABLE bait (x int)")
        conn.execute(sql.SQL("GRANT SELECT ON bait TO {}").format(sql.Identifier(victim)))
    t.revoke(2)
    (owner,) = su(t, "SELECT datdba::regrole::text FROM pg_database WHERE datname = %s", (own,))
    assert owner != (t.owner(a_db),)
    assert owner == (orphan_role_for(t.b.owner_tag),)
    assert not can_connect(t, client_username(1, t.b.owner_tag), own)


# -- 9. a departed co-tenant marks the shared database IS_TEMPLATE -------------------------------


def test_is_template_cannot_be_set_by_a_tenant_and_is_reset_for_the_holder(t):
    db = t.b.name("shared")
    t.grant(1, "shop", db)
    t.grant(2, "shop", db)  # the same application shares without consent
    with t.connect(2, db) as conn, pytest.raises(DENIED, match="must be owner of database"):
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(db)))
    t.revoke(2)
    su(t, f"ALTER DATABASE {db} IS_TEMPLATE true")  # planted as only a superuser now can
    t.revoke(1)
    t.grant(3, "shop", db)  # the rightful holder re-relates: given its database back
    assert su(t, "SELECT datistemplate FROM pg_database WHERE datname = %s", (db,)) == [(False,)]
    with t.connect(3, db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (db,)


# -- 10. code in a shared database takes over another tenant's login ------------------------------


def test_code_in_a_shared_database_cannot_open_another_login(t, auth, pgbouncer_factory):
    aq, auth_password = auth
    shop, own = t.b.name("shop"), t.b.name("victimdb")
    victim, victim_pw = t.grant(1, "victim", shop)
    t.consent = {shop: frozenset({"attacker"})}
    t.grant(2, "attacker", shop)
    t.grant(3, "victim", own)
    pgb, through = start_auth_pooler(
        pgbouncer_factory, t.b, aq, auth_password, {shop: shop, own: own}
    )
    with through(client_username(2, t.b.owner_tag), t.passwords[2], shop) as conn:
        conn.execute("CREATE TABLE visits (who text)")
        conn.execute(
            """CREATE FUNCTION public.steal() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 SET LOCAL ROLE NONE;
                 EXECUTE format('ALTER ROLE %I PASSWORD %L', session_user, 'stolen');
                 RETURN NEW;
               END $$"""
        )
        conn.execute(
            "CREATE TRIGGER steal BEFORE INSERT ON visits FOR EACH ROW EXECUTE FUNCTION steal()"
        )
    with through(victim, victim_pw, shop) as conn:
        conn.execute("INSERT INTO visits VALUES ('victim')")  # the trap fires in its session
    # The password in pg_authid changed, but the pooler serves only what the charm issued:
    for db in (shop, own):
        with pytest.raises(psycopg.OperationalError, match=REFUSED):
            through(victim, "stolen", db)
    # (Directly on PostgreSQL the stolen password works until the charm's next update-status:
    # pg_hba is the PostgreSQL charm's. docs/security.md lists this; the assertion keeps it true.)
    role_connect(t.b, victim, "stolen", shop).close()
    repaired = repair(t)
    assert any(victim in line and "password" in line for line in repaired), repaired
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        role_connect(t.b, victim, "stolen", shop)
    with through(victim, victim_pw, shop) as conn:
        assert conn.execute("SELECT count(*) FROM visits").fetchone() == (1,)
    assert repair(t) == []  # and a second check finds nothing more to do
    assert pgb.alive()


# -- also seen: a database-wide search_path ahead of pg_catalog -----------------------------------


def test_superuser_sessions_in_a_tenant_database_see_no_planted_search_path(t):
    db = t.b.name("path")
    t.grant(1, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("CREATE SCHEMA trap")
        conn.execute(
            "CREATE FUNCTION trap.lower(text) RETURNS text LANGUAGE sql AS $$SELECT 'pwned'$$"
        )
        with pytest.raises(DENIED, match="must be owner of database"):
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET search_path = trap, pg_catalog").format(
                    sql.Identifier(db)
                )
            )
    # Even if one got there (a database from before, an operator's slip), update-status resets it.
    su(t, f"ALTER DATABASE {db} SET search_path = trap, pg_catalog")
    assert any("settings" in line for line in repair(t))
    assert su(t, "SELECT lower('ABC')", db=db) == [("abc",)]


# -- what the charm never does: wait on a tenant --------------------------------------------------


def test_a_tenant_lock_on_a_table_it_owns_does_not_stall_its_clean_up(t, idle):
    db = t.b.name("locked")
    user, _ = t.grant(1, "shop", db)
    t.grant(2, "shop", db)
    with t.connect(1, db) as conn:
        conn.execute("SET ROLE NONE")
        conn.execute("CREATE TABLE mine (x int)")  # owned by login 1: REASSIGN must lock it
    holder = t.connect(2, db)
    idle.append(holder)
    holder.autocommit = False
    holder.execute("SET ROLE NONE")
    with t.connect(1, db) as conn:
        conn.execute("SET ROLE NONE")
        conn.execute(sql.SQL("GRANT ALL ON mine TO {}").format(
            sql.Identifier(client_username(2, t.b.owner_tag))))  # fmt: skip
    holder.execute("LOCK TABLE public.mine IN ACCESS EXCLUSIVE MODE")
    done = threading.Event()

    def drop() -> None:
        t.revoke(1)
        done.set()

    worker = threading.Thread(target=drop)
    worker.start()
    worker.join(timeout=30)
    assert done.is_set(), "the clean-up waited on a tenant's lock"
    assert not role_exists(t, user)
    assert su(t, "SELECT relowner::regrole::text FROM pg_class WHERE relname = 'mine'", db=db) == [
        (t.owner(db),)
    ]


def test_a_lock_held_by_someone_else_is_named_not_broken(
    t, postgres: PostgresServer, idle, monkeypatch
):
    db = t.b.name("operator")
    user, _ = t.grant(1, "shop", db)
    operator = postgres.connect(db)
    idle.append(operator)
    operator.autocommit = False
    operator.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT 5").format(sql.Identifier(user)))
    monkeypatch.setattr(connection, "LOCK_TIMEOUT_MS", 1500)
    with pytest.raises(Blocked, match="waiting for session"):
        t.revoke(1)
    assert operator.execute("SELECT 1").fetchone() == (1,)  # never terminated
    operator.rollback()
    t.revoke(1)
    assert not role_exists(t, user)


# -- the audit: the same invariants, read-only ---------------------------------------------------


def audit(t: Tenants) -> list:
    from pgbouncer.exporter import STATS_USERS
    from postgres.audit import audit_tenancy
    from relations.admin import ADMIN_USER

    return audit_tenancy(
        t.b.creds,
        t.record,
        t.live,
        owner_tag=t.b.owner_tag,
        console_users=(*STATS_USERS, ADMIN_USER),  # as the action passes them
    )


def test_the_audit_of_a_clean_cluster_finds_nothing(t, auth):
    t.grant(1, "shop", t.b.name("shop"))
    t.grant(2, "shop", t.b.name("shop"))
    t.grant(3, "other", t.b.name("other"), extra=("CREATEDB",))
    with t.connect(1, t.b.name("shop")) as conn:
        conn.execute("CREATE TABLE t (x int)")
    t.revoke(2)
    assert audit(t) == []


PLANTS = {
    # (SQL run as the superuser in database "shop" unless it says "@postgres"; what is reported)
    "owner": ("ALTER DATABASE {shop} OWNER TO {login}", "database-owner"),
    "template": ("ALTER DATABASE {shop} IS_TEMPLATE true", "database-flag"),
    "closed": ("ALTER DATABASE {shop} ALLOW_CONNECTIONS false @auth", "database-flag"),
    "connect": ("GRANT CONNECT ON DATABASE {shop} TO PUBLIC", "database-grant"),
    "db-setting": ("ALTER DATABASE {shop} SET search_path = trap, pg_catalog", "database-setting"),
    "superuser": ("ALTER ROLE {login} BYPASSRLS", "role-attribute"),
    "predefined": ("GRANT pg_read_all_data TO {login}", "role-membership"),
    "other-owner": ("GRANT {other_owner} TO {login}", "role-membership"),
    "group": ("GRANT {group} TO {login}", "role-membership"),
    "password": ("ALTER ROLE {login} PASSWORD 'changed-inside'", "password"),
    "role-setting": ("ALTER ROLE {login} SET search_path = trap", "role-setting"),
    "stray-login": ("CREATE ROLE {stray} LOGIN", "login"),
    "definer": (
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
        "object-owner",
    ),
    "default-public": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO PUBLIC",
        "default-privilege",
    ),
    "default-other": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {other_login}",
        "default-privilege",
    ),
    "lookup-grant": ("GRANT EXECUTE ON FUNCTION {auth}.get_auth(text) TO PUBLIC @auth", "lookup"),
    "lookup-body": (
        "CREATE OR REPLACE FUNCTION {auth}.get_auth(p_usename text) RETURNS TABLE (usename name, "
        "passwd text) LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, "
        "pg_temp AS $$SELECT p_usename::name, NULL::text$$ @auth",
        "lookup",
    ),
    "issued": ("DELETE FROM {auth}.issued @auth", "issued"),
    "definer-unpinned": (
        "CREATE FUNCTION public.g() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1';"
        " ALTER FUNCTION public.g() OWNER TO {owner}",
        "security-definer",
    ),
    "auth-attribute": ("ALTER ROLE {auth} CREATEROLE", "auth-role"),
    "auth-member": ("GRANT {auth} TO {other_login}", "auth-role"),
    "auth-membership": ("GRANT pg_read_all_data TO {auth}", "auth-role"),
    "auth-setting": ("ALTER ROLE {auth} SET search_path = trap, pg_catalog", "auth-role"),
    "console-user": ("CREATE ROLE pgbouncer_admin LOGIN", "console-user"),
}


def _catalog_fingerprint(t: Tenants, dbs: list[str]) -> list:
    rows = su(
        t,
        """SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM (
             SELECT rolname, rolcanlogin, rolpassword, rolsuper, rolbypassrls FROM pg_authid
             UNION ALL SELECT datname, datallowconn, datacl::text, datistemplate, false
               FROM pg_database) AS x""",
    )
    for db in dbs:
        if su(t, "SELECT datallowconn FROM pg_database WHERE datname = %s", (db,)) != [(True,)]:
            continue
        rows += su(t, "SELECT md5(string_agg(oid::text || proname, ',')) FROM pg_proc", db=db)
    return rows


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_the_audit_reports_each_planted_violation_and_changes_nothing(t, auth, plant):
    statement, kind = PLANTS[plant]
    shop = t.b.name("shop")
    login, _ = t.grant(1, "shop", shop)
    other_login, _ = t.grant(2, "other", t.b.name("other"))
    names = {
        "shop": sql.Identifier(shop),
        "login": sql.Identifier(login),
        "other_login": sql.Identifier(other_login),
        "other_owner": sql.Identifier(t.owner(t.b.name("other"))),
        "owner": sql.Identifier(t.owner(shop)),
        "group": sql.Identifier(group_role_for(t.b.owner_tag)),
        "stray": sql.Identifier(client_username(999, t.b.owner_tag)),
        "auth": sql.Identifier(t.b.auth_user()),
    }
    text, _, where = statement.partition(" @")
    db = t.b.creds.dbname if where == "auth" else shop
    su(t, sql.SQL(text).format(**names).as_string(), db=db)  # type: ignore[arg-type]
    before = _catalog_fingerprint(t, [shop, t.b.creds.dbname])
    found = audit(t)
    assert kind in {v.kind for v in found}, found
    assert _catalog_fingerprint(t, [shop, t.b.creds.dbname]) == before
    # Undo what would outlive the test's clean-up.
    if plant in ("template", "closed"):
        su(t, f"ALTER DATABASE {shop} IS_TEMPLATE false ALLOW_CONNECTIONS true")
    if plant.startswith("auth-"):
        # The fixture's clean-up drops the auth role; what was planted on it must go first.
        undo = {
            "auth-attribute": "ALTER ROLE {auth} NOCREATEROLE",
            "auth-member": "REVOKE {auth} FROM {other_login}",
            "auth-membership": "REVOKE pg_read_all_data FROM {auth}",
            "auth-setting": "ALTER ROLE {auth} RESET search_path",
        }[plant]
        su(t, sql.SQL(undo).format(**names).as_string())  # type: ignore[arg-type]
    if plant == "console-user":
        su(t, "DROP ROLE pgbouncer_admin")
    if plant == "stray-login":
        su(t, sql.SQL("DROP ROLE {stray}").format(**names).as_string())  # type: ignore[arg-type]
