-- Results of the central flows: fitted energy baselines and alerts.

-- One row per fit: the model (JSON, central.baseline.BaselineModel.to_dict) and its ASHRAE Guideline 14
-- metrics, so a report can say which baseline its avoided energy came from.
CREATE TABLE baseline_models (
    id               bigserial   PRIMARY KEY,
    site_id          text        NOT NULL,
    fitted_at        timestamptz NOT NULL DEFAULT now(),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    cv_rmse          double precision NOT NULL,
    nmbe             double precision NOT NULL,
    r_squared        double precision,
    meets_guideline_14 boolean   NOT NULL,
    model            jsonb       NOT NULL
);
CREATE INDEX baseline_models_site ON baseline_models (site_id, fitted_at DESC);

-- Anything a person must look at, from any flow; the app lists the open ones.
CREATE TABLE alerts (
    id               bigserial   PRIMARY KEY,
    site_id          text,
    source           text        NOT NULL,           -- the flow or check that raised it
    severity         text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message          text        NOT NULL,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz
);
CREATE INDEX alerts_open ON alerts (raised_at DESC) WHERE resolved_at IS NULL;
