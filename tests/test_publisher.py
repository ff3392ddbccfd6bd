"""The MQTT publisher against real mosquitto brokers: what a subscriber receives is what counts.

Nothing is mocked. Brokers are private (tests stop, kill and restart them); publishers that must
die by SIGKILL run in a subprocess.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bacpipes.contracts import status_topic
from bacpipes.mqtt import make_client, parse_mqtt_url
from bacpipes.settings import MqttSettings
from edge.publisher import Publisher
from edge.spool import Spool, SpoolMessage
from tests.brokers import Collector, MosquittoBroker
from tests.edge_harness import outcome, side_by_side

SITE = "testsite"
READINGS = f"{SITE}/+/+/presentValue"

# A publisher in its own process, so the test can SIGKILL it: argv = url, spool, count, client_id
CHILD = """
import sys, time
from bacpipes.settings import MqttSettings
from edge.publisher import Publisher
from edge.spool import SpoolMessage
url, spool, n, client_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
p = Publisher(MqttSettings(url=url, client_id=client_id), "testsite", spool).start()
p.submit([SpoolMessage(f"testsite/child/p{i}/presentValue", b"child-%d" % i) for i in range(n)])
print("spooled", flush=True)
time.sleep(600)
"""


def settings(url: str, client_id: str | None = None) -> MqttSettings:
    return MqttSettings(url=url, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}")


def readings(prefix: str, n: int, start: int = 0, qos: int = 1) -> list[SpoolMessage]:
    return [
        SpoolMessage(f"{SITE}/eq{i % 7}/p{i}/presentValue", f"{prefix}-{i}".encode(), qos, False)
        for i in range(start, start + n)
    ]


def start_child(url: str, spool: Path, n: int, client_id: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(spool), str(n), client_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the child's messages are on disk
    assert line.strip() == "spooled", f"child failed (exit {child.poll()})"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    if child.stdout:
        child.stdout.close()


def statuses(collector: Collector, client_id: str) -> list[tuple[str, bool]]:
    out = []
    for m in collector.snapshot():
        body = json.loads(m.payload)
        if body["client_id"] == client_id:
            out.append((body["status"], m.retain))
    return out


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.stop()


# -- URL and client construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.local", ("broker.local", 1883, False)),
        ("mqtts://broker.local", ("broker.local", 8883, True)),
        ("mqtt://127.0.0.1:1884", ("127.0.0.1", 1884, False)),
        ("MQTTS://[::1]:8884/", ("::1", 8884, True)),
    ],
)
def test_parse_mqtt_url(url: str, expected: tuple[str, int, bool]) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1883",
        "127.0.0.1:1883",
        "tcp://127.0.0.1:1883",
        "mqtt://",
        "mqtt://host:port",
        "mqtt://host:70000",
        "mqtt://user:secret@host",
        "mqtt://host/topic",
    ],
)
def test_bad_url_is_a_clear_error(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid MQTT URL") as err:
        parse_mqtt_url(url)
    assert "secret" not in str(err.value)
    with pytest.raises(ValueError, match="invalid MQTT URL"):
        make_client(MqttSettings(url=url), "x")
    with pytest.raises(ValueError, match="invalid MQTT URL"):
        Publisher(MqttSettings(url=url), SITE, tmp_path / "spool.sqlite")
    assert not (tmp_path / "spool.sqlite").exists()  # nothing created for a publisher that can't be


# -- the spool on its own ----------------------------------------------------------------------


def test_spool_is_a_durable_fifo(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "spool.sqlite"
    spool = Spool(path)
    spool.put_many(readings("a", 5))
    rows = spool.peek(10)
    assert [m.payload for _, m in rows] == [f"a-{i}".encode() for i in range(5)]
    assert [m.payload for _, m in spool.peek(2, after_id=rows[1][0])] == [b"a-2", b"a-3"]
    assert spool.delete([i for i, _ in rows]) == 5
    assert len(spool) == 0
    spool.put_many(readings("b", 2))
    spool.close()

    reopened = Spool(path)
    assert len(reopened) == 2
    ids = [i for i, _ in reopened.peek(10)]
    assert min(ids) > rows[-1][0]  # ids are never reused: a reader's cursor cannot skip new rows
    reopened.close()


# -- against a broker --------------------------------------------------------------------------


def test_messages_arrive_with_topic_payload_qos_and_retain(own_broker: MosquittoBroker,
                                                           tmp_path: Path) -> None:
    n = 10_000  # one 30 s poll cycle of a large site
    collector = Collector(own_broker.url, READINGS)
    status = Collector(own_broker.url, status_topic(SITE))
    cfg = settings(own_broker.url)
    messages = [*readings("r", n), *readings("q0", 10, start=n, qos=0)]
    retained = SpoolMessage(f"{SITE}/ahu1/zoneTemp/presentValue", b'{"value": 21.5}', 1, True)
    with Publisher(cfg, SITE, tmp_path / "spool.sqlite") as pub:
        t0 = time.monotonic()
        pub.submit(messages)
        pub.submit([retained])
        assert pub.flush(30)
        drained = time.monotonic() - t0
        assert collector.wait_for(len(messages) + 1, timeout=30)
        stats = pub.stats()
    print(f"\n{n + 11} messages acknowledged in {drained:.2f}s ({(n + 11) / drained:.0f}/s)")
    assert drained < 15  # 10,000 readings per 30 s must drain with room to spare

    got = collector.snapshot()
    assert len(got) == len(messages) + 1  # no duplicates on a healthy connection
    assert {(m.topic, m.payload, m.qos) for m in got} == {
        (m.topic, m.payload, m.qos) for m in [*messages, retained]
    }
    assert stats["submitted"] == stats["acked"] == len(messages) + 1
    assert stats["pending"] == 0 and stats["connected"] and stats["reconnects"] == 0

    # live deliveries carry retain=0 (MQTT 3.1.1); a late subscriber sees the retained copy
    late = Collector(own_broker.url, retained.topic)
    assert late.wait_for(1, timeout=5)
    assert late.snapshot()[0] == (retained.topic, retained.payload, True, 1)

    # status: online while connected, offline after a clean stop, retained for late subscribers
    assert status.wait_until(lambda ms: len(ms) >= 2, timeout=5)
    assert [s for s, _ in statuses(status, cfg.client_id)] == ["online", "offline"]
    body = json.loads(status.snapshot()[-1].payload)
    assert set(body) == {"status", "client_id", "timestamp"}
    for c in (collector, status, late):
        c.close()


def test_health_is_retained_and_not_spooled(own_broker: MosquittoBroker, tmp_path: Path) -> None:
    health = Collector(own_broker.url, f"{SITE}/_bacpipes/health")
    with Publisher(settings(own_broker.url), SITE, tmp_path / "spool.sqlite") as pub:
        deadline = time.monotonic() + 10
        while not pub.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.publish_health({"points": 3, "reads_failed": 0})
        assert health.wait_for(1, timeout=5)
        assert pub.stats()["submitted"] == 0
    body = json.loads(health.snapshot()[0].payload)
    assert body["points"] == 3 and "timestamp" in body
    health.close()
    late = Collector(own_broker.url, f"{SITE}/_bacpipes/health")
    assert late.wait_for(1, timeout=5) and late.snapshot()[0].retain
    late.close()


def test_last_will_says_offline_when_the_publisher_is_killed(own_broker: MosquittoBroker,
                                                              tmp_path: Path) -> None:
    status = Collector(own_broker.url, status_topic(SITE))
    client_id = "edge-will"
    child = start_child(own_broker.url, tmp_path / "spool.sqlite", 0, client_id)
    try:
        assert status.wait_until(lambda _: ("online", False) in statuses(status, client_id), 10)
    finally:
        kill(child)
    assert status.wait_until(lambda _: ("offline", False) in statuses(status, client_id), 10)
    status.close()
    late = Collector(own_broker.url, status_topic(SITE))  # the will was retained
    assert late.wait_for(1, timeout=5)
    assert statuses(late, client_id) == [("offline", True)]
    late.close()


@pytest.mark.slow
def test_broker_down_30s_loses_nothing(request: pytest.FixtureRequest) -> None:
    seen = outcome(request)  # the scenario below, run beside the other outage tests' (edge_harness)
    assert not seen["during"]["connected"] and seen["during"]["pending"] >= 2_900
    assert seen["after"]["pending"] == 0 and seen["after"]["reconnects"] >= 1
    assert seen["received"] == seen["submitted"]
    assert seen["left_in_spool"] == 0


@side_by_side(test_broker_down_30s_loses_nothing)
def broker_down_under_the_publisher(tmp_path: Path) -> dict[str, object]:
    """A publisher submitting 100 readings/s through a 30 s outage of its broker: what it was given, a
    subscriber gets, once the broker is back."""
    broker = MosquittoBroker(tmp_path / "broker").start()
    collector = Collector(broker.url, READINGS, "outage-collector", persistent=True)
    pub = Publisher(settings(broker.url), SITE, tmp_path / "spool.sqlite").start()
    # Production backs off up to 10 s between attempts (1, 2, 4, 8, 10…), so after a 30 s outage the
    # next attempt lands anywhere in the following 10 s; a 2 s ceiling keeps this test about
    # durability, not about backoff arithmetic.
    pub.client.reconnect_delay_set(1, 2)
    submitted: set[bytes] = set()
    batch = 0

    def submit_for(seconds: float) -> None:
        """50 readings every 0.5 s on a fixed beat (a slow submit delays no later one)."""
        nonlocal batch
        start = time.monotonic()
        for k in range(round(seconds / 0.5)):
            msgs = readings(f"outage{batch}", 50)
            pub.submit(msgs)
            submitted.update(m.payload for m in msgs)
            batch += 1
            time.sleep(max(0.0, start + (k + 1) * 0.5 - time.monotonic()))

    try:
        submit_for(2)
        broker.stop()
        submit_for(30)  # 3,000 messages: more than mosquitto's default per-session queue of 1,000
        during = pub.stats()
        broker.start()
        submit_for(2)
        assert pub.flush(30), pub.stats()
        assert collector.wait_until(lambda _: submitted <= collector.payloads(), 30), (
            f"missing {len(submitted - collector.payloads())} of {len(submitted)}"
        )
        after = pub.stats()
    finally:
        pub.stop(5)
        collector.close()
        broker.stop()
    return {"during": during, "after": after, "received": collector.payloads(), "submitted": submitted,
            "left_in_spool": len(Spool(tmp_path / "spool.sqlite"))}


def test_sigkilled_publisher_spool_is_sent_by_the_next_one(tmp_path: Path) -> None:
    n = 2_000
    spool_path = tmp_path / "spool.sqlite"
    broker = MosquittoBroker(tmp_path / "broker")  # port chosen, broker not running yet
    # the broker being away at start is not an error: the child starts, spools, then is killed
    kill(start_child(broker.url, spool_path, n, "edge-killed"))
    spool = Spool(spool_path)
    assert len(spool) == n
    spool.close()

    broker.start()
    try:
        collector = Collector(broker.url, READINGS)
        with Publisher(settings(broker.url, "edge-killed"), SITE, spool_path) as pub:
            assert pub.flush(30), pub.stats()
        assert collector.wait_for(n, timeout=30)
        assert collector.payloads() == {b"child-%d" % i for i in range(n)}
        collector.close()
    finally:
        broker.stop()
