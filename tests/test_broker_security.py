"""Broker sessions under deploy/mosquitto.conf (and the demo's broker), run by a real Mosquitto: one user
cannot knock another role's client off or take over its session, messages have a size limit, and an
idle session's queue stops growing at a bound."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from bacpipes.cli.servers import MosquittoBroker as EmbeddedBroker
from bacpipes.settings import load_settings
from edge.command_mqtt import CommandSubscriber
from edge.ingest import MAX_BATCH_PAYLOAD
from tests.brokers import MOSQUITTO, Collector, MosquittoBroker

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SITE = "macau-casino"  # the site id spelled in deploy/mosquitto.acl
READING = f"{SITE}/ahu_1/analogInput1/presentValue"
USERS = {  # test-only credentials, made in tmp for each run
    "bacpipes-agent": "agent-pw",
    "bacpipes-ingest": "ingest-pw",
    "bacpipes-operator": "operator-pw",
    "viewer": "viewer-pw",
}
AGENT_ID = "bacpipes-edge"  # [mqtt] client_id's default: what anyone reading the code or docs knows


def deploy_broker(directory: Path) -> MosquittoBroker:
    passwd = directory / "passwd"
    directory.mkdir(parents=True, exist_ok=True)
    for i, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), user, password], check=True)
    return MosquittoBroker(
        directory / "broker",
        config_file=DEPLOY / "mosquitto.conf",
        config_overrides={"password_file": str(passwd), "acl_file": str(DEPLOY / "mosquitto.acl")},
    )


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = deploy_broker(tmp_path).start()
    yield broker
    broker.stop()


@pytest.fixture(params=["deploy", "demo"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[MosquittoBroker, bool]]:
    """The site's broker (deploy/, with users) and the demo's (bacpipes.cli.servers, anonymous, loopback)."""
    if request.param == "deploy":
        broker, auth = deploy_broker(tmp_path), True
    else:
        broker, auth = EmbeddedBroker(tmp_path / "demo-broker", binary=MOSQUITTO), False
    broker.start()
    yield broker, auth
    broker.stop()


def conf_value(name: str) -> int:
    """An option of deploy/mosquitto.conf, e.g. max_queued_bytes."""
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return int(parts[1])
    raise KeyError(name)


class Client:
    """A plain paho client (as a hostile or careless user would write it) that records what it gets."""

    def __init__(self, broker: MosquittoBroker, user: str | None, client_id: str,
                 persistent: bool = False, keep_payloads: bool = True) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=not persistent, protocol=mqtt.MQTTv311)
        if user is not None:
            self.client.username_pw_set(user, USERS[user])
        self.keep_payloads = keep_payloads
        self.received: list[tuple[str, bytes, int]] = []  # topic, payload (or its first 16 bytes), size
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or self.connected.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(5), f"{user} could not connect as {client_id}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self.cond:
            self.received.append((msg.topic, payload if self.keep_payloads else payload[:16], len(payload)))
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def wait_for(self, payload: bytes, timeout: float = 10) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(p == payload for _, p, _ in self.received), timeout)

    def payloads(self) -> list[bytes]:
        with self.cond:
            return [p for _, p, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_another_user_cannot_knock_the_command_listener_off(site_broker: MosquittoBroker) -> None:
    """The agent's command listener stays connected and keeps receiving operators' commands while another
    user connects with the client id the listener is known by."""
    settings = load_settings(None, site={"id": SITE}, mqtt={
        "url": site_broker.url, "client_id": AGENT_ID, "username": "bacpipes-agent",
        "password": USERS["bacpipes-agent"]})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    commands: list[bytes] = []
    arrived = threading.Condition()

    async def intake(payload: bytes) -> None:
        with arrived:
            commands.append(bytes(payload))
            arrived.notify_all()

    listener = CommandSubscriber(settings, loop, intake).start()
    operator = Client(site_broker, "bacpipes-operator", f"op-{uuid.uuid4().hex[:8]}")
    try:
        assert listener.subscribed.wait(5)
        attacker = Client(site_broker, "viewer", f"{AGENT_ID}-commands")  # edge.command_mqtt's client id
        operator.publish("bacnet/write/command", b"sent after the attack")
        with arrived:
            assert arrived.wait_for(lambda: b"sent after the attack" in commands, 10), commands
        attacker.close()
    finally:
        operator.close()
        listener.stop()
        loop.call_soon_threadsafe(loop.stop)


def test_another_user_cannot_resume_the_ingesters_session(site_broker: MosquittoBroker) -> None:
    """Readings queued for the ingester's persistent session while it is away wait for the ingester:
    another user connecting with its client id neither receives them nor takes them away."""
    ingest = {"username": "bacpipes-ingest", "password": USERS["bacpipes-ingest"]}
    name = f"{AGENT_ID}-ingest"  # edge.ingest's client id
    Collector(site_broker.url, f"{SITE}/#", client_id=name, **ingest).close()  # subscribed, then away
    agent = Client(site_broker, "bacpipes-agent", f"agent-{uuid.uuid4().hex[:8]}")
    queued = [f'{{"value": {i}}}'.encode() for i in range(3)]
    for payload in queued:
        agent.publish(READING, payload)

    attacker = Client(site_broker, "viewer", name, persistent=True)
    attacker.subscribe(f"{SITE}/probe")
    agent.publish(f"{SITE}/probe", b"marker")
    assert attacker.wait_for(b"marker")  # anything queued for the session it took would have come first
    attacker.close()
    assert attacker.payloads() == [b"marker"]

    with Collector(site_broker.url, f"{SITE}/#", client_id=name, **ingest) as ingester:
        assert ingester.wait_until(lambda msgs: {m.payload for m in msgs} >= set(queued), 10)
    agent.close()


def test_oversized_message_is_refused(any_broker: tuple[MosquittoBroker, bool]) -> None:
    """The largest batch the ingester accepts passes; one byte more is dropped by the broker."""
    broker, auth = any_broker
    reader = Client(broker, "viewer" if auth else None, f"r-{uuid.uuid4().hex[:8]}", keep_payloads=False)
    reader.subscribe(f"{SITE}/#")
    agent = Client(broker, "bacpipes-agent" if auth else None, f"a-{uuid.uuid4().hex[:8]}")
    agent.publish(f"{SITE}/ahu_1/batch", b"a" * MAX_BATCH_PAYLOAD)
    agent.publish(f"{SITE}/ahu_1/batch", b"b" * (MAX_BATCH_PAYLOAD + 1))
    agent.publish(READING, b"marker")
    assert reader.wait_for(b"marker")
    assert [size for _, _, size in reader.received] == [MAX_BATCH_PAYLOAD, len(b"marker")]
    agent.close()
    reader.close()


def test_idle_session_queue_stops_growing_at_the_bound(any_broker: tuple[MosquittoBroker, bool]) -> None:
    """An idle persistent session holds at most max_queued_bytes of messages; the rest is not queued
    for it (the broker and everyone else carry on)."""
    broker, auth = any_broker
    bound = conf_value("max_queued_bytes")
    size = MAX_BATCH_PAYLOAD  # the largest message the broker takes: few messages reach the bound
    sent = bound // size + 8
    name = f"idle-{uuid.uuid4().hex[:8]}"
    idle = Client(broker, "viewer" if auth else None, name, persistent=True, keep_payloads=False)
    idle.subscribe(f"{SITE}/#")
    idle.close()

    agent = Client(broker, "bacpipes-agent" if auth else None, f"a-{uuid.uuid4().hex[:8]}")
    filler = b"x" * (size - 8)
    for i in range(sent):
        agent.publish(f"{SITE}/ahu_1/batch", b"%08d" % i + filler)

    back = Client(broker, "viewer" if auth else None, name, persistent=True, keep_payloads=False)
    agent.publish(READING, b"marker")  # after the queue, on the same session
    assert back.wait_for(b"marker", 30)
    kept = [p for p in back.payloads() if p != b"marker"]
    assert kept == [b"%08d" % i + filler[:8] for i in range(len(kept))]  # the oldest, in order
    assert bound - 2 * size < len(kept) * size <= bound
    back.close()
    agent.close()
