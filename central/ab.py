"""The A/B test's database side: publish the switchback schedule to a site, and score its periods
from the site's readings against the stored baseline (the statistics are in `models.ab`)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.readings import load_readings
from bacpipes.settings import Settings
from bacpipes.zones import find_zones, site_hourly
from central.baselines import latest_baseline
from models.ab import Period, PeriodResult, discomfort_kh


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


def score(settings: Settings, periods: Sequence[Period]) -> list[PeriodResult]:
    """Energy normalised by the latest stored baseline, and discomfort per zone, for each period."""
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
    results = []
    for p in periods:
        inside = (hourly.index >= p.start) & (hourly.index < p.end)
        in_temps = (temps.index >= p.start) & (temps.index < p.end)
        results.append(PeriodResult(
            p, float(hourly["energy_kwh"][inside].sum() / predicted[inside].sum()),
            discomfort_kh(temps[in_temps], band, 1.0) / max(len(zones), 1),
        ))
    return results
