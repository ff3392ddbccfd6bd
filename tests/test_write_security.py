"""The write path and the replication link against someone who holds one role and abuses it (issue 14):
a release that smuggles a value, central forging a local source, a site forging another site's rows, a
retained command replayed at every agent start. Real broker, real PostgreSQL clusters linked over TLS,
the virtual building's priority arrays."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from bacpipes.commands import Command, grant_remote, insert_command
from bacpipes.db import connect
from bacpipes.replication import META_TABLES, link
from bacpipes.settings import Settings
from edge.writes import slot_value
from sim.server import ThreadedBuilding
from tests.brokers import Collector
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent, wait_outcome
from tests.replication_harness import (
    SITES,
    Deployment,
    certificate_dir,
    insert_readings,
    linked,
    totals,
    wait_until,
)

BASE = "127.0.0.190"
AGENT = "127.0.0.108/8:47908"
SETPOINT = "analog-value,1"  # cooling setpoint, 16..30 on the device, relinquish default 24


@pytest.fixture
def building() -> Iterator[ThreadedBuilding]:
    with ThreadedBuilding(devices=1, address_base=BASE, seed=5, speed=0) as b:
        yield b


def agent_settings(dsn: str, url: str, tmp_path: Path, **sections: dict) -> Settings:
    return make_settings(dsn, url, tmp_path, bacnet={"address": AGENT}, discovery={"targets": [BASE]},
                         writes={"poll_interval_s": 1}, **sections)


def setpoint_id(dsn: str) -> int:
    with connect(dsn) as conn:
        return conn.execute("SELECT point_id FROM point WHERE object_type = 'analog-value'"
                            " AND object_instance = 1").fetchone()[0]


def slots(b: ThreadedBuilding) -> list[float | None]:
    return [slot_value(s) for s in b.object_property(1001, SETPOINT, "priorityArray")]


def publish(url: str, topic: str, body: dict[str, Any], retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"op-{uuid.uuid4().hex[:6]}")
    host, port = url.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.publish(topic, json.dumps(body).encode(), qos=1, retain=retain).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def result_for(results: Collector, command_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in results.snapshot():
            body = json.loads(m.payload)
            if body.get("commandId") == command_id:
                return body
        time.sleep(0.02)
    raise AssertionError(f"no result for {command_id}")


# --- 1. a release carries no value ------------------------------------------------------------------


def test_a_release_that_carries_a_value_is_rejected_and_never_writes_it(building, db_dsn, broker, tmp_path):
    """A release is checked as a release (no limits apply to Null), so a value riding along used to land in
    the slot unchecked: here 29.5, above the point's maximum of 26. The message must be refused and
    audited, the slot left as it was; and a release row that carries a value anyway (one stored before the
    database refused them) must still write Null."""
    settings = agent_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = setpoint_id(db_dsn)
    with connect(db_dsn) as conn:
        conn.execute("UPDATE point SET min_value = 18, max_value = 26 WHERE point_id = %s", (sp,))
        conn.commit()
    topic = settings.writes.command_topic
    results = Collector(broker.url, settings.writes.result_topic, persistent=False)
    try:
        with ready_agent(settings):
            held = str(uuid.uuid4())
            publish(broker.url, topic, {"pointId": sp, "value": 25.0, "priority": 16, "commandId": held})
            assert result_for(results, held)["status"] == "completed"

            smuggled = str(uuid.uuid4())
            publish(broker.url, topic, {"pointId": sp, "release": True, "value": 29.5, "priority": 16,
                                        "commandId": smuggled})
            result = result_for(results, smuggled)
            assert result["status"] == "rejected", result
            assert "a release carries no value" in result["error"]
            assert slots(building)[15] == 25.0  # untouched: neither 29.5 nor released
            audit = wait_outcome(db_dsn, uuid.UUID(smuggled))
            assert (audit["status"], audit["command_type"]) == ("rejected", "release_priority")
            assert audit["value"] is None
            assert "a release carries no value" in audit["error_message"]

            # the database refuses such a row from any source, and so does the command model
            with connect(db_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO write_commands (site_id, point_id, command_type, value, priority,"
                             " created_by, source) VALUES (%s, %s, 'release_priority', 29.5, 16, 'x', 'ui')",
                             (settings.site.id, sp))
            with pytest.raises(ValueError, match="carries no value"):
                Command(settings.site.id, sp, 29.5, priority=16, release=True)

            # a row from before the constraint: the executor writes Null whatever the row says
            with connect(db_dsn) as conn:
                conn.execute("ALTER TABLE write_commands DROP CONSTRAINT write_commands_release_has_no_value")
                old = conn.execute(
                    "INSERT INTO write_commands (site_id, point_id, command_type, value, priority,"
                    " created_by, source) VALUES (%s, %s, 'release_priority', 29.5, 16, 'ui:old', 'ui')"
                    " RETURNING id",
                    (settings.site.id, sp)).fetchone()[0]
                conn.commit()
            assert wait_outcome(db_dsn, old)["status"] == "completed"
            assert slots(building)[15] is None
            assert building.object_property(1001, SETPOINT, "presentValue") == 24.0  # relinquish default
    finally:
        results.close()


# --- 4 (part). retained commands --------------------------------------------------------------------


def test_a_retained_command_is_refused_and_never_run_by_a_restarted_agent(building, db_dsn, broker, tmp_path):
    """The broker hands a retained message to every new subscription: a retained command used to run
    again whenever the agent subscribed anew (its start, a reconnection after a broker restart), long
    after whoever sent it. It is refused each time it is delivered, with the reason in the audit trail,
    and the device never sees it."""
    settings = agent_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = setpoint_id(db_dsn)
    publish(broker.url, settings.writes.command_topic, {"pointId": sp, "value": 19.0, "priority": 9},
            retain=True)  # no commandId: each delivery would be a new command

    def refused() -> list[tuple]:
        with connect(db_dsn) as conn:
            return conn.execute(
                "SELECT status, error_message, value FROM write_command_status WHERE point_id = %s"
                " ORDER BY created_at", (sp,)).fetchall()

    def delivered(n: int, why: str) -> None:
        wait_until(lambda: len(refused()) == n, 30, f"the retained command delivered at {why}")
        time.sleep(0.5)  # a command that ran would have reached the device by now
        assert slots(building)[8] is None

    with ready_agent(settings):
        delivered(1, "the agent's start")
        broker.restart()  # the agent reconnects and subscribes again, its database connection up
        delivered(2, "the agent's reconnection")
    with ready_agent(settings):
        delivered(3, "the agent's restart")
    outcomes = refused()
    assert [status for status, _, _ in outcomes] == ["rejected"] * 3
    assert all("retained commands are refused" in error for _, error, _ in outcomes)
    assert building.object_property(1001, SETPOINT, "presentValue") == 24.0



def test_a_retained_command_published_while_the_agent_listens_is_refused(building, db_dsn, broker, tmp_path):
    """Under MQTT 3.1.1 the broker clears the retain flag on a delivery to an existing subscription, so a
    retained command published while the agent listened ran once. The listener subscribes with Retain As
    Published (MQTT v5, on its shared subscription): refused and audited, the device untouched, and a
    normal command right after still runs and gets its result."""
    settings = agent_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = setpoint_id(db_dsn)
    topic = settings.writes.command_topic
    results = Collector(broker.url, settings.writes.result_topic, persistent=False)
    try:
        with ready_agent(settings):
            retained = str(uuid.uuid4())
            publish(broker.url, topic, {"pointId": sp, "value": 19.0, "priority": 9, "commandId": retained},
                    retain=True)
            result = result_for(results, retained)
            assert result["status"] == "rejected", result
            assert "retained commands are refused" in result["error"]
            audit = wait_outcome(db_dsn, uuid.UUID(retained))
            assert audit["status"] == "rejected"
            assert "retained commands are refused" in audit["error_message"]
            time.sleep(0.5)  # a command that ran would have reached the device by now
            assert slots(building)[8] is None

            live = str(uuid.uuid4())
            publish(broker.url, topic, {"pointId": sp, "value": 21.0, "priority": 9, "commandId": live})
            assert result_for(results, live)["status"] == "completed"
            assert wait_outcome(db_dsn, uuid.UUID(live))["status"] == "completed"
            assert slots(building)[8] == 21.0
    finally:
        results.close()


# --- replication: 2. authority by arrival, 3. a site's own rows only ----------------------------------


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    with certificate_dir() as directory:
        d = Deployment(directory, SITES)
        try:
            yield d
        finally:
            d.close()


def test_a_command_from_central_is_remote_whatever_source_it_claims(deployment, building, broker, tmp_path):
    """Central can write any `source` it likes: `bacpipes write --config central.toml` labels its rows
    'cli'. The site judges by how the row arrived: by replication, so remote, refused without a grant
    and run with one, while a command typed on the site itself still runs without a grant."""
    central, a = deployment.central, deployment.sites["site-a"]
    with connect(a.database.dsn) as conn:  # site-a's catalog comes from discovering its building
        conn.execute("DELETE FROM point")
        conn.execute("DELETE FROM device")
    agent = agent_settings(a.database.dsn, broker.url, tmp_path, site={"id": "site-a"})
    discover_site(agent)
    linked(deployment, "site-a")
    sp = setpoint_id(a.database.dsn)

    def on_central(conn: psycopg.Connection, value: float, source: str) -> dict[str, Any]:
        command_id = insert_command(conn, Command("site-a", sp, value, source=source,
                                                  created_by=f"{source}:mallory"))
        return wait_outcome(a.database.dsn, command_id, timeout=30)

    with ready_agent(agent), connect(central.database.dsn) as c, connect(a.database.dsn) as s:
        for source in ("cli", "ui", "mqtt"):
            refused = on_central(c, 19.0, source)
            assert refused["status"] == "rejected", refused
            assert "commands from central (arrived by replication" in refused["error_message"]
            assert "need a remote grant" in refused["error_message"]
        assert slots(building)[7] is None

        local = wait_outcome(a.database.dsn, insert_command(s, Command("site-a", sp, 22.0, source="cli",
                                                                       created_by="cli:operator")))
        assert local["status"] == "completed" and slots(building)[7] == 22.0

        grant_remote(s, "site-a", timedelta(minutes=5), "operator:on-site")
        assert on_central(c, 23.0, "cli")["status"] == "completed"
        assert slots(building)[7] == 23.0
        arrived = s.execute("SELECT created_by, arrived FROM write_commands ORDER BY created_at").fetchall()
    assert arrived == [("cli:mallory", "replication"), ("ui:mallory", "replication"),
                       ("mqtt:mallory", "replication"), ("cli:operator", "local"),
                       ("cli:mallory", "replication")]


FORGED_HEARTBEAT = "INSERT INTO site_heartbeat (site_id, at, wal_lsn) VALUES ('site-b', %s, '0/1')" \
                   " ON CONFLICT (site_id) DO UPDATE SET at = EXCLUDED.at, wal_lsn = EXCLUDED.wal_lsn"


def test_a_site_cannot_write_another_sites_rows_into_central(deployment: Deployment) -> None:
    """site-a forges site-b's readings, heartbeat and points. Its publications carry only its own rows;
    and when a compromised site-a removes those filters, central drops the forged rows itself (and counts
    them) while site-a's own rows keep arriving; `site link` run again puts the filters back."""
    central, a, b = deployment.central, deployment.sites["site-a"], deployment.sites["site-b"]
    linked(deployment, "site-a")
    linked(deployment, "site-b")
    now = datetime.now(UTC).replace(microsecond=0)
    insert_readings(b.database.dsn, "site-b", now, 50)
    wait_until(lambda: totals(central.database.dsn, "site-b") == totals(b.database.dsn, "site-b"), 30,
               "site-b's own readings")
    cdsn = central.database.dsn

    def central_view() -> tuple:
        with connect(cdsn) as conn:
            return (totals(cdsn, "site-b"),
                    conn.execute("SELECT at, wal_lsn FROM site_heartbeat WHERE site_id = 'site-b'")
                    .fetchone(),
                    conn.execute("SELECT count(*), count(object_name) FROM point WHERE site_id = 'site-b'")
                    .fetchone(),
                    conn.execute("SELECT address FROM device WHERE site_id = 'site-b'").fetchall())

    honest = central_view()
    marker = iter(range(1, 100))

    def forge_then_mark() -> None:
        """Forged rows, then rows of site-a's own: once those are on central, the forged ones had their
        chance (one stream, in commit order)."""
        round_ = next(marker)
        with connect(a.database.dsn) as conn:
            insert_readings(a.database.dsn, "site-b", now + timedelta(hours=round_), 30)
            conn.execute(FORGED_HEARTBEAT, (now + timedelta(days=1),))
            conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('site-b', 1, '10.6.6.6')"
                         " ON CONFLICT (site_id, device_id) DO UPDATE SET address = '10.6.6.7'")
            conn.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance,"
                         " object_name) VALUES ('site-b', 1, 1, 'analog-value', 1, 'forged')"
                         " ON CONFLICT (site_id, point_id) DO UPDATE SET object_name = 'forged again'")
            conn.commit()
        expected = totals(a.database.dsn, "site-a")[0] + 10
        insert_readings(a.database.dsn, "site-a", now + timedelta(minutes=round_), 10)
        wait_until(lambda: totals(cdsn, "site-a")[0] == expected, 30, "site-a's own readings on central")

    forge_then_mark()  # 3. the site's row filters keep them at home
    assert central_view() == honest
    with connect(cdsn) as conn:
        assert conn.execute("SELECT count(*) FROM replication_refusals").fetchone()[0] == 0

    with connect(a.database.dsn, autocommit=True) as conn:  # a compromised site drops its filters
        conn.execute("ALTER PUBLICATION bacpipes_readings SET TABLE sensor_readings")
        conn.execute(f"ALTER PUBLICATION bacpipes_meta SET TABLE {', '.join(META_TABLES)}")
    forge_then_mark()
    assert central_view() == honest  # central refused them: site-b's point and heartbeat intact
    with connect(cdsn) as conn:
        refusals = dict(conn.execute("SELECT table_name, rows FROM replication_refusals"
                                     " WHERE site_id = 'site-a' AND last_site_id = 'site-b'").fetchall())
    assert refusals.keys() == {"sensor_readings", "site_heartbeat", "device", "point"}
    assert refusals["sensor_readings"] == 30

    steps = link(a, central)  # re-running link restores the filters
    assert any("now carries only this site's rows" in s for s in steps), steps
    with connect(a.database.dsn) as conn:
        unfiltered = conn.execute("SELECT pubname, tablename FROM pg_publication_tables"
                                  " WHERE rowfilter IS NULL").fetchall()
    assert unfiltered == []
