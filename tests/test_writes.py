"""Writes end to end: MQTT and database commands through the edge agent's executor to the virtual
building's priority arrays, with a real broker and a real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from bacpipes.commands import Command, grant_remote, insert_command, revoke_remote
from bacpipes.settings import Settings
from edge.bacnet import BacnetClient
from edge.executor import parse_mqtt_command
from edge.writes import slot_value
from sim.server import ThreadedBuilding
from tests.brokers import Collector
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent, wait_outcome

BASE = "127.0.0.140"
AGENT = "127.0.0.102/8:47902"
SETPOINT = "analog-value,1"  # cooling setpoint, 16..30 on the device
START = datetime(2026, 7, 1, 13, 0)  # a hot afternoon: every zone is cooling


@pytest.fixture
def building() -> Iterator[ThreadedBuilding]:
    with ThreadedBuilding(devices=2, address_base=BASE, seed=3, speed=0, start=START) as b:
        yield b


def site_settings(db_dsn: str, url: str, tmp_path: Path, agent: str = AGENT, **writes: Any) -> Settings:
    return make_settings(
        db_dsn, url, tmp_path,
        bacnet={"address": agent},
        discovery={"targets": [f"{BASE}-127.0.0.141"]},
        polling={"default_interval_s": 2},
        writes={"poll_interval_s": 1, **writes},
    )


def point_id(dsn: str, device: int, objid: str) -> int:
    object_type, instance = objid.split(",")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT point_id FROM point WHERE device_id = %s AND object_type = %s AND object_instance = %s",
            (device, object_type, int(instance)),
        ).fetchone()
    assert row, f"no point {device} {objid}"
    return row[0]


def slots(b: ThreadedBuilding, device: int, objid: str) -> list[float | None]:
    return [slot_value(s) for s in b.object_property(device, objid, "priorityArray")]


class MqttCommander:
    """An operator tool on the broker: sends commands, collects results."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.results = Collector(url, settings.writes.result_topic, persistent=False)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"op-{uuid.uuid4().hex[:6]}")
        host, port = url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.loop_start()

    def send(self, payload: dict[str, Any] | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(self.settings.writes.command_topic, raw, qos=1).wait_for_publish(5)

    def result(self, command_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.results.snapshot():
                body = json.loads(m.payload)
                if body.get("commandId") == command_id:
                    return body
            time.sleep(0.02)
        raise AssertionError(f"no result for {command_id}")

    def result_matching(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.results.snapshot():
                body = json.loads(m.payload)
                if predicate(body):
                    return body
            time.sleep(0.02)
        raise AssertionError("no matching result")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.results.close()


@contextmanager
def commander(url: str, settings: Settings) -> Iterator[MqttCommander]:
    c = MqttCommander(url, settings)
    try:
        yield c
    finally:
        c.close()


def test_write_and_release_at_8_and_16_read_back_from_the_device(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    with ready_agent(settings), commander(broker.url, settings) as op:
        ids = {}
        for priority, value in ((16, 26.5), (8, 21.5)):
            ids[priority] = str(uuid.uuid4())
            op.send({"pointId": sp, "value": value, "priority": priority, "commandId": ids[priority]})
            result = op.result(ids[priority])
            assert result["status"] == "completed", result
        array = slots(building, 1001, SETPOINT)
        assert array[7] == 21.5 and array[15] == 26.5
        assert building.object_property(1001, SETPOINT, "presentValue") == 21.5  # 8 beats 16
        assert result["valueRead"] == 21.5 and result["priorityArray"][15] == 26.5

        op.send({"pointId": sp, "release": True, "priority": 8, "commandId": (rel := str(uuid.uuid4()))})
        assert op.result(rel)["status"] == "completed"
        assert building.object_property(1001, SETPOINT, "presentValue") == 26.5  # falls back to 16
        op.send({"pointId": sp, "release": True, "priority": 16, "commandId": (rel := str(uuid.uuid4()))})
        assert op.result(rel)["valueRead"] == 24.0  # relinquish default
        assert slots(building, 1001, SETPOINT) == [None] * 16

    with psycopg.connect(db_dsn) as conn:
        trail = conn.execute(
            "SELECT c.priority, c.command_type, array_agg(e.status ORDER BY e.at) FROM write_commands c"
            " JOIN command_events e ON e.command_id = c.id GROUP BY c.id ORDER BY c.created_at"
        ).fetchall()
        status = conn.execute(
            "SELECT status, executed_at IS NOT NULL, completed_at >= executed_at, error_message"
            " FROM write_command_status WHERE id = %s", (ids[8],)
        ).fetchone()
    assert trail == [
        (16, "write_value", ["accepted", "executing", "completed"]),
        (8, "write_value", ["accepted", "executing", "completed"]),
        (8, "release_priority", ["accepted", "executing", "completed"]),
        (16, "release_priority", ["accepted", "executing", "completed"]),
    ]
    assert status == ("completed", True, True, None)


def test_a_setpoint_write_changes_the_building(db_dsn, broker, tmp_path):
    with ThreadedBuilding(devices=2, address_base=BASE, seed=3, speed=900, start=START) as b:
        settings = site_settings(db_dsn, broker.url, tmp_path)
        discover_site(settings)
        sp = point_id(db_dsn, 1001, SETPOINT)
        with ready_agent(settings), psycopg.connect(db_dsn) as conn:
            command_id = insert_command(conn, Command(settings.site.id, sp, 19.0, source="ui",
                                                      created_by="ui:alice", reason="pre-cool"))
            assert wait_outcome(db_dsn, command_id)["status"] == "completed"
            written, untouched = b.building.zones[0], b.building.zones[1]
            assert written.inputs.cooling_setpoint == 19.0
            time.sleep(4)  # one building hour
        assert written.temp_c < untouched.temp_c - 2.0  # the written zone cools towards 19 °C
        assert written.cooling_kw > untouched.cooling_kw


BAD_MQTT = [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "JSON object"),
    ({"pointId": "x", "value": 20}, "pointId must be an integer"),
    ({"value": 20}, "pointId must be an integer"),
    ({"pointId": 99999, "value": 20}, "unknown point 99999"),
    ({"pointId": "{sp}", "value": "cold"}, "value is not a number"),
    ({"pointId": "{sp}"}, "missing value"),
    ({"pointId": "{sp}", "value": 40}, "above the point's maximum 30"),
    ({"pointId": "{sp}", "value": float("nan")}, "value is not finite"),
    ({"pointId": "{sp}", "value": 20, "priority": 0}, "priority must be 1 to 16, not 0"),
    ({"pointId": "{sp}", "value": 20, "priority": 17}, "priority must be 1 to 16, not 17"),
    ({"pointId": "{sp}", "value": 20, "priority": 1}, "reserved for life safety"),
    ({"pointId": "{sp}", "value": 20, "priority": "high"}, "priority must be an integer"),
    ({"pointId": "{ai}", "value": 20}, "is read-only"),
    ({"pointId": "{sp}", "release": True, "priority": 9}, "holds no value to release"),
    ({"pointId": "{bv}", "value": 2}, "a binary point takes 0 or 1"),
    ({"pointId": "{msv}", "value": 1.5}, "a multi-state point takes a state number"),
]


def test_each_bad_mqtt_command_is_rejected_clearly_and_touches_nothing(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    ids = {
        "sp": point_id(db_dsn, 1001, SETPOINT), "ai": point_id(db_dsn, 1001, "analog-input,1"),
        "bv": point_id(db_dsn, 1001, "binary-value,1"), "msv": point_id(db_dsn, 1001, "multi-state-value,1"),
    }
    with psycopg.connect(db_dsn) as conn:
        conn.execute("UPDATE point SET min_value = 16, max_value = 30 WHERE point_id = %s", (ids["sp"],))
    before = {o: slots(building, 1001, o) for o in (SETPOINT, "binary-value,1", "multi-state-value,1")}
    with ready_agent(settings), commander(broker.url, settings) as op:
        for payload, expected in BAD_MQTT:
            if isinstance(payload, bytes):  # no command id to follow: find the rejection by its reason
                op.send(payload)
                result = op.result_matching(lambda body, e=expected: e in (body.get("error") or ""))
            else:
                command = {k: ids[v[1:-1]] if str(v).startswith("{") else v for k, v in payload.items()}
                command["commandId"] = str(uuid.uuid4())
                op.send(command)
                result = op.result(command["commandId"])
            assert result["status"] == "rejected", (payload, result)
            assert expected in result["error"], (payload, result["error"])
        # the good command after all the bad ones still runs
        good = str(uuid.uuid4())
        op.send({"pointId": ids["sp"], "value": 22.0, "commandId": good})
        assert op.result(good)["status"] == "completed"
    after = {o: slots(building, 1001, o) for o in before}
    before[SETPOINT][7] = 22.0
    assert after == before  # only the good command reached the device
    with psycopg.connect(db_dsn) as conn:
        rejected = conn.execute(
            "SELECT count(*) FROM write_command_status WHERE status = 'rejected'"
            " AND error_message IS NOT NULL AND executed_at IS NULL"
        ).fetchone()[0]
    assert rejected == len(BAD_MQTT)  # every attempt is in the audit trail, none was executed


def test_database_commands_expired_ml_and_remote_authority(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    site = settings.site.id
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "UPDATE point SET ml_min_value = 22, ml_max_value = 26, ml_max_step = 1 WHERE point_id = %s",
            (sp,),
        )
        conn.execute("INSERT INTO point_state (site_id, point_id, value) VALUES (%s, %s, 24.0)"
                     " ON CONFLICT (site_id, point_id) DO UPDATE SET value = 24.0", (site, sp))
        conn.commit()

    def run(conn: psycopg.Connection, **kw: Any) -> dict[str, Any]:
        fields = {"site_id": site, "point_id": sp, "value": 24.5, "created_by": "test", **kw}
        return wait_outcome(db_dsn, insert_command(conn, Command(**fields)))

    with ready_agent(settings), psycopg.connect(db_dsn) as conn:
        late = run(conn, source="ui", not_after=datetime.now(UTC) - timedelta(seconds=1))
        assert late["status"] == "rejected" and "expired" in late["error_message"]
        for source in ("central", "ml"):
            refused = run(conn, source=source)
            assert refused["status"] == "rejected"
            assert "control authority is with the site" in refused["error_message"]

        grant_remote(conn, site, timedelta(minutes=5), "operator:bob", "ML trial")
        assert run(conn, source="central", value=23.0)["status"] == "completed"
        for kw, expected in (
            ({"value": 24.5, "priority": 9}, "ML commands write at priority 8 only"),
            ({"value": 27.0}, "outside the point's ML limits 22 to 26"),
            ({"value": 25.5}, "exceeds the ML maximum step 1"),
        ):
            refused = run(conn, source="ml", **kw)
            assert refused["status"] == "rejected" and expected in refused["error_message"], refused
        assert run(conn, source="ml", value=24.5)["status"] == "completed"
        assert slots(building, 1001, SETPOINT)[7] == 24.5

        revoke_remote(conn, site, "operator:bob")
        refused = run(conn, source="ml", value=24.0)
        assert refused["status"] == "rejected" and "control authority" in refused["error_message"]
        grant_remote(conn, site, timedelta(seconds=1), "operator:bob")
        time.sleep(1.2)  # the grant runs out by itself
        assert run(conn, source="central")["status"] == "rejected"
        assert slots(building, 1001, SETPOINT)[7] == 24.5  # nothing refused reached the device
        # without the grant, the site's own ML (inference stepping back, the guard) may still let go
        assert run(conn, source="ml", value=None, release=True)["status"] == "completed"
        assert run(conn, source="central", value=None, release=True)["status"] == "rejected"
    assert slots(building, 1001, SETPOINT)[7] is None


def test_two_agents_on_one_queue_execute_each_command_once(building, db_dsn, broker, tmp_path):
    one = site_settings(db_dsn, broker.url, tmp_path / "one")
    two = site_settings(db_dsn, broker.url, tmp_path / "two", agent="127.0.0.103/8:47903")
    discover_site(one)
    sp = point_id(db_dsn, 1001, SETPOINT)
    with ready_agent(one), ready_agent(two), \
            psycopg.connect(db_dsn) as conn:
        ids = [insert_command(conn, Command(one.site.id, sp, 20.0 + (i % 10) / 2, source="ui",
                                            created_by="ui:test")) for i in range(40)]
        outcomes = [wait_outcome(db_dsn, i)["status"] for i in ids]
        agents = conn.execute(
            "SELECT agent, count(*) FROM command_events WHERE status = 'executing' GROUP BY agent"
        ).fetchall()
        per_command = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) n FROM command_events WHERE status = 'executing'"
            " GROUP BY command_id) c"
        ).fetchone()[0]
    assert outcomes == ["completed"] * 40
    assert per_command == 1 and sum(n for _, n in agents) == 40
    assert slots(building, 1001, SETPOINT)[7] == 20.0 + (39 % 10) / 2


def test_interrupted_command_is_read_back_not_repeated(building, db_dsn, broker, tmp_path):
    """An agent that died after claiming a command finds it at start-up and asks the device."""
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    agent = settings.mqtt.client_id
    with psycopg.connect(db_dsn) as conn:
        took = insert_command(conn, Command(settings.site.id, sp, 23.0, source="ui", created_by="t"))
        lost = insert_command(
            conn, Command(settings.site.id, sp, 27.0, priority=9, source="ui", created_by="t")
        )
        for command_id in (took, lost):  # claimed by "this agent", then it died
            conn.execute(
                "INSERT INTO command_events (command_id, site_id, status, agent) VALUES"
                " (%s, %s, 'accepted', %s), (%s, %s, 'executing', %s)",
                (command_id, settings.site.id, agent) * 2,
            )
        conn.commit()
    async def write_first() -> None:  # the write of `took` reached the device before the crash
        client = BacnetClient.open(settings.bacnet)
        try:
            await client.write(f"{BASE}", SETPOINT, "presentValue", 23.0, 8)
        finally:
            client.close()
    asyncio.run(write_first())
    with ready_agent(settings):
        done, gone = wait_outcome(db_dsn, took), wait_outcome(db_dsn, lost)
    assert done["status"] == "completed" and done["value_read"] == 23.0
    assert gone["status"] == "failed" and "not repeated" in gone["error_message"]
    assert slots(building, 1001, SETPOINT)[8] is None  # priority 9 was never written by the recovery


def test_database_away_then_back_runs_what_was_queued(building, db_dsn, broker, tmp_path):
    """A command inserted while the executor had no connection runs when it reconnects (poll safety net)."""
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    with ready_agent(settings) as agent, psycopg.connect(db_dsn) as conn:
        time.sleep(1.5)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.commit()
        command_id = insert_command(conn, Command(settings.site.id, sp, 25.0, source="ui", created_by="t"))
        assert wait_outcome(db_dsn, command_id, timeout=20)["status"] == "completed"
        assert agent.executor is not None and agent.executor.completed == 1
    assert slots(building, 1001, SETPOINT)[7] == 25.0


def test_parse_mqtt_command_never_raises() -> None:
    for raw in (b"", b"\xff\xfe", b"null", b'{"pointId": true, "value": 1}', b'{"priority": 99999999}'):
        command, problem = parse_mqtt_command("s", raw, "mqtt")
        assert command.source == "mqtt" and problem


def bacpipes(db_dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACPIPES_DATABASE__DSN": db_dsn}
    return subprocess.run([sys.executable, "-m", "bacpipes.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli_sets_limits_writes_and_grants_authority(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    limits = bacpipes(db_dsn, "edge", "points", "set", "--device", "1001", "--type", "analog-value",
                      "--match", "*CLG-SP", "--min", "17", "--max", "28")
    assert limits.returncode == 0 and "updated 1 point(s)" in limits.stdout, limits.stderr
    upside_down = bacpipes(db_dsn, "edge", "points", "set", "--device", "1001", "--min", "40", "--max", "30")
    assert upside_down.returncode == 2 and "minimum above its maximum" in upside_down.stderr
    with ready_agent(settings):
        ok = bacpipes(db_dsn, "write", "--point", str(sp), "--value", "22.5", "--reason", "test")
        assert ok.returncode == 0 and "completed; present value now 22.5" in ok.stdout, ok.stdout + ok.stderr
        high = bacpipes(db_dsn, "write", "--point", str(sp), "--value", "29")
        assert high.returncode == 1 and "above the point's maximum 28" in high.stdout
        both = bacpipes(db_dsn, "write", "--point", str(sp), "--value", "20", "--release")
        assert both.returncode == 2 and "either --value or --release" in both.stderr
        released = bacpipes(db_dsn, "write", "--point", str(sp), "--release")
        assert released.returncode == 0 and "present value now 24" in released.stdout
    idle = bacpipes(db_dsn, "write", "--point", str(sp), "--value", "21", "--wait", "1")
    assert idle.returncode == 1 and "no agent ran it" in idle.stdout
    granted = bacpipes(db_dsn, "authority", "grant", "--minutes", "5", "--reason", "trial")
    assert granted.returncode == 0 and "control authority remote until" in granted.stdout
    revoked = bacpipes(db_dsn, "authority", "revoke")
    assert revoked.returncode == 0 and "control authority edge" in revoked.stdout
    assert slots(building, 1001, SETPOINT) == [None] * 16


def test_a_dead_device_fails_the_command_clearly_and_the_next_one_runs(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    dead, alive = point_id(db_dsn, 1002, SETPOINT), point_id(db_dsn, 1001, SETPOINT)
    with ready_agent(settings) as agent, psycopg.connect(db_dsn) as conn:
        building.stop_device(1002)
        lost = insert_command(conn, Command(settings.site.id, dead, 22.0, source="ui", created_by="t"))
        fine = insert_command(conn, Command(settings.site.id, alive, 22.0, source="ui", created_by="t"))
        failed, done = wait_outcome(db_dsn, lost), wait_outcome(db_dsn, fine)
        assert agent.health()["writes"] == {"completed": 1, "rejected": 0, "failed": 1}
    assert failed["status"] == "failed", failed
    assert failed["error_message"] == (
        "write to device 1002 failed: the device did not answer (offline or unreachable)"
    )
    assert done["status"] == "completed" and slots(building, 1001, SETPOINT)[7] == 22.0
