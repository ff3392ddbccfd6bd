-- The edge guard (edge/guard.py): while a model is active, the site watches the zones it commands and, on a
-- breach, gives the ML priority back and stands that deployment down. A trip is a row here, site -> central
-- with the site's other small tables (bacpipes/replication.py META_TABLES). One trip per deployment: the
-- first breach stands the deployment down, so there is nothing more to trip; a newer deployment (a new
-- model_deployments row, hence a new id) re-arms the guard.
CREATE TABLE model_guard_trips (
    site_id          text        NOT NULL,
    deployment_id    uuid        NOT NULL,           -- the model_deployments row that was active
    model            text        NOT NULL,
    version          text        NOT NULL,
    rule             text        NOT NULL
                     CHECK (rule IN ('comfort_band', 'comfort_ramp', 'humidity', 'chatter', 'short_cycling')),
    zone             text,                           -- the zone (or equipment) that breached
    detail           text        NOT NULL,           -- for a person at the building: what, where, how long
    at               timestamptz NOT NULL DEFAULT clock_timestamp(),
    released         integer     NOT NULL DEFAULT 0, -- setpoints whose ML priority the guard released
    PRIMARY KEY (site_id, deployment_id)
);
CREATE INDEX model_guard_trips_at ON model_guard_trips (site_id, at DESC);

-- The agent writes trips, and its own alert on the site; the link's role reads what it replicates.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bacpipes_agent') THEN
        GRANT INSERT ON model_guard_trips, alerts TO bacpipes_agent;
        GRANT USAGE, SELECT ON SEQUENCE alerts_id_seq TO bacpipes_agent;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bacpipes_replication') THEN
        GRANT SELECT ON model_guard_trips TO bacpipes_replication;
    END IF;
END $$;

-- On central: only the site's own rows (sql/015_site_guard.sql), and a trip already held (a resync copies
-- the small tables afresh) is absorbed rather than stopping the subscription on a duplicate key.
CREATE TRIGGER a_site_guard BEFORE INSERT OR UPDATE OR DELETE ON model_guard_trips
    FOR EACH ROW EXECUTE FUNCTION refuse_other_sites_rows('model_guard_trips');
ALTER TABLE model_guard_trips ENABLE REPLICA TRIGGER a_site_guard;

CREATE FUNCTION absorb_replicated_trip() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_catalog  -- apply workers run with an empty search_path
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM model_guard_trips
               WHERE site_id = NEW.site_id AND deployment_id = NEW.deployment_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER model_guard_trips_replicated BEFORE INSERT ON model_guard_trips
    FOR EACH ROW EXECUTE FUNCTION absorb_replicated_trip();
ALTER TABLE model_guard_trips ENABLE REPLICA TRIGGER model_guard_trips_replicated;

-- Central marks the deployment rolled back the moment the trip arrives (ENABLE REPLICA: only a replication
-- apply worker fires it, i.e. only on central; the site's own insert never does). It appends a
-- model_deployments row for that site: the version that ran before, in shadow mode (it keeps logging what
-- it would do, and writes nothing), or mode 'off' when there was none; reason "edge guard: <rule>",
-- created_by 'edge-guard'. Never a model back in active mode: re-activating is a person's decision. Only
-- when the tripped deployment is still central's newest for that site and model: a newer one (a person
-- deployed meanwhile) wins, and the trip is then only an alert. No loop: model_deployments travels
-- central -> site only, model_guard_trips site -> central only.
CREATE FUNCTION roll_back_on_guard_trip() RETURNS trigger LANGUAGE plpgsql
SET search_path = public, pg_catalog
AS $$
DECLARE
    tripped  model_deployments%ROWTYPE;
    previous model_deployments%ROWTYPE;
    action   text;
BEGIN
    SELECT * INTO tripped FROM model_deployments
    WHERE site_id = NEW.site_id AND name = NEW.model ORDER BY created_at DESC, id DESC LIMIT 1;
    IF NOT FOUND OR tripped.id <> NEW.deployment_id THEN
        action := 'no rollback: deployment ' || NEW.deployment_id || ' is no longer the newest here';
    ELSE
        SELECT * INTO previous FROM model_deployments
        WHERE site_id = NEW.site_id AND name = NEW.model AND mode <> 'off' AND version <> tripped.version
          AND onnx IS NOT NULL
        ORDER BY created_at DESC, id DESC LIMIT 1;
        IF FOUND THEN
            INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by, reason)
            VALUES (NEW.site_id, NEW.model, previous.version, 'shadow', previous.sha256, previous.onnx,
                    'edge-guard', 'edge guard: ' || NEW.rule || ' (rolled back from ' || NEW.version || ')');
            action := 'rolled back to ' || previous.version || ' in shadow mode';
        ELSE
            INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by, reason)
            VALUES (NEW.site_id, NEW.model, tripped.version, 'off', tripped.sha256, NULL,
                    'edge-guard', 'edge guard: ' || NEW.rule);
            action := 'switched off (no earlier version to fall back to)';
        END IF;
    END IF;
    INSERT INTO alerts (site_id, source, severity, message)
    VALUES (NEW.site_id, 'edge-guard', 'critical',
            format('model %s@%s tripped the edge guard (%s) at %s: %s; %s', NEW.model, NEW.version, NEW.rule,
                   to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'), NEW.detail, action));
    RETURN NULL;
END $$;
CREATE TRIGGER model_guard_trips_rollback AFTER INSERT ON model_guard_trips
    FOR EACH ROW EXECUTE FUNCTION roll_back_on_guard_trip();
ALTER TABLE model_guard_trips ENABLE REPLICA TRIGGER model_guard_trips_rollback;
