-- Change-of-value acquisition (edge/cov.py): an operator setting per point, never touched by discovery
-- (edge/catalog.py's upsert leaves operator columns alone). 'cov' points are subscribed where the device
-- accepts SubscribeCOV and still polled at [cov] check_interval_s; a refused subscription falls back to
-- polling at the point's own interval, the reason in point_state.last_error.
ALTER TABLE point
    ADD COLUMN acquisition text NOT NULL DEFAULT 'poll' CHECK (acquisition IN ('poll', 'cov')),
    ADD COLUMN cov_confirmed boolean;  -- confirmed notifications; NULL: the site default ([cov] confirmed)
