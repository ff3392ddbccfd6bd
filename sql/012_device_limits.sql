-- What a controller says about its own points, read at discovery (minPresValue, maxPresValue, resolution,
-- covIncrement). The present-value limits are the write limits of a point whose operator has set none
-- (point.min_value / max_value win), so an out-of-range write is refused before the device is touched.
-- Discovery owns these columns and refreshes them; the operator's columns are never overwritten.
ALTER TABLE point
    ADD COLUMN device_min_value double precision,
    ADD COLUMN device_max_value double precision,
    ADD COLUMN resolution       double precision,
    ADD COLUMN cov_increment    double precision;
