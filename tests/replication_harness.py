"""Throwaway site and central clusters for replication tests and benchmarks: one CA, TLS 1.3, client
certificates, wal_level=logical, linked as `bacpipes site link` links them."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg

from bacpipes import certs
from bacpipes.db import connect, prepare_database
from bacpipes.pg_binaries import give_to_server_user
from bacpipes.replication import CENTRAL_ROLE, OUTBOX_ROLE, link, site_role
from bacpipes.settings import Settings, load_settings
from central.setup import init_central
from tests.pgcluster import PgCluster

SITES = ("site-a", "site-b")


@contextmanager
def certificate_dir(sites: Sequence[str] = SITES) -> Iterator[Path]:
    """One CA and every server/client pair (central, its outbox, `sites`), in a directory the postgres
    server user can read."""
    directory = Path(tempfile.mkdtemp(prefix="bacpipes-certs-"))
    try:
        certs.ensure_ca(directory)
        for name in ("central", "outbox", *sites):
            certs.issue_server(directory, name, ["127.0.0.1"])
        for user in (CENTRAL_ROLE, OUTBOX_ROLE, *(site_role(s) for s in sites)):
            certs.issue_client(directory, user)
        give_to_server_user(directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def tls_settings(directory: Path, name: str) -> dict[str, str]:
    """A replication node's server settings (also for a cluster restored in its place)."""
    return {
        "wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
        "max_logical_replication_workers": "16", "max_worker_processes": "24",  # 2 per linked site, + syncs
        "wal_sender_timeout": "10s", "wal_receiver_status_interval": "1s",
        **certs.server_settings(directory, name),
    }


def tls_cluster(directory: Path, name: str, replication_users: list[str],
                settings: dict[str, str] | None = None) -> PgCluster:
    """`settings`: more server settings (e.g. central's archiving, `pitr.Stanza.server_settings()`)."""
    cluster = PgCluster(settings={**tls_settings(directory, name), **(settings or {})})
    cluster.init()
    (cluster.data / "pg_hba.conf").write_text(certs.hba_lines(replication_users))
    return cluster.start()


def node_settings(cluster: PgCluster, site_id: str, directory: Path, **extra: dict) -> Settings:
    dsn = cluster.create_database("bacpipes")
    return load_settings(
        None,
        site={"id": site_id},
        database={"dsn": dsn},
        replication={"certs_dir": str(directory), "host": "127.0.0.1", "port": cluster.port,
                     "heartbeat_s": 1, **extra.get("replication", {})},
        **{k: v for k, v in extra.items() if k != "replication"},
    )


class Deployment:
    """central + sites, each a cluster; sites linked to central. With `outbox`, central sends to its sites
    from an outbox cluster of its own (`[central] outbox_dsn`). `central_settings`: more server settings for
    central's cluster (its WAL archiving, for a restore)."""

    def __init__(self, directory: Path, sites: tuple[str, ...], outbox: bool = False,
                 central_settings: dict[str, str] | None = None) -> None:
        self.clusters: list[PgCluster] = []
        site_roles = [site_role(s) for s in sites]
        self.central_cluster = self._cluster(directory, "central", [*site_roles, OUTBOX_ROLE],
                                             central_settings)
        central: dict = {}
        self.outbox: Settings | None = None
        if outbox:
            box = self._cluster(directory, "outbox", site_roles)
            self.outbox = node_settings(box, "central", directory)
            central = {"central": {"outbox_dsn": self.outbox.database.dsn}}
        self.central = node_settings(self.central_cluster, "central", directory, **central)
        init_central(self.central)
        self.site_clusters: dict[str, PgCluster] = {}
        self.sites: dict[str, Settings] = {}
        for site_id in sites:
            self.site_clusters[site_id] = self._cluster(directory, site_id, [CENTRAL_ROLE])
            self.sites[site_id] = node_settings(self.site_clusters[site_id], site_id, directory)
            prepare_database(self.sites[site_id].database.dsn)
            with connect(self.sites[site_id].database.dsn) as conn:
                conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.1')",
                             (site_id,))
                conn.execute(
                    "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, writable,"
                    " commandable) SELECT %s, i, 1, 'analog-value', i, true, true"
                    " FROM generate_series(1, 100) i",
                    (site_id,),
                )

    def _cluster(self, directory: Path, name: str, users: list[str],
                 settings: dict[str, str] | None = None) -> PgCluster:
        cluster = tls_cluster(directory, name, users, settings)
        self.clusters.append(cluster)
        return cluster

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.cleanup()


def classic(central: Settings) -> Settings:
    """The same central without its outbox: it publishes to its sites itself."""
    return central.model_copy(update={"central": central.central.model_copy(update={"outbox_dsn": None})})


def command_latency(central: Settings, site: Settings, count: int) -> list[float]:
    """Seconds from a command's commit on central to its row on the site, `count` commands in turn."""
    out = []
    c = connect(central.database.dsn, autocommit=True)
    with c, connect(site.database.dsn, autocommit=True) as s:
        for i in range(count):
            command = uuid.uuid4()
            start = time.monotonic()
            c.execute("INSERT INTO write_commands (id, site_id, point_id, command_type, value, priority,"
                      " source, created_by) VALUES (%s, %s, 1, 'write_value', %s, 8, 'central', 'bench')",
                      (command, site.site.id, 20 + i % 5))
            while not s.execute("SELECT 1 FROM write_commands WHERE id = %s", (command,)).fetchone():
                time.sleep(0.002)
            out.append(time.monotonic() - start)
    return out


def insert_readings(dsn: str, site_id: str, start: datetime, count: int, points: int = 100) -> None:
    """`count` readings, `points` points every 10 s from `start`, by COPY like the ingester."""
    copy_sql = "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for i in range(count):
            copy.write_row((start + timedelta(seconds=10 * (i // points)), site_id, i % points + 1,
                            20.0 + (i % 97) / 10))


def totals(dsn: str, site_id: str) -> tuple[int, Decimal]:
    """Row count and exact sum (numeric: a float sum depends on the order rows are added in)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(value::numeric), 0) FROM sensor_readings WHERE site_id = %s",
            (site_id,),
        ).fetchone()
    return row[0], row[1]


def linked(d: Deployment, site_id: str) -> None:
    link(d.sites[site_id], d.central)
    wait_synced(d, site_id)


def wait_synced(d: Deployment, site_id: str) -> None:
    """Until every table of every subscription is in sync (state 'r')."""
    nodes = (d.central, d.sites[site_id], *([d.outbox] if d.outbox else []))
    for settings in nodes:  # autocommit: an open transaction stalls slot creation
        with connect(settings.database.dsn, autocommit=True) as conn:
            wait_until(lambda conn=conn: conn.execute(
                "SELECT count(*) FILTER (WHERE srsubstate <> 'r') = 0 AND count(*) > 0"
                " FROM pg_subscription_rel").fetchone()[0], 60,
                lambda conn=conn: "the initial sync: " + repr(conn.execute(
                    "SELECT srsubid, srrelid::regclass, srsubstate FROM pg_subscription_rel").fetchall()))


def wait_until(check: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {text}")
        time.sleep(0.1)
    return time.monotonic() - start
