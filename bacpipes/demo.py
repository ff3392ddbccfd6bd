"""`bacpipes demo`: the whole edge on embedded defaults, with no real controllers.

Starts the virtual building on loopback, migrates the site database, discovers the devices, runs the
edge agent (polling, MQTT publishing, ingest into PostgreSQL) and prints readings as they arrive on
the broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time

from bacpipes.contracts import reading_filter
from bacpipes.db import prepare_database
from bacpipes.mqtt import connect_async, make_client
from bacpipes.settings import load_settings

log = logging.getLogger(__name__)


def run_demo(devices: int = 3, seconds: float | None = None, interval_s: float = 5.0) -> int:
    from edge.agent import EdgeAgent
    from sim.server import ThreadedBuilding

    settings = load_settings(None, polling={"default_interval_s": interval_s})
    print(f"site {settings.site.id}: database {settings.database.dsn}, broker {settings.mqtt.url}")
    prepare_database(settings.database.dsn)

    building = ThreadedBuilding(devices=devices, address_base="127.0.0.10", seed=1, speed=60.0)
    building.start()
    print(f"virtual building: {devices} BACnet devices on 127.0.0.10.. :47808 (60x building time)")
    watcher = _print_readings(settings)
    try:

        async def main() -> None:
            agent = EdgeAgent(settings)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, agent.request_stop)
            if seconds:
                loop.call_later(seconds, agent.request_stop)
            await agent.run(discover_first=True)
            ingest = agent.ingester.stats() if agent.ingester else {}
            print(
                f"stopped: {agent.readings_published} readings published, "
                f"{ingest.get('rows_inserted', 0)} new rows in sensor_readings (retained readings of an "
                "earlier run count too), "
                f"{ingest.get('rejects', 0)} rejected"
            )

        asyncio.run(main())
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        building.stop()
    return 0


def _print_readings(settings):
    """A plain MQTT subscriber, to show what any consumer of the site's topics sees."""
    client = make_client(settings.mqtt, f"bacpipes-demo-{int(time.time())}")
    lock = threading.Lock()

    def on_connect(client, _userdata, _flags, _reason, _props):
        client.subscribe(reading_filter(settings.site.id), qos=1)

    def on_message(_client, _userdata, message):
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with lock:
            print(
                f"{body['timestamp']}  {message.topic:<58} {body['value']!s:>10} "
                f"{body.get('units') or '':<24} {body['quality']}"
            )

    client.on_connect = on_connect
    client.on_message = on_message
    connect_async(client, settings.mqtt)
    client.loop_start()
    return client

