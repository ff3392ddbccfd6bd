-- Ingest: what the MQTT ingester could not store, and the hourly rollup it maintains.

-- Nothing is dropped silently: a message the ingester cannot store is acked (so it does not block the
-- session) and kept here with the reason, for an operator to inspect. Not replicated: site-local diagnostics.
CREATE TABLE ingest_rejects (
    id               bigserial   PRIMARY KEY,
    site_id          text        NOT NULL,
    topic            text        NOT NULL,
    payload          bytea       NOT NULL,              -- as received (truncated to 64 KiB when oversized)
    reason           text        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ingest_rejects_site_time ON ingest_rejects (site_id, received_at);

-- Hourly rollup, maintained incrementally by the ingester in the same transaction as the raw rows, from
-- the rows actually inserted (a redelivered duplicate is never counted twice). sum and count rather than
-- avg, so that hours combine exactly into days or months (avg = sum / count).
-- hour is truncated in UTC, so sites with half-hour offsets still get one row per real hour.
CREATE TABLE readings_hourly (
    site_id          text        NOT NULL,
    point_id         bigint      NOT NULL,
    hour             timestamptz NOT NULL,
    sum              double precision NOT NULL,
    count            bigint      NOT NULL,
    min              double precision NOT NULL,
    max              double precision NOT NULL,
    avg              double precision GENERATED ALWAYS AS (sum / nullif(count, 0)) STORED,
    PRIMARY KEY (site_id, point_id, hour)
);
