"""Fleet: N sites, each its own PostgreSQL cluster, 17 readings/s each, linked to one central (issue 19).

One run grows the fleet through `--sizes` (default 10, 40, 100), linking sites one at a time and waiting
for each to sync; at each size, after a warm-up, it measures over `--window` seconds while every site
ingests:
- link time: `link` + the initial sync, per site linked at that stage (median, max);
- central's processes and their memory (sum of Pss from /proc/PID/smaps_rollup, the postmaster and its
  children; with `--mode outbox` the outbox cluster's separately);
- CPU: utime+stime from /proc/PID/stat at the window's start and end, per process, classed by
  pg_stat_activity.backend_type: apply ('logical replication worker'), WAL senders, the rest (the
  benchmark's own sampling backend excluded);
- lag: each site's batch carries a marker reading (point 1) whose value is the site's commit time; an
  ENABLE ALWAYS trigger on central stamps when its apply worker writes it (clock_timestamp(), same host
  clock). p99 over the window's markers. The trigger runs once per site per second on every mode alike.
- synced: sites whose subscriptions' workers run and whose markers arrived during the window.
Targets: central CPU per site at N within 25 % of that at 10 (ratio printed), lag p99 < 1 s.
The load: one thread per 10 sites, one COPY batch of 17 readings per site per second (like the ingester)
and its heartbeat every 10 s. Clusters run with fsync off (thrown away afterwards).
    python -m benchmarks.bench_fleet --mode classic|outbox [--sizes 10,40,100] [--window 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from bacpipes.replication import heartbeat, slug
from benchmarks.common import cpu_seconds
from benchmarks.fleet import Fleet, site_name
from tests.replication_harness import certificate_dir

RATE = 17  # readings per site per second
SITES_PER_THREAD = 10
WARM_UP_S = 10.0

LAG_MARKER = """
CREATE TABLE public.bench_lag (site_id text NOT NULL, sent float8 NOT NULL,
                               arrived timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION public.bench_lag_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.bench_lag (site_id, sent) VALUES (NEW.site_id, NEW.value);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_lag AFTER INSERT ON public.sensor_readings
    FOR EACH ROW WHEN (NEW.point_id = 1) EXECUTE FUNCTION public.bench_lag_mark();
ALTER TABLE public.sensor_readings ENABLE ALWAYS TRIGGER bench_lag;
"""


class Load:
    """Threads, each owning up to SITES_PER_THREAD sites, each site one COPY batch per second."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.groups: list[list[tuple[str, psycopg.Connection]]] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.batches = 0  # committed, all sites

    def add(self, site_id: str, dsn: str) -> None:
        conn = psycopg.connect(dsn)
        with self.lock:
            if not self.groups or len(self.groups[-1]) >= SITES_PER_THREAD:
                self.groups.append([])
                thread = threading.Thread(target=self._run, args=(self.groups[-1],), daemon=True)
                self.threads.append(thread)
                thread.start()
            self.groups[-1].append((site_id, conn))

    def _run(self, group: list[tuple[str, psycopg.Connection]]) -> None:
        tick = 0
        began, first = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
        while not self.stop.is_set():
            at = first + timedelta(seconds=tick)  # the tick's, not the clock's: a late tick stays unique
            with self.lock:
                members = list(group)
            for site_id, conn in members:
                try:
                    self._batch(conn, site_id, at, beat=tick % 10 == 0)
                    with self.lock:
                        self.batches += 1
                except psycopg.Error as exc:
                    conn.rollback()
                    self.errors.append(f"{site_id}: {exc}")
            tick += 1
            self.stop.wait(max(0.0, began + tick - time.monotonic()))

    @staticmethod
    def _batch(conn: psycopg.Connection, site_id: str, at: datetime, beat: bool) -> None:
        with conn.cursor().copy("COPY sensor_readings (time, site_id, point_id, value) FROM STDIN") as copy:
            for point in range(2, RATE + 1):
                copy.write_row((at, site_id, point, 20.0 + point / 10))
            copy.write_row((at, site_id, 1, time.time()))  # the marker: its value is the commit time
        conn.commit()
        if beat:
            heartbeat(conn, site_id)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        for group in self.groups:
            for _, conn in group:
                conn.close()


@dataclass
class Cluster:
    """CPU, memory and process count of one cluster's postmaster and children over a window."""

    processes: int
    pss_mb: float
    apply_cpu: float  # % of one core
    walsender_cpu: float
    other_cpu: float

    @property
    def cpu(self) -> float:
        return self.apply_cpu + self.walsender_cpu + self.other_cpu


def children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class Meter:
    """Starts a window on a cluster; `finish()` gives its figures."""

    def __init__(self, dsn: str, postmaster: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.postmaster = postmaster
        mine = self.conn.info.backend_pid
        self.kinds = {pid: kind for pid, kind in self.conn.execute(
            "SELECT pid, backend_type FROM pg_stat_activity")}
        self.pids = [p for p in [postmaster, *children(postmaster)] if p != mine]
        self.t0 = time.monotonic()
        self.cpu0 = {p: cpu_seconds(p) for p in self.pids}

    def finish(self) -> Cluster:
        wall = time.monotonic() - self.t0
        cpu = {"apply": 0.0, "walsender": 0.0, "other": 0.0}
        pss = 0
        for pid in self.pids:
            try:
                used = cpu_seconds(pid) - self.cpu0[pid]
                pss += pss_kb(pid)
            except (OSError, ValueError):
                continue  # ended during the window
            kind = self.kinds.get(pid, "postmaster")
            key = ("apply" if kind == "logical replication worker"
                   else "walsender" if kind == "walsender" else "other")
            cpu[key] += 100 * used / wall
        self.conn.close()
        return Cluster(len(self.pids), pss / 1024, cpu["apply"], cpu["walsender"], cpu["other"])


@dataclass
class Stage:
    sites: int
    link_median_s: float
    link_max_s: float
    central: Cluster
    outbox: Cluster | None
    lag_p50_ms: float
    lag_p99_ms: float
    markers: int
    synced: int
    subscriptions: int
    rate: float  # readings/s per site the load achieved over the window

    @property
    def host_cpu(self) -> float:
        return self.central.cpu + (self.outbox.cpu if self.outbox else 0.0)


def measure(fleet: Fleet, load: Load, window: float, linked_now: list[str]) -> Stage:
    central_dsn = fleet.central.database.dsn
    batches, began = load.batches, time.monotonic()
    central = Meter(central_dsn, fleet.central_cluster.pid)
    outbox = Meter(fleet.outbox_cluster.dsn("bacpipes"), fleet.outbox_cluster.pid) if fleet.outbox else None
    with psycopg.connect(central_dsn, autocommit=True) as conn:
        start = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(window)
        rate = (load.batches - batches) * RATE / (time.monotonic() - began) / len(fleet.sites)
        central_figures, outbox_figures = central.finish(), outbox.finish() if outbox else None
        end = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        lags = sorted(r[0] for r in conn.execute(
            "SELECT 1000 * (extract(epoch FROM arrived) - sent) FROM bench_lag"
            " WHERE arrived >= %s AND arrived < %s", (start, end)))
        arrived = {r[0] for r in conn.execute(
            "SELECT DISTINCT site_id FROM bench_lag WHERE arrived >= %s AND arrived < %s", (start, end))}
        running = conn.execute(
            "SELECT s.subname, st.pid IS NOT NULL, coalesce(bool_and(r.srsubstate = 'r'), false)"
            " FROM pg_subscription s"
            " LEFT JOIN pg_stat_subscription st ON st.subid = s.oid AND st.relid IS NULL"
            " LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid GROUP BY s.subname, st.pid").fetchall()
    healthy = {name for name, alive, ready in running if alive and ready}
    synced = 0
    for site in fleet.sites:
        names = [name for name, *_ in running if slug(site) in name]
        synced += site in arrived and bool(names) and all(n in healthy for n in names)
    times = [fleet.link_seconds[s] for s in linked_now] or [0.0]
    p50 = statistics.median(lags) if lags else float("nan")
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
    return Stage(len(fleet.sites), statistics.median(times), max(times), central_figures, outbox_figures,
                 p50, p99, len(lags), synced, len(running), rate)


def report(stages: list[Stage], mode: str) -> None:
    base = stages[0]
    print(f"\nmode {mode}: CPU in % of one core over the window; PSS in MB;"
          " lag from site commit to central apply")
    head = ("sites", "link med/max s", "central procs", "central PSS", "apply CPU", "WAL snd CPU",
            "other CPU", "central CPU", "outbox procs/PSS/CPU", "CPU/site", "ratio vs first",
            "lag p50/p99 ms", "synced", "readings/s/site")
    print(" | ".join(head))
    for s in stages:
        per_site = s.host_cpu / s.sites
        box = f"{s.outbox.processes}/{s.outbox.pss_mb:.0f}/{s.outbox.cpu:.1f}" if s.outbox else "-"
        print(" | ".join((
            f"{s.sites}", f"{s.link_median_s:.1f}/{s.link_max_s:.1f}", f"{s.central.processes}",
            f"{s.central.pss_mb:.0f}", f"{s.central.apply_cpu:.1f}", f"{s.central.walsender_cpu:.1f}",
            f"{s.central.other_cpu:.1f}", f"{s.central.cpu:.1f}", box, f"{per_site:.3f}",
            f"{per_site / (base.host_cpu / base.sites):.2f}", f"{s.lag_p50_ms:.0f}/{s.lag_p99_ms:.0f}",
            f"{s.synced}/{s.sites} ({s.markers} markers, {s.subscriptions} subs)", f"{s.rate:.1f}")))
    last = stages[-1]
    ratio = (last.host_cpu / last.sites) / (base.host_cpu / base.sites)
    print(f"CPU per site at {last.sites} / at {base.sites}: {ratio:.2f} (target 0.75-1.25);"
          f" worst lag p99 {max(s.lag_p99_ms for s in stages):.0f} ms (target < 1000)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("classic", "outbox"), default="outbox")
    parser.add_argument("--sizes", default="10,40,100")
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill cleans up as Ctrl-C does
    with certificate_dir([site_name(i) for i in range(sizes[-1])]) as directory:
        run(Fleet(directory, sizes[-1], outbox=args.mode == "outbox"), sizes, args)


def run(fleet: Fleet, sizes: list[int], args: argparse.Namespace) -> None:
    """Grow the fleet to each size in turn and measure it there; every cluster removed at the end."""
    load = Load()
    stages: list[Stage] = []
    try:
        fleet.start()
        with psycopg.connect(fleet.central.database.dsn, autocommit=True) as conn:
            conn.execute(LAG_MARKER)
        for size in sizes:
            added = []
            while len(fleet.sites) < size:
                site_id = fleet.add_site()
                load.add(site_id, fleet.sites[site_id].database.dsn)
                added.append(site_id)
            print(f"{size} sites linked (this stage: {sum(fleet.link_seconds[s] for s in added):.0f} s)",
                  flush=True)
            time.sleep(WARM_UP_S)
            stages.append(measure(fleet, load, args.window, added))
            report(stages[-1:], args.mode)
        if load.errors:
            print(f"load errors: {len(load.errors)}, first: {load.errors[0]}")
        report(stages, args.mode)
    finally:
        load.close()
        fleet.close()

if __name__ == "__main__":
    main()
