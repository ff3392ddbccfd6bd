-- Central sees what the site sees: every site's current values and the whole command log.
--
-- 1. Current values. A site's ingester keeps point_state (one row per point); central receives every
--    reading by replication but had no point_state, so its Live page showed every point stale. Rather than
--    send point_state too (an update per reading, doubling the site's replication traffic), central
--    derives it from the readings it applies: a row trigger on sensor_readings, ENABLE REPLICA, so it
--    fires only in replication workers (central's apply and table-sync), never for a site's own ingest
--    (which keeps point_state itself) nor for central's own writes (the resync backfill updates point_state
--    itself, bacpipes/replication.py). Only value, quality and time: last_poll and the errors are the
--    agent's, which central does not see (central/alerts.py reads a NULL last_poll as "judge from the
--    heartbeat"). A reading older than the state's (a late one, a backfill) leaves the state alone.
--
--    At most two writes per point per transaction: updating one row again and again in one transaction
--    makes each update walk every earlier version of it (measured: 1,250 readings/s on a 200,000-row
--    transaction, against 100,000+ without), and a spool drained after an outage, a table sync or a
--    backfill arrive as such transactions. The first reading of a point in a transaction writes its state
--    (the ingester's ordinary batch has one a point: one UPDATE per reading); a later one finds the row
--    already written by this transaction (its xmin is ours), flags it once (`settle`), and a deferred
--    trigger settles it at commit with the newest reading the transaction stored (one index probe).
--    BEFORE, not AFTER: no after-trigger event per reading. Named after `a_site_guard`, so a row the guard
--    refuses never reaches it (BEFORE triggers fire in name order; one returning NULL ends the row).
--    Apply workers run with search_path = '': relations are schema-qualified, and no SET search_path
--    (a per-row cost on the readings stream). Its cost (benchmarks/bench_central_view.py, a busy 2-core
--    machine): central applies 0.4x the readings/s of a stream of ingester-sized transactions without it
--    (~33,000 -> ~13,000/s per site), 0.7-0.8x of large ones; a site makes ~20/s per 500 points.
ALTER TABLE point_state ADD COLUMN settle boolean NOT NULL DEFAULT false;  -- central only, within a commit

CREATE FUNCTION point_state_from_reading() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    held    timestamptz;
    written boolean;  -- by this transaction already
    flagged boolean;  -- and flagged for the commit to settle
BEGIN
    UPDATE public.point_state SET value = NEW.value, quality = NEW.quality, time = NEW.time
    WHERE site_id = NEW.site_id AND point_id = NEW.point_id AND time < NEW.time
      AND xmin <> pg_catalog.xid(pg_catalog.pg_current_xact_id());
    IF FOUND THEN
        RETURN NEW;
    END IF;
    SELECT s.time, s.xmin = pg_catalog.xid(pg_catalog.pg_current_xact_id()), s.settle
    INTO held, written, flagged
    FROM public.point_state s WHERE s.site_id = NEW.site_id AND s.point_id = NEW.point_id;
    IF NOT FOUND THEN
        INSERT INTO public.point_state (site_id, point_id, value, quality, time)
        VALUES (NEW.site_id, NEW.point_id, NEW.value, NEW.quality, NEW.time)
        ON CONFLICT (site_id, point_id) DO NOTHING;
    ELSIF written AND NOT flagged AND held < NEW.time THEN
        UPDATE public.point_state SET settle = true WHERE site_id = NEW.site_id AND point_id = NEW.point_id;
    END IF;  -- else older than the state, or flagged already
    RETURN NEW;
END $$;
CREATE TRIGGER point_state_from_reading BEFORE INSERT ON sensor_readings
    FOR EACH ROW EXECUTE FUNCTION point_state_from_reading();
ALTER TABLE sensor_readings ENABLE REPLICA TRIGGER point_state_from_reading;

-- At commit, once per flagged state row: the newest reading after it.
CREATE FUNCTION point_state_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    newest record;
BEGIN
    SELECT r.time, r.value, r.quality INTO newest FROM public.sensor_readings r
    WHERE r.site_id = NEW.site_id AND r.point_id = NEW.point_id AND r.time > NEW.time
    ORDER BY r.time DESC LIMIT 1;
    IF FOUND THEN
        UPDATE public.point_state
        SET value = newest.value, quality = newest.quality, time = newest.time, settle = false
        WHERE site_id = NEW.site_id AND point_id = NEW.point_id;
    ELSE
        UPDATE public.point_state SET settle = false WHERE site_id = NEW.site_id AND point_id = NEW.point_id;
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER point_state_settle AFTER UPDATE OF settle ON point_state
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.settle)
    EXECUTE FUNCTION point_state_settle();
ALTER TABLE point_state ENABLE REPLICA TRIGGER point_state_settle;

-- A central upgraded with readings already applied: the last day's latest reading of each point without a
-- state (a site that is offline still shows its last values). A site database has no registered site.
INSERT INTO point_state (site_id, point_id, value, quality, time)
SELECT DISTINCT ON (r.site_id, r.point_id) r.site_id, r.point_id, r.value, r.quality, r.time
FROM sensor_readings r
WHERE r.time > now() - interval '1 day' AND r.site_id IN (SELECT site_id FROM site)
ORDER BY r.site_id, r.point_id, r.time DESC
ON CONFLICT (site_id, point_id) DO NOTHING;

-- 2. The whole command log. A command travels only away from the database it was made in: each end
--    publishes write_commands rows with arrived = 'local' (015_write_origin.sql: set on insert, and
--    overwritten with 'replication' by the apply worker whatever the sender said). A site-made command
--    (MQTT, app, CLI, edge ML) reaches central with the site's small tables and arrives there as
--    'replication', so central's publication to the site (arrived = 'local') never sends it back; a
--    central-made command reaches its site as 'replication', so the site never sends it back. No row
--    loops, with PostgreSQL 15's row filters only (no `origin = none` before 16).
--
--    The site's small tables are published with updates and deletes, and a row filter may then name
--    only replica-identity columns: the identity covers the filter's site_id and arrived (unique: id is).
CREATE UNIQUE INDEX write_commands_identity ON write_commands (id, site_id, arrived);
ALTER TABLE write_commands REPLICA IDENTITY USING INDEX write_commands_identity;

--    A command is immutable: one that arrives again (a resync copies the site's small tables afresh, a
--    relink copies central's commands for the site afresh) is the one already here. Keep it instead of
--    stopping the subscription on a duplicate key, and never run it twice. Both ends; REPLICA only.
CREATE FUNCTION skip_known_command() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.write_commands WHERE id = NEW.id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER write_commands_known BEFORE INSERT ON write_commands
    FOR EACH ROW EXECUTE FUNCTION skip_known_command();
ALTER TABLE write_commands ENABLE REPLICA TRIGGER write_commands_known;

--    Central accepts a site's commands only with that site's site_id (015_site_guard.sql), as for the
--    other small tables. The same guard on a site database (no site registered) would refuse every
--    command central sends it: there, write_commands arrive only on the site's own subscription to
--    central, whose publication carries this site's rows only, so the guard lets them through. The rest
--    of the function is 015's, unchanged (the readings' per-row path included).
CREATE OR REPLACE FUNCTION refuse_other_sites_rows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    applying text := current_setting('bacpipes.applying_site', true);
    claimed  text;
BEGIN
    IF applying IS NULL OR applying = '' THEN
        SELECT CASE WHEN count(DISTINCT s.site_id) = 1 THEN min(s.site_id) END INTO applying
        FROM pg_catalog.pg_stat_subscription w
        JOIN public.site s ON w.subname IN (s.readings_subscription, s.meta_subscription)
        WHERE w.pid = pg_catalog.pg_backend_pid();
        IF applying IS NOT NULL THEN
            PERFORM pg_catalog.set_config('bacpipes.applying_site', applying, false);
        ELSIF TG_ARGV[0] = 'write_commands' AND NOT EXISTS (SELECT 1 FROM public.site) THEN
            RETURN NEW;  -- a site database receiving its commands from central
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.site_id IS DISTINCT FROM applying THEN
        claimed := NEW.site_id;
    ELSIF TG_OP <> 'INSERT' AND OLD.site_id IS DISTINCT FROM applying THEN
        claimed := OLD.site_id;
    ELSIF TG_OP = 'DELETE' THEN
        RETURN OLD;
    ELSE
        RETURN NEW;
    END IF;
    RAISE WARNING 'replication: refused a % of a % row claiming site_id % from the subscription of site %',
        pg_catalog.lower(TG_OP), TG_ARGV[0], claimed, coalesce(applying, '(no registered site)');
    INSERT INTO public.replication_refusals AS r (site_id, table_name, rows, last_site_id)
    VALUES (coalesce(applying, ''), TG_ARGV[0], 1, claimed)
    ON CONFLICT (site_id, table_name) DO UPDATE
        SET rows = r.rows + 1, last_site_id = EXCLUDED.last_site_id, last_at = EXCLUDED.last_at;
    RETURN NULL;
END $$;
CREATE TRIGGER a_site_guard BEFORE INSERT OR UPDATE OR DELETE ON write_commands
    FOR EACH ROW EXECUTE FUNCTION refuse_other_sites_rows('write_commands');
ALTER TABLE write_commands ENABLE REPLICA TRIGGER a_site_guard;

-- Where each command was made, beside its status (the view predates the column): central's Commands page
-- says which commands came from the site. CREATE OR REPLACE may only add columns at the end.
CREATE OR REPLACE VIEW write_command_status AS
SELECT c.id, c.site_id, c.point_id, c.command_type, c.value, c.priority, c.created_at, c.created_by,
       c.source, c.source_ip, c.reason, c.not_after,
       coalesce(o.status, x.status, a.status, 'pending') AS status,
       x.at AS executed_at,
       o.at AS completed_at,
       CASE WHEN o.status IN ('failed', 'rejected') THEN o.detail END AS error_message,
       o.value_read,
       o.priority_array,
       c.arrived
FROM write_commands c
LEFT JOIN command_events a ON a.command_id = c.id AND a.status = 'accepted'
LEFT JOIN command_events x ON x.command_id = c.id AND x.status = 'executing'
LEFT JOIN command_events o ON o.command_id = c.id AND o.status IN ('completed', 'failed', 'rejected');
