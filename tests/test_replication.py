"""Site <-> central replication on throwaway PostgreSQL 15 clusters (wal_level=logical, TLS 1.3, client
certificates), linked by `bacpipes.replication.link` exactly as `bacpipes site link` does."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes import certs
from bacpipes.commands import Command, grant_remote, insert_command
from bacpipes.db import connect
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
from bacpipes.settings import Settings
from sim.server import ThreadedBuilding
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent
from tests.replication_harness import (
    SITES,
    Deployment,
    certificate_dir,
    insert_readings,
    linked,
    totals,
    wait_synced,
    wait_until,
)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with certificate_dir() as directory:
        d = Deployment(directory, SITES)
        try:
            yield d
        finally:
            d.close()


def test_readings_reach_central_and_outlive_site_retention(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    steps = link(a, central)
    assert "created subscription bacpipes_site_a" in steps
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


HOURLY = """
INSERT INTO readings_hourly AS h (site_id, point_id, hour, sum, count, min, max)
VALUES ('site-a', 1, %(hour)s, %(v)s, 1, %(v)s, %(v)s)
ON CONFLICT (site_id, point_id, hour) DO UPDATE SET sum = h.sum + EXCLUDED.sum, count = h.count + 1,
    min = least(h.min, EXCLUDED.min), max = greatest(h.max, EXCLUDED.max)
"""


def test_the_hourly_rollup_reaches_central_as_the_site_updates_it(deployment: Deployment) -> None:
    """Central's trends, baselines and notebooks read readings_hourly; only the site's ingester builds it."""
    central, a = deployment.central, deployment.sites["site-a"]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with connect(a.database.dsn) as conn:  # an hour that was already rolled up before the link
        conn.execute(HOURLY, {"hour": hour - timedelta(hours=1), "v": 20.0})
        conn.commit()
    linked(deployment, "site-a")
    with connect(a.database.dsn) as conn:
        for value in (21.0, 23.0, 19.0):  # the ingester's upsert: one insert, then updates
            conn.execute(HOURLY, {"hour": hour, "v": value})
            conn.commit()

    def hourly(dsn: str) -> list[tuple]:
        with connect(dsn) as conn:
            return conn.execute("SELECT hour, sum, count, min, max, avg FROM readings_hourly"
                                " WHERE site_id = 'site-a' ORDER BY hour").fetchall()

    wait_until(lambda: hourly(central.database.dsn) == hourly(a.database.dsn), 30, "the rollup on central")
    assert hourly(central.database.dsn) == [(hour - timedelta(hours=1), 20.0, 1, 20.0, 20.0, 20.0),
                                            (hour, 63.0, 3, 19.0, 23.0, 21.0)]


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
    assert slots["bacpipes_site_a"]["lag_bytes"] > 1_000_000  # held for central, not lost
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


def test_command_on_central_runs_on_its_site_only_and_events_return(deployment: Deployment, broker,
                                                                     tmp_path: Path) -> None:
    """Central -> site-a by replication, run by site-a's agent on the building, the trail back to central."""
    central, a, b = deployment.central, deployment.sites["site-a"], deployment.sites["site-b"]
    with connect(a.database.dsn) as conn:  # site-a's catalog comes from discovering its building
        conn.execute("DELETE FROM point")
        conn.execute("DELETE FROM device")
    agent = make_settings(a.database.dsn, broker.url, tmp_path, site={"id": "site-a"},
                          bacnet={"address": "127.0.0.104/8:47904"},
                          discovery={"targets": ["127.0.0.130"]}, writes={"poll_interval_s": 1})
    # 127.0.0.130: this file's own (test_guard's building is on 150-154 at the same time under xdist)
    with ThreadedBuilding(devices=1, address_base="127.0.0.130", seed=1, speed=0) as building:
        discover_site(agent)
        linked(deployment, "site-a")
        linked(deployment, "site-b")
        with connect(a.database.dsn) as conn:
            setpoint = conn.execute("SELECT point_id FROM point WHERE object_type = 'analog-value'"
                                    " AND object_instance = 1").fetchone()[0]
            grant_remote(conn, "site-a", timedelta(minutes=10), "operator:on-site")
        with ready_agent(agent), connect(central.database.dsn, autocommit=True) as conn:
            command_id = insert_command(conn, Command("site-a", setpoint, 21.0, source="central",
                                                      created_by="central:ops", reason="pre-cool"))
            status = ("SELECT status, value_read, executed_at IS NOT NULL FROM write_command_status"
                      " WHERE id = %s")
            wait_until(lambda: conn.execute(status, (command_id,)).fetchone()[0] == "completed", 30,
                       "the completed event back on central")
            assert conn.execute(status, (command_id,)).fetchone() == ("completed", 21.0, True)
        assert building.object_property(1001, "analog-value,1", "presentValue") == 21.0
    with connect(b.database.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM write_commands").fetchone()[0] == 0  # site-b saw nothing


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
    assert linking.returncode == 0 and "created subscription bacpipes_site_a" in linking.stdout
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
    assert status.returncode == 1 and "slot bacpipes_site_a: lost" in status.stdout, status.stdout
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
