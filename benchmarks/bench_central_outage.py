"""Central lost and restored: how long from the restored central's start to every site in sync.

The test's scenario (tests/test_central_outage.py) without the agent, at a chosen size: throwaway TLS
clusters for central (archiving to pgBackRest), its outbox and `--sites` sites; a full backup; readings
central applies after the restore point (`--lost` per site, lost with it); an immediate stop; readings
stored on the sites during the outage (`--outage` per site); central restored to the restore point into a
new data directory on its old port; `bacpipes.recovery.recover`. Printed: the restore (pgBackRest's files),
start and promotion, the recovery call (it returns once every new subscription has copied its tables), and
"every site synced": from the restored server's start until every site's readings on central equal the
site's (count and exact sum), polled every 0.1 s.
    python -m benchmarks.bench_central_outage [--sites 2] [--lost 10000] [--outage 100000] [--no-outbox]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bacpipes.db import connect
from bacpipes.recovery import recover
from central import pitr
from tests.pgcluster import PgCluster, server_user_folder
from tests.replication_harness import (
    Deployment,
    certificate_dir,
    insert_readings,
    linked,
    tls_settings,
    totals,
    wait_until,
)


def newest(dsn: str) -> datetime:
    with connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]


def confirmed(site_dsn: str) -> None:
    """Until central has confirmed everything the site wrote so far (what it loses is then lost for good)."""
    with connect(site_dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        wait_until(lambda: conn.execute(
            "SELECT bool_and(confirmed_flush_lsn >= %s) FROM pg_replication_slots"
            " WHERE slot_name LIKE 'bacpipes_site_%%'", (lsn,)).fetchone()[0], 60, "central's confirmation")


def measure(args: argparse.Namespace, work: Path) -> None:
    sites = tuple(f"site-{i}" for i in range(args.sites))
    stanza = pitr.Stanza(name="central", directory=work / "conf", repo=work / "repo", pg_data=None)
    with certificate_dir(sites) as certs:
        d = Deployment(certs, sites, outbox=not args.no_outbox, central_settings=stanza.server_settings())
        try:
            old = d.central_cluster
            stanza = pitr.Stanza(name="central", directory=work / "conf", repo=work / "repo",
                                 pg_data=old.data, pg_port=old.port, pg_socket=old.root)
            central = d.central.database.dsn
            for site_id in sites:
                linked(d, site_id)
            now = datetime.now(UTC).replace(microsecond=0)
            for site_id, site in d.sites.items():
                insert_readings(site.database.dsn, site_id, now - timedelta(hours=3), 10_000)
            backup = pitr.backup(stanza, "full")
            while datetime.now(UTC) < backup.stopped + timedelta(seconds=1):
                time.sleep(0.1)
            restore_point = newest(central)
            for site_id, site in d.sites.items():
                insert_readings(site.database.dsn, site_id, now, args.lost)
            for site_id, site in d.sites.items():
                wait_until(lambda s=site, i=site_id: totals(central, i) == totals(s.database.dsn, i), 120,
                           "central to apply what it will lose")
                confirmed(site.database.dsn)
            pitr.check(stanza)
            old.stop("immediate")
            for site_id, site in d.sites.items():
                insert_readings(site.database.dsn, site_id, now + timedelta(hours=2), args.outage)

            restored = PgCluster(settings=tls_settings(certs, "central"), port=old.port)
            d.clusters.append(restored)
            started = time.perf_counter()
            pitr.restore(stanza, restore_point, restored.data)
            t_files = time.perf_counter() - started
            started = time.perf_counter()
            restored.start()
            pitr.wait_promoted(restored.dsn(), 120)
            t_promoted = time.perf_counter() - started
            report = recover(d.central, list(d.sites.values()), restore_point)
            t_recovered = time.perf_counter() - started
            assert not report.failed, report.failed
            for site_id, site in d.sites.items():
                expected = totals(site.database.dsn, site_id)
                wait_until(lambda i=site_id, e=expected: totals(central, i) == e, 600, f"{site_id} synced")
            t_synced = time.perf_counter() - started
            print(f"{len(sites)} sites, outbox {not args.no_outbox}; per site {args.lost:,} readings lost "
                  f"with central, {args.outage:,} stored during the outage; {os.cpu_count()} CPUs, "
                  f"load {os.getloadavg()[0]:.1f}")
            print(f"pgBackRest restore (files)            {t_files:6.1f} s")
            print(f"restored central started, promoted    {t_promoted:6.1f} s  (from its start)")
            print(f"recover returned                      {t_recovered:6.1f} s")
            print(f"every site synced (count and sum)     {t_synced:6.1f} s")
            for site_id, steps in report.sites.items():
                print(f"  {site_id}: {'; '.join(s for s in steps if 'backfilled' in s or 'narrowed' in s)}")
        finally:
            d.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--lost", type=int, default=10_000, help="readings per site central loses")
    parser.add_argument("--outage", type=int, default=100_000, help="readings per site during the outage")
    parser.add_argument("--no-outbox", action="store_true", help="central sends to its sites itself")
    args = parser.parse_args()
    with server_user_folder("bacpipes-bench-outage-") as work:
        measure(args, work)


if __name__ == "__main__":
    main()
