"""Write latency through the agent's one command path, against the floor it cannot beat, in one run.

Baseline: the device round trip itself (WriteProperty + the two read-backs the executor does), from a
plain BACnet client. Then, with the edge agent running: (1) MQTT `bacnet/write/command` published ->
its `bacnet/write/result` received; (2) a `write_commands` row inserted -> its `completed` event
(both times from the database's clock). Commands run one after another, values alternating so every
one really writes. Targets: MQTT p99 < 50 ms, database p99 < 1 s.
    python -m benchmarks.bench_writes [--commands 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from bacpypes3.primitivedata import Null

from bacpipes.commands import Command, insert_command
from bacpipes.mqtt import no_delay
from bacpipes.settings import Settings, load_settings
from benchmarks.common import sim_process
from edge.bacnet import BacnetClient
from tests.brokers import MosquittoBroker
from tests.conftest import fresh_database
from tests.edge_harness import discover_site, ready_agent

BASE = "127.0.0.50"
SETPOINT = "analog-value,1"


def stats(label: str, seconds: list[float], floor: float | None = None) -> float:
    ms = sorted(s * 1000 for s in seconds)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    ratio = f"  = {p50 / floor:.1f}x the device round trip" if floor else ""
    print(f"{label:44s} median {p50:7.2f} ms  p99 {p99:7.2f} ms{ratio}")
    return p50


async def device_round_trips(settings: Settings, count: int) -> list[float]:
    client = BacnetClient.open(settings.bacnet)
    try:
        times = []
        for i in range(count):
            start = time.perf_counter()
            await client.write(BASE, SETPOINT, "presentValue", 20.0 + i % 2, 8)
            await client.read(BASE, SETPOINT, "presentValue")
            await client.read(BASE, SETPOINT, "priorityArray")
            times.append(time.perf_counter() - start)
        await client.write(BASE, SETPOINT, "presentValue", Null(()), 8)  # leave the slot as found
        return times
    finally:
        client.close()


def mqtt_path(settings: Settings, port: int, point_id: int, count: int) -> list[float]:
    arrived: dict[str, float] = {}
    cond = threading.Condition()

    def on_message(_c, _u, msg) -> None:
        body = json.loads(msg.payload)
        with cond:
            arrived[body["commandId"]] = time.perf_counter()
            cond.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-op-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    client.on_socket_open = no_delay
    client.connect("127.0.0.1", port)
    client.subscribe(settings.writes.result_topic, qos=1)
    client.loop_start()
    time.sleep(0.5)
    times = []
    try:
        for i in range(count):
            command_id = str(uuid.uuid4())
            body = {"pointId": point_id, "value": 21.0 + i % 2, "commandId": command_id}
            start = time.perf_counter()
            client.publish(settings.writes.command_topic, json.dumps(body), qos=1)
            with cond:
                if not cond.wait_for(lambda c=command_id: c in arrived, 10):
                    raise RuntimeError(f"no result for command {i}")
            times.append(arrived[command_id] - start)
    finally:
        client.loop_stop()
        client.disconnect()
    return times


def database_path(settings: Settings, point_id: int, count: int) -> list[float]:
    with psycopg.connect(settings.database.dsn) as conn:
        ids = []
        for i in range(count):
            command_id = insert_command(conn, Command(settings.site.id, point_id, 22.0 + i % 2, source="ui",
                                                      created_by="bench"))
            while not conn.execute(
                "SELECT 1 FROM command_events WHERE command_id = %s AND status = 'completed'", (command_id,)
            ).fetchone():
                conn.commit()
                time.sleep(0.002)
            conn.commit()
            ids.append(command_id)
        rows = conn.execute(
            "SELECT extract(epoch FROM e.at - c.created_at) FROM write_commands c"
            " JOIN command_events e ON e.command_id = c.id AND e.status = 'completed' WHERE c.id = ANY(%s)",
            (ids,),
        ).fetchall()
    return [float(r[0]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=1000)
    args = parser.parse_args()
    with fresh_database() as dsn, tempfile.TemporaryDirectory() as tmp, sim_process(1, 0, BASE):
        broker = MosquittoBroker(Path(tmp) / "broker", persistence=False).start()
        try:
            settings = load_settings(
                None,
                database={"dsn": dsn},
                mqtt={"url": broker.url, "client_id": f"bench-{uuid.uuid4().hex[:6]}"},
                discovery={"targets": [BASE], "timeout_s": 1.0},
                polling={"default_interval_s": 30},
                spool={"path": str(Path(tmp) / "spool.sqlite")},
                ingest={"enabled": False},
            )
            direct = asyncio.run(device_round_trips(settings, args.commands))
            discover_site(settings)
            with psycopg.connect(dsn) as conn:
                point_id = conn.execute(
                    "SELECT point_id FROM point WHERE object_type = 'analog-value' AND object_instance = 1"
                ).fetchone()[0]
            with ready_agent(settings):
                by_mqtt = mqtt_path(settings, broker.port, point_id, args.commands)
                by_db = database_path(settings, point_id, args.commands)
        finally:
            broker.stop()
    print(f"{args.commands:,} commands each, one at a time, to a virtual controller on loopback")
    floor = stats("baseline: WriteProperty + 2 reads, direct", direct)
    stats("MQTT command -> result message (p99 < 50 ms)", by_mqtt, floor)
    stats("database insert -> completed (p99 < 1 s)", by_db, floor)

if __name__ == "__main__":
    main()
