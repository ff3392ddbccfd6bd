"""One way to build an MQTT client, shared by the edge publisher, the ingester and the command listener.

Every BacPipes component talks MQTT 3.1.1 (the command listener: 5) to Mosquitto with the same URL
syntax, credentials, TLS and reconnect policy; building the client in one place keeps them from drifting
apart.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import socket
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from bacpipes.settings import MqttSettings

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

# paho refuses to queue a message whose mid is still in use, and mids are 16-bit: a queue longer than
# the mid space could never be used, and an unbounded one could hide a stalled connection until the
# process runs out of memory.
MAX_QUEUED = 60_000


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """Split `mqtt://host[:port]` / `mqtts://host[:port]` into (host, port, tls).

    Raises ValueError with the offending URL, so a typo in the settings fails at start, not as an
    endless reconnect loop against the wrong place.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # e.g. a non-numeric or out-of-range port
        raise ValueError(f"invalid MQTT URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"invalid MQTT URL {url!r}: scheme must be mqtt:// or mqtts://, not {parts.scheme!r}"
        )
    if not parts.hostname:
        raise ValueError(f"invalid MQTT URL {url!r}: no host")
    if parts.username is not None or parts.password is not None:
        # credentials in a URL end up in logs and in the TOML file in git; settings/env keep them apart
        raise ValueError(
            f"invalid MQTT URL {parts._replace(netloc=parts.hostname).geturl()!r}: put credentials "
            "in mqtt.username / BACPIPES_MQTT__PASSWORD, not in the URL"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid MQTT URL {url!r}: unexpected path, query or fragment")
    return parts.hostname, port or _DEFAULT_PORTS[scheme], scheme == "mqtts"


def client_id_for(settings: MqttSettings, name: str) -> str:
    """The MQTT client id of our connection called `name` (e.g. "bacpipes-edge-commands").

    Mosquitto (2.0, and 2.1: eclipse-mosquitto/mosquitto#3553) lets any logged-in user connect with any
    client id: that disconnects the client holding it and hands over its persistent session. Its only
    binding, `use_username_as_clientid`, allows one connection per user, and the agent has several. So
    with credentials the id is `name-<16 hex>`, the tag derived from the user's password (PBKDF2, so the
    broker's logs are no cheap password oracle): stable across restarts (the ingester resumes its
    session, a restarted client replaces its own stale connection), and not to be named by anyone
    without that password. Without a password (the demo's anonymous loopback broker) there is no
    identity to protect, and the id is `name`.
    """
    if not settings.password:
        return name
    return f"{name}-{_tag(settings.username or '', settings.password, name)}"


@functools.lru_cache(maxsize=64)
def _tag(username: str, password: str, name: str) -> str:
    salt = f"bacpipes-mqtt-client-id\0{username}\0{name}".encode()
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000, dklen=8).hex()


def make_client(
    settings: MqttSettings, client_id: str, *, persistent: bool = False, protocol: int = mqtt.MQTTv311
) -> mqtt.Client:
    """A configured, not yet connected client; connect with `connect_async` (see below).

    `client_id` names the connection; the broker sees `client_id_for(settings, client_id)`.
    `persistent=True` asks the broker to keep the session (subscriptions and QoS>0 messages queued
    while we are away) — what a subscriber needs for at-least-once delivery. A pure publisher does
    not need it: its own spool is what survives.
    `protocol=mqtt.MQTTv5` (the command listener, for its subscription options) gets a clean session:
    with no session expiry interval at connect the broker drops the session when the connection ends.
    """
    _, _, tls = parse_mqtt_url(settings.url)  # fail on a bad URL before anything else happens
    if protocol == mqtt.MQTTv5 and persistent:
        raise ValueError("a persistent MQTT v5 session (a session expiry interval) is not supported here")
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id_for(settings, client_id),
        clean_session=None if protocol == mqtt.MQTTv5 else not persistent,
        protocol=protocol,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if tls:
        # ca_certs=None makes paho load the system trust store
        client.tls_set(ca_certs=settings.ca_file)
    # a 10 s ceiling: after an outage the agent is back within seconds, at negligible cost
    client.reconnect_delay_set(1, 10)
    client.max_inflight_messages_set(settings.max_inflight)
    client.max_queued_messages_set(MAX_QUEUED)
    client.on_socket_open = no_delay
    return client


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Small packets go out at once. With Nagle's algorithm a QoS 1 message after another waits for
    the peer's delayed ACK: ~40 ms a hop, measured as 88 ms from write command to result."""
    with contextlib.suppress(OSError, AttributeError):  # not every socket-like object is TCP
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_async(client: mqtt.Client, settings: MqttSettings) -> None:
    """Point `client` at the broker without blocking; `client.loop_start()` then (re)connects.

    Asynchronous on purpose: a broker that is down when a service starts is an outage to ride out,
    not a reason to crash.
    """
    host, port, _ = parse_mqtt_url(settings.url)
    client.connect_async(host, port, keepalive=settings.keepalive_s)
