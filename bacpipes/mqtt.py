"""One way to talk MQTT, shared by the edge publisher, the ingester and the command listener.

Every BacPipes component talks MQTT 3.1.1 (the command listener: 5) to Mosquitto with the same URL
syntax, credentials, TLS and reconnect policy, and each needs the same session handling around it:
subscribe again when the broker has forgotten us, ack a message only on the connection that delivered
it, ride out outages, leave cleanly. `Session` owns all of that once, so the three cannot drift apart;
`make_client` and `connect_async` remain for one-off clients (the demo's reading printer, tests).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bacpipes.settings import MqttSettings

log = logging.getLogger(__name__)

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


# --- the session ---------------------------------------------------------------------------------

Subscription = tuple[str, int | SubscribeOptions]  # (filter, QoS or MQTT v5 options)


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: what the broker publishes for us when the connection dies without a DISCONNECT."""

    topic: str
    payload: str | bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Delivery:
    """A received message and the connection it came on: a message id means something only on the
    connection that delivered it, so that is the only one it may be acked on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int


class Session:
    """One component's MQTT connection, kept up from `start()` to `stop()`.

    - The broker sees `client_id_for(settings, name)`; credentials, TLS, keepalive and the in-flight
      window come from `settings`. `persistent=True` keeps the session (subscriptions and unacked QoS 1
      messages) across disconnects: clean_session=False, MQTT 3.1.1.
    - On every connect the `subscriptions` are made again, unless the broker kept our session and has
      already acknowledged them in this process: resubscribing a kept session replays every retained
      message (wasted work), but a session created by a CONNECT whose SUBSCRIBE never reached the broker
      would otherwise stay silent forever.
    - `manual_ack=True`: nothing is acked until `ack()`; an unacked QoS 1 message stays in a persistent
      session and is delivered again on the next connection (at-least-once for the ingester).
    - Reconnects are paho's own, with a backoff from 1 s doubling to 10 s; a broker that is down at
      start is an outage to ride out, not a reason to crash.
    - `on_connect` runs after the (re)subscribe and before `connected` turns true; `on_disconnect` after
      it turns false. Both run on paho's network thread, as does `on_message`: they must not block.
    - `will()` is called before every connection attempt, so its payload may say when.
    """

    def __init__(
        self,
        settings: MqttSettings,
        name: str,
        *,
        subscriptions: Sequence[Subscription] = (),
        persistent: bool = False,
        manual_ack: bool = False,
        protocol: int = mqtt.MQTTv311,
        on_message: Callable[[Delivery], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_publish: Callable[[int, ReasonCode], None] | None = None,
        will: Callable[[], Will] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.subscriptions = list(subscriptions)
        self.client = make_client(settings, name, persistent=persistent, protocol=protocol)
        self.client.manual_ack_set(manual_ack)
        self.subscribed = threading.Event()  # the broker has acknowledged our subscriptions
        self.connects = 0
        self._message_hook, self._connect_hook, self._disconnect_hook = on_message, on_connect, on_disconnect
        self._will = will
        self._lock = threading.Lock()  # the connection number vs acks
        self._connection = 0  # +1 on every connect and every disconnect
        self._connected = False
        self._stopping = False
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        if on_publish is not None:
            self.client.on_publish = lambda _c, _u, mid, reason_code, _p: on_publish(mid, reason_code)

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> Session:
        """Start connecting in the background; returns at once, broker or not."""
        connect_async(self.client, self.settings)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        """Leave cleanly: a DISCONNECT (the broker drops the will and keeps a persistent session with
        whatever is unacked), then the network thread ends."""
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        """Ack each delivery whose connection is still up; returns how many. The others came on a lost
        connection: the broker delivers them again (a harmless duplicate), and their ids may by now
        name other messages, so acking them here would lose those."""
        acked = 0
        with self._lock:
            for d in deliveries:
                if d.connection == self._connection:
                    self.client.ack(d.mid, d.qos)
                    acked += 1
        return acked

    # paho callbacks (network thread)

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        if self._will is not None:
            will = self._will()
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused %s: %s", self.settings.url, self.name, reason_code)
            return
        with self._lock:
            self._connection += 1
        self.connects += 1
        if self.subscriptions and not (flags.session_present and self.subscribed.is_set()):
            client.subscribe(self.subscriptions)
        if self._connect_hook is not None:
            self._connect_hook()
        self._connected = True
        log.info("%s connected to %s (session present: %s)", self.name, self.settings.url,
                 flags.session_present)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused %s the subscriptions %s: %s", self.name,
                      [f for f, _ in self.subscriptions], failed)
            self.subscribed.clear()
        else:
            self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        with self._lock:
            self._connection += 1
        was_connected, self._connected = self._connected, False
        if self._disconnect_hook is not None:
            self._disconnect_hook()
        if was_connected:
            level = logging.INFO if self._stopping else logging.WARNING
            log.log(level, "%s disconnected from %s: %s", self.name, self.settings.url, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._message_hook is not None:
            self._message_hook(Delivery(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid,
                                self._connection))
