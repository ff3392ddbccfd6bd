"""Central's backups two ways on the same data in the same run: pgBackRest (full, incremental, point-in-time
restore into a new data directory, started and promoted) and pg_dump -Fc / pg_restore (central.backups).

A throwaway cluster (tests/pgcluster.py: fsync off, in /dev/shm when it has room) archives its WAL into a
pgBackRest repository in a temp dir; the history is the storage benchmark's (`--rows` readings of `--points`
points over `--days` daily partitions, generated in SQL), then one more day is added for the incremental.
    python -m benchmarks.bench_pitr [--rows 1000000] [--points 100] [--days 10]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path

import psycopg

from bacpipes.cli.servers import PostgresCluster
from bacpipes.db import prepare_database
from bacpipes.partitions import create_partition
from benchmarks.bench_storage import END, SITE, generate, make_points
from central import pitr
from central.backups import dump, restore
from tests.pgcluster import PgCluster, server_user_folder


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def readings(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM sensor_readings").fetchone()[0]  # type: ignore[index]


def one_more_day(dsn: str, points: int, interval_s: int) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_partition(conn, END.date())
        return conn.execute(
            "INSERT INTO sensor_readings (time, site_id, point_id, value) SELECT t, %s, p, 21 "
            "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 microsecond', "
            "make_interval(secs => %s)) t, generate_series(1, %s) p",
            (SITE, END, END + timedelta(days=1), interval_s, points)).rowcount


def clock(label: str, started: float, extra: str = "") -> float:
    seconds = time.perf_counter() - started
    print(f"{label:34s} {seconds:7.1f} s  {extra}")
    return seconds


def measure(args: argparse.Namespace, work: Path) -> None:
    cluster = PgCluster()
    stanza = pitr.Stanza(name="bench", directory=work / "conf", repo=work / "repo", pg_data=cluster.data,
                         pg_port=cluster.port, pg_socket=cluster.root)
    cluster.settings.update(stanza.server_settings())
    restored = PostgresCluster(work / "restored")
    try:
        cluster.start()
        dsn = cluster.dsn("bacpipes")
        prepare_database(dsn)
        interval_s = max(1, round(args.points * args.days * 86400 / args.rows))
        with psycopg.connect(dsn, autocommit=True) as conn:
            make_points(conn, args.points)
            rows = generate(conn, args.points, args.days, interval_s)
            conn.execute("VACUUM ANALYZE")
            db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore
        print(f"history: {rows:,} readings, database {db_size / 2**20:.0f} MiB; {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}")

        started = time.perf_counter()
        full = pitr.backup(stanza, "full")
        t_full = clock("pgBackRest full backup", started, f"repo +{full.repo_size / 2**20:.1f} MiB")
        added = one_more_day(dsn, args.points, interval_s)
        started = time.perf_counter()
        incr = pitr.backup(stanza, "incr")
        clock(f"pgBackRest incr (+{added:,} rows)", started, f"repo +{incr.repo_size / 2**20:.1f} MiB")
        with psycopg.connect(dsn, autocommit=True) as conn:
            target = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            conn.execute("DELETE FROM sensor_readings")  # the accident the restore undoes
        pitr.check(stanza)
        print(f"{'repository (backups + WAL)':34s} {folder_size(stanza.repo) / 2**20:7.1f} MiB")

        started = time.perf_counter()
        pitr.restore(stanza, target, restored.data)
        t_copy = clock("  pgbackrest restore (files)", started)
        restored.start(timeout=600)
        pitr.wait_promoted(restored.dsn(), 600)
        t_pitr = time.perf_counter() - started
        clock("PITR restore, started, promoted", started, f"(start + WAL replay {t_pitr - t_copy:.1f} s)")
        assert readings(restored.dsn("bacpipes")) == rows + added

        path = work / "dump" / "central.dump"
        started = time.perf_counter()
        dump(restored.dsn("bacpipes"), path)  # the same rows (the original lost them to the DELETE)
        t_dump = clock("pg_dump -Fc", started, f"{path.stat().st_size / 2**20:.1f} MiB")
        started = time.perf_counter()
        restore(path, cluster.dsn("restored"))
        t_restore = clock("pg_restore (single transaction)", started)
        assert readings(cluster.dsn("restored")) == rows + added
        print(f"ratios: pg_dump / full backup {t_dump / t_full:.2f}, pg_restore / PITR restore "
              f"{t_restore / t_pitr:.2f}")
    finally:
        restored.cleanup()
        cluster.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    with server_user_folder("bench-pitr-") as work:
        measure(args, work)


if __name__ == "__main__":
    main()
