#!/bin/sh
# Creates the responder's own role and database next to Prefect's (POSTGRES_DB) on the stack's
# PostgreSQL. The postgres image runs /docker-entrypoint-initdb.d/* once, when the data volume is
# empty: after changing RESPONDER_DB_PASSWORD on an existing volume, run
#   ALTER ROLE responder PASSWORD '…';
# by hand. The password comes from the environment (docker-compose.yml passes
# RESPONDER_DB_PASSWORD), never from this file.
set -eu

: "${RESPONDER_DB_PASSWORD:?RESPONDER_DB_PASSWORD must be set for the responder database}"

# psql variables (:'name') quote the values, so a password with quotes cannot break the SQL.
psql -v ON_ERROR_STOP=1 --no-psqlrc \
     --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
     -v responder_password="$RESPONDER_DB_PASSWORD" <<'SQL'
CREATE ROLE responder LOGIN PASSWORD :'responder_password';
CREATE DATABASE responder OWNER responder;
REVOKE ALL ON DATABASE responder FROM PUBLIC;
SQL
