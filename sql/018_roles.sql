-- Least privilege: one NOLOGIN group role per kind of process, with only the rights that process needs.
-- Login roles are members of these groups (`bacpipes db roles --config F` creates them); nothing but the
-- administrator (migrations, `site link`, `users add`) connects as postgres.
--
--   bacpipes_agent        the edge agent: discovery (device, point), point_state, the command trail
--                         (command_events, command_attempts; inserts write_commands for MQTT intake and
--                         edge ML), inference_log, site_heartbeat, trend-log import; reads the rest except
--                         the app's login tables.
--   bacpipes_ingest       the ingester: staged readings into sensor_readings, readings_hourly, point_state;
--                         ingest_rejects. Reads the catalogue.
--   bacpipes_app_viewer   the app read-only: SELECT on every table, and its own login bookkeeping (it must
--                         check passwords: app_users is readable, never writable).
--   bacpipes_app_operator viewer + write_commands, control_authority, model deployments, the operator's
--                         columns of point, alert acknowledgement. Nothing on readings but SELECT.
--   bacpipes_flows        Prefect flows: baselines, models, deployments, A/B schedule, alerts, retention
--                         (ingest_rejects DELETE; partitions through bacpipes_readings_owner).
--   bacpipes_replication  SELECT on the replicated tables (the link's roles get REPLICATION LOGIN themselves).
--   bacpipes_readings_owner owns sensor_readings and every partition of it: partition DDL (create ahead,
--                         detach, drop) needs ownership. Members: bacpipes_flows (partitions ahead, retention)
--                         and bacpipes_agent (the trend-log import creates the partitions of old days). An
--                         event trigger gives every new partition to it, whoever created it.
--
-- Roles are cluster-wide (several databases share them): each is created only if missing. Grants are per
-- database, and live in bacpipes_grant_roles(), which the migrations runner calls after every run
-- (bacpipes.db.migrate), so tables created by later migrations are covered: viewer/agent/flows read
-- every table (minus the app's login tables); writes are listed by name. A later migration that adds a
-- table someone must write replaces this function with its table added.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['bacpipes_agent', 'bacpipes_ingest', 'bacpipes_app_viewer', 'bacpipes_app_operator',
                             'bacpipes_flows', 'bacpipes_replication', 'bacpipes_readings_owner'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it meanwhile
            END;
        END IF;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION bacpipes_grant_roles() RETURNS void LANGUAGE plpgsql
SET search_path = public, pg_catalog
AS $$
DECLARE
    t text;
    app_private CONSTANT text[] := ARRAY['app_users', 'app_login_attempts', 'app_login_locks'];
    app_login CONSTANT text[] := ARRAY['app_login_attempts', 'app_login_locks'];
    replicated CONSTANT text[] := ARRAY['sensor_readings', 'device', 'point', 'command_events', 'site_heartbeat',
                                        'inference_log', 'data_source', 'readings_hourly', 'write_commands',
                                        'command_attempts'];
    ops CONSTANT text[] := ARRAY[
        -- group role, table, privileges
        'bacpipes_agent', 'device', 'INSERT, UPDATE',
        'bacpipes_agent', 'point', 'INSERT, UPDATE',
        'bacpipes_agent', 'point_state', 'INSERT, UPDATE',
        'bacpipes_agent', 'write_commands', 'INSERT',
        'bacpipes_agent', 'command_events', 'INSERT',
        'bacpipes_agent', 'command_attempts', 'INSERT',
        'bacpipes_agent', 'inference_log', 'INSERT',
        'bacpipes_agent', 'site_heartbeat', 'INSERT, UPDATE',
        'bacpipes_agent', 'trend_log_import', 'INSERT, UPDATE',
        'bacpipes_agent', 'imported_reading', 'INSERT',
        'bacpipes_agent', 'sensor_readings', 'INSERT',
        'bacpipes_agent', 'readings_hourly', 'INSERT, UPDATE',
        'bacpipes_agent', 'data_source', 'INSERT, UPDATE',
        'bacpipes_ingest', 'sensor_readings', 'SELECT, INSERT',
        'bacpipes_ingest', 'readings_hourly', 'SELECT, INSERT, UPDATE',
        'bacpipes_ingest', 'point_state', 'SELECT, INSERT, UPDATE',
        'bacpipes_ingest', 'ingest_rejects', 'SELECT, INSERT',
        'bacpipes_ingest', 'point', 'SELECT',
        'bacpipes_ingest', 'device', 'SELECT',
        'bacpipes_ingest', 'site', 'SELECT',
        'bacpipes_app_operator', 'write_commands', 'INSERT',
        'bacpipes_app_operator', 'control_authority', 'INSERT',
        'bacpipes_app_operator', 'model_deployments', 'INSERT',
        'bacpipes_app_operator', 'alerts', 'UPDATE',
        'bacpipes_flows', 'baseline_models', 'INSERT, UPDATE, DELETE',
        'bacpipes_flows', 'model_registry', 'INSERT, UPDATE',
        'bacpipes_flows', 'model_deployments', 'INSERT',
        'bacpipes_flows', 'ab_schedule', 'INSERT, UPDATE, DELETE',
        'bacpipes_flows', 'alerts', 'INSERT, UPDATE',
        'bacpipes_flows', 'ingest_rejects', 'DELETE',
        'bacpipes_flows', 'readings_hourly', 'INSERT, UPDATE'];
    i int;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA public TO bacpipes_agent, bacpipes_ingest, bacpipes_app_viewer,'
            ' bacpipes_app_operator, bacpipes_flows, bacpipes_replication, bacpipes_readings_owner';
    EXECUTE 'GRANT CREATE ON SCHEMA public TO bacpipes_readings_owner';  -- new partitions (PG 15: not PUBLIC's)
    EXECUTE 'GRANT bacpipes_app_viewer TO bacpipes_app_operator';
    EXECUTE 'GRANT bacpipes_readings_owner TO bacpipes_flows, bacpipes_agent';

    -- Reading: everything but the app's login tables (viewer: those too, it logs people in).
    EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO bacpipes_agent, bacpipes_app_viewer, bacpipes_flows';
    FOREACH t IN ARRAY app_private LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %I FROM bacpipes_agent, bacpipes_flows, bacpipes_ingest', t);
            EXECUTE format('REVOKE ALL ON %I FROM bacpipes_app_viewer, bacpipes_app_operator', t);
            EXECUTE format('GRANT SELECT ON %I TO bacpipes_app_viewer', t);
        END IF;
    END LOOP;
    FOREACH t IN ARRAY app_login LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('GRANT INSERT, UPDATE, DELETE ON %I TO bacpipes_app_viewer', t);
        END IF;
    END LOOP;
    EXECUTE 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO bacpipes_agent, bacpipes_ingest,'
            ' bacpipes_app_viewer, bacpipes_flows';

    i := 1;
    WHILE i < array_length(ops, 1) LOOP
        IF to_regclass(ops[i + 1]) IS NOT NULL THEN
            EXECUTE format('GRANT %s ON %I TO %I', ops[i + 2], ops[i + 1], ops[i]);
        END IF;
        i := i + 3;
    END LOOP;

    -- The operator's columns of a point (discovery owns the rest, bacpipes.points edits these).
    EXECUTE (
        SELECT format('GRANT UPDATE (%s) ON point TO bacpipes_app_operator', string_agg(quote_ident(c), ', '))
        FROM unnest(ARRAY['publish', 'interval_s', 'acquisition', 'cov_confirmed', 'qos', 'min_value',
                          'max_value', 'user_tags', 'haystack_name', 'dis', 'topic']) AS c
        WHERE EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE table_schema = 'public' AND table_name = 'point' AND column_name = c));

    FOREACH t IN ARRAY replicated LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('GRANT SELECT ON %I TO bacpipes_replication', t);
        END IF;
    END LOOP;

    -- Ownership of the readings tree (the parent and every partition, DEFAULT included).
    EXECUTE 'ALTER TABLE sensor_readings OWNER TO bacpipes_readings_owner';
    FOR t IN SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'sensor_readings'::regclass
               AND c.relowner <> 'bacpipes_readings_owner'::regrole LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO bacpipes_readings_owner', t);
    END LOOP;
END $$;

-- A partition of sensor_readings created by anyone (the flows' login, the agent's) belongs to
-- bacpipes_readings_owner at once, so any member can detach and drop it later. SECURITY DEFINER: the
-- creator may not change owners itself. Idempotent: it only touches partitions with another owner.
CREATE OR REPLACE FUNCTION bacpipes_own_partitions() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_catalog
AS $$
DECLARE
    t text;
BEGIN
    IF to_regclass('public.sensor_readings') IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bacpipes_readings_owner') THEN
        RETURN;
    END IF;
    FOR t IN SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'public.sensor_readings'::regclass
               AND c.relowner <> 'bacpipes_readings_owner'::regrole LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO bacpipes_readings_owner', t);
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION bacpipes_own_partitions() FROM PUBLIC;

DROP EVENT TRIGGER IF EXISTS bacpipes_own_partitions;
CREATE EVENT TRIGGER bacpipes_own_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION bacpipes_own_partitions();

SELECT bacpipes_grant_roles();
