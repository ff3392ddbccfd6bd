"""Site <-> central replication on throwaway PostgreSQL 15 clusters (wal_level=logical, TLS 1.3, client
certificates), linked by `bacpipes.replication.link` exactly as `bacpipes site link` does."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes import certs
from bacpipes.commands import Command, insert_command
from bacpipes.db import connect, prepare_database
from bacpipes.partitions import apply_retention, create_partition
from bacpipes.replication import (
    CENTRAL_ROLE,
    central_status,
    heartbeat,
    link,
    site_role,
    site_slots,
    unlink,
)
from bacpipes.settings import Settings, load_settings
from central.setup import init_central
from tests.pgcluster import PgCluster

SITES = ("site-a", "site-b")


@contextmanager
def certificate_dir() -> Iterator[Path]:
    """One CA and every server/client pair, in a directory the postgres server user can read."""
    directory = Path(tempfile.mkdtemp(prefix="bacpipes-certs-"))
    try:
        certs.ensure_ca(directory)
        for name in ("central", *SITES):
            certs.issue_server(directory, name, ["127.0.0.1"])
        for user in (CENTRAL_ROLE, *(site_role(s) for s in SITES)):
            certs.issue_client(directory, user)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(directory, pw.pw_uid, pw.pw_gid)
        certs.chown_for_server(directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def tls_cluster(directory: Path, name: str, replication_users: list[str]) -> PgCluster:
    cluster = PgCluster(settings={
        "wal_level": "logical", "max_wal_senders": "10", "max_replication_slots": "10",
        "max_logical_replication_workers": "16", "max_worker_processes": "24",  # 2 per linked site, + syncs
        "wal_sender_timeout": "10s", "wal_receiver_status_interval": "1s",
        **certs.server_settings(directory, name),
    })
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
    """central + sites, each a cluster; sites linked to central."""

    def __init__(self, directory: Path, sites: tuple[str, ...]) -> None:
        self.clusters: list[PgCluster] = []
        self.central_cluster = self._cluster(directory, "central", [site_role(s) for s in sites])
        self.central = node_settings(self.central_cluster, "central", directory)
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

    def _cluster(self, directory: Path, name: str, users: list[str]) -> PgCluster:
        cluster = tls_cluster(directory, name, users)
        self.clusters.append(cluster)
        return cluster

    def close(self) -> None:
        for cluster in self.clusters:
            cluster.cleanup()


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with certificate_dir() as directory:
        d = Deployment(directory, SITES)
        try:
            yield d
        finally:
            d.close()


def insert_readings(dsn: str, site_id: str, start: datetime, count: int, points: int = 100) -> None:
    """`count` readings, `points` points every 10 s from `start`, by COPY like the ingester."""
    copy_sql = "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN"
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for i in range(count):
            copy.write_row((start + timedelta(seconds=10 * (i // points)), site_id, i % points + 1,
                            20.0 + (i % 97) / 10))


def totals(dsn: str, site_id: str) -> tuple[int, float]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(round(sum(value)::numeric, 6), 0) FROM sensor_readings"
            " WHERE site_id = %s", (site_id,)
        ).fetchone()
    return row[0], float(row[1])


def linked(d: Deployment, site_id: str) -> None:
    link(d.sites[site_id], d.central)
    wait_synced(d, site_id)


def wait_synced(d: Deployment, site_id: str) -> None:
    """Until every table of every subscription is in sync (state 'r')."""
    for settings in (d.central, d.sites[site_id]):  # autocommit: an open transaction stalls slot creation
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


def test_readings_reach_central_and_outlive_site_retention(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    steps = link(a, central)
    assert "created subscription bacpipes_site_a_readings" in steps
    assert link(a, central) == ["already linked: nothing to do"]  # re-running is safe
    linked(deployment, "site-a")
    linked(deployment, "site-b")

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    old = today - timedelta(days=5)
    with connect(a.database.dsn, autocommit=True) as conn:
        create_partition(conn, old.date())
    insert_readings(a.database.dsn, "site-a", old, 3000)  # 5 days ago, its own partition
    insert_readings(a.database.dsn, "site-a", today + timedelta(hours=1), 3000)
    insert_readings(deployment.sites["site-b"].database.dsn, "site-b", today, 500)
    seconds = wait_until(lambda: totals(central.database.dsn, "site-a") == totals(a.database.dsn, "site-a"),
                         30, "site-a's readings on central")
    wait_until(lambda: totals(central.database.dsn, "site-b")[0] == 500, 30, "site-b's readings")
    assert seconds < 5
    with connect(central.database.dsn) as conn:
        points = conn.execute("SELECT site_id, count(*) FROM point GROUP BY 1 ORDER BY 1").fetchall()
    assert points == [("site-a", 100), ("site-b", 100)]  # several sites in one central, ids kept apart

    with connect(a.database.dsn, autocommit=True) as conn:
        report = apply_retention(conn, days=2)
    assert len(report.dropped) == 1
    assert totals(a.database.dsn, "site-a")[0] == 3000
    insert_readings(a.database.dsn, "site-a", today + timedelta(hours=3), 1000)
    wait_until(lambda: totals(central.database.dsn, "site-a")[0] == 7000, 30, "central to keep everything")

    with connect(a.database.dsn) as conn:
        heartbeat(conn, "site-a")
    with connect(central.database.dsn, autocommit=True) as conn:
        wait_until(lambda: any(s.site_id == "site-a" and s.lag_s is not None and s.lag_s < 5
                               for s in central_status(conn)), 20, "a fresh heartbeat")
        status = {s.site_id: s for s in central_status(conn)}
    assert status["site-a"].readings_worker_alive and status["site-a"].meta_worker_alive
    assert status["site-a"].slot_wal_status == "reserved"
    assert status["site-a"].problems(300) == []


def test_central_down_while_the_site_ingests_200k_readings(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    linked(deployment, "site-a")
    start = datetime.now(UTC).replace(hour=0, minute=0)  # today: one partition on each side
    insert_readings(a.database.dsn, "site-a", start, 1000)
    wait_until(lambda: totals(central.database.dsn, "site-a")[0] == 1000, 30, "the first readings")

    deployment.central_cluster.stop()
    for batch in range(4):  # 200,000 readings while central is away
        insert_readings(a.database.dsn, "site-a", start + timedelta(minutes=10 + batch * 90), 50_000)
    with connect(a.database.dsn) as conn:
        slots = {s["slot_name"]: s for s in site_slots(conn)}
    assert slots["bacpipes_site_a_readings"]["lag_bytes"] > 1_000_000  # held for central, not lost
    deployment.central_cluster.start()

    expected = totals(a.database.dsn, "site-a")
    assert expected[0] == 201_000
    wait_until(lambda: totals(central.database.dsn, "site-a") == expected, 120, "central to catch up")


def test_tls_refuses_every_connection_that_is_not_verified(deployment: Deployment, tmp_path: Path) -> None:
    for site_id in SITES:  # both sites' roles exist: a refusal must come from TLS, not a missing role
        link(deployment.sites[site_id], deployment.central)
    central = deployment.central_cluster
    directory = Path(deployment.central.replication.certs_dir)
    user = site_role("site-a")
    good = certs.client_conninfo(directory, user, "127.0.0.1", central.port, "bacpipes")
    with psycopg.connect(good) as conn:
        assert conn.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (
            "TLSv1.3",
        )
    other = tmp_path / "other-ca"
    certs.ensure_ca(other)
    certs.issue_client(other, user)
    refused = {
        "no TLS": good.replace("sslmode=verify-full", "sslmode=disable"),
        "no client certificate": f"{good} sslcertmode=disable".replace("verify-full", "require"),
        "TLS 1.2": f"{good} ssl_max_protocol_version=TLSv1.2",
        "certificate from another CA": certs.client_conninfo(
            other, user, "127.0.0.1", central.port, "bacpipes"
        ).replace(str(other.resolve() / "ca.crt"), str(directory.resolve() / "ca.crt")),
        "server name not in its certificate": good.replace("host=127.0.0.1", "host=localhost"),
        "certificate of another role": good.replace(f"user={user}", f"user={site_role('site-b')}"),
    }
    for why, conninfo in refused.items():
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(conninfo, connect_timeout=5).close()
            pytest.fail(f"connection with {why} was accepted")


def test_command_on_central_reaches_only_its_site_and_events_return(deployment: Deployment) -> None:
    central, a, b = deployment.central, deployment.sites["site-a"], deployment.sites["site-b"]
    link(a, central)
    link(b, central)
    command_id = uuid.uuid4()
    with connect(central.database.dsn) as conn:
        insert_command(conn, Command("site-a", 7, 22.5, source="central", created_by="central:ops",
                                     id=command_id))
    with connect(a.database.dsn, autocommit=True) as site_a, \
            connect(b.database.dsn, autocommit=True) as site_b:
        wait_until(lambda: site_a.execute("SELECT count(*) FROM write_commands WHERE id = %s",
                                          (command_id,)).fetchone()[0] == 1, 30, "the command on site-a")
        # the site records its outcome (the executor's job; tests/test_writes.py runs it for real)
        site_a.execute("INSERT INTO command_events (command_id, site_id, status, detail) VALUES"
                       " (%s, 'site-a', 'rejected', 'control authority is with the site')", (command_id,))
        time.sleep(1)
        assert site_b.execute("SELECT count(*) FROM write_commands").fetchone()[0] == 0
    with connect(central.database.dsn, autocommit=True) as conn:
        status = "SELECT status FROM write_command_status WHERE id = %s"
        wait_until(lambda: conn.execute(status, (command_id,)).fetchone()[0] == "rejected", 30,
                   "the event on central")


def test_unlink_removes_everything_and_link_works_again(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    link(a, central)
    steps = unlink(a, central)
    assert "dropped subscription bacpipes_commands" in steps and f"dropped role {CENTRAL_ROLE}" in steps
    with connect(a.database.dsn) as s, connect(central.database.dsn) as c:
        leftovers = [
            s.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0],
            s.execute("SELECT count(*) FROM pg_publication").fetchone()[0],
            s.execute("SELECT count(*) FROM pg_subscription").fetchone()[0],
            c.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0],
            c.execute("SELECT count(*) FROM pg_subscription").fetchone()[0],
            c.execute("SELECT count(*) FROM site").fetchone()[0],
        ]
    assert leftovers == [0] * 6
    assert unlink(a, central) == ["not linked: nothing to do"]
    link(a, central)
    insert_readings(a.database.dsn, "site-a", datetime.now(UTC), 100)
    wait_until(lambda: totals(central.database.dsn, "site-a")[0] == 100, 30, "readings after relinking")


def write_config(path: Path, settings: Settings, **replication: str) -> Path:
    r = settings.replication
    lines = [
        f'[site]\nid = "{settings.site.id}"',
        f"[database]\ndsn = '{settings.database.dsn}'",
        f'[replication]\ncerts_dir = "{r.certs_dir}"\nhost = "{r.host}"\nport = {r.port}',
        *(f'{key} = "{value}"' for key, value in replication.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def bacpipes(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bacpipes.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_a_lost_slot_is_detected_and_resynced_without_a_gap(deployment: Deployment, tmp_path: Path) -> None:
    """An outage longer than max_slot_wal_keep_size allows: the site drops the WAL central needed."""
    a = deployment.sites["site-a"]
    site_conf = write_config(tmp_path / "site.toml", a, max_slot_wal_keep_size="1MB")
    central_conf = write_config(tmp_path / "central.toml", deployment.central)
    assert bacpipes("central", "init", "--config", central_conf).returncode == 0  # idempotent
    linking = bacpipes("site", "link", "--site-config", site_conf, "--central-config", central_conf)
    assert linking.returncode == 0 and "created subscription bacpipes_site_a_readings" in linking.stdout
    wait_synced(deployment, "site-a")
    start = datetime.now(UTC).replace(hour=0, minute=0)
    insert_readings(a.database.dsn, "site-a", start, 1000)
    wait_until(lambda: totals(deployment.central.database.dsn, "site-a")[0] == 1000, 30, "the first rows")

    deployment.central_cluster.stop()
    for batch in range(4):
        insert_readings(a.database.dsn, "site-a", start + timedelta(minutes=10 + batch * 90), 50_000)
    # and 1,000 that arrive late, older than anything central has: only the backfill can bring these
    insert_readings(a.database.dsn, "site-a", start - timedelta(minutes=30), 1000)
    with connect(a.database.dsn, autocommit=True) as conn:
        for _ in range(2):
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    status = bacpipes("site", "status", "--config", site_conf)
    assert status.returncode == 1 and "slot bacpipes_site_a_readings: lost" in status.stdout, status.stdout
    deployment.central_cluster.start()
    time.sleep(2)
    alert = bacpipes("central", "status", "--config", central_conf)
    assert alert.returncode == 1 and "ALERT" in alert.stdout, alert.stdout

    resynced = bacpipes("site", "resync", "--site-config", site_conf, "--central-config", central_conf)
    assert resynced.returncode == 0, resynced.stderr
    assert "readings publication narrowed" in resynced.stdout
    assert "backfilled 1000 readings" in resynced.stdout
    expected = totals(a.database.dsn, "site-a")
    wait_until(lambda: totals(deployment.central.database.dsn, "site-a") == expected, 120, "no gap")
    insert_readings(a.database.dsn, "site-a", start + timedelta(hours=7), 500)  # and the stream flows on
    wait_until(lambda: totals(deployment.central.database.dsn, "site-a")[0] == expected[0] + 500, 30,
               "new readings after the resync")
