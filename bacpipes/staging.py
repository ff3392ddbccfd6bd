"""Staged readings into `sensor_readings`, `readings_hourly` and `point_state` in one statement.

Shared by the ingester and the simulator's backfill, so history written either way is the same. One
statement, so the rollup and point_state see exactly the rows the insert added (a duplicate is never
counted twice). Almost every batch is new rows, which a plain INSERT stores ~1.5x faster than ON
CONFLICT's speculative insertion; only a batch that collides takes the duplicate-skipping form.
"""

from __future__ import annotations

import functools
from typing import Any

import psycopg

_MOVE = """
WITH ins AS (
    INSERT INTO sensor_readings (time, site_id, point_id, value, quality)
    SELECT time, %(site)s, point_id, value, {quality} FROM {stage}
    {on_conflict}
    RETURNING time, point_id, value, quality
){also}, hourly AS (
    INSERT INTO readings_hourly AS h (site_id, point_id, hour, sum, count, min, max)
    SELECT %(site)s, point_id, date_trunc('hour', time, 'UTC'), sum(value), count(*), min(value), max(value)
    FROM ins GROUP BY point_id, date_trunc('hour', time, 'UTC')
    ON CONFLICT (site_id, point_id, hour) DO UPDATE SET
        sum = h.sum + EXCLUDED.sum, count = h.count + EXCLUDED.count,
        min = least(h.min, EXCLUDED.min), max = greatest(h.max, EXCLUDED.max)
), latest AS (
    SELECT DISTINCT ON (point_id) point_id, time, value, quality FROM ins ORDER BY point_id, time DESC
), state AS (
    INSERT INTO point_state AS s (site_id, point_id, value, quality, time, last_poll)
    SELECT %(site)s, point_id, value, quality, time, {last_poll} FROM latest ORDER BY point_id
    ON CONFLICT (site_id, point_id) DO UPDATE SET
        value = EXCLUDED.value, quality = EXCLUDED.quality, time = EXCLUDED.time,
        last_poll = coalesce(greatest(s.last_poll, EXCLUDED.last_poll), s.last_poll)
    WHERE s.time IS NULL OR s.time < EXCLUDED.time
)
SELECT count(*) FROM ins
"""


@functools.cache
def _statement(stage: str, quality: str, last_poll: str, new_only: bool, also: str) -> str:
    return _MOVE.format(stage=stage, quality=quality, last_poll=last_poll, also=also,
                        on_conflict="" if new_only else "ON CONFLICT DO NOTHING")


def move_staged(conn: psycopg.Connection, cur: psycopg.Cursor, stage: str, site_id: str, *,
                quality: str = "quality", stamp_poll: bool = False, also: str = "",
                params: dict[str, Any] | None = None) -> int:
    """Move `stage` (time, point_id, value[, quality]) in; returns the rows that were new.

    `quality` is the stage's column or an SQL literal; `stamp_poll` also sets point_state.last_poll to the
    reading's time (for history that no poller wrote); `also` is one more CTE (", name AS (...)") that may
    read `ins`, the rows the insert added, with its own `params`. Call inside the caller's transaction.
    """
    params = {**(params or {}), "site": site_id}
    last_poll = "time" if stamp_poll else "NULL::timestamptz"
    try:
        with conn.transaction():  # a savepoint: a collision undoes only the attempt
            cur.execute(_statement(stage, quality, last_poll, True, also), params)
    except psycopg.errors.UniqueViolation:
        cur.execute(_statement(stage, quality, last_poll, False, also), params)
    return cur.fetchone()[0]  # type: ignore[index]
