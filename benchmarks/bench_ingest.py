"""Ingest throughput, three ways in one run on the same machine:
(a) raw broker: a publisher to a plain QoS 1 subscriber;
(b) end to end: the same publish -> the ingester -> committed rows in sensor_readings;
(c) raw binary COPY of the same rows into sensor_readings.
Targets: (b) >= 80 % of (a) with per-point messages; with batch messages (b) >= 50 % of (c).
The batch comparison uses more readings (--batch-readings): it is over in about a second otherwise, and
the batcher's 200 ms wait for the last batch would be measured rather than the throughput.
    python -m benchmarks.bench_ingest [--messages N] [--batch-readings N] [--points N] [--batch N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from bacpipes.contracts import Reading, batch_payload, batch_topic
from bacpipes.db import migrate
from bacpipes.settings import load_settings
from edge.ingest import Ingester
from tests.brokers import MosquittoBroker

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SITE = "bench-ingest"


def readings(count: int, points: int) -> list[Reading]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Reading(
            i % points + 1,
            20.0 + (i % 97) / 10,
            t0 + timedelta(seconds=i // points),
            "degrees-celsius",
            "good",
            None,
            None,
        )
        for i in range(count)
    ]


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish from a forked process, as a real publisher is: in this one it would take the GIL from the
    subscriber being measured. Returns when publishing started."""
    publisher = multiprocessing.get_context("fork").Process(target=_publish, args=(port, messages))
    start = time.perf_counter()
    publisher.start()
    publisher.join()
    if publisher.exitcode != 0:
        raise RuntimeError(f"publisher failed with exit code {publisher.exitcode}")
    return start


def _publish(url_port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    for i in range(0, len(messages), 20_000):  # paho queues at most 65,535 (its message-id space)
        infos = [client.publish(t, p, qos=1) for t, p in messages[i : i + 20_000]]
        for info in infos:
            info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def raw_broker(port: int, messages: list[tuple[str, bytes]]) -> float:
    got = threading.Event()
    count = 0

    def on_message(_c, _u, _m):
        nonlocal count
        count += 1
        if count == len(messages):
            got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe(f"{SITE}/#", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    start = publish_all(port, messages)
    got.wait(300)
    elapsed = time.perf_counter() - start
    sub.disconnect()
    sub.loop_stop()
    return len(messages) / elapsed


def end_to_end(settings, dsn: str, port: int, messages: list[tuple[str, bytes]], rows: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE sensor_readings, readings_hourly")
    ingester = Ingester(settings)
    ingester.start()
    time.sleep(1.0)
    try:
        start = publish_all(port, messages)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM sensor_readings").fetchone()[0] < rows:
                time.sleep(0.05)
        return rows / (time.perf_counter() - start)
    finally:
        ingester.stop(10)


def raw_copy(dsn: str, rs: list[Reading]) -> float:
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE sensor_readings, readings_hourly")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY sensor_readings (time, site_id, point_id, value, quality) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["timestamptz", "text", "int8", "float8", "text"])
            for r in rs:
                copy.write_row((r.timestamp, SITE, r.point_id, r.value, r.quality))
        conn.commit()
        return len(rs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100, help="readings per batch message")
    parser.add_argument("--batch-readings", type=int, default=1_000_000)
    args = parser.parse_args()
    db = f"bacpipes_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{db}"
    try:
        migrate(dsn)
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.1')", (SITE,)
            )
            conn.execute(
                "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, topic)"
                " SELECT %s, i, 1, 'analog-input', i, %s || '/bench/analogInput' || i || '/presentValue'"
                " FROM generate_series(1, %s) i",
                (SITE, SITE, args.points),
            )
        rs = readings(args.messages, args.points)
        singles = [(f"{SITE}/bench/analogInput{r.point_id}/presentValue", r.payload()) for r in rs]
        many = readings(args.batch_readings, args.points)
        batches = [
            (batch_topic(SITE, "bench"), batch_payload(many[i : i + args.batch]))
            for i in range(0, len(many), args.batch)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            broker = MosquittoBroker(Path(tmp), persistence=False).start()
            try:
                settings = load_settings(
                    None,
                    site={"id": SITE},
                    database={"dsn": dsn},
                    mqtt={"url": broker.url, "client_id": f"bench-{uuid.uuid4().hex[:6]}"},
                )
                a = raw_broker(broker.port, singles)
                b = end_to_end(settings, dsn, broker.port, singles, len(rs))
                b_batch = end_to_end(settings, dsn, broker.port, batches, len(many))
                c = raw_copy(dsn, many)
            finally:
                broker.stop()
        print(f"{len(rs):,} readings as messages, {len(many):,} in batches, on {args.points} points")
        print(f"(a) raw broker, per-point messages:      {a:>10,.0f} msg/s")
        print(
            f"(b) end to end, per-point messages:      {b:>10,.0f} rows/s = "
            f"{b / a:.0%} of (a) (target >= 80 %)"
        )
        print(
            f"(b) end to end, batches of {args.batch:<4}:         {b_batch:>10,.0f} rows/s = "
            f"{b_batch / c:.0%} of (c) (target >= 50 %)"
        )
        print(f"(c) raw binary COPY:                     {c:>10,.0f} rows/s")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
