-- Statements shared by the auth plumbing and the client users.
-- Each statement follows a "-- name: <key>" line. Placeholders in braces are filled by
-- psycopg.sql (Identifier or Literal) only; %(x)s placeholders are bound parameters.

-- name: quiet_transaction
-- A statement that sets a password verifier must reach neither the server log nor
-- pg_stat_statements; the settings last until the end of the current transaction.
SELECT pg_catalog.set_config('log_statement', 'none', true),
       pg_catalog.set_config('log_min_duration_statement', '-1', true),
       pg_catalog.set_config('log_min_error_statement', 'panic', true),
       pg_catalog.set_config('pg_stat_statements.track_utility', 'off', true)

-- name: role_info
SELECT a.oid, a.rolcanlogin, a.rolpassword,
       pg_catalog.shobj_description(a.oid, 'pg_authid') AS comment
  FROM pg_catalog.pg_authid AS a
 WHERE a.rolname = %(name)s

-- name: set_password
ALTER ROLE {role} WITH PASSWORD {verifier}

-- name: comment_role
COMMENT ON ROLE {role} IS {comment}

-- name: databases_granting
-- Databases whose ACL names the role (as grantee): privileges to revoke before DROP ROLE.
SELECT d.datname
  FROM pg_catalog.pg_database AS d, pg_catalog.aclexplode(d.datacl) AS x
 WHERE x.grantee = %(oid)s
 GROUP BY d.datname
 ORDER BY d.datname

-- name: revoke_database
REVOKE ALL ON DATABASE {database} FROM {role}

-- name: drop_role
DROP ROLE IF EXISTS {role}

-- name: server_version
SELECT pg_catalog.current_setting('server_version')
