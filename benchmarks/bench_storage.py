"""Trend queries on a large generated history, through the notebook API (`load_readings`).

(1) one point, raw readings over 7 days; (2) 100 points' hourly averages over 30 days (readings_hourly);
(3) latest value of one point straight from sensor_readings. Target: < 100 ms each on 50 M rows.
The history is `--points` points over `--days` daily partitions, the reading interval chosen so the total
is `--rows`; it is generated in SQL (generate_series), one partition per statement.
    python -m benchmarks.bench_storage [--rows 50000000] [--points 1000] [--days 30] [--keep]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg

from bacpipes.db import migrate
from bacpipes.partitions import create_partition
from bacpipes.readings import load_readings
from bacpipes.settings import load_settings

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SITE = "bench-storage"
END = datetime(2026, 11, 26, tzinfo=UTC)


def make_points(conn: psycopg.Connection, points: int) -> None:
    conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.10')", (SITE,))
    conn.execute(
        "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, object_name,"
        " haystack_name, dis, units) SELECT %s, p, 1, 'analog-input', p, 'AI-' || p, 'point_' || p,"
        " 'Point ' || p, 'degrees-celsius' FROM generate_series(1, %s) p",
        (SITE, points),
    )


def generate(conn: psycopg.Connection, points: int, days: int, interval_s: int) -> int:
    """One INSERT … SELECT per day, into that day's partition; returns rows written."""
    total = 0
    for offset in range(days, 0, -1):
        day = END - timedelta(days=offset)
        create_partition(conn, day.date())
        cur = conn.execute(
            "INSERT INTO sensor_readings (time, site_id, point_id, value) "
            "SELECT t, %s, p, 20 + p %% 7 + sin(extract(epoch FROM t) / 3600) "
            "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 microsecond', "
            " make_interval(secs => %s)) t, generate_series(1, %s) p",
            (SITE, day, day + timedelta(days=1), interval_s, points),
        )
        total += cur.rowcount
    conn.execute(
        "INSERT INTO readings_hourly (site_id, point_id, hour, sum, count, min, max) "
        "SELECT site_id, point_id, date_bin('1 hour', time, '2000-01-01'), sum(value), count(*),"
        " min(value), max(value) FROM sensor_readings GROUP BY 1, 2, 3"
    )
    return total


def timed(fn: Callable[[], object], repeat: int = 7) -> tuple[float, float, int]:
    """(first, median of the rest) in ms, and the rows of the last result."""
    times, rows = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
        rows = len(result)  # type: ignore[arg-type]
    return times[0], statistics.median(times[1:]), rows


def run(args: argparse.Namespace) -> None:
    name = f"bench_storage_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        measure(dsn, args)
    finally:
        if not args.keep:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}")


def measure(dsn: str, args: argparse.Namespace) -> None:
    migrate(dsn)
    interval_s = max(1, round(args.points * args.days * 86400 / args.rows))
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_points(conn, args.points)
        rows = generate(conn, args.points, args.days, interval_s)
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_inherits i"
                            " JOIN pg_class c ON c.oid = i.inhrelid"
                            " WHERE i.inhparent = 'sensor_readings'::regclass").fetchone()[0]
    print(f"history: {rows:,} rows ({args.points} points every {interval_s} s, {args.days} daily "
          f"partitions, {size}), generated in {time.perf_counter() - t0:.0f} s")
    settings = load_settings(None, site={"id": SITE, "timezone": "UTC"}, database={"dsn": dsn})
    hundred = list(range(1, 101))
    cases = {
        "one point, raw, 7 days": lambda: load_readings([42], END - timedelta(days=7), END,
                                                        settings=settings),
        "100 points, hourly avg, 30 days": lambda: load_readings(hundred, END - timedelta(days=30), END,
                                                                 every="1h", settings=settings),
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        cases["latest value of one point"] = lambda: conn.execute(
            "SELECT time, value FROM sensor_readings WHERE site_id = %s AND point_id = 42"
            " ORDER BY time DESC LIMIT 1", (SITE,)).fetchall()
        for label, fn in cases.items():
            first, median, n = timed(fn)
            verdict = "ok" if median < 100 else "OVER 100 ms"
            print(f"{label:34s} {n:>7,} rows  first {first:7.1f} ms  median {median:7.1f} ms  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
