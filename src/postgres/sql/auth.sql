-- The auth lookup plumbing: login role, definer role, schema, function, grants.
-- Each statement follows a "-- name: <key>" line. Placeholders in braces are filled by
-- psycopg.sql (Identifier or Literal) only; %(x)s placeholders are bound parameters.

-- name: create_auth_role
CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

-- name: alter_auth_role
ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    NOINHERIT

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

-- name: create_function
-- SECURITY DEFINER with a pinned search_path (pg_temp last, so nothing a caller creates can
-- shadow an operator or function) and every object schema-qualified. One row always: the name
-- asked for, and a password only for an ordinary login role, so that every refusal looks alike.
-- Names are compared as text: a cast to name would truncate a long name onto another role's.
CREATE OR REPLACE FUNCTION {schema}.get_auth(p_usename pg_catalog.text)
RETURNS TABLE (usename pg_catalog.name, passwd pg_catalog.text)
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $get_auth$
SELECT p_usename::pg_catalog.name,
       (SELECT a.rolpassword
          FROM pg_catalog.pg_authid AS a
         WHERE a.rolname::pg_catalog.text OPERATOR(pg_catalog.=) p_usename
           AND a.rolcanlogin
           AND NOT a.rolsuper
           AND NOT a.rolreplication
           AND (a.rolvaliduntil IS NULL
                OR a.rolvaliduntil OPERATOR(pg_catalog.>) pg_catalog.now())
           AND a.rolname OPERATOR(pg_catalog.<>) {auth_role_name}::pg_catalog.name)
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

-- name: auth_query
SELECT usename, passwd FROM {schema}.get_auth($1)
