"""A fleet for benchmarks: one central (and, in outbox mode, its outbox) and N site clusters, each its own
PostgreSQL on loopback, linked by `bacpipes.replication.link` over TLS 1.3 with client certificates.

Sites are copies of one migrated template cluster (a migration per site cost seconds; a copy is what the
migration would have made). Every cluster runs with fsync off: they die with the benchmark. Sites are kept
small (shared_buffers 16MB, max_connections 20); central's replication limits are sized for the fleet.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from bacpipes import certs
from bacpipes import replication as rep
from bacpipes.db import connect, prepare_database
from bacpipes.settings import Settings, load_settings
from central.setup import init_central
from tests.pgcluster import PgCluster

POINTS = 100  # per site, as the replication tests' sites
SITE_SERVER_SETTINGS = {
    "wal_level": "logical", "shared_buffers": "16MB", "max_connections": "20",
    "max_wal_senders": "8", "max_replication_slots": "8",  # central's subscriptions + their table syncs
    "max_logical_replication_workers": "4", "max_worker_processes": "8",
    "wal_sender_timeout": "10s", "wal_receiver_status_interval": "1s",
}


def site_name(i: int) -> str:
    return f"site-{i:03d}"


def hub_settings(sites: int) -> dict[str, str]:
    """A publisher/subscriber for `sites` sites: one WAL sender, slot, origin and worker each, + syncs."""
    return {
        "wal_level": "logical", "max_connections": "50",
        "max_wal_senders": str(sites + 10), "max_replication_slots": str(2 * sites + 10),
        "max_logical_replication_workers": str(sites + 8), "max_worker_processes": str(sites + 16),
        "wal_sender_timeout": "10s", "wal_receiver_status_interval": "1s",
    }


def settings_for(cluster: PgCluster, site_id: str, directory: Path, **extra: dict) -> Settings:
    return load_settings(
        None, site={"id": site_id}, database={"dsn": cluster.dsn("bacpipes")},
        replication={"certs_dir": str(directory), "host": "127.0.0.1", "port": cluster.port,
                     "heartbeat_s": 1},
        **extra,
    )


@dataclass
class Fleet:
    """Clusters made here are all removed by `close()` (call it in a finally)."""

    directory: Path
    capacity: int
    outbox: bool
    clusters: list[PgCluster] = field(default_factory=list)
    sites: dict[str, Settings] = field(default_factory=dict)
    site_clusters: dict[str, PgCluster] = field(default_factory=dict)
    link_seconds: dict[str, float] = field(default_factory=dict)
    outbox_cluster: PgCluster | None = None
    template: PgCluster | None = None

    def start(self) -> Fleet:
        site_roles = [rep.site_role(site_name(i)) for i in range(self.capacity)]
        central_users = site_roles + ([rep.OUTBOX_ROLE] if self.outbox else [])
        self.central_cluster = self._cluster("central", hub_settings(self.capacity), central_users)
        self.central_cluster.create_database("bacpipes")
        extra: dict = {}
        if self.outbox:
            self.outbox_cluster = self._cluster("outbox", hub_settings(self.capacity), site_roles)
            self.outbox_cluster.create_database("bacpipes")
            extra = {"central": {"outbox_dsn": self.outbox_cluster.dsn("bacpipes"),
                                 "outbox_port": self.outbox_cluster.port}}
        self.central = settings_for(self.central_cluster, "central", self.directory, **extra)
        init_central(self.central)
        self.template = self._site_template()
        return self

    def _cluster(self, name: str, settings: dict[str, str], users: list[str]) -> PgCluster:
        cluster = PgCluster(settings={**settings, **certs.server_settings(self.directory, name)})
        self.clusters.append(cluster)
        cluster.init()
        (cluster.data / "pg_hba.conf").write_text(certs.hba_lines(users))
        return cluster.start()

    def _site_template(self) -> PgCluster:
        """A stopped site cluster with a migrated `bacpipes` database, copied for every site."""
        template = self._cluster("site-000", SITE_SERVER_SETTINGS, [rep.CENTRAL_ROLE])
        prepare_database(template.dsn("bacpipes"))
        template.stop()
        return template

    def add_site(self) -> str:
        """A new site cluster, its device and points, linked; returns when every table is in sync."""
        site_id = site_name(len(self.sites))
        server = certs.server_settings(self.directory, site_id)
        cluster = PgCluster(settings={**SITE_SERVER_SETTINGS, **server})
        self.clusters.append(cluster)
        subprocess.run(["cp", "-a", str(self.template.data), str(cluster.data)], check=True, timeout=120)
        (cluster.data / "postmaster.pid").unlink(missing_ok=True)
        cluster.start()
        settings = settings_for(cluster, site_id, self.directory)
        with connect(settings.database.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.1')",
                         (site_id,))
            conn.execute(
                "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, writable,"
                " commandable) SELECT %s, i, 1, 'analog-value', i, true, true FROM generate_series(1, %s) i",
                (site_id, POINTS))
        began = time.monotonic()
        rep.link(settings, self.central)
        self.wait_synced(settings)
        self.link_seconds[site_id] = time.monotonic() - began
        self.sites[site_id], self.site_clusters[site_id] = settings, cluster
        return site_id

    def wait_synced(self, site: Settings, timeout: float = 300) -> None:
        """Until every subscription on central, the outbox and the site has all its tables in state 'r'."""
        dsns = [self.central.database.dsn, site.database.dsn]
        if self.outbox_cluster is not None:
            dsns.append(self.outbox_cluster.dsn("bacpipes"))
        deadline = time.monotonic() + timeout
        for dsn in dsns:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while conn.execute("SELECT count(*) FILTER (WHERE srsubstate <> 'r') > 0 OR count(*) = 0"
                                   " FROM pg_subscription_rel").fetchone()[0]:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{site.site.id}: initial sync not done after {timeout:.0f} s")
                    time.sleep(0.1)

    def close(self) -> None:
        for cluster in reversed(self.clusters):
            cluster.cleanup()
