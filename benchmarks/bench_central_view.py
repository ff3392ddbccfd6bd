"""What central's current values cost its replication apply (sql/021_central_view.sql), on two throwaway
clusters linked as `bacpipes site link` links them.

Central keeps each site's point_state from the readings it applies (a row trigger, at most one write per
point per transaction, settled at commit). This measures central's apply rate with that trigger off and
on, for the two shapes a site's transactions take:

  live   the ingester's ordinary batches: one reading per point per transaction
  drain  a spool drained after an outage, a backfill: 20,000 readings per transaction (200 per point)

Central's readings subscription is paused while the site stores `--readings` readings, then resumed; the
rate is timed from the first reading central applies to the last (the worker's start-up left out).
    python -m benchmarks.bench_central_view [--readings 100000] [--points 100]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bacpipes.replication import site_subscription
from tests.replication_harness import Deployment, certificate_dir, linked

SITE = "site-a"
SHAPES = {"live": 1, "drain": 200}  # readings per point per transaction


def store(dsn: str, start: datetime, readings: int, points: int, per_point: int) -> None:
    """`readings` readings from `start`, every point every 10 s, `per_point` of each point a transaction."""
    batch = points * per_point
    copy_sql = "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN"
    with psycopg.connect(dsn) as conn:
        for first in range(0, readings, batch):
            with conn.cursor().copy(copy_sql) as copy:
                for i in range(first, min(first + batch, readings)):
                    copy.write_row((start + timedelta(seconds=10 * (i // points)), SITE, i % points + 1,
                                    20.0 + (i % 97) / 10))
            conn.commit()


def apply_rate(d: Deployment, start: datetime, readings: int, points: int, per_point: int,
               trigger: bool) -> float:
    """Readings/s central applies, with its point_state trigger on or off."""
    subscription = site_subscription(SITE)
    with psycopg.connect(d.central.database.dsn, autocommit=True) as c:
        c.execute("ALTER TABLE sensor_readings " + ("ENABLE REPLICA" if trigger else "DISABLE")
                  + " TRIGGER point_state_from_reading")
        c.execute(f"ALTER SUBSCRIPTION {subscription} DISABLE")
        store(d.sites[SITE].database.dsn, start, readings, points, per_point)
        c.execute(f"ALTER SUBSCRIPTION {subscription} ENABLE")
        count = "SELECT count(*) FROM sensor_readings WHERE site_id = %s AND time >= %s"
        first = None
        while True:
            held = c.execute(count, (SITE, start)).fetchone()[0]
            now = time.perf_counter()
            if held and first is None:
                first = (now, held)
            if held >= readings:
                break
            time.sleep(0.02)
        assert first is not None
        newest = c.execute("SELECT max(time) FROM point_state WHERE site_id = %s", (SITE,)).fetchone()[0]
    last = start + timedelta(seconds=10 * ((readings - 1) // points))
    assert (newest == last) == trigger, (newest, last)  # on: the newest reading is the current value
    return (readings - first[1]) / max(now - first[0], 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()
    with certificate_dir() as directory:
        d = Deployment(directory, (SITE,))
        try:
            linked(d, SITE)
            start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            span = timedelta(seconds=10 * (args.readings // args.points + 1))
            run = 0
            print(f"central apply, {args.readings:,} readings of {args.points} points (readings/s)")
            for shape, per_point in SHAPES.items():
                rates = {}
                for trigger in (False, True):
                    rates[trigger] = apply_rate(d, start + run * span, args.readings, args.points, per_point,
                                                trigger)
                    run += 1
                print(f"  {shape:<6} without {rates[False]:>9,.0f}   with current values {rates[True]:>9,.0f}"
                      f"   ratio {rates[True] / rates[False]:.2f}")
        finally:
            d.close()


if __name__ == "__main__":
    main()
