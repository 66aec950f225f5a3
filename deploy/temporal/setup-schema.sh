#!/bin/sh
# Creates Temporal's two databases in the project's PostgreSQL and brings their schemas up to date.
# Runs in the official temporalio/admin-tools image before the server starts, on every `up`:
# `create` ignores an existing database, `setup-schema -v 0.0` never lowers a newer version, and
# `update-schema` applies only the versions still missing, so re-running it is harmless.
set -eu

: "${POSTGRES_SEEDS:?POSTGRES_SEEDS (the PostgreSQL host) is required}"
: "${POSTGRES_USER:?POSTGRES_USER is required}"
: "${SQL_PASSWORD:?SQL_PASSWORD (read by temporal-sql-tool) is required}"
port="${DB_PORT:-5432}"
schema_root="${TEMPORAL_SCHEMA_ROOT:-/etc/temporal/schema/postgresql/v12}"

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$port" -u "$POSTGRES_USER" "$@"
}

for pair in "${DBNAME:-temporal}:temporal" "${VISIBILITY_DBNAME:-temporal_visibility}:visibility"; do
    database="${pair%%:*}"
    kind="${pair##*:}"
    echo "setup-schema: database $database ($kind)"
    sql_tool --db "$database" create
    sql_tool --db "$database" setup-schema -v 0.0
    sql_tool --db "$database" update-schema -d "$schema_root/$kind/versioned"
done
echo "setup-schema: done"
