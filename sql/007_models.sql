-- Models: a registry on central, deployments to sites over the replication link, and the edge's log.

-- Central's registry of exported models (the ONNX bytes are kept: a deployment copies them).
CREATE TABLE model_registry (
    name             text        NOT NULL,
    version          text        NOT NULL,
    sha256           text        NOT NULL,
    metrics          jsonb       NOT NULL DEFAULT '{}',
    metadata         jsonb       NOT NULL DEFAULT '{}',
    onnx             bytea       NOT NULL,
    created_by       text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Append-only, central -> site (row filter per site), carrying the model itself: no new port, no file
-- transfer. The newest row per (site, name) is what the site runs; mode 'off' stops it. The edge checks
-- sha256 against the bytes before it loads anything.
CREATE TABLE model_deployments (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id          text        NOT NULL,
    name             text        NOT NULL,
    version          text        NOT NULL,
    mode             text        NOT NULL CHECK (mode IN ('shadow', 'active', 'off')),
    sha256           text        NOT NULL,
    onnx             bytea,                          -- NULL only for mode 'off'
    created_by       text        NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX model_deployments_site_name ON model_deployments (site_id, name, created_at DESC);
CREATE TRIGGER model_deployments_append_only BEFORE UPDATE ON model_deployments
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- What edge inference decided (shadow) or did (active), site -> central; the A/B and the app read it.
CREATE TABLE inference_log (
    site_id          text        NOT NULL,
    at               timestamptz NOT NULL,
    point_id         bigint      NOT NULL,           -- the setpoint the policy chose for
    model            text        NOT NULL,
    version          text        NOT NULL,
    mode             text        NOT NULL,
    setpoint         double precision,               -- chosen; NULL when no decision was made
    predicted_energy_kw double precision,
    predicted_zone_temp double precision,
    command_id       uuid,                           -- the write it issued (active mode)
    detail           text,                           -- why nothing was done, when nothing was
    PRIMARY KEY (site_id, point_id, at)
);
