"""Central's ML flows for a fleet, serial against Dask (issue 19, item 5): baseline, training and A/B read
for --sites sites, measured in one run.

The history: one site backfilled by the virtual building (`sim.backfill`, --days days at 15 min), copied to
the other sites in SQL with each site's electricity meters offset by 0.5 kW a site (so every site's fit
differs), in a throwaway database on the local PostgreSQL (`bacpipes_bench_dask`, dropped at the end). Each
run gets its own copy of it (CREATE DATABASE … TEMPLATE) and runs the three fleet flows (`flows.fleet`) on
a temporary Prefect server:

- serial: Prefect's thread pool with one thread (the same tasks, one at a time);
- dask, new cluster: `flows.fleet.task_runner` without an address, as a fleet flow runs by default: a
  LocalCluster of --workers processes (default one per CPU), started and stopped by each flow run;
- dask, address: the same cluster size started once beforehand and named by `[central] dask_address`, as
  a fleet's own cluster would be.

Printed: each flow's wall time per run, the totals and serial / dask ratios, and whether every run's
results and database effects equal the serial run's (model bytes aside: their metadata holds the export
time; floats to 1e-9, see `same`).

    python -m benchmarks.bench_flows_dask [--sites 20] [--days 28] [--workers N]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from bacpipes.cli import prefect_environment
from bacpipes.db import migrate
from bacpipes.settings import load_settings

ADMIN_DSN = os.environ.get("BACPIPES_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
END = datetime(2026, 7, 29, tzinfo=UTC)
OFFSET_KW = 0.5  # a site's electricity meters read this much more than the previous site's
TABLES = ("data_source", "device", "point", "point_state")  # copied row for row, site id aside


def site_ids(count: int) -> list[str]:
    return [f"fleet-{k:02d}" for k in range(count)]


def _copy_site(conn: psycopg.Connection, source: str, target: str, offset: float) -> None:
    """Every row of `source` again as `target`'s, its electricity meters (`*-KW`) `offset` kW higher."""
    for table in TABLES:
        conn.execute(
            f"INSERT INTO {table} SELECT (jsonb_populate_record(NULL::public.{table},"  # not pg_catalog.point
            f" to_jsonb(t) || jsonb_build_object('site_id', %s::text))).* FROM {table} t WHERE site_id = %s",
            (target, source))
    meters = "SELECT point_id FROM point WHERE site_id = %(s)s AND object_name LIKE '%%-KW'"
    conn.execute(
        "INSERT INTO sensor_readings (time, site_id, point_id, value, quality) SELECT time, %(t)s, point_id,"
        f" value + CASE WHEN point_id IN ({meters}) THEN %(o)s ELSE 0 END, quality FROM sensor_readings"
        " WHERE site_id = %(s)s", {"s": source, "t": target, "o": offset})
    conn.execute(
        "INSERT INTO readings_hourly (site_id, point_id, hour, sum, count, min, max)"
        f" SELECT %(t)s, point_id, hour, sum + k * count, count, min + k, max + k FROM"
        f" (SELECT *, CASE WHEN point_id IN ({meters}) THEN %(o)s ELSE 0 END AS k FROM readings_hourly"
        "  WHERE site_id = %(s)s) h", {"s": source, "t": target, "o": offset})


@contextmanager
def database(name: str, template: str | None = None) -> Iterator[str]:
    """A database of its own (migrated, or a copy of `template`), dropped afterwards; its DSN."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    try:
        if template is None:
            migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill_fleet(dsn: str, sites: int, days: int, folder: Path) -> None:
    """`sites` sites' history ending at END: the first backfilled, the others copies of it (see above)."""
    from sim.backfill import backfill

    first, *others = site_ids(sites)
    backfill(load_settings(write_config(folder, first, dsn)), days=days, seed=3, devices=2, interval_s=900,
             end=END)
    with psycopg.connect(dsn) as conn:
        for k, site in enumerate(others, start=1):
            _copy_site(conn, first, site, k * OFFSET_KW)


def write_config(folder: Path, site: str, dsn: str, dask_address: str | None = None) -> str:
    """A site's settings file for central's flows: central's database, the site, its own models folder."""
    path = folder / f"{site}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    central = f'[central]\ndask_address = "{dask_address}"\n' if dask_address else ""
    path.write_text(f'[site]\nid = "{site}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                    f'[ml]\ninterval_s = 900\nmodels_dir = "{folder / "models"}"\n{central}')
    return str(path)


def run_flows(configs: list[str], days: int, runner: Any = None) -> tuple[dict[str, Any], dict[str, float]]:
    """The baseline, training and A/B fleet flows over the sites, in that order (each needs the one before);
    their results and wall times by flow."""
    from flows.fleet import run_fleet

    start = END - timedelta(days=days)
    plan = {"baseline": {"days": days, "end": END}, "train": {"days": days, "end": END, "version": "1"},
            "ab": {"start": start, "days": days}}
    results, seconds = {}, {}
    for name, parameters in plan.items():
        t0 = time.perf_counter()
        results[name] = run_fleet(name, configs, runner, **parameters)
        seconds[name] = time.perf_counter() - t0
    return results, seconds


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Results without what differs from run to run by design: a model's bytes (its export time is in
    them) and the folder it was written to."""
    drop = {"sha256", "path"}
    return {flow: {site: {k: v for k, v in r.items() if k not in drop} for site, r in by_site.items()}
            for flow, by_site in results.items()}


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal, floats within `rel`: a Dask worker runs BLAS on one thread, the serial run on every core, so a
    model's metrics may differ in their last bits (measured: 1e-15 relative), never more."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    return a == b


def effects(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the flows stored, without ids, times and model bytes: baselines, registry, deployments, alerts."""
    queries = {
        "baseline_models": "SELECT site_id, period_start, period_end, cv_rmse, nmbe, r_squared,"
                           " meets_guideline_14, model FROM baseline_models",
        "model_registry": "SELECT name, version, metrics, created_by FROM model_registry",
        "model_deployments": "SELECT site_id, name, version, mode, created_by, reason FROM model_deployments",
        "alerts": "SELECT site_id, source, severity, message FROM alerts",
    }
    with psycopg.connect(dsn) as conn:
        return {table: sorted(conn.execute(query).fetchall(), key=repr) for table, query in queries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    prefect_environment(os.environ, quiet=True)
    from distributed import LocalCluster
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.testing.utilities import prefect_test_harness

    from flows.fleet import task_runner

    with tempfile.TemporaryDirectory() as tmp, database("bacpipes_bench_dask") as history:
        folder = Path(tmp)
        t0 = time.perf_counter()
        fill_fleet(history, args.sites, args.days, folder / "history")
        made = time.perf_counter() - t0
        print(f"{args.sites} sites, {args.days} days at 15 min: history made in {made:.0f} s;"
              f" {args.workers} Dask worker processes, {os.cpu_count()} CPUs")
        runs: dict[str, tuple[dict[str, Any], dict[str, float], dict[str, Any]]] = {}
        with prefect_test_harness(server_startup_timeout=None), \
                LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                             dashboard_address=":0") as cluster:
            for run, address in (("serial", None), ("dask, new cluster", None),
                                 ("dask, address", cluster.scheduler_address)):
                name = "bacpipes_bench_dask_" + run.split(",")[-1].strip().replace(" ", "_")
                with database(name, template="bacpipes_bench_dask") as dsn:
                    configs = [write_config(folder / name, s, dsn, address) for s in site_ids(args.sites)]
                    runner = ThreadPoolTaskRunner(max_workers=1) if run == "serial" else (
                        None if address else task_runner(load_settings(configs[0]), args.workers))
                    results, seconds = run_flows(configs, args.days, runner)
                    runs[run] = (comparable(results), seconds, effects(dsn))
    serial_results, serial_s, serial_effects = runs["serial"]
    for run, (results, seconds, stored) in runs.items():
        total = sum(seconds.values())
        each = ", ".join(f"{flow} {s:.1f} s" for flow, s in seconds.items())
        ratio = "" if run == "serial" else f"; serial / this: {sum(serial_s.values()) / total:.2f}x"
        equal = "" if run == "serial" else \
            f"; results {'the same' if same(results, serial_results) else 'DIFFER'}," \
            f" database effects {'the same' if same(stored, serial_effects) else 'DIFFER'} (floats to 1e-9)"
        print(f"{run:18s} total {total:6.1f} s ({each}){ratio}{equal}")


if __name__ == "__main__":
    main()
