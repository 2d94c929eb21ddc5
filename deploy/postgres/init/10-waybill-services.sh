#!/usr/bin/env bash
# First start of the compose PostgreSQL container (docker-entrypoint-initdb.d): one role
# waybill_<service> owning schema <service> for each service, with the password from
# WAYBILL_<SERVICE>_DB_PASSWORD. The SQL is deploy/postgres/provision-service.sql, the
# same file operators run against an external server.
# Runs only when the data volume is empty: after changing a password, run that SQL
# again (see deploy/README.md) or start from a fresh volume (docker compose down -v).
set -euo pipefail

sql_file="${WAYBILL_PROVISION_SQL:-/waybill/provision-service.sql}"

for service in orders inventory shipping returns; do
    variable="WAYBILL_${service^^}_DB_PASSWORD"
    password="${!variable:-}"
    if [[ -z "$password" ]]; then
        echo "$variable is not set: cannot create the role waybill_$service" >&2
        exit 1
    fi
    psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 \
        --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        --set service="$service" --set password="$password" \
        --file "$sql_file" > /dev/null
    echo "waybill: role waybill_$service owns schema $service"
done
