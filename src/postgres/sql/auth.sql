-- The auth lookup plumbing: login role, definer role, schema, function, grants.
-- Each statement follows a "-- name: <key>" line. Placeholders in braces are filled by
-- psycopg.sql (Identifier or Literal) only; %(x)s placeholders are bound parameters.

-- name: create_auth_role
CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

-- name: alter_auth_role
ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

-- name: limit_auth_role
-- The auth role can connect wherever PUBLIC may (the PostgreSQL charm leaves CONNECT on
-- postgres and template1 to PUBLIC). What it does there is bounded: read-only transactions by
-- default, no temporary files, short statements. A session may turn read-only off again;
-- docs/security.md says so and tests/functional/test_tenancy.py pins what it can do.
ALTER ROLE {role} SET default_transaction_read_only = on

-- name: limit_auth_role_timeout
ALTER ROLE {role} SET statement_timeout = '5s'

-- name: limit_auth_role_temp
ALTER ROLE {role} SET temp_file_limit = 0

-- name: create_definer_role
CREATE ROLE {role} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

-- name: alter_definer_role
ALTER ROLE {role} WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

-- name: grant_authid_columns
-- Exactly the columns the lookup reads, in this database only (pg_authid's ACL lives in each
-- database's own pg_class).
GRANT SELECT (rolname, rolpassword, rolcanlogin, rolsuper, rolreplication, rolvaliduntil)
    ON TABLE pg_catalog.pg_authid TO {role}

-- name: revoke_authid_columns
REVOKE SELECT (rolname, rolpassword, rolcanlogin, rolsuper, rolreplication, rolvaliduntil)
    ON TABLE pg_catalog.pg_authid FROM {role}

-- name: schema_info
SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner) AS owner,
       pg_catalog.obj_description(n.oid, 'pg_namespace') AS comment
  FROM pg_catalog.pg_namespace AS n
 WHERE n.nspname = %(name)s

-- name: schemas_owned_by
SELECT n.nspname, pg_catalog.obj_description(n.oid, 'pg_namespace') AS comment
  FROM pg_catalog.pg_namespace AS n
  JOIN pg_catalog.pg_authid AS a ON a.oid = n.nspowner
 WHERE a.rolname = %(owner)s
 ORDER BY n.nspname

-- name: create_schema
CREATE SCHEMA {schema} AUTHORIZATION {owner}

-- name: alter_schema_owner
ALTER SCHEMA {schema} OWNER TO {owner}

-- name: lock_schema
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC

-- name: grant_schema_usage
GRANT USAGE ON SCHEMA {schema} TO {role}

-- name: comment_schema
COMMENT ON SCHEMA {schema} IS {comment}

-- name: function_info
SELECT p.oid, pg_catalog.obj_description(p.oid, 'pg_proc') AS comment
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE n.nspname = %(schema)s
   AND p.proname = 'get_auth'
   AND p.proargtypes = '25'::pg_catalog.oidvector

-- name: create_issued
-- The verifiers the charm issued to its client roles (postgres/clients.py): the lookup serves
-- these, never a password set since from inside a session. Owned by the definer, read only
-- through the lookup, written only by the relation user (a superuser).
CREATE TABLE IF NOT EXISTS {schema}.issued (
    rolname pg_catalog.text PRIMARY KEY,
    roloid pg_catalog.oid NOT NULL,
    verifier pg_catalog.text NOT NULL
)

-- name: issued_owner
SELECT pg_catalog.pg_get_userbyid(c.relowner), c.relacl IS NULL
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE n.nspname = %(schema)s AND c.relname = 'issued'

-- name: alter_issued_owner
ALTER TABLE {schema}.issued OWNER TO {owner}

-- name: lock_issued
REVOKE ALL ON TABLE {schema}.issued FROM PUBLIC

-- name: drop_issued
DROP TABLE IF EXISTS {schema}.issued RESTRICT

-- name: create_function
-- SECURITY DEFINER with a pinned search_path (pg_temp last, so nothing a caller creates can
-- shadow an operator or function) and every object schema-qualified. One row always: the name
-- asked for, and a password only for an allowed role, so that every refusal looks alike.
-- An allow-list (docs/tenancy.md): a login role with none of: superuser, replication,
-- CREATEROLE, BYPASSRLS, expired, the auth role itself, or a member of any role that has one of
-- those attributes or is a predefined role reaching the server's files or programs or every
-- database's data; and then either
--   - a client role the charm issued (a row in "issued" for this very role, by OID): the
--     verifier the charm issued is served, never the one pg_authid holds now, so a password
--     changed from inside a session (the tenant's, or code running in it) opens nothing; or
--   - a role the operator enrolled by granting this application's client group, not issued:
--     its verifier in pg_authid.
-- Names are compared as text: a cast to name would truncate a long name onto another role's.
CREATE OR REPLACE FUNCTION {schema}.get_auth(p_usename pg_catalog.text)
RETURNS TABLE (usename pg_catalog.name, passwd pg_catalog.text)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $get_auth$
WITH allowed AS (
    SELECT r.oid, a.rolpassword
      FROM pg_catalog.pg_authid AS a
      JOIN pg_catalog.pg_roles AS r ON r.rolname OPERATOR(pg_catalog.=) a.rolname
     WHERE a.rolname::pg_catalog.text OPERATOR(pg_catalog.=) p_usename
       AND r.rolcanlogin
       AND NOT r.rolsuper
       AND NOT r.rolreplication
       AND NOT r.rolcreaterole
       AND NOT r.rolbypassrls
       AND (r.rolvaliduntil IS NULL
            OR r.rolvaliduntil OPERATOR(pg_catalog.>) pg_catalog.now())
       AND r.rolname OPERATOR(pg_catalog.<>) {auth_role_name}::pg_catalog.name
       AND NOT EXISTS (
             SELECT 1
               FROM pg_catalog.pg_roles AS s
              WHERE s.oid OPERATOR(pg_catalog.<>) r.oid
                AND (s.rolsuper OR s.rolreplication OR s.rolcreaterole OR s.rolbypassrls
                     OR s.rolname OPERATOR(pg_catalog.=) ANY (ARRAY[
                          'pg_execute_server_program', 'pg_read_server_files',
                          'pg_write_server_files', 'pg_read_all_data',
                          'pg_write_all_data']::pg_catalog.name[]))
                AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER'))
), issued AS (
    SELECT i.roloid, i.verifier
      FROM {schema}.issued AS i
     WHERE i.rolname OPERATOR(pg_catalog.=) p_usename
)
SELECT p_usename::pg_catalog.name,
       CASE WHEN EXISTS (SELECT 1 FROM issued)
            THEN (SELECT i.verifier
                    FROM issued AS i
                    JOIN allowed AS w ON w.oid OPERATOR(pg_catalog.=) i.roloid)
            ELSE (SELECT w.rolpassword
                    FROM allowed AS w
                   WHERE pg_catalog.pg_has_role(w.oid, {group_name}::pg_catalog.name, 'MEMBER'))
       END
$get_auth$

-- name: alter_function_owner
ALTER FUNCTION {schema}.get_auth(pg_catalog.text) OWNER TO {owner}

-- name: lock_function
REVOKE ALL ON FUNCTION {schema}.get_auth(pg_catalog.text) FROM PUBLIC, {owner}

-- name: grant_function
GRANT EXECUTE ON FUNCTION {schema}.get_auth(pg_catalog.text) TO {role}

-- name: comment_function
COMMENT ON FUNCTION {schema}.get_auth(pg_catalog.text) IS {comment}

-- name: drop_function
DROP FUNCTION IF EXISTS {schema}.get_auth(pg_catalog.text) RESTRICT

-- name: drop_schema
DROP SCHEMA IF EXISTS {schema} RESTRICT

-- name: lock_database
-- Only roles granted CONNECT reach the auth database (superusers are not affected).
REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC

-- name: grant_database_connect
GRANT CONNECT ON DATABASE {database} TO {role}

-- name: marked_roles
SELECT a.rolname, a.rolcanlogin
  FROM pg_catalog.pg_authid AS a
 WHERE pg_catalog.shobj_description(a.oid, 'pg_authid') = %(comment)s
 ORDER BY a.rolname

-- name: auth_schemas
-- The auth schemas of this application (their comment is the exact mark): where the issued
-- verifiers live.
SELECT n.nspname
  FROM pg_catalog.pg_namespace AS n
 WHERE pg_catalog.obj_description(n.oid, 'pg_namespace') = %(comment)s
 ORDER BY n.nspname

-- name: auth_query
SELECT usename, passwd FROM {schema}.get_auth($1)

-- name: members_of
SELECT pg_catalog.count(*) FROM pg_catalog.pg_auth_members AS m WHERE m.roleid = %(oid)s

-- name: clear_password
-- rotate-credentials: the generation no unit uses any more keeps no verifier.
ALTER ROLE {role} PASSWORD NULL
