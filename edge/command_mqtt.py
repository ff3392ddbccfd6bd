"""`bacnet/write/command` over MQTT: each message handed to the executor on the agent's event loop,
each outcome published to `bacnet/write/result`.

A shared subscription (`$share/...`), so with two agents on one site the broker gives each command to
one of them; the database claim would stop a double execution anyway, but not a double insert.
The session is clean: a command sent while the agent was down is not run minutes later by surprise.
MQTT v5, for the subscription option Retain As Published: every delivery of a message published
retained keeps its retain flag, including one published while the agent listens (MQTT 3.1.1 clears it
then), so every retained command is refused. Mosquitto honours the option on shared subscriptions too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bacpipes.contracts import topic_segment
from bacpipes.mqtt import connect_async, make_client
from bacpipes.settings import Settings

log = logging.getLogger(__name__)

Intake = Callable[[bytes], Coroutine[Any, Any, None]]


class CommandMessage(bytes):
    """A command message's bytes, marked when it was published retained (the executor refuses those).
    Bytes, so it passes through any intake that takes the payload alone.

    The subscription asks for Retain As Published (MQTT v5): without it the flag is set only on a
    delivery caused by a new subscription, and a retained command published while the agent listens
    would arrive unmarked, as a live one."""

    retained: bool = False


class CommandSubscriber:
    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, intake: Intake) -> None:
        self.settings = settings
        self.loop = loop
        self.intake = intake
        group = f"bacpipes-{topic_segment(settings.site.id)}"
        self.filter = f"$share/{group}/{settings.writes.command_topic}"
        self.received = 0
        self.subscribed = threading.Event()  # commands sent before this are not delivered (clean session)
        self.client = make_client(settings.mqtt, f"{settings.mqtt.client_id}-commands", protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def start(self) -> CommandSubscriber:
        connect_async(self.client, self.settings.mqtt)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish_result(self, result: dict[str, Any]) -> None:
        """Straight out, not through the spool: a result is for whoever waits now (< 50 ms), and the
        database keeps the record of every command anyway."""
        payload = json.dumps(result, separators=(",", ":"))
        self.client.publish(self.settings.writes.result_topic, payload, qos=1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the command subscriber: %s", reason_code)
            return
        client.subscribe(self.filter, options=SubscribeOptions(qos=1, retainAsPublished=True))
        log.info("listening for write commands on %s", self.settings.writes.command_topic)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker refused the subscription to %s: %s", self.filter, reason_codes)
        else:
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        payload = CommandMessage(msg.payload)
        payload.retained = bool(msg.retain)
        future = asyncio.run_coroutine_threadsafe(self.intake(payload), self.loop)
        future.add_done_callback(_log_failure)


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("write command not handled", exc_info=future.exception())
