-- Where a site's history came from: a real building, or the virtual building (`bacpipes sim backfill`).
--
-- Simulated readings look exactly like real ones on purpose (same catalog, same tables, same rollups), so
-- nothing in sensor_readings can tell them apart. Notebooks, reports and model training must be able to:
-- a model validated on simulated history has learnt the simulator's physics, not the building's, and a
-- report of energy use must never present simulated kWh as a real site's. A site with no row here is a
-- real building (the ingester writes no row); the backfill writes simulated = true, and refuses a site
-- whose row says false or that has real devices, so the two never mix under one site_id.
CREATE TABLE data_source (
    site_id          text        PRIMARY KEY,
    simulated        boolean     NOT NULL,
    description      text,                            -- what produced it (devices, interval, range, seed)
    seed             integer,                         -- the simulator's seed: same seed and range, same values
    generated_at     timestamptz NOT NULL DEFAULT now(),
    first_reading    timestamptz,                     -- span of the simulated readings written so far
    last_reading     timestamptz
);

-- Replicated to central with the other small tables: a resync copies it afresh, so central replaces
-- the row it has (see 005_replication.sql).
CREATE OR REPLACE FUNCTION replace_replicated_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = public
AS $$
BEGIN
    IF TG_TABLE_NAME = 'device' THEN
        DELETE FROM device WHERE site_id = NEW.site_id AND device_id = NEW.device_id;
    ELSIF TG_TABLE_NAME = 'point' THEN
        DELETE FROM point WHERE site_id = NEW.site_id AND point_id = NEW.point_id;
    ELSIF TG_TABLE_NAME IN ('site_heartbeat', 'data_source') THEN
        EXECUTE format('DELETE FROM %I WHERE site_id = $1', TG_TABLE_NAME) USING NEW.site_id;
    ELSIF EXISTS (SELECT 1 FROM command_events
                  WHERE command_id = NEW.command_id AND status = NEW.status) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER data_source_replicated BEFORE INSERT ON data_source
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
ALTER TABLE data_source ENABLE REPLICA TRIGGER data_source_replicated;
