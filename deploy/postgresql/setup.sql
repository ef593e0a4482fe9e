-- PostgreSQL roles and databases for the facility's Tiled server (PostgreSQL 15).
-- Run as the database superuser, through deploy/postgresql/setup.sh, which passes
--   :tiled_verifier  the SCRAM-SHA-256 verifier of the tiled role's password (computed by
--                    setup.sh on the client side, so the password itself never reaches the
--                    server, its log or pg_stat_activity; only the salted verifier does).
-- Re-running it is safe: every object is created only if missing and the password is reset.
\set ON_ERROR_STOP on

-- One login role for the Tiled server. It owns its databases (so Tiled can create its tables
-- and run its migrations) and nothing else: no superuser, no role or database creation.
SELECT 'CREATE ROLE tiled LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tiled')\gexec
ALTER ROLE tiled PASSWORD :'tiled_verifier';

-- tiled_catalog: the catalog (nodes, metadata, data sources, revisions) and the access tags
--                that TagBasedAccessPolicy reads (compiled there by compile_access_tags.py).
-- tiled_storage: appendable tables (the live loss tables), written through ADBC.
-- tiled_auth:    principals, sessions and API keys (only hashes of the keys are stored).
SELECT 'CREATE DATABASE tiled_catalog OWNER tiled ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tiled_catalog')\gexec
SELECT 'CREATE DATABASE tiled_storage OWNER tiled ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tiled_storage')\gexec
SELECT 'CREATE DATABASE tiled_auth OWNER tiled ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tiled_auth')\gexec

-- Nobody else may connect to them (PUBLIC has CONNECT on new databases by default).
REVOKE CONNECT, TEMPORARY ON DATABASE tiled_catalog, tiled_storage, tiled_auth FROM PUBLIC;
