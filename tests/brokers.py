"""Real Mosquitto brokers the tests own (so they can stop, kill and restart them) and a subscriber
that records what actually arrived. Nothing here is a mock: outage tests need a broker that really
goes away and really comes back with its persisted sessions."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bacpipes.cli.servers import MosquittoBroker as _Broker
from bacpipes.cli.servers import find_mosquitto, free_port
from bacpipes.mqtt import connect_async, make_client
from bacpipes.settings import MqttSettings

MOSQUITTO = find_mosquitto() or "/usr/sbin/mosquitto"

__all__ = ["MOSQUITTO", "Collector", "MosquittoBroker", "Received", "free_port"]


class MosquittoBroker(_Broker):
    """A private mosquitto on 127.0.0.1, configured for lossless tests (`bacpipes.cli.servers`, shared with
    `bacpipes demo`): deploy/mosquitto.conf's queue and size bounds, 1000 in flight, persistence across
    `restart()`."""

    def __init__(self, tmp_path: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(tmp_path, *args, binary=kwargs.pop("binary", MOSQUITTO), **kwargs)


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Collector:
    """A QoS1 subscriber that records every message, connected and subscribed when constructed.

    With `persistent=True` (the default) the broker keeps its session while it is away, so — as for
    the real ingester — messages published during its own outage are delivered when it returns.
    """

    def __init__(
        self,
        url: str,
        topic_filter: str,
        client_id: str | None = None,
        persistent: bool = True,
        timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topic_filter = topic_filter
        self.client_id = client_id or f"collector-{uuid.uuid4().hex[:8]}"
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        settings = MqttSettings(url=url, username=username, password=password)
        self.client = make_client(settings, self.client_id, persistent=persistent)
        # back on its feet within 2 s of a broker restart, so tests measure the publisher, not this
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        connect_async(self.client, MqttSettings(url=url))
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"collector could not subscribe to {topic_filter!r} at {url}")

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def payloads(self) -> set[bytes]:
        return {m.payload for m in self.snapshot()}

    def wait_for(self, count: int, timeout: float) -> bool:
        """True once at least `count` messages arrived, False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= count, timeout)

    def wait_until(self, predicate: Any, timeout: float) -> bool:
        """True once `predicate(messages)` holds (re-checked on every message)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
