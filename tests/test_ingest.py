"""The ingester against a real Mosquitto and a real PostgreSQL: every published reading lands once, the
rollup and point_state agree with the rows, and crashes/outages lose nothing. Asserts on rows."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from bacpipes.contracts import Reading, batch_payload, batch_topic
from bacpipes.db import migrate
from bacpipes.mqtt import connect_async, make_client
from bacpipes.settings import MqttSettings, Settings
from edge.ingest import (
    MAX_FUTURE,
    MAX_PAYLOAD,
    Ingester,
    PointMap,
    Reject,
    Row,
    _exact_batch,
    _exact_message,
    parse_any,
    parse_message,
)
from edge.polling import plain_value
from sim.server import ThreadedBuilding
from tests.brokers import MosquittoBroker
from tests.conftest import make_settings
from tests.edge_harness import outcome, running_agent, side_by_side
from tests.pgcluster import PgCluster

SITE = "macau-casino"
TZ = ZoneInfo("Asia/Macau")
EQUIP = "ahu_1"


def topic_of(instance: int) -> str:
    return f"{SITE}/{EQUIP}/analogInput{instance}/presentValue"


def seed_points(dsn: str, count: int) -> list[int]:
    """`count` points on one device, topics as the agent would name them; returns their ids."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO device (site_id, device_id, address) VALUES (%s, 1001, '127.0.0.1')", (SITE,)
        )
        rows = conn.execute(
            "INSERT INTO point (site_id, device_id, object_type, object_instance, topic)"
            " SELECT %s, 1001, 'analog-input', i, %s || i || '/presentValue' FROM generate_series(1, %s) i"
            " RETURNING point_id",
            (SITE, f"{SITE}/{EQUIP}/analogInput", count),
        ).fetchall()
    return [r[0] for r in rows]


def reading(pid: int, ts: datetime, value: float, quality: str = "good") -> Reading:
    return Reading(pid, value, ts.astimezone(TZ), "degrees-celsius", quality, None, None)


def stream(pids: list[int], count: int, start: datetime | None = None) -> list[tuple[str, bytes]]:
    """`count` single-reading messages, round robin over the points, each (point, time) unique."""
    start = start or datetime.now(UTC) - timedelta(hours=3)
    out = []
    for i in range(count):
        pid = pids[i % len(pids)]
        out.append((topic_of(pid), reading(pid, start + timedelta(seconds=i), 20 + (i % 101) / 10).payload()))
    return out


class Publisher:
    """A plain QoS 1 publisher with its own persistent session (it rides out broker restarts)."""

    def __init__(self, url: str) -> None:
        mqtt_settings = MqttSettings(url=url, max_inflight=1000)
        self.client = make_client(mqtt_settings, f"pub-{uuid.uuid4().hex[:8]}", persistent=True)
        self.client.reconnect_delay_set(1, 2)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        connect_async(self.client, mqtt_settings)
        self.client.loop_start()
        assert self.connected.wait(10), "publisher could not connect"
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        self.infos += [self.client.publish(t, p, qos=1) for t, p in messages]

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert all(i.is_published() for i in self.infos), "broker did not acknowledge every publish"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def ingesting(settings: Settings) -> Iterator[Ingester]:
    ingester = Ingester(settings).start()
    deadline = time.monotonic() + 10
    while not ingester.stats()["connected"] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # the SUBSCRIBE is on its way once connected
    try:
        yield ingester
    finally:
        ingester.stop(10)


ROWS = "SELECT count(*) FROM sensor_readings"
REJECTS = "SELECT count(*) FROM ingest_rejects"


def count(dsn: str, query: str = ROWS, *args: object) -> int:
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        return conn.execute(query, args).fetchone()[0]


def wait_rows(dsn: str, expected: int, timeout: float, query: str = ROWS) -> int:
    """Poll until `query` counts `expected`; returns the last count (-1: database unreachable)."""
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        try:
            got = count(dsn, query)
        except psycopg.OperationalError:
            got = -1
        if got >= expected:
            return got
        time.sleep(0.1)
    return got


def assert_rollup_and_state_match_rows(dsn: str, state_writers: int = 1) -> None:
    """readings_hourly is the aggregate of sensor_readings; point_state holds each point's latest row
    (with the agent also writing point_state, at least as new: it may have polled after we stopped)."""
    with psycopg.connect(dsn) as conn:
        mismatched = conn.execute(
            """
            SELECT count(*) FROM (
                SELECT point_id, date_trunc('hour', time, 'UTC') AS hour, sum(value) AS sum,
                       count(*) AS count, min(value) AS min, max(value) AS max
                FROM sensor_readings GROUP BY 1, 2) r
            FULL JOIN readings_hourly h USING (point_id, hour)
            WHERE h.count IS DISTINCT FROM r.count OR abs(h.sum - r.sum) > 1e-6
               OR h.min IS DISTINCT FROM r.min OR h.max IS DISTINCT FROM r.max
               OR abs(h.avg - r.sum / r.count) > 1e-9 IS NOT FALSE
            """
        ).fetchone()[0]
        stale = conn.execute(
            """
            SELECT count(*) FROM (SELECT DISTINCT ON (point_id) point_id, time, value, quality
                                  FROM sensor_readings ORDER BY point_id, time DESC) latest
            LEFT JOIN point_state s USING (point_id)
            WHERE CASE WHEN %s = 1
                THEN (s.time, s.value, s.quality) IS DISTINCT FROM (latest.time, latest.value, latest.quality)
                ELSE s.time IS NULL OR s.time < latest.time END
            """,
            (state_writers,),
        ).fetchone()[0]
    assert mismatched == 0, "readings_hourly disagrees with sensor_readings"
    assert stale == 0, "point_state is not the latest reading"


def test_every_reading_lands_once_with_rollup_and_state(db_dsn, broker, tmp_path):
    pids = seed_points(db_dsn, 5)
    singles = stream(pids, 1500)  # 300 per point, 1 s apart: spans two hours
    t0 = (datetime.now(UTC) - timedelta(minutes=30)).replace(microsecond=0)  # payloads carry milliseconds
    batch = [reading(pid, t0 + timedelta(seconds=s), 10.0 + s) for pid in pids for s in range(20)]
    t_foreign = t0 - timedelta(minutes=1)
    foreign = (topic_of(pids[0]), json.dumps({"value": 7.5, "timestamp": t_foreign.isoformat()}).encode())
    older = (topic_of(pids[1]), reading(pids[1], t0 - timedelta(days=1), 99.0).payload())
    publisher = Publisher(broker.url)
    with ingesting(make_settings(db_dsn, broker.url, tmp_path)) as ingester:
        publisher.send([*singles, (batch_topic(SITE, EQUIP), batch_payload(batch)), foreign, older])
        expected = len(singles) + len(batch) + 2
        # a deadline, not a speed claim: a loaded CI machine once took over 20 s for these 1,602 rows
        assert wait_rows(db_dsn, expected, 90) == expected
        # redelivery and republishing: the same (point, time) again, even with another value
        publisher.send([*singles[:500], (batch_topic(SITE, EQUIP), batch_payload(batch))])
        publisher.send([(topic_of(pids[0]), reading(pids[0], t0, 123.0).payload())])
        publisher.wait()
        messages = (len(singles) + 3) + (500 + 2)

        def settled(s: dict) -> bool:  # counted as duplicates, and acknowledged (a commit later)
            return s["duplicates"] >= 501 + len(batch) and s["acked"] >= messages

        deadline = time.monotonic() + 60
        while not settled(ingester.stats()) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = ingester.stats()
    publisher.close()
    assert stats["duplicates"] == 501 + len(batch) and stats["rejects"] == 0
    assert stats["acked"] == stats["received"] == messages  # messages, not rows
    assert count(db_dsn) == expected
    assert count(db_dsn, "SELECT sum(count)::int FROM readings_hourly") == expected
    assert count(db_dsn, "SELECT count(DISTINCT hour)::int FROM readings_hourly") >= 2
    with psycopg.connect(db_dsn) as conn:
        stored = set(conn.execute("SELECT point_id, time, value FROM sensor_readings").fetchall())
    published = {
        (b["pointId"], datetime.fromisoformat(b["timestamp"]), b["value"])
        for b in (json.loads(p) for _t, p in singles)
    }
    assert published <= stored
    assert {(r.point_id, r.timestamp, r.value) for r in batch} <= stored
    assert (pids[0], t_foreign, 7.5) in stored  # a foreign publisher's reading, mapped by its topic
    assert (pids[0], t0, 10.0) in stored  # the first arrival wins: 123.0 for the same time was a duplicate
    assert_rollup_and_state_match_rows(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        state = conn.execute("SELECT value FROM point_state WHERE point_id = %s", (pids[1],)).fetchone()[0]
    assert state != 99.0  # an older reading arriving late does not overwrite the latest value


MALFORMED = [
    ("bad JSON", b"{not json", "invalid JSON"),
    ("not an object", b"[1, 2]", "not an object"),
    ("not UTF-8", b"\xff\xfe\x00garbage", "invalid JSON"),
    ("missing value", {"timestamp": "NOW"}, "missing value"),
    ("null value", {"value": None, "timestamp": "NOW"}, "missing value"),
    ("string value", {"value": "hot", "timestamp": "NOW"}, "value is not a number"),
    ("NaN", b'{"value": NaN, "timestamp": "NOW", "pointId": PID}', "not finite"),
    ("Infinity", b'{"value": -Infinity, "timestamp": "NOW", "pointId": PID}', "not finite"),
    ("overflow", b'{"value": 1e999, "timestamp": "NOW", "pointId": PID}', "not finite"),
    ("unknown pointId", {"value": 1, "timestamp": "NOW", "pointId": 999999}, "unknown point"),
    ("pointId not int", {"value": 1, "timestamp": "NOW", "pointId": "7"}, "pointId must be an integer"),
    ("missing timestamp", {"value": 1}, "missing timestamp"),
    ("bad timestamp", {"value": 1, "timestamp": "yesterday"}, "unparseable timestamp"),
    ("naive timestamp", {"value": 1, "timestamp": "2026-01-01T00:00:00"}, "without UTC offset"),
    ("future timestamp", {"value": 1, "timestamp": "FUTURE"}, "timestamp in the future"),
    ("bad quality", {"value": 1, "timestamp": "NOW", "quality": "great"}, "quality must be"),
    ("oversized", b'{"value": 1, "pad": "' + b"x" * MAX_PAYLOAD + b'"}', "payload too large"),
]


def _payload(spec: bytes | dict, pid: int, now: datetime) -> bytes:
    stamp = now.isoformat()
    future = (now + MAX_FUTURE + timedelta(minutes=1)).isoformat()
    if isinstance(spec, dict):
        body = {"pointId": pid, **spec} if "pointId" not in spec else dict(spec)
        body = {k: (stamp if v == "NOW" else future if v == "FUTURE" else v) for k, v in body.items()}
        return json.dumps(body).encode()
    return spec.replace(b"NOW", stamp.encode()).replace(b"PID", str(pid).encode())


def test_malformed_messages_are_rejected_with_a_reason_and_ingest_goes_on(db_dsn, broker, tmp_path):
    pids = seed_points(db_dsn, 2)
    now = datetime.now(UTC).replace(microsecond=0)
    bad = [(topic_of(pids[0]), _payload(spec, pids[0], now)) for _name, spec, _reason in MALFORMED]
    unknown_topic = (topic_of(999), json.dumps({"value": 1, "timestamp": now.isoformat()}).encode())
    mixed = json.dumps({"readings": [
        {"pointId": pids[0], "value": 1.5, "timestamp": now.isoformat()},
        {"pointId": pids[1], "value": "x", "timestamp": now.isoformat()},
        {"value": 2.5, "timestamp": now.isoformat()},
        "not a reading",
        {"pointId": pids[1], "value": True, "timestamp": now.isoformat()},
    ]}).encode()
    after = (topic_of(pids[1]), reading(pids[1], now + timedelta(seconds=1), 42.0).payload())
    publisher = Publisher(broker.url)
    with ingesting(make_settings(db_dsn, broker.url, tmp_path)) as ingester:
        publisher.send([*bad, unknown_topic, (batch_topic(SITE, EQUIP), mixed), after])
        publisher.wait()
        assert wait_rows(db_dsn, len(MALFORMED) + 4, 15, REJECTS) == len(MALFORMED) + 4
        assert wait_rows(db_dsn, 3, 10) == 3
        stats = ingester.stats()
    publisher.close()
    with psycopg.connect(db_dsn) as conn:
        rejects = conn.execute("SELECT topic, payload, reason FROM ingest_rejects ORDER BY id").fetchall()
        rows = conn.execute("SELECT point_id, value FROM sensor_readings ORDER BY value").fetchall()
    by_payload = {bytes(p): r for _t, p, r in rejects}
    for (name, _spec, reason), (_topic, payload) in zip(MALFORMED, bad, strict=True):
        stored = payload[:MAX_PAYLOAD]
        assert stored in by_payload, name
        assert reason in by_payload[stored], (name, by_payload[stored])
    reasons = [r for _t, _p, r in rejects]
    assert any("no pointId and no point has topic" in r for r in reasons)
    assert any(r.startswith("readings[1]: value is not a number") for r in reasons)
    assert any(r.startswith("readings[2]: batch reading without pointId") for r in reasons)
    assert any(r.startswith("readings[3]: reading is not a JSON object") for r in reasons)
    assert all(t.startswith(f"{SITE}/") for t, _p, _r in rejects)
    # the good readings of the mixed batch landed, booleans as 1.0, and the ingester went on
    assert rows == [(pids[1], 1.0), (pids[0], 1.5), (pids[1], 42.0)]
    assert stats["rejects"] == len(MALFORMED) + 4 and stats["acked"] == len(bad) + 3


def test_a_point_added_after_start_is_found_by_topic(db_dsn, broker, tmp_path, monkeypatch):
    monkeypatch.setattr("edge.ingest.POINT_REFRESH_S", 0.5)
    pids = seed_points(db_dsn, 1)
    publisher = Publisher(broker.url)
    with ingesting(make_settings(db_dsn, broker.url, tmp_path)):
        with psycopg.connect(db_dsn) as conn:
            conn.execute(
                "INSERT INTO point (site_id, device_id, object_type, object_instance, topic)"
                " VALUES (%s, 1001, 'analog-input', 77, %s)",
                (SITE, topic_of(77)),
            )
        time.sleep(0.6)
        ts = datetime.now(UTC).isoformat()
        publisher.send([(topic_of(77), json.dumps({"value": 3.0, "timestamp": ts}).encode())])
        publisher.send(stream(pids, 1))
        assert wait_rows(db_dsn, 2, 10) == 2
    publisher.close()
    assert count(db_dsn, REJECTS) == 0


def _config(tmp_path: Path, dsn: str, url: str, client_id: str) -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(f'[database]\ndsn = "{dsn}"\n[mqtt]\nurl = "{url}"\nclient_id = "{client_id}"\n')
    return path


INGEST_PROCESS = (
    "import logging, sys; logging.basicConfig(level=logging.INFO);"
    " from bacpipes.settings import load_settings; from edge.ingest import run_ingest;"
    " run_ingest(load_settings(sys.argv[1]))"
)


def test_ingester_killed_with_sigkill_mid_stream_loses_and_duplicates_nothing(db_dsn, broker, tmp_path):
    pids = seed_points(db_dsn, 20)
    messages = stream(pids, 8000)
    config = _config(tmp_path, db_dsn, broker.url, f"kill-{uuid.uuid4().hex[:6]}")
    command = [sys.executable, "-c", INGEST_PROCESS, str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    publisher = Publisher(broker.url)
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(30):  # the session exists once a message lands (a repeat is a harmless duplicate)
            publisher.send(messages[:1])
            if wait_rows(db_dsn, 1, 0.5) == 1:
                break
        # the kill lands while the first half still streams in; the second half is sent after it, so the
        # kill is mid-stream however fast the ingester is, and only the restarted one can store the rest
        half = len(messages) // 2
        for i in range(1, half, 500):
            publisher.send(messages[i : min(i + 500, half)])
            time.sleep(0.05)
        killed_at = count(db_dsn)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        publisher.send(messages[half:])
        publisher.wait()
        assert 0 < killed_at < len(messages), "the kill must land mid-stream"
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        assert wait_rows(db_dsn, len(messages), 30) == len(messages)
        time.sleep(0.5)  # any late redelivery would show up now
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        publisher.close()
    assert count(db_dsn) == len(messages)
    assert count(db_dsn, "SELECT sum(count)::int FROM readings_hourly") == len(messages)
    assert_rollup_and_state_match_rows(db_dsn)


def test_database_down_30s_under_load_loses_nothing(request):
    seen = outcome(request)  # the scenario below, run beside the other outage tests' (edge_harness)
    assert seen["sent_while_down"] > 1000  # the load really ran through the outage
    assert seen["db_errors"] > 0
    assert seen["rows"] == seen["hourly"] == seen["sent"]


@side_by_side(test_database_down_30s_under_load_loses_nothing)
def database_down_under_load(tmp_path: Path) -> dict[str, int]:
    """The ingester under ~200 readings/s through a 30 s outage of its own database cluster (with its own
    broker): every sent reading lands once; the rollup and point_state agree with the rows (checked here,
    while the cluster exists: its failure is the test's)."""
    with MosquittoBroker(tmp_path / "broker") as broker, PgCluster() as cluster:
        dsn = cluster.create_database("ingest")
        migrate(dsn)
        pids = seed_points(dsn, 50)
        messages = stream(pids, 50_000)
        publisher = Publisher(broker.url)
        sent = 0
        stop = threading.Event()

        def load() -> None:  # ~200 readings/s, as 10,000 points every 50 s
            nonlocal sent
            while not stop.is_set() and sent < len(messages):
                publisher.send(messages[sent : sent + 20])
                sent += 20
                time.sleep(0.1)

        with ingesting(make_settings(dsn, broker.url, tmp_path)) as ingester:
            loader = threading.Thread(target=load)
            loader.start()
            time.sleep(3)
            cluster.stop()
            time.sleep(30)
            sent_while_down = sent
            cluster.start()
            time.sleep(3)
            stop.set()
            loader.join()
            publisher.wait()
            assert wait_rows(dsn, sent, 60) == sent
            stats = ingester.stats()
        publisher.close()
        assert_rollup_and_state_match_rows(dsn)
        return {"sent_while_down": sent_while_down, "db_errors": stats["db_errors"], "sent": sent,
                "rows": count(dsn), "hourly": count(dsn, "SELECT sum(count)::int FROM readings_hourly")}


def test_broker_restart_loses_nothing(db_dsn, broker, tmp_path):
    pids = seed_points(db_dsn, 10)
    messages = stream(pids, 6000)
    publisher = Publisher(broker.url)
    with ingesting(make_settings(db_dsn, broker.url, tmp_path)):
        publisher.send(messages[:4000])
        publisher.wait()
        # no wait for the ingester: ~1,000 of these are typically still queued or in flight (measured),
        # and a clean stop persists what the ingester's session has not acked
        broker.restart()
        assert publisher.connected.wait(10)
        publisher.send(messages[4000:])
        publisher.wait()
        assert wait_rows(db_dsn, len(messages), 30) == len(messages)
    publisher.close()
    assert count(db_dsn, "SELECT sum(count)::int FROM readings_hourly") == len(messages)


def test_readings_from_the_virtual_building_match_the_simulator(db_dsn, broker, tmp_path):
    settings = make_settings(
        db_dsn,
        broker.url,
        tmp_path,
        discovery={"targets": ["127.0.0.120-127.0.0.121"]},
        bacnet={"address": "127.0.0.101/8:47901"},
        polling={"default_interval_s": 1.0},
    )
    building = ThreadedBuilding(devices=2, address_base="127.0.0.120", seed=3, speed=0)
    with building as b, ingesting(settings), running_agent(settings) as agent:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            not agent.points or count(db_dsn, "SELECT count(DISTINCT point_id) FROM sensor_readings")
            < len(agent.points)
        ):
            time.sleep(0.2)
        time.sleep(1.2)
        served = b.snapshot()
        points = len(agent.points)
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT device_id, object_type, object_instance, value, r.quality FROM sensor_readings r"
            " JOIN point USING (site_id, point_id)"
        ).fetchall()
    assert len({r[:3] for r in rows}) == points > 0
    assert len(rows) > points  # more than one poll each
    for device, otype, inst, value, quality in rows:
        assert quality == "good"
        assert math.isclose(value, float(plain_value(served[(device, otype, inst)])), rel_tol=1e-6)
    assert count(db_dsn, REJECTS) == 0
    assert_rollup_and_state_match_rows(db_dsn, state_writers=2)


# --- the parser never raises ----------------------------------------------------------------------

POINTS = PointMap(frozenset({1, 2, 3}), {topic_of(1): 1})
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
timestamps = st.datetimes(timezones=st.none() | st.timezones()).map(datetime.isoformat) | st.text(max_size=40)
readings_bodies = st.fixed_dictionaries(
    {},
    optional={
        "value": json_values,
        "timestamp": timestamps | json_values,
        "pointId": st.integers(-2, 5) | json_values,
        "quality": st.sampled_from(["good", "uncertain", "bad", "great"]) | json_values,
    },
)
topics = st.sampled_from([topic_of(1), topic_of(2), f"{SITE}/x/batch"]) | st.text(max_size=40)


def _encode(body: object) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def _check(results: list[Row | Reject]) -> None:
    for r in results:
        assert isinstance(r, (Row, Reject))
        if isinstance(r, Row):
            assert r.point_id in POINTS.ids and math.isfinite(r.value)
            assert r.time.utcoffset() == timedelta(0) and r.time <= NOW + MAX_FUTURE
            assert r.quality in {"good", "uncertain", "bad"}
        else:
            assert r.reason and len(r.payload) <= MAX_PAYLOAD


@settings(max_examples=400, deadline=None)
@given(topics, st.binary(max_size=300))
def test_parser_never_raises_on_arbitrary_bytes(topic, payload):
    _check(parse_any(topic, payload, POINTS, NOW))


@settings(max_examples=400, deadline=None)
@given(topics, readings_bodies | json_values)
def test_parser_never_raises_on_arbitrary_json(topic, body):
    _check(parse_any(topic, _encode(body), POINTS, NOW))
    _check(parse_any(f"{SITE}/x/batch", _encode({"readings": [body, body]}), POINTS, NOW))


def test_parser_edge_cases():
    ok = {"value": 21.5, "timestamp": "2026-06-01T20:00:00+08:00", "pointId": 2}
    assert parse_message(topic_of(2), _encode(ok), POINTS, NOW) == Row(NOW, 2, 21.5, "good")
    deep = b"[" * 50_000
    assert "invalid JSON" in parse_message(topic_of(1), deep, POINTS, NOW).reason
    year1 = {**ok, "timestamp": "0001-01-01T00:00:00+05:00"}
    assert isinstance(parse_message(topic_of(1), _encode(year1), POINTS, NOW), Reject)
    huge = {**ok, "value": 10**400}
    assert "out of range" in parse_message(topic_of(1), _encode(huge), POINTS, NOW).reason


# The fast path (orjson, one pass) must store exactly what the exact path (`json`, one check at a time)
# would, and hand it everything else, so a reject keeps its reason: both paths, side by side.

plausible_readings = st.fixed_dictionaries(
    {
        "value": st.floats() | st.integers(-(2**70), 2**70) | st.booleans() | st.none(),
        "timestamp": st.datetimes(datetime(1999, 1, 1), datetime(2026, 6, 2), timezones=st.timezones())
        .map(datetime.isoformat),
        "pointId": st.integers(-1, 4) | st.integers(2**62, 2**66) | st.booleans(),
    },
    optional={"quality": st.sampled_from(["good", "uncertain", "bad", "great", None]), "units": st.text()},
)


def _exact(topic: str, payload: bytes) -> list[Row | Reject]:
    if topic.endswith("/batch"):
        return _exact_batch(topic, payload, POINTS, NOW)
    return [_exact_message(topic, payload, POINTS, NOW)]


@settings(max_examples=300, deadline=None)
@given(topics, plausible_readings | readings_bodies | json_values)
def test_the_fast_parser_agrees_with_the_exact_one(topic, body):
    for t, payload in ((topic, _encode(body)), (f"{SITE}/x/batch", _encode({"readings": [body, body]}))):
        assert parse_any(t, payload, POINTS, NOW) == _exact(t, payload)


@settings(max_examples=200, deadline=None)
@given(st.builds(
    Reading,
    point_id=st.integers(0, 4),
    value=st.floats() | st.integers(-(2**70), 2**70) | st.text(max_size=8) | st.none(),
    timestamp=st.datetimes(datetime(2025, 1, 1), datetime(2026, 6, 1), timezones=st.timezones()),
    units=st.none() | st.text(max_size=8),
    quality=st.sampled_from(["good", "uncertain", "bad"]),
    dis=st.none() | st.text(max_size=8),
    haystack_name=st.none() | st.text(max_size=8),
))
def test_payloads_decode_to_what_json_wrote_and_parse_the_same_both_ways(r):
    """orjson writes the contracts' payloads: the same values (bytes may differ: UTF-8 text, 0.00001)."""
    assert json.loads(r.payload()) == r.as_dict() == json.loads(json.dumps(r.as_dict()))
    assert json.loads(batch_payload([r, r])) == {"readings": [r.as_dict(), r.as_dict()]}
    for t, payload in ((topic_of(r.point_id), r.payload()), (f"{SITE}/x/batch", batch_payload([r, r]))):
        assert parse_any(t, payload, POINTS, NOW) == _exact(t, payload)
