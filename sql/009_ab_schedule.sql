-- The A/B switchback schedule, planned on central (central.ab) and replicated to the site it concerns:
-- during a 'baseline' period the edge issues no ML write and gives the ML priority back.
CREATE TABLE ab_schedule (
    site_id          text        NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    arm              text        NOT NULL CHECK (arm IN ('ml', 'baseline')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, period_start),
    CHECK (period_end > period_start)
);
