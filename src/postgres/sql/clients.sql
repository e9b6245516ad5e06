-- Users and databases for the client `database` relation (docs/tenancy.md).
-- Each statement follows a "-- name: <key>" line. Placeholders in braces are filled by
-- psycopg.sql (Identifier, Literal or one of our own fixed keywords) only; %(x)s placeholders
-- are bound parameters.

-- name: create_client_role
CREATE ROLE {role} WITH LOGIN NOSUPERUSER {createdb} NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT

-- name: alter_client_role
ALTER ROLE {role} WITH LOGIN NOSUPERUSER {createdb} NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT CONNECTION LIMIT -1 VALID UNTIL 'infinity'

-- name: role_state
-- What the charm compares before it alters a role: it never alters one that is as it should be
-- (a tenant can hold a lock on its own role's row, and on the owner role it acts as).
SELECT a.oid, a.rolcanlogin, a.rolpassword, a.rolsuper, a.rolinherit, a.rolcreaterole,
       a.rolcreatedb, a.rolreplication, a.rolbypassrls, a.rolconnlimit,
       a.rolvaliduntil IS NULL OR a.rolvaliduntil OPERATOR(pg_catalog.=) 'infinity' AS forever,
       pg_catalog.shobj_description(a.oid, 'pg_authid') AS comment
  FROM pg_catalog.pg_authid AS a
 WHERE a.rolname = %(name)s

-- name: create_tenant_role
-- Owner roles, the client group and the orphan role: no login, no attribute, no membership.
-- INHERIT: an owner role reaches the public schema through its implicit membership of
-- pg_database_owner, which NOINHERIT would cut.
CREATE ROLE {role} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT

-- name: alter_tenant_role
ALTER ROLE {role} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT CONNECTION LIMIT -1 PASSWORD NULL VALID UNTIL 'infinity'

-- name: memberships_of
-- Roles the given role is a member of, directly.
SELECT pg_catalog.pg_get_userbyid(m.roleid)
  FROM pg_catalog.pg_auth_members AS m
 WHERE m.member = %(oid)s
 ORDER BY 1

-- name: revoke_membership
REVOKE {group} FROM {role}

-- name: grant_membership
GRANT {group} TO {role}

-- name: role_settings_in
-- The settings of a role in a database (none: no row).
SELECT s.setconfig
  FROM pg_catalog.pg_db_role_setting AS s
 WHERE s.setrole = %(role)s AND s.setdatabase = %(database)s

-- name: set_role_in_database
-- Sessions of the client in its database act as the database's owner role: what they create
-- belongs to the owner role, outlives the relation and is shared with the other relations.
ALTER ROLE {role} IN DATABASE {database} SET role = {owner}

-- name: disable_login
ALTER ROLE {role} WITH NOLOGIN

-- name: terminate_sessions
-- Ends the role's sessions and waits (up to 5 s each) until they are gone, with their locks.
SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(s.pid, 5000))
  FROM pg_catalog.pg_stat_activity AS s
 WHERE s.usesysid = %(oid)s
   AND s.pid <> pg_catalog.pg_backend_pid()

-- name: blockers_of
-- Sessions the given backend waits on, and whether each is a tenant's (its login role, or a
-- role it is a member of, is one of this application's tenant roles; never a superuser).
SELECT s.pid, s.usename::pg_catalog.text,
       NOT r.rolsuper AND (
           r.rolname OPERATOR(pg_catalog.~) %(pattern)s
           OR EXISTS (SELECT 1
                        FROM pg_catalog.pg_roles AS g
                       WHERE g.rolname OPERATOR(pg_catalog.~) %(pattern)s
                         AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')))
  FROM pg_catalog.pg_stat_activity AS s
  JOIN pg_catalog.pg_roles AS r ON r.oid OPERATOR(pg_catalog.=) s.usesysid
 WHERE s.pid OPERATOR(pg_catalog.=)
       ANY (pg_catalog.pg_blocking_pids(%(pid)s::pg_catalog.int4))

-- name: terminate_pid
SELECT pg_catalog.pg_terminate_backend(%(pid)s::pg_catalog.int4, 5000)

-- name: database_info
SELECT d.oid, d.datistemplate, d.datallowconn,
       pg_catalog.pg_get_userbyid(d.datdba) AS owner,
       pg_catalog.shobj_description(d.oid, 'pg_database') AS comment
  FROM pg_catalog.pg_database AS d
 WHERE d.datname = %(name)s

-- name: database_state
-- Everything about a database object that a tenant, or anyone, could have changed: its owner,
-- flags, connection limit, who holds which privilege on it, and whether it has settings of its
-- own. The ACL is exploded with the owner's implicit default when it is NULL.
SELECT d.oid, d.datdba, d.datistemplate, d.datallowconn, d.datconnlimit,
       pg_catalog.shobj_description(d.oid, 'pg_database') AS comment,
       ARRAY(SELECT pg_catalog.format('%%s:%%s:%%s', x.grantee, x.privilege_type, x.is_grantable)
               FROM pg_catalog.aclexplode(
                      COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba))) AS x
              WHERE x.grantee OPERATOR(pg_catalog.<>) d.datdba
              ORDER BY 1) AS grants,
       EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting AS s
                WHERE s.setdatabase OPERATOR(pg_catalog.=) d.oid
                  AND s.setrole OPERATOR(pg_catalog.=) 0) AS has_settings
  FROM pg_catalog.pg_database AS d
 WHERE d.datname = %(name)s

-- name: create_database
-- From template0: a session anyone holds on template1 (PUBLIC may connect there) cannot stall
-- it, and nothing planted in template1 is copied.
CREATE DATABASE {database} OWNER {role} TEMPLATE template0

-- name: database_not_template
ALTER DATABASE {database} WITH IS_TEMPLATE false

-- name: database_allow_connections
ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true

-- name: database_no_connection_limit
ALTER DATABASE {database} WITH CONNECTION LIMIT -1

-- name: revoke_database_from
REVOKE ALL ON DATABASE {database} FROM {role} CASCADE

-- name: grant_database_to_owner
-- The tenants' rights on their database, through its owner role: connect, create schemas (and
-- trusted extensions), temporary tables. Not the database object itself.
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {database} TO {role}

-- name: public_schema_owner
SELECT pg_catalog.pg_get_userbyid(n.nspowner)
  FROM pg_catalog.pg_namespace AS n
 WHERE n.nspname = 'public'

-- name: give_public_schema
ALTER SCHEMA public OWNER TO {role}

-- name: databases_owned_by
SELECT d.datname, d.datallowconn
  FROM pg_catalog.pg_database AS d
 WHERE d.datdba = %(oid)s
 ORDER BY d.datname

-- name: alter_database_owner
ALTER DATABASE {database} OWNER TO {role}

-- name: lock_database
REVOKE ALL ON DATABASE {database} FROM PUBLIC

-- name: record_issued
-- The verifier the charm issued, which the auth lookup serves (auth.sql, get_auth) instead of
-- whatever pg_authid holds now: a password a session changes is not a key to the pooler.
INSERT INTO {schema}.issued AS i (rolname, roloid, verifier)
VALUES (%(name)s, %(oid)s, %(verifier)s)
ON CONFLICT (rolname) DO UPDATE
   SET roloid = excluded.roloid, verifier = excluded.verifier
 WHERE (i.roloid, i.verifier) IS DISTINCT FROM (excluded.roloid, excluded.verifier)

-- name: forget_issued
DELETE FROM {schema}.issued WHERE rolname = %(name)s

-- name: comment_database
COMMENT ON DATABASE {database} IS {comment}

-- name: database_settings
-- Settings that apply in the database (setrole 0: every role; else one role there).
SELECT s.setrole, pg_catalog.pg_get_userbyid(s.setrole) AS role_name, s.setconfig
  FROM pg_catalog.pg_db_role_setting AS s
 WHERE s.setdatabase = %(oid)s
 ORDER BY s.setrole

-- name: reset_database_settings
ALTER DATABASE {database} RESET ALL

-- name: reset_role_settings_in_database
ALTER ROLE {role} IN DATABASE {database} RESET ALL

-- name: foreign_objects
-- Objects in the current database owned by any role but the allowed ones (the database's
-- owner role for a hand-over; also its live holders' logins for the audit), except
-- built-in objects (OID below 16384) and members of an extension (the server's own scripts).
-- Such an object would run or be read with its owner's rights by whoever takes the database.
WITH owned (catalog, oid, owner) AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid, c.relowner
      FROM pg_catalog.pg_class AS c
    UNION ALL
    SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, p.proowner
      FROM pg_catalog.pg_proc AS p
    UNION ALL
    SELECT 'pg_catalog.pg_namespace'::pg_catalog.regclass, n.oid, n.nspowner
      FROM pg_catalog.pg_namespace AS n
    UNION ALL
    SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid, t.typowner
      FROM pg_catalog.pg_type AS t
    UNION ALL
    SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid, o.oprowner
      FROM pg_catalog.pg_operator AS o
    UNION ALL
    SELECT 'pg_catalog.pg_extension'::pg_catalog.regclass, e.oid, e.extowner
      FROM pg_catalog.pg_extension AS e
    UNION ALL
    SELECT 'pg_catalog.pg_event_trigger'::pg_catalog.regclass, v.oid, v.evtowner
      FROM pg_catalog.pg_event_trigger AS v
    UNION ALL
    SELECT 'pg_catalog.pg_language'::pg_catalog.regclass, l.oid, l.lanowner
      FROM pg_catalog.pg_language AS l
    UNION ALL
    SELECT 'pg_catalog.pg_collation'::pg_catalog.regclass, k.oid, k.collowner
      FROM pg_catalog.pg_collation AS k
    UNION ALL
    SELECT 'pg_catalog.pg_conversion'::pg_catalog.regclass, x.oid, x.conowner
      FROM pg_catalog.pg_conversion AS x
    UNION ALL
    SELECT 'pg_catalog.pg_opclass'::pg_catalog.regclass, oc.oid, oc.opcowner
      FROM pg_catalog.pg_opclass AS oc
    UNION ALL
    SELECT 'pg_catalog.pg_opfamily'::pg_catalog.regclass, f.oid, f.opfowner
      FROM pg_catalog.pg_opfamily AS f
    UNION ALL
    SELECT 'pg_catalog.pg_ts_config'::pg_catalog.regclass, tc.oid, tc.cfgowner
      FROM pg_catalog.pg_ts_config AS tc
    UNION ALL
    SELECT 'pg_catalog.pg_ts_dict'::pg_catalog.regclass, td.oid, td.dictowner
      FROM pg_catalog.pg_ts_dict AS td
    UNION ALL
    SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, se.oid, se.stxowner
      FROM pg_catalog.pg_statistic_ext AS se
    UNION ALL
    SELECT 'pg_catalog.pg_foreign_data_wrapper'::pg_catalog.regclass, w.oid, w.fdwowner
      FROM pg_catalog.pg_foreign_data_wrapper AS w
    UNION ALL
    SELECT 'pg_catalog.pg_foreign_server'::pg_catalog.regclass, fs.oid, fs.srvowner
      FROM pg_catalog.pg_foreign_server AS fs
    UNION ALL
    SELECT 'pg_catalog.pg_publication'::pg_catalog.regclass, pb.oid, pb.pubowner
      FROM pg_catalog.pg_publication AS pb
    UNION ALL
    SELECT 'pg_catalog.pg_largeobject'::pg_catalog.regclass, lo.oid, lo.lomowner
      FROM pg_catalog.pg_largeobject_metadata AS lo
)
SELECT pg_catalog.pg_describe_object(o.catalog, o.oid, 0) AS object,
       pg_catalog.pg_get_userbyid(o.owner) AS owner
  FROM owned AS o
 WHERE o.oid OPERATOR(pg_catalog.>=) 16384
   AND pg_catalog.pg_get_userbyid(o.owner) OPERATOR(pg_catalog.<>)
       ALL (%(allowed)s::pg_catalog.text[])
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                    WHERE d.classid OPERATOR(pg_catalog.=) o.catalog
                      AND d.objid OPERATOR(pg_catalog.=) o.oid
                      AND d.deptype OPERATOR(pg_catalog.=) 'e')
 ORDER BY 1
 LIMIT %(limit)s

-- name: databases_with_objects_of
-- Databases where the role owns objects or holds privileges (pg_shdepend), plus the ones it
-- owns: where REASSIGN OWNED / DROP OWNED must run (also those refusing connections: the
-- caller decides whether it may open them).
SELECT d.datname, d.datallowconn
  FROM pg_catalog.pg_database AS d
 WHERE (d.datdba = %(oid)s
        OR d.oid IN (SELECT s.dbid FROM pg_catalog.pg_shdepend AS s
                      WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                        AND s.refobjid = %(oid)s))
 ORDER BY d.datname

-- name: reassign_owned
REASSIGN OWNED BY {role} TO {new_owner}

-- name: drop_owned
DROP OWNED BY {role}

-- name: issued_state
-- For each of the given roles: its OID and verifier in pg_authid, what the charm issued, and
-- whether it is (still) a member of the client group, which tenants no longer are.
SELECT a.rolname::pg_catalog.text, a.oid, a.rolpassword, i.roloid, i.verifier,
       EXISTS (SELECT 1
                 FROM pg_catalog.pg_auth_members AS m
                 JOIN pg_catalog.pg_roles AS g ON g.oid OPERATOR(pg_catalog.=) m.roleid
                WHERE m.member OPERATOR(pg_catalog.=) a.oid
                  AND g.rolname OPERATOR(pg_catalog.=) %(group)s) AS in_group
  FROM pg_catalog.pg_authid AS a
  LEFT JOIN {schema}.issued AS i ON i.rolname OPERATOR(pg_catalog.=) a.rolname::pg_catalog.text
 WHERE a.rolname::pg_catalog.text OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.text[])

-- name: issued_names
SELECT i.rolname FROM {schema}.issued AS i ORDER BY 1

-- name: settings_of_roles
-- Every setting of the given roles: role-wide (database 0) and per database.
SELECT s.setrole, s.setdatabase, COALESCE(d.datname, ''), s.setconfig
  FROM pg_catalog.pg_db_role_setting AS s
  LEFT JOIN pg_catalog.pg_database AS d ON d.oid OPERATOR(pg_catalog.=) s.setdatabase
 WHERE s.setrole OPERATOR(pg_catalog.=) ANY (%(oids)s::pg_catalog.oid[])
 ORDER BY 1, 2

-- name: reset_role_settings
ALTER ROLE {role} RESET ALL

-- name: grants_across
-- (login role, database) pairs where one of the given roles holds privileges, default
-- privileges or objects (pg_shdepend, a shared catalog: one query from any database).
SELECT DISTINCT s.refobjid, s.dbid
  FROM pg_catalog.pg_shdepend AS s
 WHERE s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass
   AND s.refobjid OPERATOR(pg_catalog.=) ANY (%(roles)s::pg_catalog.oid[])
   AND s.dbid OPERATOR(pg_catalog.=) ANY (%(databases)s::pg_catalog.oid[])
 ORDER BY 1, 2
