"""A site whose database is lost, rebuilt from central with `bacpipes site rebuild --from-central`, on
throwaway TLS clusters and a real agent polling the virtual building over BACnet/UDP."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import tomli_w

from bacpipes.cli import main
from bacpipes.commands import Command, command_status, grant_remote, insert_command
from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.partitions import create_partition
from bacpipes.points import update_points
from bacpipes.rebuild import rebuild
from bacpipes.replication import CENTRAL_ROLE
from bacpipes.settings import Settings, load_settings
from bacpipes.users import add_user, authenticate
from sim.server import ThreadedBuilding
from tests import runbook
from tests.conftest import fresh_database, make_settings
from tests.edge_harness import discover_site, ready_agent
from tests.replication_harness import (
    Deployment,
    certificate_dir,
    linked,
    node_settings,
    tls_cluster,
    wait_until,
)

BASE = "127.0.3.10"
AGENT = "127.0.3.100/8:47975"
KEEP_DAYS = 2
POINT = "SELECT point_id FROM point WHERE object_type = 'analog-value' AND object_instance = 1"
CONFIG = ("SELECT point_id, device_id, object_type, object_instance, object_name, interval_s, user_tags,"
          " min_value, max_value, writable, commandable FROM point ORDER BY point_id")


def config_file(path: Path, settings: Settings) -> Path:
    r = settings.replication
    path.write_text(tomli_w.dumps({
        "site": {"id": settings.site.id},
        "database": {"dsn": settings.database.dsn, "retention_days": settings.database.retention_days},
        "replication": {"certs_dir": r.certs_dir, "host": r.host, "port": r.port},
    }))
    return path


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def readings(dsn: str, since: datetime) -> tuple[int, int]:
    """(count, distinct point-times) of site-a's readings after `since`."""
    return rows(dsn, "SELECT count(*), count(DISTINCT (point_id, time)) FROM sensor_readings"
                     " WHERE site_id = 'site-a' AND time > %s", since)[0]


def central_command(central: Settings, point: int, value: float) -> object:
    with connect(central.database.dsn) as conn:
        return insert_command(conn, Command("site-a", point, value, source="central",
                                            created_by="central:ops", reason="rebuild test"))


def completed_on_central(central: Settings, command_id: object) -> bool:
    with psycopg.connect(central.database.dsn) as conn:
        return (command_status(conn, command_id) or {}).get("status") == "completed"


def test_a_lost_site_is_rebuilt_from_central_and_its_agent_goes_on(broker, tmp_path: Path) -> None:
    with certificate_dir(("site-a",)) as directory:
        d = Deployment(directory, ("site-a",))
        try:
            rebuilt_site(d, directory, broker.url, tmp_path)
        finally:
            d.close()


def rebuilt_site(d: Deployment, directory: Path, broker_url: str, tmp_path: Path) -> None:
    central, lost = d.central, d.sites["site-a"]
    with connect(lost.database.dsn) as conn:  # the catalog comes from discovering the building
        conn.execute("DELETE FROM point")
        conn.execute("DELETE FROM device")
    agent = make_settings(lost.database.dsn, broker_url, tmp_path, site={"id": "site-a"},
                          bacnet={"address": AGENT}, discovery={"targets": [BASE]},
                          polling={"default_interval_s": 1}, writes={"poll_interval_s": 1})
    now = datetime.now(UTC)
    with ThreadedBuilding(devices=1, address_base=BASE, seed=3, speed=0) as building:
        discover_site(agent)
        update_points(agent, object_type="analog-value", interval_s=2.0, tags=["zone=east"],
                      limits={"min_value": "15", "max_value": "28"})  # the operator's edits
        with connect(lost.database.dsn) as conn:
            add_user(conn, "ops", "a long passphrase", "operator")
            setpoint = conn.execute(POINT).fetchone()[0]
            for age in (3, 1):  # older than the site keeps, and within it
                create_partition(conn, (now - timedelta(days=age)).date())
                conn.execute("INSERT INTO sensor_readings (time, site_id, point_id, value)"
                             " VALUES (%s, 'site-a', %s, 20.5)", (now - timedelta(days=age), setpoint))
            conn.commit()
        linked(d, "site-a")
        with connect(lost.database.dsn) as conn:
            grant_remote(conn, "site-a", timedelta(minutes=10), "operator:on-site")
        with connect(central.database.dsn) as conn:
            conn.execute("INSERT INTO model_deployments (site_id, name, version, mode, sha256, created_by)"
                         " VALUES ('site-a', 'setpoint', 'v1', 'off', '-', 'central:ops')")
            conn.commit()
        with ready_agent(agent):
            ran = central_command(central, setpoint, 21.0)
            wait_until(lambda: completed_on_central(central, ran), 30, "the central command's completion")
            wait_until(lambda: readings(central.database.dsn, now - timedelta(minutes=5))[0] >= 10, 30,
                       "live readings on central")
        count = "SELECT count(*) FROM sensor_readings"
        wait_until(lambda: rows(central.database.dsn, count) == rows(lost.database.dsn, count), 30,
                   "central caught up")
        config_before = rows(central.database.dsn, CONFIG)
        events_before = rows(lost.database.dsn, "SELECT status FROM command_events WHERE command_id = %s"
                             " ORDER BY status", ran)
        held_before = readings(central.database.dsn, now - timedelta(days=7))

        d.site_clusters["site-a"].stop()  # the disk dies
        new_cluster = tls_cluster(directory, "site-a", [CENTRAL_ROLE])
        d.clusters.append(new_cluster)
        fresh = node_settings(new_cluster, "site-a", directory)
        fresh = fresh.model_copy(update={"database": fresh.database.model_copy(
            update={"retention_days": KEEP_DAYS})})
        files = {"site.toml": config_file(tmp_path / "site.toml", fresh),
                 "central.toml": config_file(tmp_path / "central.toml", central)}
        done = subprocess.run([sys.executable, "-m", "bacpipes.cli", *runbook.command("site rebuild", files)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "site rebuilt in" in done.stdout and "unreachable" not in done.stdout

        dsn = fresh.database.dsn
        assert rows(dsn, CONFIG) == config_before  # ids, the operator's interval, tags and limits
        with psycopg.connect(dsn) as conn:
            assert authenticate(conn, "ops", "a long passphrase") == "operator"
        assert rows(dsn, "SELECT mode FROM model_deployments") == [("off",)]
        assert rows(dsn, "SELECT arrived FROM write_commands WHERE id = %s", ran) == [("replication",)]
        assert rows(dsn, "SELECT status FROM command_events WHERE command_id = %s ORDER BY status",
                    ran) == events_before
        assert rows(dsn, "SELECT value IS NOT NULL FROM point_state WHERE point_id = %s",
                    setpoint) == [(True,)]
        kept = now - timedelta(days=KEEP_DAYS)
        assert readings(dsn, now - timedelta(days=7)) == readings(central.database.dsn, kept)  # none older
        assert readings(dsn, kept)[0] > 10

        # the agent starts on the new database where the old one stopped
        agent = agent.model_copy(update={"database": fresh.database})
        assert main(runbook.command("authority grant", files)) == 0  # the site's consent: given again
        with ready_agent(agent):
            again = central_command(central, setpoint, 23.0)
            wait_until(lambda: completed_on_central(central, again), 30, "a command after the rebuild")
            wait_until(lambda: readings(central.database.dsn, now - timedelta(days=7))[0]
                       >= held_before[0] + 10, 30, "new readings from the rebuilt site on central")
        assert building.object_property(1001, "analog-value,1", "presentValue") == 23.0
    wait_until(lambda: readings(central.database.dsn, kept) == readings(dsn, kept), 30,
               "central and the rebuilt site holding the same readings")
    total, distinct = readings(central.database.dsn, now - timedelta(days=7))
    assert total == distinct and total > held_before[0]
    assert rows(dsn, "SELECT status FROM command_events WHERE command_id = %s ORDER BY status",
                ran) == events_before  # the command that ran before the loss never ran again
    assert rows(central.database.dsn, "SELECT count(*) FROM replication_refusals") == [(0,)]


def test_a_rebuild_refuses_a_database_in_use_and_a_site_central_does_not_know(db_dsn, tmp_path: Path) -> None:
    """Both before anything is written: a rebuild never merges into a live database."""
    with fresh_database() as central_dsn:
        with connect(central_dsn) as conn:
            conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('site-a', 1, '127.0.0.1')")
            conn.execute("INSERT INTO point (site_id, device_id, object_type, object_instance)"
                         " VALUES ('site-a', 1, 'analog-value', 1)")
            conn.commit()
        central = load_settings(None, database={"dsn": central_dsn})
        with pytest.raises(UserError, match=r"no points of site 'site-b'.*central knows site-a"):
            rebuild(load_settings(None, site={"id": "site-b"}, database={"dsn": db_dsn}), central)
        with connect(db_dsn) as conn:
            add_user(conn, "ops", "a long passphrase", "operator")
        with pytest.raises(UserError, match="already holds app_users: a rebuild fills a new, empty database"):
            rebuild(load_settings(None, site={"id": "site-a"}, database={"dsn": db_dsn}), central)
        assert rows(db_dsn, "SELECT count(*) FROM point") == [(0,)]
        assert rows(central_dsn, "SELECT count(*) FROM point") == [(1,)]
