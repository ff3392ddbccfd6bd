"""Central lost, sites unharmed (issue 20): central (with its outbox) goes down, the sites keep polling,
storing and executing their local writes; central comes back from its pgBackRest backup in a new data
directory on the same port, and one `bacpipes central recover` brings every site back with no gap and no
duplicate, on throwaway TLS clusters (tests/replication_harness.py) and the real pgBackRest.

site-a runs the edge agent on a virtual building (BACnet on 127.0.2.x): its readings are the agent's own.
site-b's readings are COPYed in as test_replication's are, stamped so that the outage's readings are two
hours newer than those central lost: a resync that backfilled only the hour before central's newest reading
would leave the lost ones out."""

from __future__ import annotations

import hashlib
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.cli import main
from bacpipes.commands import Command, grant_remote, insert_command
from bacpipes.db import connect
from bacpipes.settings import Settings
from central import pitr
from sim.server import ThreadedBuilding
from tests import runbook
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent, wait_outcome
from tests.pgcluster import PgCluster
from tests.replication_harness import (
    Deployment,
    certificate_dir,
    insert_readings,
    linked,
    tls_settings,
    totals,
    wait_until,
)
from tests.test_inference import onnx_model  # noqa: F401  (a fixture)

SITES = ("site-a", "site-b")


def config_file(path: Path, node: Settings) -> Path:
    r = node.replication
    lines = [f'[site]\nid = "{node.site.id}"', f"[database]\ndsn = '{node.database.dsn}'",
             f'[replication]\ncerts_dir = "{r.certs_dir}"\nhost = "{r.host}"\nport = {r.port}']
    if node.central.outbox_dsn:
        lines.append(f"[central]\noutbox_dsn = '{node.central.outbox_dsn}'")
    path.write_text("\n".join(lines) + "\n")
    return path


def one(dsn: str, query: str, *params: object) -> object:
    with connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]  # type: ignore[index]


def readings(dsn: str, site_id: str) -> int:
    return int(one(dsn, "SELECT count(*) FROM sensor_readings WHERE site_id = %s", site_id))  # type: ignore[arg-type]


def stanza_of(cluster: PgCluster, pitr_dir: Path) -> pitr.Stanza:
    """Central's stanza; its archive_command (all the server needs) does not depend on the cluster."""
    return pitr.Stanza(name="central", directory=pitr_dir / "conf", repo=pitr_dir / "repo",
                       pg_data=cluster.data, pg_port=cluster.port, pg_socket=cluster.root)


def archiving(pitr_dir: Path) -> dict[str, str]:
    return pitr.Stanza(name="central", directory=pitr_dir / "conf", repo=pitr_dir / "repo",
                       pg_data=None).server_settings()


def back_up(stanza: pitr.Stanza) -> None:
    """A full backup, and a wait past its stop time's second (pgBackRest's times are whole seconds: a
    restore target must come after the stop time)."""
    backup = pitr.backup(stanza, "full")
    while datetime.now(UTC) < backup.stopped + timedelta(seconds=1):
        time.sleep(0.1)


def crash_after_confirming(d: Deployment, stanza: pitr.Stanza) -> None:
    """Once central has confirmed to every site what it applied (each site's slot moves past it, so the
    restored central never gets those rows again by itself), and its WAL is archived: an immediate stop."""
    for site in d.sites.values():
        lsn = one(site.database.dsn, "SELECT pg_current_wal_lsn()")
        wait_until(lambda site=site, lsn=lsn: one(
            site.database.dsn, "SELECT bool_and(confirmed_flush_lsn >= %s) FROM pg_replication_slots"
            " WHERE slot_name LIKE 'bacpipes_site_%%'", lsn), 30, "central to confirm what it applied")
    pitr.check(stanza)
    d.central_cluster.stop("immediate")


def restore_in_place(d: Deployment, certs: Path, stanza: pitr.Stanza, to: datetime) -> None:
    """Central restored to `to` into a new data directory, started on the old port (where the sites'
    subscriptions point)."""
    restored = PgCluster(settings=tls_settings(certs, "central"), port=d.central_cluster.port)
    d.clusters.append(restored)
    pitr.restore(stanza, to, restored.data)
    restored.start()
    pitr.wait_promoted(restored.dsn(), 60)


def recover(d: Deployment, tmp_path: Path, since: datetime, capsys: pytest.CaptureFixture[str]) -> None:
    """The runbook's `bacpipes central recover` with a folder of every site's config file (refused, with
    nothing done, when one of several is left out: that site would keep its gap), then `central status`."""
    central_toml = config_file(tmp_path / "central.toml", d.central)
    every, first = tmp_path / "sites", next(iter(d.sites))
    every.mkdir()
    for site in d.sites.values():
        config_file(every / f"{site.site.id}.toml", site)
    values = {"TIME": since.isoformat(), "central.toml": central_toml}
    if len(d.sites) > 1:
        some = shutil.copytree(every, tmp_path / "some-sites")
        (some / f"{first}.toml").unlink()
        assert main([*runbook.command("central recover", {**values, "SITES": some}), "--timeout", "60"]) == 2
        assert f"central lists site {first} but no site config" in capsys.readouterr().err
    assert main([*runbook.command("central recover", {**values, "SITES": every}), "--timeout", "60"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(d.sites)} of {len(d.sites)} sites recovered" in printed
    assert main(runbook.command("central status", values)) == 0
    assert capsys.readouterr().out.count("  ok") == len(d.sites)


def assert_central_has_every_reading_once(d: Deployment) -> None:
    central = d.central.database.dsn
    for site_id, site in d.sites.items():
        expected = totals(site.database.dsn, site_id)
        wait_until(lambda site_id=site_id, expected=expected: totals(central, site_id) == expected, 30,
                   f"{site_id}'s readings on central")
        assert one(central, "SELECT count(*) - count(DISTINCT (point_id, time)) FROM sensor_readings"
                   " WHERE site_id = %s", site_id) == 0
        catalog = "SELECT count(*) FROM {} WHERE site_id = %s"
        for table in ("device", "point"):
            assert one(central, catalog.format(table), site_id) == one(
                site.database.dsn, catalog.format(table), site_id) > 0, table
        # central's current value of every point is its newest reading
        assert one(central, """
            SELECT count(*) FROM (SELECT point_id, max(time) AS time FROM sensor_readings
                                  WHERE site_id = %s GROUP BY point_id) r
            LEFT JOIN point_state s ON s.site_id = %s AND s.point_id = r.point_id
            WHERE s.time IS DISTINCT FROM r.time""", site_id, site_id) == 0


def test_sites_keep_working_while_central_is_lost_and_recover_without_gap_or_duplicate(
    broker, pitr_dir: Path, onnx_model: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    with certificate_dir(SITES) as certs, ThreadedBuilding(devices=1, address_base="127.0.2.10", seed=1,
                                                            speed=0) as building:
        d = Deployment(certs, SITES, outbox=True, central_settings=archiving(pitr_dir))
        try:
            run_outage(d, certs, building, broker.url, pitr_dir, onnx_model, tmp_path, capsys)
        finally:
            d.close()


def run_outage(d: Deployment, certs: Path, building: ThreadedBuilding, broker_url: str, pitr_dir: Path,
               model: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    central, a, b = d.central, d.sites["site-a"], d.sites["site-b"]
    stanza = stanza_of(d.central_cluster, pitr_dir)
    with connect(a.database.dsn) as conn:  # site-a's catalog is its building's
        conn.execute("DELETE FROM point")
        conn.execute("DELETE FROM device")
        conn.commit()
    agent = make_settings(a.database.dsn, broker_url, tmp_path, site={"id": "site-a"},
                          bacnet={"address": "127.0.2.100/8:47970"}, discovery={"targets": ["127.0.2.10"]},
                          polling={"default_interval_s": 1}, ml={"enabled": True, "interval_s": 1},
                          # the model's writes below the operator's (8): the test's own writes stay in force
                          writes={"poll_interval_s": 1, "ml_priority": 12})
    discover_site(agent)
    with connect(a.database.dsn) as conn:
        setpoint = conn.execute("SELECT point_id FROM point WHERE object_type = 'analog-value'"
                                " AND object_instance = 1").fetchone()[0]  # type: ignore[index]
        grant_remote(conn, "site-a", timedelta(hours=1), "operator:on-site")
    for site_id in SITES:
        linked(d, site_id)
    now = datetime.now(UTC).replace(microsecond=0)
    insert_readings(b.database.dsn, "site-b", now - timedelta(hours=3), 1000)
    with connect(central.database.dsn) as conn:  # an active model, deployed from central
        conn.execute("INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by)"
                     " VALUES ('site-a', 'setpoint', '1', 'active', %s, %s, 'central:ops')",
                     (hashlib.sha256(model).hexdigest(), model))
        conn.commit()
    decisions = "SELECT count(*) FROM inference_log WHERE site_id = 'site-a' AND mode = 'active'"

    with ready_agent(agent):
        wait_until(lambda: readings(central.database.dsn, "site-a") > 0 and readings(central.database.dsn,
                   "site-b") == 1000, 30, "both sites' first readings on central")
        back_up(stanza)
        insert_readings(b.database.dsn, "site-b", now - timedelta(hours=2), 1000)
        wait_until(lambda: readings(central.database.dsn, "site-b") == 2000, 30, "readings after the backup")
        restore_point = one(central.database.dsn, "SELECT clock_timestamp()")
        assert isinstance(restore_point, datetime)
        insert_readings(b.database.dsn, "site-b", now, 1000)  # central applies these, and loses them
        wait_until(lambda: readings(central.database.dsn, "site-b") == 3000, 30, "the readings to be lost")
        crash_after_confirming(d, stanza)

        # the outage: the sites poll, store and run their local writes
        stored = readings(a.database.dsn, "site-a")
        insert_readings(b.database.dsn, "site-b", now + timedelta(hours=2), 1000)
        with connect(a.database.dsn) as conn:
            local = insert_command(conn, Command("site-a", setpoint, 22.0, created_by="operator:on-site"))
        assert wait_outcome(a.database.dsn, local, timeout=30)["status"] == "completed"
        assert building.object_property(1001, "analog-value,1", "presentValue") == 22.0
        wait_until(lambda: readings(a.database.dsn, "site-a") > stored, 30, "site-a storing, central down")
        decided = one(a.database.dsn, decisions)
        wait_until(lambda: one(a.database.dsn, decisions) > decided, 30, "the active model, central down")

        restore_in_place(d, certs, stanza, restore_point)
        # the outage's readings stream in as soon as it runs; those it lost do not come again by themselves
        wait_until(lambda: readings(central.database.dsn, "site-b") == 3000, 30, "the outage's readings")
        lost = "SELECT count(*) FROM sensor_readings WHERE site_id = 'site-b' AND time >= %s AND time < %s"
        assert one(central.database.dsn, lost, now, now + timedelta(hours=1)) == 0

        recover(d, tmp_path, restore_point, capsys)
        insert_readings(b.database.dsn, "site-b", now + timedelta(hours=3), 1000)
        with connect(central.database.dsn) as conn:
            remote = insert_command(conn, Command("site-a", setpoint, 23.0, source="central",
                                                  created_by="central:ops", reason="after the restore"))
        status = "SELECT status FROM write_command_status WHERE id = %s"
        wait_until(lambda: one(central.database.dsn, status, remote) == "completed", 30,
                   "central's command run on site-a, its outcome back on central")
        assert building.object_property(1001, "analog-value,1", "presentValue") == 23.0
        assert one(central.database.dsn, status, local) == "completed"  # the outage's local write too

    assert_central_has_every_reading_once(d)
    assert totals(central.database.dsn, "site-b")[0] == 5000
    with psycopg.connect(b.database.dsn) as conn:  # site-b never saw site-a's commands
        assert conn.execute("SELECT count(*) FROM write_commands").fetchone()[0] == 0  # type: ignore[index]


def test_without_an_outbox_each_site_subscribes_to_the_restored_central_afresh(
    pitr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Central sends to its site itself: the site's slot on central went with the restore."""
    with certificate_dir(("site-b",)) as certs:
        d = Deployment(certs, ("site-b",), central_settings=archiving(pitr_dir))
        try:
            central, b = d.central.database.dsn, d.sites["site-b"]
            stanza = stanza_of(d.central_cluster, pitr_dir)
            linked(d, "site-b")
            now = datetime.now(UTC).replace(microsecond=0)
            insert_readings(b.database.dsn, "site-b", now - timedelta(hours=3), 1000)
            wait_until(lambda: readings(central, "site-b") == 1000, 30, "the first readings")
            back_up(stanza)
            restore_point = one(central, "SELECT clock_timestamp()")
            assert isinstance(restore_point, datetime)
            insert_readings(b.database.dsn, "site-b", now, 1000)
            wait_until(lambda: readings(central, "site-b") == 2000, 30, "the readings to be lost")
            crash_after_confirming(d, stanza)
            insert_readings(b.database.dsn, "site-b", now + timedelta(hours=2), 1000)
            restore_in_place(d, certs, stanza, restore_point)

            recover(d, tmp_path, restore_point, capsys)
            insert_readings(b.database.dsn, "site-b", now + timedelta(hours=3), 1000)
            with connect(central) as conn:
                command = insert_command(conn, Command("site-b", 1, 21.0, source="central", created_by="ops"))
            wait_until(lambda: one(b.database.dsn, "SELECT count(*) FROM write_commands WHERE id = %s",
                                   command) == 1, 30, "central's command on the site")
            assert_central_has_every_reading_once(d)
            assert totals(central, "site-b")[0] == 4000
        finally:
            d.close()
