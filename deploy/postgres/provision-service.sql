-- One Waybill service's PostgreSQL role and schema: the same result as
-- shared/infra/provision.py (provision_service_database), for operators who use psql.
--
--   psql "$ADMIN_URL" -v service=orders -v password="$ORDERS_DB_PASSWORD" \
--        -f deploy/postgres/provision-service.sql
--
-- Creates (or brings up to date) the login role waybill_<service> that owns the schema
-- <service>, may connect to the current database and may not create anything in public.
-- Safe to run again: it then only sets the password and re-asserts ownership.
-- Run it as a role that can create roles (a superuser or one with CREATEROLE and
-- CREATE on the database).

\set ON_ERROR_STOP on

-- psql does not substitute variables inside dollar-quoted bodies: pass them as settings.
SET waybill.service TO :'service';
SET waybill.password TO :'password';

DO $$
BEGIN
    -- the same rule as shared.infra.provision.service_schema
    IF current_setting('waybill.service') !~ '^[a-z][a-z0-9_]{0,54}$' THEN
        RAISE EXCEPTION 'invalid service name %: expected lower-case letters, digits and underscores, starting with a letter, at most 55 characters',
            quote_literal(current_setting('waybill.service'));
    END IF;
    IF current_setting('waybill.password') = '' THEN
        RAISE EXCEPTION 'the password of waybill_% must not be empty',
            current_setting('waybill.service');
    END IF;
END
$$;

BEGIN;
-- the lock shared/infra/provision.py takes ("waybill\0" as a bigint): one provisioning at a time
SELECT pg_advisory_xact_lock(8602290226836827136);

SELECT format('CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE',
              'waybill_' || :'service')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'waybill_' || :'service') \gexec

SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', 'waybill_' || :'service', :'password') \gexec
SELECT format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I',
              :'service', 'waybill_' || :'service') \gexec
-- the schema may predate the role, or have been handed to someone else since
SELECT format('ALTER SCHEMA %I OWNER TO %I', :'service', 'waybill_' || :'service') \gexec
SELECT format('REVOKE CREATE ON SCHEMA public FROM %I', 'waybill_' || :'service') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I',
              current_database(), 'waybill_' || :'service') \gexec
COMMIT;
