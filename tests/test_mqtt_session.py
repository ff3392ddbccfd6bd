"""bacpipes.mqtt.Session against a real Mosquitto the test owns (tests/brokers.py), stopped and started for
real: the publisher, the ingester and the command listener all stand on what is checked here."""

from __future__ import annotations

import itertools
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from bacpipes.mqtt import Delivery, Session
from bacpipes.settings import MqttSettings
from bacpipes.waiting import poll_until
from tests.brokers import MosquittoBroker

TOPIC = "session-test/readings"


class Inbox:
    """Every delivery a session hands over, in order; filled on paho's network thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Delivery] = []

    def put(self, delivery: Delivery) -> None:
        with self._lock:
            self._items.append(delivery)

    def all(self) -> list[Delivery]:
        with self._lock:
            return list(self._items)

    def payloads(self) -> list[bytes]:
        return [d.payload for d in self.all()]

    def wait(self, payload: bytes, after: int = -1) -> Delivery:
        """The first delivery of `payload` on a connection numbered above `after`."""
        return poll_until(
            lambda: next((d for d in self.all() if d.payload == payload and d.connection > after), None),
            15, interval=0.05, what=f"delivery of {payload!r}",
        )


def session(url: str, name: str, **kwargs: Any) -> Session:
    """Started by `with`, stopped cleanly when the block ends."""
    return Session(MqttSettings(url=url), name, **kwargs)


def publish(sender: Session, payload: bytes) -> None:
    sender.client.publish(TOPIC, payload, qos=1).wait_for_publish(10)


def wait_connected(*sessions: Session) -> None:
    poll_until(lambda: all(s.connected for s in sessions), 15, interval=0.05, what="sessions connected")


@pytest.mark.parametrize(
    ("persistent", "broker_keeps_sessions"),
    [(False, True), (True, False), (True, True)],
    ids=["clean session", "persistent session the broker forgot", "persistent session the broker kept"],
)
def test_subscriptions_survive_a_broker_restart(
    tmp_path: Path, persistent: bool, broker_keeps_sessions: bool
) -> None:
    """After the broker restarts, messages reach the subscriber again: subscribed again where the broker
    forgot the session, and not where it kept it (a new SUBSCRIBE would replay every retained message)."""
    name = f"listener-{uuid.uuid4().hex[:8]}"
    broker = MosquittoBroker(tmp_path, persistence=broker_keeps_sessions, extra_conf="log_type subscribe")
    with (
        broker,
        session(broker.url, f"sender-{uuid.uuid4().hex[:8]}") as sender,
        session(broker.url, name, subscriptions=[(TOPIC, 1)], persistent=persistent,
                on_message=(inbox := Inbox()).put) as listener,
    ):
        poll_until(listener.subscribed.is_set, 15, interval=0.05, what="subscription")
        broker.restart()
        markers = (b"after-%d" % i for i in itertools.count())

        def marker_arrived() -> bool:
            # the listener may still be reconnecting (and, clean, miss it): a new marker per try
            sender.client.publish(TOPIC, next(markers), qos=1)
            return bool(inbox.payloads())

        wait_connected(sender)
        poll_until(marker_arrived, 30, interval=0.2, what="a message published after the restart")

    assert listener.connects == 2
    subscribes = broker.log_path.read_text().count(f": {name} 1 {TOPIC}\n")  # the broker's own record
    assert subscribes == (1 if persistent and broker_keeps_sessions else 2)


def settled(s: Session) -> None:
    """A QoS 1 round trip on the session's own connection: once the broker acks it, it has read everything
    the session sent before it, acks included (an ack is queued, not yet sent, when `ack()` returns)."""
    s.client.publish("session-test/barrier", b"", qos=1).wait_for_publish(10)


def test_a_message_not_acked_is_delivered_again_after_a_reconnect(tmp_path: Path) -> None:
    """With manual acks, what was acked stays acked; what was not comes again on the next connection, and
    may be acked only there (its old message id belongs to a connection that is gone)."""
    name = f"ingest-{uuid.uuid4().hex[:8]}"
    subscribe = {"subscriptions": [(TOPIC, 1)], "persistent": True, "manual_ack": True}
    with MosquittoBroker(tmp_path) as broker, session(broker.url, f"sender-{uuid.uuid4().hex[:8]}") as sender:
        with session(broker.url, name, on_message=(inbox := Inbox()).put, **subscribe) as listener:
            poll_until(listener.subscribed.is_set, 15, interval=0.05, what="subscription")
            wait_connected(sender)
            publish(sender, b"acked")
            publish(sender, b"not acked")
            acked, not_acked = inbox.wait(b"acked"), inbox.wait(b"not acked")
            assert listener.ack([acked]) == 1
            settled(listener)

            broker.restart()  # a lost connection: the session reconnects by itself
            again = inbox.wait(b"not acked", after=not_acked.connection)
            assert listener.ack([not_acked]) == 0  # from the lost connection: not sent on this one
            assert listener.ack([again]) == 1

        # the next process on the same session: nothing is left to deliver but what is new
        with session(broker.url, name, on_message=(later := Inbox()).put, **subscribe):
            publish(sender, b"new")
            later.wait(b"new")
            assert later.payloads() == [b"new"]
    assert inbox.payloads().count(b"acked") == 1
