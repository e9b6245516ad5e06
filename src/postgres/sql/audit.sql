-- The tenancy audit (postgres/audit.py): read-only catalog queries, nothing locked beyond the
-- catalogs' own share locks. Each statement follows a "-- name: <key>" line; %(x)s placeholders
-- are bound parameters; {schema} is filled by psycopg.sql.

-- name: roles
-- Roles named like one of this application's tenant roles (``pattern``; NULL: none), or named
-- in ``names``: attributes, direct memberships both ways, and settings ("<database oid>:
-- <setting>", 0 for role-wide).
SELECT r.oid, r.rolname::pg_catalog.text, r.rolcanlogin, r.rolsuper, r.rolinherit,
       r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
       ARRAY(SELECT g.rolname::pg_catalog.text
               FROM pg_catalog.pg_auth_members AS m
               JOIN pg_catalog.pg_roles AS g ON g.oid OPERATOR(pg_catalog.=) m.roleid
              WHERE m.member OPERATOR(pg_catalog.=) r.oid
              ORDER BY 1) AS member_of,
       ARRAY(SELECT u.rolname::pg_catalog.text
               FROM pg_catalog.pg_auth_members AS m
               JOIN pg_catalog.pg_roles AS u ON u.oid OPERATOR(pg_catalog.=) m.member
              WHERE m.roleid OPERATOR(pg_catalog.=) r.oid
              ORDER BY 1) AS members,
       ARRAY(SELECT pg_catalog.format('%%s:%%s', s.setdatabase, c)
               FROM pg_catalog.pg_db_role_setting AS s,
                    pg_catalog.unnest(s.setconfig) AS c
              WHERE s.setrole OPERATOR(pg_catalog.=) r.oid
              ORDER BY 1) AS settings
  FROM pg_catalog.pg_roles AS r
 WHERE r.rolname OPERATOR(pg_catalog.~) %(pattern)s::pg_catalog.text
    OR r.rolname::pg_catalog.text OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.text[])
 ORDER BY 2

-- name: members_of_tenant_roles
-- Who is a member of one of our tenant roles (group, owner, orphan, databases roles).
SELECT g.rolname::pg_catalog.text, u.rolname::pg_catalog.text
  FROM pg_catalog.pg_auth_members AS m
  JOIN pg_catalog.pg_roles AS g ON g.oid OPERATOR(pg_catalog.=) m.roleid
  JOIN pg_catalog.pg_roles AS u ON u.oid OPERATOR(pg_catalog.=) m.member
 WHERE g.rolname OPERATOR(pg_catalog.~) %(pattern)s
 ORDER BY 1, 2

-- name: tenant_databases
SELECT d.datname::pg_catalog.text, d.oid, pg_catalog.pg_get_userbyid(d.datdba),
       d.datistemplate, d.datallowconn, d.datconnlimit,
       ARRAY(SELECT pg_catalog.format('%%s:%%s',
                      CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                           ELSE pg_catalog.pg_get_userbyid(x.grantee) END,
                      x.privilege_type)
               FROM pg_catalog.aclexplode(
                      COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba))) AS x
              WHERE x.grantee OPERATOR(pg_catalog.<>) d.datdba
              ORDER BY 1) AS grants,
       ARRAY(SELECT pg_catalog.format('%%s:%%s',
                      CASE WHEN s.setrole OPERATOR(pg_catalog.=) 0 THEN ''
                           ELSE pg_catalog.pg_get_userbyid(s.setrole) END, c)
               FROM pg_catalog.pg_db_role_setting AS s,
                    pg_catalog.unnest(s.setconfig) AS c
              WHERE s.setdatabase OPERATOR(pg_catalog.=) d.oid
              ORDER BY 1) AS settings
  FROM pg_catalog.pg_database AS d
 WHERE d.datname OPERATOR(pg_catalog.=) ANY (%(names)s::pg_catalog.text[])
 ORDER BY 1

-- name: tenant_sessions
SELECT s.pid, s.usename::pg_catalog.text, s.datname::pg_catalog.text
  FROM pg_catalog.pg_stat_activity AS s
 WHERE s.usename OPERATOR(pg_catalog.~) %(pattern)s
 ORDER BY 1

-- name: issued_all
SELECT i.rolname, i.roloid, i.verifier, a.oid, a.rolpassword
  FROM {schema}.issued AS i
  LEFT JOIN pg_catalog.pg_authid AS a
         ON a.rolname::pg_catalog.text OPERATOR(pg_catalog.=) i.rolname
 ORDER BY 1

-- name: lookup_function
SELECT pg_catalog.pg_get_userbyid(p.proowner), p.prosecdef, p.proconfig, p.prosrc,
       ARRAY(SELECT CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                         ELSE pg_catalog.pg_get_userbyid(x.grantee) END
               FROM pg_catalog.aclexplode(
                      COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) AS x
              WHERE x.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
              ORDER BY 1) AS executors
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
 WHERE n.nspname OPERATOR(pg_catalog.=) %(schema)s
   AND p.proname OPERATOR(pg_catalog.=) 'get_auth'

-- name: definer_functions
-- SECURITY DEFINER functions of the current database, and whether each pins search_path.
SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text,
       pg_catalog.pg_get_userbyid(p.proowner),
       EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) AS c
                WHERE c OPERATOR(pg_catalog.~~) 'search_path=%%') AS pinned
  FROM pg_catalog.pg_proc AS p
 WHERE p.prosecdef AND p.oid OPERATOR(pg_catalog.>=) 16384
 ORDER BY 1
 LIMIT 20

-- name: default_privileges
-- Default privileges in the current database: who sets them, for what, to whom.
SELECT pg_catalog.pg_get_userbyid(a.defaclrole),
       COALESCE(a.defaclnamespace::pg_catalog.regnamespace::pg_catalog.text, ''),
       a.defaclobjtype::pg_catalog.text,
       CASE WHEN x.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
            ELSE pg_catalog.pg_get_userbyid(x.grantee) END
  FROM pg_catalog.pg_default_acl AS a,
       pg_catalog.aclexplode(a.defaclacl) AS x
 WHERE x.grantee OPERATOR(pg_catalog.<>) a.defaclrole
 GROUP BY 1, 2, 3, 4
 ORDER BY 1, 2, 3, 4

-- name: grantees_in_database
-- Roles (by name) that hold privileges on objects of the current database (pg_shdepend 'a').
SELECT DISTINCT pg_catalog.pg_get_userbyid(s.refobjid)
  FROM pg_catalog.pg_shdepend AS s
 WHERE s.dbid OPERATOR(pg_catalog.=)
       (SELECT d.oid FROM pg_catalog.pg_database AS d
         WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
   AND s.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass
   AND s.deptype OPERATOR(pg_catalog.=) 'a'
 ORDER BY 1
