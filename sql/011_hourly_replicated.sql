-- Central keeps the hourly rollup too: readings_hourly now travels with the site's small tables (the
-- rollup is maintained by the site's ingester; central never computes one, so without this its trends,
-- baselines and notebooks found no hourly rows). The site never deletes from readings_hourly, so
-- central's longer history is safe. A resync copies it afresh: replace what central already holds, as
-- for the other small tables, and the same for inference_log.
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
    ELSIF TG_TABLE_NAME = 'readings_hourly' THEN
        DELETE FROM readings_hourly
        WHERE site_id = NEW.site_id AND point_id = NEW.point_id AND hour = NEW.hour;
    ELSIF TG_TABLE_NAME = 'inference_log' THEN
        DELETE FROM inference_log WHERE site_id = NEW.site_id AND point_id = NEW.point_id AND at = NEW.at;
    ELSIF EXISTS (SELECT 1 FROM command_events
                  WHERE command_id = NEW.command_id AND status = NEW.status) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER readings_hourly_replicated BEFORE INSERT ON readings_hourly
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
ALTER TABLE readings_hourly ENABLE REPLICA TRIGGER readings_hourly_replicated;
CREATE TRIGGER inference_log_replicated BEFORE INSERT ON inference_log
    FOR EACH ROW EXECUTE FUNCTION replace_replicated_row();
ALTER TABLE inference_log ENABLE REPLICA TRIGGER inference_log_replicated;
