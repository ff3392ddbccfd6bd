"""The A/B test's database side: publish the switchback schedule to a site, and score its periods
from the site's readings against the stored baseline (the statistics are in `models.ab`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.readings import load_readings
from bacpipes.settings import Settings
from bacpipes.zones import find_zones, site_hourly
from central.baselines import latest_baseline
from models.ab import Period, PeriodResult, score_periods


def publish_schedule(conn: psycopg.Connection, site_id: str, periods: Sequence[Period]) -> int:
    """Store the schedule for the site's edge (replicated to it); re-planning a period replaces nothing."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ab_schedule (site_id, period_start, period_end, arm) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (site_id, period_start) DO NOTHING",
            [(site_id, p.start, p.end, p.arm) for p in periods],
        )
        count = cur.rowcount
    conn.commit()
    return count


def score(settings: Settings, periods: Sequence[Period],
          washout_h: float | None = None) -> list[PeriodResult]:
    """Energy normalised by the latest stored baseline, and discomfort per zone, for each period, over its
    hours after the washout (`washout_h`, default `[ab] washout_h`): the carry-over from the previous arm
    is scored to neither. A period with no baseline prediction in those hours is left out."""
    washout = settings.ab.washout_h if washout_h is None else washout_h
    start, end = periods[0].start, periods[-1].end
    with connect(settings.database.dsn) as conn:
        baseline = latest_baseline(conn, settings.site.id)
        zones = find_zones(conn, settings.site.id)
    if baseline is None:
        raise UserError(f"no baseline stored for {settings.site.id}: run the baseline flow first")
    hourly = site_hourly(settings, start, end)
    predicted = baseline.predict(hourly)
    temps = load_readings([z.points["zone_temp"] for z in zones], start, end, every="1h", settings=settings)
    temps = temps.to_pandas().pivot_table(index="time", columns="point_id", values="value")
    band = (settings.ml.comfort_low_c, settings.ml.comfort_high_c)
    return score_periods(periods, hourly["energy_kwh"], predicted, washout_h=washout, zone_temps=temps,
                         band=band, step_h=1.0, zones=max(len(zones), 1))


def published(conn: psycopg.Connection, site_id: str, start: datetime, end: datetime) -> list[Period]:
    """The schedule the site's edge followed between start and end (periods wholly inside), in order."""
    rows = conn.execute(
        "SELECT period_start, period_end, arm FROM ab_schedule WHERE site_id = %s AND period_start >= %s"
        " AND period_end <= %s ORDER BY period_start", (site_id, start, end)).fetchall()
    return [Period(*row) for row in rows]
