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
from collections.abc import Callable, Coroutine
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from bacpipes.contracts import topic_segment
from bacpipes.mqtt import Delivery, Session
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
        self.session = Session(
            settings.mqtt, f"{settings.mqtt.client_id}-commands", protocol=mqtt.MQTTv5,
            subscriptions=[(self.filter, SubscribeOptions(qos=1, retainAsPublished=True))],
            on_message=self._on_message,
        )
        # set once the broker has the subscription: commands sent before it are lost (a clean session)
        self.subscribed = self.session.subscribed

    def start(self) -> CommandSubscriber:
        self.session.start()
        return self

    def stop(self) -> None:
        self.session.stop()

    def publish_result(self, result: dict[str, Any]) -> None:
        """Straight out, not through the spool: a result is for whoever waits now (< 50 ms), and the
        database keeps the record of every command anyway."""
        payload = json.dumps(result, separators=(",", ":"))
        self.session.client.publish(self.settings.writes.result_topic, payload, qos=1)

    def _on_message(self, delivery: Delivery) -> None:
        self.received += 1
        payload = CommandMessage(delivery.payload)
        payload.retained = delivery.retain
        future = asyncio.run_coroutine_threadsafe(self.intake(payload), self.loop)
        future.add_done_callback(_log_failure)


def _log_failure(future: concurrent.futures.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("write command not handled", exc_info=future.exception())
