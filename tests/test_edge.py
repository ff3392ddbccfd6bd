"""Edge acquisition end to end: the virtual building over real BACnet/UDP, a real broker, a real
database. Asserts on what arrives: rows, messages, values."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from bacpipes.contracts import health_topic, reading_filter
from bacpipes.points import update_points
from bacpipes.settings import BacnetSettings
from bacpipes.waiting import poll_until
from edge.bacnet import BacnetClient, BacnetError
from edge.polling import plain_value
from sim.server import ThreadedBuilding
from tests.brokers import Collector, MosquittoBroker
from tests.conftest import fresh_database, make_settings
from tests.edge_harness import discover_site, outcome, running_agent, side_by_side

# alone (pyproject): a dead device's neighbours keep every 1 s slot
pytestmark = pytest.mark.alone

BASE = "127.0.0.40"
TARGETS = ["127.0.0.40-127.0.0.44"]
AGENT = "127.0.0.100/8:47943"  # this file's own port: other files' clients run at the same time (xdist)
BBMD_PORT = 47814  # the BBMD test's building: a broadcast on 47808 would reach other files' buildings too


@contextmanager
def building(devices: int = 3, points: int = 0, speed: float = 0.0) -> Iterator[ThreadedBuilding]:
    b = ThreadedBuilding(devices=devices, points=points, address_base=BASE, seed=7, speed=speed)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def settings_for(db_dsn: str, url: str, tmp_path: Path, interval: float = 1.0):
    return make_settings(
        db_dsn, url, tmp_path, bacnet={"address": AGENT}, discovery={"targets": TARGETS},
        polling={"default_interval_s": interval},
    )


def points_by_id(db_dsn: str) -> dict[int, tuple]:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT point_id, device_id, object_type, object_instance, units, topic FROM point"
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def readings(collector: Collector) -> list[tuple[str, dict, bool]]:
    return [(m.topic, json.loads(m.payload), m.retain) for m in collector.snapshot()]


def test_discovery_finds_every_device_and_point(db_dsn, tmp_path):
    settings = settings_for(db_dsn, "mqtt://127.0.0.1:1", tmp_path)
    with building(devices=4) as b:
        report = discover_site(settings)
        expected = {(d, t, i) for (d, t, i) in b.snapshot()}
    assert sorted(d.peer.device_id for d in report.devices) == [1001, 1002, 1003, 1004]
    assert report.errors == {}
    with psycopg.connect(db_dsn) as conn:
        found = set(conn.execute("SELECT device_id, object_type, object_instance FROM point").fetchall())
        devices = dict(conn.execute("SELECT device_id, max_apdu FROM device").fetchall())
        meta = conn.execute(
            "SELECT object_type, units, writable, commandable, topic, haystack_name FROM point"
        ).fetchall()
    assert found == expected
    assert devices[1004] == 480 and devices[1001] == 1476  # the legacy controller's small APDU
    kinds = {(t, w, c) for t, _u, w, c, *_ in meta}
    assert ("analog-input", False, False) in kinds
    assert ("analog-value", True, True) in kinds
    assert {t for t, *_ in meta} >= {
        "analog-input",
        "analog-value",
        "analog-output",
        "binary-input",
        "binary-value",
        "multi-state-value",
    }
    assert all(u for t, u, *_ in meta if t.startswith("analog"))
    for _t, _u, _w, _c, topic, _h in meta:
        site, equip, obj, leaf = topic.split("/")
        assert (site, leaf) == ("macau-casino", "presentValue") and equip and obj
    haystack = [h for *_, h in meta]
    assert len(set(haystack)) == len(haystack)
    with psycopg.connect(db_dsn) as conn:
        tags = conn.execute(
            "SELECT auto_tags FROM point WHERE device_id = 1001 AND object_type = 'analog-input'"
            " AND object_instance = 1"
        ).fetchone()[0]
    assert tags["equipType"] == "ahu" and tags["equipId"] == "1" and tags["site"] == "macau-casino"
    assert (tags["quantity"], tags["function"]) == ("temp", "sensor")
    assert tags["location"].startswith("Macau")


def test_rediscovery_keeps_operator_edits_and_marks_vanished_points(db_dsn, tmp_path):
    settings = settings_for(db_dsn, "mqtt://127.0.0.1:1", tmp_path)
    with building(devices=2, points=40):
        first = discover_site(settings)
    edited = update_points(
        settings, device=1001, object_type="analog-input", publish="off", interval_s=7, tags=["floor=3"]
    )
    assert edited > 0
    with building(devices=2, points=0):
        second = discover_site(settings)
    assert second.new_points == 0
    assert 0 < second.point_count < first.point_count
    with psycopg.connect(db_dsn) as conn:
        missing = conn.execute("SELECT count(*) FROM point WHERE missing_since IS NOT NULL").fetchone()[0]
        kept = conn.execute(
            "SELECT publish, interval_s, user_tags->>'floor' FROM point"
            " WHERE device_id = 1001 AND object_type = 'analog-input' AND missing_since IS NULL"
        ).fetchall()
    assert missing == first.point_count - second.point_count
    assert kept and all(row == (False, 7.0, "3") for row in kept)


def test_published_values_match_the_simulator(db_dsn, broker, tmp_path):
    settings = settings_for(db_dsn, broker.url, tmp_path)
    collector = Collector(broker.url, reading_filter(settings.site.id), "check-values")
    with building(devices=2) as b, running_agent(settings):
        collector.wait_for(1, timeout=20)
        time.sleep(1.5)
        served = b.snapshot()
    collector.close()
    points = points_by_id(db_dsn)
    got = readings(collector)
    assert {body["pointId"] for _t, body, _r in got} == set(points)
    for topic, body, _retain in got:
        device, otype, inst, units, point_topic = points[body["pointId"]]
        assert topic == point_topic
        assert body["quality"] == "good" and body["units"] == units
        assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 8 * 3600
        assert math.isclose(body["value"], float(plain_value(served[(device, otype, inst)])), rel_tol=1e-6)
    # retained: a subscriber that joins later gets the latest reading of every point at once
    late = Collector(broker.url, reading_filter(settings.site.id), "late-joiner", persistent=False)
    late.wait_for(len(points), timeout=10)
    late.close()
    assert {m.topic for m in late.snapshot() if m.retain} == {p[4] for p in points.values()}


def test_intervals_are_kept_and_aligned_to_the_clock(db_dsn, broker, tmp_path):
    settings = settings_for(db_dsn, broker.url, tmp_path, interval=2.0)
    collector = Collector(broker.url, reading_filter(settings.site.id), "check-schedule")
    with building(devices=2):
        discover_site(settings)
        update_points(settings, device=1001, interval_s=1)
        with running_agent(settings, discover_first=False):
            time.sleep(6.5)
    collector.close()
    points = points_by_id(db_dsn)
    times: dict[int, list[float]] = defaultdict(list)
    for _t, body, _r in readings(collector):
        times[body["pointId"]].append(datetime.fromisoformat(body["timestamp"]).timestamp())
    assert set(times) == set(points)
    for pid, stamps in times.items():
        interval = 1.0 if points[pid][0] == 1001 else 2.0
        slots = [math.floor(t / interval) for t in sorted(stamps)]
        # one reading per slot, every slot, read early in its slot
        assert slots == list(range(slots[0], slots[0] + len(slots))), (pid, stamps)
        assert all((t / interval) % 1 < 0.5 for t in stamps), (pid, stamps)
        assert len(slots) >= 6 / interval - 1


def test_unknown_object_and_refused_write_are_reported_not_fatal(db_dsn, broker, tmp_path):
    settings = settings_for(db_dsn, broker.url, tmp_path)
    collector = Collector(broker.url, reading_filter(settings.site.id), "check-errors")
    with building(devices=2):
        discover_site(settings)
        with psycopg.connect(db_dsn) as conn:
            bogus = conn.execute(
                "INSERT INTO point (site_id, device_id, object_type, object_instance, object_name)"
                " VALUES ('macau-casino', 1001, 'analog-value', 9999, 'GONE') RETURNING point_id"
            ).fetchone()[0]
            conn.execute(
                "UPDATE point SET topic = 'macau-casino/x/analogValue9999/presentValue' WHERE point_id = %s",
                (bogus,),
            )
        with running_agent(settings, discover_first=False):
            time.sleep(3.5)
        refused = asyncio.run(_write_to_analog_input())
    collector.close()
    with psycopg.connect(db_dsn) as conn:
        error_count, last_error = conn.execute(
            "SELECT error_count, last_error FROM point_state WHERE point_id = %s", (bogus,)
        ).fetchone()
        good = conn.execute(
            "SELECT count(*) FROM point_state WHERE error_count = 0 AND last_poll IS NOT NULL"
        ).fetchone()[0]
    assert error_count >= 2 and "unknown-object" in last_error
    assert good == len(points_by_id(db_dsn)) - 1
    assert bogus not in {body["pointId"] for _t, body, _r in readings(collector)}
    assert "write-access-denied" in refused


async def _write_to_analog_input() -> str:
    client = BacnetClient.open(BacnetSettings(address=AGENT, apdu_timeout_ms=500, apdu_retries=0))
    try:
        await client.write(BASE, "analog-input,1", "present-value", 12.0)
    except BacnetError as exc:
        return str(exc)
    finally:
        client.close()
    return "accepted"


def test_a_dead_device_leaves_the_others_on_schedule(db_dsn, broker, tmp_path):
    settings = settings_for(db_dsn, broker.url, tmp_path)
    collector = Collector(broker.url, reading_filter(settings.site.id), "check-dead")
    with building(devices=3) as b:
        assert discover_site(settings).errors == {}
        with running_agent(settings, discover_first=False) as agent:
            time.sleep(2.2)
            b.stop_device(1002)
            killed_at = time.time()
            time.sleep(6)
            backoffs = {p.device.device_id: p.stats.backoffs for p in agent.pollers}
    collector.close()
    points = points_by_id(db_dsn)
    slots: dict[int, set[int]] = defaultdict(set)
    for _t, body, _r in readings(collector):
        ts = datetime.fromisoformat(body["timestamp"]).timestamp()
        if ts > killed_at + 1:
            slots[points[body["pointId"]][0]].add(math.floor(ts))
    assert backoffs[1002] >= 1 and backoffs[1001] == backoffs[1003] == 0
    assert 1002 not in slots
    for device in (1001, 1003):  # no second skipped while 1002 timed out
        s = sorted(slots[device])
        assert len(s) >= 4 and s == list(range(s[0], s[-1] + 1)), (device, s)
    with psycopg.connect(db_dsn) as conn:
        errors = conn.execute(
            "SELECT min(error_count) FROM point_state JOIN point USING (site_id, point_id)"
            " WHERE device_id = 1002"
        ).fetchone()[0]
    assert errors >= 1


def test_broker_down_30s_loses_no_reading(request):
    seen = outcome(request)  # the scenario below, run beside the other outage tests' (edge_harness)
    assert seen["spooled"] > 0
    assert seen["unique"] == seen["published"] == seen["served"]


@side_by_side(test_broker_down_30s_loses_no_reading)
def broker_down_under_the_agent(tmp_path: Path) -> dict[str, int]:
    """The agent polls the building through a 30 s broker outage: every reading it served reaches a
    subscriber once the broker is back (from the spool). Its own database and broker; this file's
    addresses, which no other test uses while the outage scenarios run."""
    broker = MosquittoBroker(tmp_path / "broker").start()
    with fresh_database() as db_dsn:
        settings = settings_for(db_dsn, broker.url, tmp_path, interval=2.0)
        collector = Collector(broker.url, reading_filter(settings.site.id), "check-outage")
        try:
            with building(devices=2) as b:
                discover_site(settings)
                served_before = sum(b.served_reads().values())
                with running_agent(settings, discover_first=False) as agent:
                    # back within 2 s of the broker's return (production backs off to 10 s): this test is
                    # about durability, not about backoff arithmetic (as test_publisher's)
                    poll_until(lambda: agent.publisher, 20, interval=0.05, what="the agent's publisher")
                    agent.publisher.client.reconnect_delay_set(1, 2)
                    time.sleep(3)
                    broker.stop()
                    time.sleep(30)
                    spooled = agent.publisher.stats()["pending"]
                    broker.start()
                    assert agent.publisher.flush(timeout=40)  # reconnects and drains the spool
                served = sum(b.served_reads().values()) - served_before
                published = agent.readings_published
            collector.wait_for(published, timeout=30)
        finally:
            collector.close()
            broker.stop()
    unique = {(body["pointId"], body["timestamp"]) for _t, body, _r in readings(collector)}
    return {"spooled": spooled, "unique": len(unique), "published": published, "served": served}


def test_agent_killed_with_sigkill_resends_its_spool(db_dsn, broker, tmp_path):
    settings = settings_for(db_dsn, broker.url, tmp_path)
    config = tmp_path / "site.toml"
    config.write_text(
        f'[database]\ndsn = "{db_dsn}"\n[mqtt]\nurl = "{broker.url}"\nclient_id = "edge-kill"\n'
        f"[discovery]\ntargets = {json.dumps(TARGETS)}\ntimeout_s = 1.0\n"
        f'[polling]\ndefault_interval_s = 1\n[spool]\npath = "{tmp_path / "spool.sqlite"}"\n'
        f'[bacnet]\naddress = "{AGENT}"\napdu_timeout_ms = 500\napdu_retries = 0\n'
    )
    collector = Collector(broker.url, reading_filter(settings.site.id), "check-kill")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bacpipes.cli", "edge", "run", "--config", str(config)]
    with building(devices=2):
        discover_site(settings)
        broker.stop()
        agent = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)

        def spooled_now() -> set[bytes]:  # the agent's start-up time varies with the machine's load
            if not (tmp_path / "spool.sqlite").exists():
                return set()
            with sqlite3.connect(tmp_path / "spool.sqlite") as spool:
                table = spool.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchone()
                rows = spool.execute(f"SELECT payload FROM {table[0]}") if table else []
                return {bytes(r[0]) for r in rows}

        poll_until(lambda: len(spooled_now()) >= 6, 60, what="several cycles of readings in the spool")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        spooled = spooled_now()  # what the killed agent left
        assert len(spooled) >= 6
        broker.start()
        agent = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            poll_until(lambda: spooled <= {m.payload for m in collector.snapshot()}, 30, interval=0.5,
                       what="every spooled reading delivered after the restart")
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(30) == 0
    collector.close()
    assert spooled <= {m.payload for m in collector.snapshot()}


@pytest.mark.parametrize("bad", ["10.0.0.1-10.0.0.0", "300.1.1.1"])
def test_bad_discovery_target_is_a_clear_error(bad):
    from edge.bacnet import expand_targets

    with pytest.raises(ValueError, match=r"bad discovery (range|target)"):
        expand_targets([bad])


def test_discovery_by_broadcast_through_a_bbmd(db_dsn, tmp_path):
    """The agent registers as a foreign device; its broadcast Who-Is is distributed by the BBMD."""
    settings = make_settings(
        db_dsn,
        "mqtt://127.0.0.1:1",
        tmp_path,
        bacnet={"address": AGENT},
        discovery={"targets": ["broadcast"], "bbmd": f"127.0.0.69:{BBMD_PORT}", "low": 1000, "high": 1999},
    )
    with ThreadedBuilding(devices=3, address_base="127.0.0.70", port=BBMD_PORT, seed=1, speed=0,
                          bbmd="127.0.0.69") as b:
        report = discover_site(settings)
        expected = set(b.snapshot())
    assert report.errors == {}
    assert sorted(d.peer.device_id for d in report.devices) == [1001, 1002, 1003]
    with psycopg.connect(db_dsn) as conn:
        found = set(conn.execute("SELECT device_id, object_type, object_instance FROM point").fetchall())
    assert found == expected


def test_batch_per_equipment_and_health_counters(db_dsn, broker, tmp_path):
    settings = make_settings(
        db_dsn,
        broker.url,
        tmp_path,
        bacnet={"address": AGENT},
        discovery={"targets": TARGETS},
        polling={"default_interval_s": 1.0},
        mqtt={"batch_per_equipment": True},
    )
    site = settings.site.id
    singles = Collector(broker.url, reading_filter(site), "check-singles")
    batches = Collector(broker.url, f"{site}/+/batch", "check-batches")
    health = Collector(broker.url, health_topic(site), "check-health")
    with building(devices=2), running_agent(settings) as agent:
        health.wait_for(1, timeout=15)
        time.sleep(1)
        points = len(agent.points)
    for c in (singles, batches, health):
        c.close()
    in_batches = {
        (r["pointId"], r["timestamp"]) for m in batches.snapshot() for r in json.loads(m.payload)["readings"]
    }
    in_singles = {(body["pointId"], body["timestamp"]) for _t, body, _r in readings(singles)}
    assert in_batches == in_singles and len(in_singles) >= points
    assert {m.topic.split("/")[1] for m in batches.snapshot()} == {"ahu_1", "ahu_2"}
    report = json.loads(health.snapshot()[-1].payload)
    assert report["points"] == points and report["devices"] == 2 and report["readings"] > 0
