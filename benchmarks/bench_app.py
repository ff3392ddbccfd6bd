"""Page load times of the Streamlit app with 30 days of 1,000 points (the seed's "< 1 s dashboard").

Each page runs through `streamlit.testing.v1.AppTest` (the whole script, queries and rendering, without
a browser) against a generated history (benchmarks.bench_storage's generator: daily partitions and the
hourly rollup), with the latest state of every point, an audit trail, alerts and deployments. Baseline
in the same run: a page that only draws a title (Streamlit's own cost per run). Prints first and median
times, the ratio to the baseline, and the 1 s target.
    python -m benchmarks.bench_app [--points 1000] [--days 30] [--interval 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg
from streamlit.testing.v1 import AppTest

from bacpipes.users import add_user
from benchmarks.bench_storage import END, SITE, generate, make_points
from tests.conftest import fresh_database

VIEWS = Path(__file__).resolve().parent.parent / "streamlit_app" / "views"
TREND_POINTS = list(range(1, 11))


def seed(dsn: str, points: int, days: int, interval_s: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_points(conn, points)
        rows = generate(conn, points, days, interval_s)
        conn.execute(
            "INSERT INTO point_state (site_id, point_id, value, quality, time, last_poll)"
            " SELECT %s, p.point_id, r.value, 'good', r.time, r.time FROM point p, LATERAL ("
            "  SELECT value, time FROM sensor_readings s"
            "  WHERE s.site_id = p.site_id AND s.point_id = p.point_id ORDER BY time DESC LIMIT 1) r"
            " WHERE p.site_id = %s", (SITE, SITE))
        conn.execute("UPDATE point SET topic = %s || '/dev_1/ai' || point_id || '/presentValue',"
                     " writable = point_id <= 50", (SITE,))
        conn.execute(
            "INSERT INTO write_commands (site_id, point_id, command_type, value, priority, created_by,"
            " source, created_at) SELECT %s, 1 + i %% 50, 'write_value', 22, 8, 'bench', 'cli',"
            " now() - i * interval '1 minute' FROM generate_series(1, 5000) i", (SITE,))
        conn.execute("INSERT INTO alerts (site_id, source, severity, message)"
                     " SELECT %s, 'bench', 'warning', 'alert ' || i FROM generate_series(1, 50) i", (SITE,))
        add_user(conn, "bench", "bench-password", "operator")  # pages need a login; the role is read per run
        conn.execute("VACUUM ANALYZE")
    return rows


def page_run(name: str, prepare: Callable[[AppTest], None] | None = None,
             shows: str | None = None) -> Callable[[], float]:
    """A new session each time; its first run sets the widgets, the timed second run is the page as a
    user gets it (script start to last element; the first also pays for AppTest's own start-up)."""
    def once() -> float:
        at = AppTest.from_file(str(VIEWS / f"{name}.py") if name != "baseline" else _baseline(),
                               default_timeout=60)
        at.session_state["user"] = "bench"
        at.run()
        if prepare:
            prepare(at)
        t0 = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - t0
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        assert shows is None or any(shows in c.value for c in at.caption), [c.value for c in at.caption]
        return elapsed
    return once


def _baseline() -> str:
    path = Path(tempfile.gettempdir()) / "bacpipes_bench_baseline_page.py"
    path.write_text("import streamlit as st\nst.title('baseline')\n")
    return str(path)


def trend(span: str) -> Callable[[AppTest], None]:
    def prepare(at: AppTest) -> None:
        at.multiselect(key="trend_points").set_value(TREND_POINTS)
        at.radio(key="trend_range").set_value(span)
        if span == "Custom":  # the last day of the history: raw readings
            at.run()
            last = (END - timedelta(days=1)).date()
            at.date_input(key="trend_dates").set_value((last, last))
    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--interval", type=int, default=300, help="seconds between a point's readings")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with fresh_database() as dsn, tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rows = seed(dsn, args.points, args.days, args.interval)
        print(f"history: {rows:,} readings, {args.points} points every {args.interval} s for {args.days}"
              f" days, generated in {time.perf_counter() - t0:.0f} s")
        config = Path(tmp) / "bench.toml"
        config.write_text(f'[site]\nid = "{SITE}"\ntimezone = "UTC"\n[database]\ndsn = "{dsn}"\n')
        os.environ["BACPIPES_CONFIG"] = str(config)
        age = (time.time() - END.timestamp()) / 86400
        print(f"(the history ends {age:.1f} days ago: 'last 30 days' reads {args.days - age:.0f} days)")
        cases = {
            "baseline (title only)": page_run("baseline"),
            "overview": page_run("overview"),
            "live (every point)": page_run("live"),
            "trends 10 points, 1 day raw": page_run("trends", trend("Custom"), "raw readings"),
            "trends 10 points, 30 days hourly": page_run("trends", trend("Last 30 days"), "hourly averages"),
            "devices & points": page_run("points"),
            "commands (5,000 in the trail)": page_run("commands"),
            "models": page_run("models"),
            "A/B": page_run("ab"),
        }
        base = None
        for label, run in cases.items():
            times = [run() for _ in range(args.repeat)]
            first, median = times[0] * 1000, statistics.median(times[1:] or times) * 1000
            base = base or median
            verdict = "ok" if median < 1000 else "OVER 1 s"
            print(f"{label:34s} first {first:7.1f} ms  median {median:7.1f} ms"
                  f"  {median / base:5.1f}x baseline  {verdict}")


if __name__ == "__main__":
    main()
