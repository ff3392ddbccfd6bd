"""A lost site rebuilt from central (`bacpipes site rebuild --from-central`): its time for `--points` points
and `--days` days of history, against a raw binary COPY of the same readings between the same two clusters
in the same run (the floor: what moving the rows alone costs).

Throwaway TLS clusters as the replication tests make them (tests/replication_harness.py): central and the
site linked, the site's history written on central as replication would have (one INSERT ... SELECT per
day, a reading every `--interval` s), the site's cluster stopped (its disk lost) and a new one rebuilt.
    python -m benchmarks.bench_rebuild [--points 1000] [--days 7] [--interval 60]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bacpipes.partitions import create_partition
from bacpipes.rebuild import rebuild
from bacpipes.replication import CENTRAL_ROLE
from tests.replication_harness import Deployment, certificate_dir, linked, node_settings, tls_cluster

SITE = "site-a"


def history(dsn: str, points: int, days: int, interval_s: int) -> int:
    """`days` days up to now of `points` points, on central; returns rows written."""
    now = datetime.now(UTC).replace(microsecond=0)
    total = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance)"
                     " SELECT %s, p, 1, 'analog-value', p FROM generate_series(101, %s) p", (SITE, points))
        for offset in range(days, -1, -1):
            day = (now - timedelta(days=offset)).date()
            create_partition(conn, day)
            start = max(datetime(day.year, day.month, day.day, tzinfo=UTC), now - timedelta(days=days))
            end = min(start.replace(hour=0, minute=0, second=0) + timedelta(days=1), now)
            total += conn.execute(
                "INSERT INTO sensor_readings (time, site_id, point_id, value)"
                " SELECT t, %s, p, 20 + p %% 7 + sin(extract(epoch FROM t) / 3600)"
                " FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 microsecond',"
                " make_interval(secs => %s)) t, generate_series(1, %s) p",
                (SITE, start, end, interval_s, points)).rowcount
        conn.execute("VACUUM ANALYZE sensor_readings")
    return total


def raw_copy(source: str, target: str) -> float:
    """Seconds for a binary COPY of the site's readings from `source` into a table in `target`."""
    started = time.perf_counter()
    with psycopg.connect(source) as s, psycopg.connect(target) as t:
        t.execute("CREATE TABLE raw_copy (LIKE sensor_readings)")
        out_sql = "COPY (SELECT * FROM sensor_readings WHERE site_id = %s) TO STDOUT (FORMAT BINARY)"
        with s.cursor().copy(out_sql, (SITE,)) as out, \
                t.cursor().copy("COPY raw_copy FROM STDIN (FORMAT BINARY)") as into:
            for chunk in out:
                into.write(chunk)
        t.commit()
        seconds = time.perf_counter() - started
        t.execute("DROP TABLE raw_copy")
        t.commit()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--interval", type=int, default=60, help="seconds between a point's readings")
    args = parser.parse_args()
    with certificate_dir((SITE,)) as directory:
        d = Deployment(directory, (SITE,))
        try:
            linked(d, SITE)
            started = time.perf_counter()
            rows = history(d.central.database.dsn, args.points, args.days, args.interval)
            print(f"history: {rows:,} readings of {args.points} points over {args.days} days on central "
                  f"({time.perf_counter() - started:.0f} s to write); {os.cpu_count()} CPUs, "
                  f"load {os.getloadavg()[0]:.1f}")
            d.site_clusters[SITE].stop()
            cluster = tls_cluster(directory, SITE, [CENTRAL_ROLE])
            d.clusters.append(cluster)  # cleaned up with the rest
            fresh = node_settings(cluster, SITE, directory)
            fresh = fresh.model_copy(update={"database": fresh.database.model_copy(
                update={"retention_days": args.days})})
            done = rebuild(fresh, d.central)
            for line in done.lines():
                print("  " + line)
            floor = raw_copy(d.central.database.dsn, fresh.database.dsn)
            print(f"site rebuild {done.seconds:.1f} s; raw binary COPY of the same readings {floor:.1f} s; "
                  f"ratio {done.seconds / floor:.2f}")
        finally:
            d.close()


if __name__ == "__main__":
    main()
