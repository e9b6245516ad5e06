-- Users and databases for the client `database` relation.
-- Each statement follows a "-- name: <key>" line. Placeholders in braces are filled by
-- psycopg.sql (Identifier, Literal or one of our own fixed keywords) only; %(x)s placeholders
-- are bound parameters.

-- name: create_client_role
CREATE ROLE {role} WITH LOGIN NOSUPERUSER {createdb} NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT

-- name: alter_client_role
ALTER ROLE {role} WITH LOGIN NOSUPERUSER {createdb} NOCREATEROLE NOREPLICATION NOBYPASSRLS
    INHERIT

-- name: disable_login
ALTER ROLE {role} WITH NOLOGIN

-- name: terminate_sessions
SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(s.pid))
  FROM pg_catalog.pg_stat_activity AS s
 WHERE s.usesysid = %(oid)s
   AND s.pid <> pg_catalog.pg_backend_pid()

-- name: database_info
SELECT d.oid, d.datistemplate, d.datallowconn,
       pg_catalog.pg_get_userbyid(d.datdba) AS owner,
       pg_catalog.shobj_description(d.oid, 'pg_database') AS comment
  FROM pg_catalog.pg_database AS d
 WHERE d.datname = %(name)s

-- name: create_database
CREATE DATABASE {database} OWNER {role}

-- name: alter_database_owner
ALTER DATABASE {database} OWNER TO {role}

-- name: lock_database
REVOKE CONNECT ON DATABASE {database} FROM PUBLIC

-- name: grant_database_connect
GRANT CONNECT ON DATABASE {database} TO {role}

-- name: comment_database
COMMENT ON DATABASE {database} IS {comment}

-- name: databases_with_objects_of
-- Databases where the role owns objects or holds privileges (pg_shdepend), plus the ones it
-- owns: where REASSIGN OWNED / DROP OWNED must run.
SELECT d.datname
  FROM pg_catalog.pg_database AS d
 WHERE d.datallowconn
   AND (d.datdba = %(oid)s
        OR d.oid IN (SELECT s.dbid FROM pg_catalog.pg_shdepend AS s
                      WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
                        AND s.refobjid = %(oid)s))
 ORDER BY d.datname

-- name: reassign_owned
REASSIGN OWNED BY {role} TO {new_owner}

-- name: drop_owned
DROP OWNED BY {role}
