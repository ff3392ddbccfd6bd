"""deploy/mosquitto.conf and deploy/mosquitto.acl, run by a real Mosquitto: who may publish and read."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.brokers import Collector, MosquittoBroker

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SITE = "macau-casino"  # the site id spelled in deploy/mosquitto.acl
READING = f"{SITE}/ahu_1/analogInput1/presentValue"
USERS = {  # test-only credentials, made in tmp for each run
    "bacpipes-agent": "agent-pw",
    "bacpipes-ingest": "ingest-pw",
    "bacpipes-operator": "operator-pw",
    "viewer": "viewer-pw",
}


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", "-b", *create, str(passwd), user, password], check=True)
    broker = MosquittoBroker(
        tmp_path / "broker",
        config_file=DEPLOY / "mosquitto.conf",
        config_overrides={"password_file": str(passwd), "acl_file": str(DEPLOY / "mosquitto.acl")},
    )
    broker.start()
    yield broker
    broker.stop()


def connect(
    broker: MosquittoBroker, user: str | None, password: str | None = None
) -> tuple[mqtt.Client, Any]:
    """A started client and the CONNACK reason code (a failure when the broker refused us)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    if user is not None:
        client.username_pw_set(user, password if password is not None else USERS[user])
    answered = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        result["rc"] = reason_code
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert answered.wait(5), "no CONNACK"
    return client, result["rc"]


def publish(broker: MosquittoBroker, user: str, topic: str, payload: bytes, retain: bool = False) -> None:
    client, rc = connect(broker, user)
    assert not rc.is_failure, rc
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def collector(broker: MosquittoBroker, user: str, topic: str) -> Collector:
    return Collector(broker.url, topic, username=user, password=USERS[user], persistent=False)


def arrived_in_order(sub: Collector, marker: bytes) -> set[bytes]:
    """What `sub` got up to `marker`, a message the broker accepted after the one under test."""
    assert sub.wait_until(lambda msgs: any(m.payload == marker for m in msgs), 5)
    time.sleep(0.2)
    return sub.payloads()


def test_agent_publishes_and_readers_receive(site_broker: MosquittoBroker) -> None:
    with collector(site_broker, "bacpipes-ingest", f"{SITE}/#") as ingest, \
            collector(site_broker, "viewer", f"{SITE}/#") as viewer:
        publish(site_broker, "bacpipes-agent", READING, b'{"value": 21.5}')
        publish(site_broker, "bacpipes-agent", f"{SITE}/_bacpipes/status", b"online")
        assert ingest.wait_for(2, 5) and viewer.wait_for(2, 5)
        assert {m.topic for m in ingest.snapshot()} == {READING, f"{SITE}/_bacpipes/status"}


def test_read_only_user_cannot_publish(site_broker: MosquittoBroker) -> None:
    with collector(site_broker, "bacpipes-ingest", f"{SITE}/#") as ingest, \
            collector(site_broker, "bacpipes-agent", "bacnet/write/command") as agent:
        publish(site_broker, "viewer", READING, b"forged reading")
        publish(site_broker, "viewer", "bacnet/write/command", b"forged command")
        publish(site_broker, "bacpipes-ingest", READING, b"ingest forged reading")
        publish(site_broker, "bacpipes-agent", READING, b"marker")
        publish(site_broker, "bacpipes-operator", "bacnet/write/command", b"real command")
        assert arrived_in_order(ingest, b"marker") == {b"marker"}
        assert arrived_in_order(agent, b"real command") == {b"real command"}


def test_agent_cannot_command_and_only_agent_reads_commands(site_broker: MosquittoBroker) -> None:
    # the agent subscribes as edge.command_mqtt does: a shared subscription, one agent per command
    shared = f"$share/bacpipes-{SITE}/bacnet/write/command"
    with collector(site_broker, "viewer", "bacnet/write/#") as viewer, \
            collector(site_broker, "bacpipes-agent", shared) as agent:
        publish(site_broker, "bacpipes-agent", "bacnet/write/command", b"self-command")
        publish(site_broker, "bacpipes-operator", "bacnet/write/command", b"real command")
        publish(site_broker, "bacpipes-agent", "bacnet/write/result", b"result")
        assert arrived_in_order(agent, b"real command") == {b"real command"}
        assert arrived_in_order(viewer, b"result") == {b"result"}  # results yes, commands no


def test_anonymous_and_wrong_password_are_refused(site_broker: MosquittoBroker) -> None:
    for user, password in ((None, None), ("viewer", "wrong"), ("nobody", "x")):
        client, rc = connect(site_broker, user, password)
        client.loop_stop()
        assert rc.is_failure, (user, rc)


def test_retained_reading_survives_restart(site_broker: MosquittoBroker) -> None:
    publish(site_broker, "bacpipes-agent", READING, b"retained", retain=True)
    site_broker.restart()
    with collector(site_broker, "viewer", READING) as viewer:
        assert viewer.wait_for(1, 5)
        assert viewer.snapshot()[0].payload == b"retained"
