-- Replication between sites and central (PostgreSQL logical replication; see bacpipes/replication.py).
-- The same schema on both ends; the central-only parts only ever act on central.

-- Central's registry of linked sites.
CREATE TABLE site (
    site_id          text        PRIMARY KEY,
    name             text,
    linked_at        timestamptz NOT NULL DEFAULT now(),
    readings_subscription text   NOT NULL,           -- central's subscriptions to this site
    meta_subscription text       NOT NULL,
    resynced_at      timestamptz,
    resynced_from    timestamptz                     -- readings up to this came by backfill, not the stream
);

-- Written on the site every few seconds and replicated: central learns the site's WAL position, its
-- slots' health and its latest reading, in commit order with the readings themselves.
CREATE TABLE site_heartbeat (
    site_id          text        PRIMARY KEY,
    at               timestamptz NOT NULL,
    wal_lsn          pg_lsn      NOT NULL,
    latest_reading   timestamptz,
    slots            jsonb       NOT NULL DEFAULT '[]'
);

-- Rows that central already holds may arrive again after a resync (the small tables are copied afresh):
-- absorb them instead of letting the subscription stop on a duplicate key. ENABLE REPLICA: these fire
-- only in replication apply workers, never for the site's own writes.
CREATE FUNCTION replace_replicated_row() RETURNS trigger LANGUAGE plpgsql
SET search_path = public  -- apply workers run with an empty search_path
AS $$
BEGIN
    IF TG_TABLE_NAME = 'device' THEN
        DELETE FROM device WHERE site_id = NEW.site_id AND device_id = NEW.device_id;
    ELSIF TG_TABLE_NAME = 'point' THEN
        DELETE FROM point WHERE site_id = NEW.site_id AND point_id = NEW.point_id;
    ELSIF TG_TABLE_NAME = 'site_heartbeat' THEN
        DELETE FROM site_heartbeat WHERE site_id = NEW.site_id;
    ELSIF EXISTS (SELECT 1 FROM command_events
                  WHERE command_id = NEW.command_id AND status = NEW.status) THEN
        RETURN NULL;                                 -- an event never changes: keep the one we have
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER device_replicated BEFORE INSERT ON device
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
CREATE TRIGGER point_replicated BEFORE INSERT ON point
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
CREATE TRIGGER site_heartbeat_replicated BEFORE INSERT ON site_heartbeat
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
CREATE TRIGGER command_events_replicated BEFORE INSERT ON command_events
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
ALTER TABLE device ENABLE REPLICA TRIGGER device_replicated;
ALTER TABLE point ENABLE REPLICA TRIGGER point_replicated;
ALTER TABLE site_heartbeat ENABLE REPLICA TRIGGER site_heartbeat_replicated;
ALTER TABLE command_events ENABLE REPLICA TRIGGER command_events_replicated;

-- Central's view of each site's link. lag_s: age of the newest heartbeat applied here (heartbeats are
-- written every few seconds, in commit order with the readings). lag_bytes: how far the site's slot
-- was behind its WAL when that heartbeat was written.
CREATE VIEW replication_status AS
SELECT s.site_id,
       r.pid IS NOT NULL AS readings_worker_alive,
       m.pid IS NOT NULL AS meta_worker_alive,
       h.at AS heartbeat_at,
       extract(epoch FROM clock_timestamp() - h.at) AS lag_s,
       (SELECT greatest(h.wal_lsn - (x->>'confirmed_flush_lsn')::pg_lsn, 0)
        FROM jsonb_array_elements(h.slots) x WHERE x->>'slot' = s.readings_subscription) AS lag_bytes,
       (SELECT x->>'wal_status' FROM jsonb_array_elements(h.slots) x
        WHERE x->>'slot' = s.readings_subscription) AS slot_wal_status,
       h.latest_reading AS last_reading,
       s.linked_at, s.resynced_at
FROM site s
LEFT JOIN site_heartbeat h USING (site_id)
LEFT JOIN pg_stat_subscription r ON r.subname = s.readings_subscription AND r.relid IS NULL
LEFT JOIN pg_stat_subscription m ON m.subname = s.meta_subscription AND m.relid IS NULL;
