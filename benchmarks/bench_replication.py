"""Replication site -> central on two throwaway clusters (TLS 1.3, client certificates), one run:

(1) lag while the site ingests ~5,000 readings/s: each batch's value is its commit time on the site;
    central is sampled every 50 ms for the newest commit it holds (lag = now - that). Target p99 < 2 s
    (the seed's: < 30 s).
(2) catch-up after an outage: central stopped while the site ingests `--outage` readings (measured:
    the site's own ingest rate, the baseline), then started; catch-up rate = readings / time until
    central holds them all, printed as a ratio of the site's rate.
(3) a command's way to its site: `--commands` commands written on central one after another, each timed
    from its commit on central to its row on the site, sent from central's outbox (issue 19), then, after a
    relink, from central itself; the ratio outbox / central of the medians.
    python -m benchmarks.bench_replication [--seconds 30] [--rate 5000] [--outage 200000] [--commands 200]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg

from bacpipes.replication import link
from tests.replication_harness import (
    Deployment,
    certificate_dir,
    classic,
    command_latency,
    insert_readings,
    linked,
    totals,
    wait_synced,
)

SITE = "site-a"
POINTS = 500


def lag_under_load(d: Deployment, seconds: float, rate: int) -> tuple[list[float], float]:
    site_dsn, central_dsn = d.sites[SITE].database.dsn, d.central.database.dsn
    start = datetime.now(UTC) - timedelta(days=1)  # a slot of time of its own, away from phase (2)
    stop = threading.Event()
    samples: list[float] = []

    def sample() -> None:
        with psycopg.connect(central_dsn, autocommit=True) as conn:
            while not stop.is_set():
                newest = conn.execute(
                    "SELECT max(value) FROM sensor_readings WHERE site_id = %s AND time >= %s", (SITE, start)
                ).fetchone()[0]
                if newest is not None:
                    samples.append(time.time() - newest)
                time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    per_batch, interval = rate // 10, 0.1
    written, began = 0, time.perf_counter()
    with psycopg.connect(site_dsn) as conn:
        sampler.start()
        step = 0
        while time.perf_counter() - began < seconds:
            with conn.cursor().copy(
                "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN"
            ) as copy:
                committed_at = time.time()  # commit follows within a millisecond or two
                for i in range(per_batch):
                    k = step * per_batch + i
                    moment = start + timedelta(seconds=k // POINTS)
                    copy.write_row((moment, SITE, k % POINTS + 1, committed_at))
            conn.commit()
            written += per_batch
            step += 1
            time.sleep(max(0.0, began + step * interval - time.perf_counter()))
    achieved = written / (time.perf_counter() - began)
    stop.set()  # sampling after the writes stop would count the idle time as lag
    sampler.join()
    return samples, achieved


def catch_up(d: Deployment, readings: int) -> tuple[float, float]:
    site_dsn, central_dsn = d.sites[SITE].database.dsn, d.central.database.dsn
    d.central_cluster.stop()
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    began = time.perf_counter()
    for n in range(0, readings, 5000):  # batches like the ingester's
        insert_readings(site_dsn, SITE, start + timedelta(seconds=10 * n // POINTS), 5000, POINTS)
    site_rate = readings / (time.perf_counter() - began)
    expected = totals(site_dsn, SITE)
    d.central_cluster.start()
    began = time.perf_counter()
    while totals(central_dsn, SITE) != expected:
        time.sleep(0.1)
    return site_rate, readings / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=int, default=5000, help="readings per second during (1)")
    parser.add_argument("--outage", type=int, default=200_000, help="readings ingested while central is down")
    parser.add_argument("--commands", type=int, default=200, help="commands timed each way in (3)")
    args = parser.parse_args()
    with certificate_dir() as directory:
        d = Deployment(directory, (SITE,), outbox=True)
        try:
            linked(d, SITE)
            samples, achieved = lag_under_load(d, args.seconds, args.rate)
            site_rate, central_rate = catch_up(d, args.outage)
            via_outbox = command_latency(d.central, d.sites[SITE], args.commands)
            link(d.sites[SITE], classic(d.central))
            wait_synced(d, SITE)
            direct = command_latency(d.central, d.sites[SITE], args.commands)
        finally:
            d.close()
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"(1) {achieved:,.0f} readings/s for {args.seconds:g} s; lag over {len(ms)} samples: "
          f"median {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms (target p99 < 2,000 ms)")
    print(f"(2) {args.outage:,} readings during the outage: site ingested {site_rate:,.0f} rows/s; central "
          f"caught up at {central_rate:,.0f} rows/s = {central_rate / site_rate:.2f}x the site's rate")
    for name, seconds in (("from the outbox", via_outbox), ("from central", direct)):
        ms = sorted(x * 1000 for x in seconds)
        print(f"(3) {len(ms)} commands {name}: median {statistics.median(ms):.1f} ms, "
              f"p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f} ms, max {ms[-1]:.1f} ms")
    print(f"(3) outbox / central, medians: {statistics.median(via_outbox) / statistics.median(direct):.2f}x "
          "(one hop more; target: a command on its site within a second)")


if __name__ == "__main__":
    main()
