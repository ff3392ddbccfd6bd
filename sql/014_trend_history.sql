-- History a device already held: its TrendLog buffers, read with ReadRange (edge/trendlog.py).
--
-- Imported records land in sensor_readings like any reading (same point, same rollup, quality from the
-- record's status flags), so trends, baselines and notebooks see one history. They stay identifiable:
-- imported_reading holds the key of every reading the import added (a polled reading already stored at
-- the same instant wins and is not marked), and the view reading_source says 'trend-log' or 'live'.
-- A reading's key (site_id, point_id, time) is the same in both tables, so the join is exact.

-- One row per trend log: what it logs, how far the import got (resume point), what the last run did.
CREATE TABLE trend_log_import (
    site_id          text        NOT NULL,
    device_id        integer     NOT NULL,              -- the device holding the log
    log_instance     integer     NOT NULL,              -- its trend-log object instance
    object_name      text,
    logged           text,                              -- logDeviceObjectProperty as the device gave it
    point_id         bigint,                            -- the point it logs; NULL when not in the catalogue
    last_sequence    bigint,                            -- newest record read: the next import starts after it
    first_time       timestamptz,                       -- span of the records imported so far
    last_time        timestamptz,
    records_read     bigint      NOT NULL DEFAULT 0,    -- over every run
    readings_added   bigint      NOT NULL DEFAULT 0,    -- new rows in sensor_readings over every run
    last_run         timestamptz,
    last_run_read    integer,
    last_run_added   integer,
    last_error       text,                              -- NULL when the last run succeeded
    last_error_at    timestamptz,
    PRIMARY KEY (site_id, device_id, log_instance)
);

CREATE TABLE imported_reading (
    site_id          text        NOT NULL,
    point_id         bigint      NOT NULL,
    time             timestamptz NOT NULL,
    device_id        integer     NOT NULL,              -- where it came from: device and trend log,
    log_instance     integer     NOT NULL,
    sequence         bigint,                            -- and the record's sequence number in that log
    imported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, point_id, time)
);

CREATE VIEW reading_source AS
SELECT r.time, r.site_id, r.point_id, r.value, r.quality,
       CASE WHEN i.time IS NULL THEN 'live' ELSE 'trend-log' END AS source,
       i.device_id AS log_device_id, i.log_instance, i.sequence AS log_sequence
FROM sensor_readings r
LEFT JOIN imported_reading i USING (site_id, point_id, time);
