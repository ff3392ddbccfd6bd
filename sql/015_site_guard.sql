-- Central accepts from a site only that site's own rows.
--
-- Each site publishes its tables with a row filter on its own site_id (bacpipes/replication.py), but a
-- compromised or misconfigured site controls its publications: central checks again. A row arriving on a
-- site's subscription (readings or meta) whose site_id is not that site's is dropped here, with a WARNING
-- in central's log and a count in replication_refusals, and the subscription carries on with the site's
-- own rows (an ERROR would stop them too, retrying the same transaction forever).
--
-- Which site is applying: the worker's own entry in pg_stat_subscription (pid = pg_backend_pid()), whose
-- subscription name central's `site` registry maps to a site. It covers apply and table-sync workers alike
-- and does not depend on anything the site sends (application_name of the apply worker is not set on the
-- subscriber in PostgreSQL 15; replication origin names, pg_<oid>, are not readable from a session). The
-- answer is cached for the worker's life in a session setting: a worker serves one subscription.
-- An applying worker that no registered site owns is refused everything (fails closed).
--
-- ENABLE REPLICA: these fire only in replication workers, never for central's own writes (the resync
-- backfill, flows). BEFORE triggers fire in name order: `a_site_guard` runs before the `*_replicated`
-- triggers, which delete central's copy of the row they replace. Apply workers run with search_path = '':
-- relations are schema-qualified and no SET search_path (a per-row cost on the readings stream). The
-- table's name is the trigger's argument: the copies on sensor_readings' partitions report the parent.

CREATE TABLE replication_refusals (
    site_id          text        NOT NULL,           -- the site whose subscription carried the rows
    table_name       text        NOT NULL,
    rows             bigint      NOT NULL,
    last_site_id     text,                           -- the site_id the last refused row claimed
    first_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site_id, table_name)
);

CREATE FUNCTION refuse_other_sites_rows() RETURNS trigger LANGUAGE plpgsql AS $$
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

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sensor_readings', 'device', 'point', 'command_events', 'site_heartbeat',
                             'inference_log', 'data_source', 'readings_hourly'] LOOP
        EXECUTE format('CREATE TRIGGER a_site_guard BEFORE INSERT OR UPDATE OR DELETE ON %I'
                       ' FOR EACH ROW EXECUTE FUNCTION refuse_other_sites_rows(%L)', t, t);
        EXECUTE format('ALTER TABLE %I ENABLE REPLICA TRIGGER a_site_guard', t);
    END LOOP;
END $$;

-- The site's meta publication filters command_events on site_id and publishes deletes, so site_id must be
-- part of the table's replica identity (PostgreSQL refuses a DELETE otherwise).
CREATE UNIQUE INDEX command_events_identity ON command_events (command_id, status, site_id);
ALTER TABLE command_events REPLICA IDENTITY USING INDEX command_events_identity;
