-- Alarms operators can work (bacpipes/alarms.py, the app's Alarms page): the `alerts` table stays the one
-- list of what needs a look (written by bacpipes/alerts.py only); an alarm may now name the point and the
-- equipment it is about, and what people do with it (acknowledge with a comment, shelve for a time, put
-- back) is an append-only trail beside it, like the command trail (sql/004_writes.sql, 017_audit.sql): the
-- state of an alarm is read from that trail, never stored over it, so every action keeps who, when and why.

ALTER TABLE alerts
    ADD COLUMN point_id  bigint,                     -- the point the alarm is about (out of band, limits)
    ADD COLUMN equipment text;                       -- the zone or equipment, as operators name it
-- One open alarm per rule and point: the periodic evaluation (and a second agent, by mistake) cannot open
-- the same alarm twice.
CREATE UNIQUE INDEX alerts_one_open_per_point ON alerts (site_id, source, point_id)
    WHERE resolved_at IS NULL AND point_id IS NOT NULL;
CREATE INDEX alerts_history ON alerts (site_id, raised_at DESC);

CREATE TABLE alarm_actions (
    id               bigserial   PRIMARY KEY,
    alert_id         bigint      NOT NULL REFERENCES alerts (id),
    action           text        NOT NULL CHECK (action IN ('acknowledge', 'shelve', 'unshelve')),
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    by_user          text        NOT NULL,           -- 'ui:<name>', as write_commands.created_by
    comment          text        NOT NULL CHECK (btrim(comment) <> ''),
    until            timestamptz,                    -- shelve: the alarm comes back by itself then
    CHECK ((action = 'shelve') = (until IS NOT NULL)),
    CHECK (until IS NULL OR until > at)
);
CREATE INDEX alarm_actions_alert ON alarm_actions (alert_id, at);
-- one acknowledgement per alarm: two operators at once, the second is told who was first
CREATE UNIQUE INDEX alarm_actions_one_ack ON alarm_actions (alert_id) WHERE action = 'acknowledge';
CREATE TRIGGER alarm_actions_append_only BEFORE UPDATE ON alarm_actions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Each alarm with its acknowledgement and its latest shelving (an 'unshelve' ends it: until NULL).
CREATE VIEW alarm_state AS
SELECT a.id, a.site_id, a.source, a.severity, a.message, a.raised_at, a.resolved_at, a.point_id, a.equipment,
       ack.at AS acked_at, ack.by_user AS acked_by, ack.comment AS ack_comment,
       shelf.until AS shelved_until, shelf.by_user AS shelved_by, shelf.comment AS shelve_comment
FROM alerts a
LEFT JOIN alarm_actions ack ON ack.alert_id = a.id AND ack.action = 'acknowledge'
LEFT JOIN LATERAL (
    SELECT x.until, x.by_user, x.comment FROM alarm_actions x
    WHERE x.alert_id = a.id AND x.action IN ('shelve', 'unshelve')
    ORDER BY x.at DESC, x.id DESC LIMIT 1) shelf ON true;

-- The agent evaluates the points out of band and clears its own alarms (resolved_at only); operators act.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bacpipes_agent') THEN
        GRANT INSERT, UPDATE (resolved_at) ON alerts TO bacpipes_agent;
        GRANT USAGE, SELECT ON SEQUENCE alerts_id_seq TO bacpipes_agent;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bacpipes_app_operator') THEN
        GRANT INSERT ON alarm_actions TO bacpipes_app_operator;
        GRANT USAGE, SELECT ON SEQUENCE alarm_actions_id_seq TO bacpipes_app_operator;
    END IF;
END $$;
