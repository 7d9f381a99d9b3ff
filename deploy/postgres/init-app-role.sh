#!/bin/sh
# Runs once, when PostgreSQL's data volume is new (docker-entrypoint-initdb.d): the gateway's runtime role.
# It gets its privileges from `creditgate migrate --grant creditgate_app` (rows, sequences, functions; no DDL)
# and no temporary tables either: the gateway needs none.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set app_password="$DB_APP_PASSWORD" --set db="$POSTGRES_DB" <<'SQL'
CREATE ROLE creditgate_app LOGIN PASSWORD :'app_password';
REVOKE TEMPORARY ON DATABASE :"db" FROM PUBLIC;
SQL
