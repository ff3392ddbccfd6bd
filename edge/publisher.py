"""Publish readings to MQTT without losing any: spool first, send from the spool, delete on PUBACK.

The spool (SQLite) is the only source of truth. paho's in-memory queue is treated as a cache of the
current connection: on every (re)connect it is dropped and the unacknowledged rows are sent again
from the spool, in id order. A message is therefore delivered at least once — across broker outages,
lost connections and crashes of this process — and a duplicate is the worst case, which the
ingester's unique key makes harmless (see DESIGN.md, "At-least-once everywhere").

Threads: paho's network thread (loop_start) runs the callbacks; one drain thread owns the in-flight
map and all spool reads/deletes; callers' threads only append to the spool. Callbacks never take a
lock the drain thread may hold while calling into paho: paho invokes on_publish with its own
message mutex held, so a shared lock there would deadlock against `client.publish`.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from bacpipes.contracts import health_topic, status_topic
from bacpipes.mqtt import Session, Will
from bacpipes.settings import MqttSettings
from edge.spool import Spool, SpoolMessage

log = logging.getLogger(__name__)

READ_BATCH = 500  # spool rows fetched per query: one SELECT per 500 messages, not per message
DELETE_BATCH = 500  # acked rows deleted per commit at most
DELETE_DELAY_S = 0.05  # ...or after this long, so a steady trickle of acks is not one fsync each


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _validate(message: SpoolMessage) -> None:
    """Reject at submit what paho would reject at publish: a row that can never be sent would sit
    at the head of the FIFO and block everything behind it."""
    topic = message.topic
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"MQTT topic must be a non-empty string, not {topic!r}")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError(f"MQTT topic {topic!r} must not contain wildcards or NUL")
    if len(topic.encode()) > 65535:
        raise ValueError("MQTT topic longer than 65535 bytes")
    if message.qos not in (0, 1, 2):
        raise ValueError(f"MQTT QoS must be 0, 1 or 2, not {message.qos!r}")
    if not isinstance(message.payload, bytes | bytearray):
        raise TypeError(f"payload must be bytes, not {type(message.payload).__name__}")


class Publisher:
    """The edge agent's MQTT side: `submit` readings, they reach the broker, eventually, once or more.

    Also maintains the retained `{site}/_bacpipes/status` ("online" on every connect, "offline" as
    last will and on clean stop) so anyone can see whether the site is connected.
    """

    def __init__(self, mqtt_settings: MqttSettings, site_id: str, spool_path: str | Path) -> None:
        self.settings = mqtt_settings
        self.site_id = site_id
        self.client_id = mqtt_settings.client_id
        self.status_topic = status_topic(site_id)
        self.health_topic = health_topic(site_id)
        self._wake = threading.Event()
        # the session first: a bad URL raises here, before a spool file is created for nothing
        self.session = Session(
            mqtt_settings, self.client_id, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
            on_publish=self._on_publish, will=self._will,
        )
        self.client = self.session.client
        self.spool = Spool(spool_path)
        self._window = max(1, mqtt_settings.max_inflight)

        self._counters_lock = threading.Lock()
        self._submitted = 0
        self._published = 0
        self._acked = 0
        self._rejected = 0
        self._inflight = 0

        # written by paho's network thread, read by the drain thread; plain attributes (atomic under
        # the GIL) so the callbacks never block on the drain thread
        self._sending = False  # connected, and paho's copies from the last connection dropped
        self._generation = 0  # +1 per successful connect; acks are only valid within their connection
        self._acks: collections.deque[tuple[int, int]] = collections.deque()  # (generation, mid)
        self._drained = threading.Condition()
        self._stop_drain = threading.Event()
        self._thread = threading.Thread(target=self._drain_main, name="mqtt-drain", daemon=True)
        self._started = False
        self._closed = False
        self._stopped_empty = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Publisher:
        """Start connecting and draining; returns at once even if the broker is unreachable."""
        if self._started:
            raise RuntimeError("publisher already started")
        self._started = True
        self.session.start()
        self._thread.start()
        log.info("publishing to %s as %s (%d spooled)", self.settings.url, self.client_id,
                 len(self.spool))
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Flush for up to `timeout`, say "offline", disconnect. Returns True if the spool was empty.

        Whatever is not acknowledged stays in the spool and is sent by the next publisher on it.
        """
        if self._closed:
            return self._stopped_empty
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout) if self._started else len(self.spool) == 0
        if self._started:
            self._stop_drain.set()
            self._wake.set()
            self._thread.join(max(1.0, deadline - time.monotonic()))
            if self.connected:
                info = self.client.publish(
                    self.status_topic, self._status_payload("offline"), qos=1, retain=True
                )
                try:
                    info.wait_for_publish(max(0.5, deadline - time.monotonic()))
                except (ValueError, RuntimeError) as exc:  # lost the connection meanwhile
                    log.warning("could not publish offline status: %s", exc)
            self.session.stop()
        pending = len(self.spool)
        self.spool.close()
        self._closed = True
        self._stopped_empty = pending == 0
        if pending:
            log.warning("stopped with %d messages still spooled", pending)
        return flushed

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- API ---------------------------------------------------------------------------------------

    def submit(self, messages: Iterable[SpoolMessage]) -> int:
        """Spool messages durably (one transaction) and return how many; sending happens later.

        Returns once the messages are on disk, so a crash right after loses nothing.
        """
        batch = list(messages)
        for m in batch:
            _validate(m)
        n = self.spool.put_many(batch)
        with self._counters_lock:
            self._submitted += n
        self._wake.set()
        return n

    def flush(self, timeout: float) -> bool:
        """Wait until every spooled message is acknowledged; False if `timeout` passed first."""
        with self._drained:
            return self._drained.wait_for(lambda: len(self.spool) == 0, timeout)

    def publish_health(self, counters: dict[str, Any]) -> bool:
        """Publish retained health JSON, not spooled: a stale health report is worth nothing, so
        when disconnected it is dropped (returns False) instead of queued."""
        if not self.connected:
            return False
        payload = json.dumps(
            {"client_id": self.client_id, "timestamp": _now(), **counters}, default=str
        )
        info = self.client.publish(self.health_topic, payload, qos=1, retain=True)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stats(self) -> dict[str, Any]:
        with self._counters_lock:
            counters = {
                "submitted": self._submitted,
                "published": self._published,
                "acked": self._acked,
                "rejected": self._rejected,
                "inflight": self._inflight,
            }
        connects = self.session.connects
        age = self.spool.oldest_age_s() if not self._closed else None
        return {
            **counters,
            "connects": connects,
            "reconnects": max(0, connects - 1),
            "pending": len(self.spool),
            "oldest_pending_s": None if age is None else round(age, 1),
            "connected": self.connected,
        }

    @property
    def connected(self) -> bool:
        """Connected, and the spool's resend on this connection under way."""
        return self.session.connected

    # -- session hooks (paho's network thread) ----------------------------------------------------

    def _status_payload(self, status: str) -> str:
        return json.dumps({"status": status, "client_id": self.client_id, "timestamp": _now()})

    def _will(self) -> Will:
        # made before every connection attempt: its timestamp tells when the connection that died was opened
        return Will(self.status_topic, self._status_payload("offline"))

    def _on_connect(self) -> None:
        # paho would re-send its unacked messages now; the drain thread re-sends them from the
        # spool instead, so paho's copies would only be extra duplicates
        dropped = self.client.drop_out_messages()
        self._generation += 1
        self.client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self._sending = True
        self._wake.set()
        if dropped:
            log.info("%d unacked messages dropped, to be resent from the spool", len(dropped))

    def _on_disconnect(self) -> None:
        self._sending = False
        self._wake.set()

    def _on_publish(self, mid: int, reason_code: ReasonCode) -> None:
        if reason_code.is_failure:  # MQTT 5 only; the row stays and is re-sent on reconnect
            log.error("broker rejected message %d: %s", mid, reason_code)
            return
        self._acks.append((self._generation, mid))
        self._wake.set()

    # -- drain thread ------------------------------------------------------------------------------

    def _drain_main(self) -> None:
        generation = -1  # forces a fresh start on the first connection
        inflight: dict[int, int] = {}  # paho mid -> spool row id
        buffer: collections.deque[tuple[int, SpoolMessage]] = collections.deque()
        cursor = 0  # highest row id handed to paho on this connection
        to_delete: list[int] = []
        first_ack = 0.0
        while True:
            self._wake.clear()
            stopping = self._stop_drain.is_set()
            try:
                current = self._generation
                if current != generation:
                    # new connection: whatever was in flight on the old one is resent from the spool
                    self._delete(to_delete)
                    to_delete = []
                    inflight.clear()
                    buffer.clear()
                    cursor = 0
                    generation = current

                while self._acks:
                    ack_generation, mid = self._acks.popleft()
                    row = inflight.pop(mid, None) if ack_generation == generation else None
                    if row is not None:
                        if not to_delete:
                            first_ack = time.monotonic()
                        to_delete.append(row)

                with self._counters_lock:
                    self._inflight = len(inflight)
                if to_delete and (
                    stopping
                    or not inflight
                    or len(to_delete) >= DELETE_BATCH
                    or time.monotonic() - first_ack >= DELETE_DELAY_S
                ):
                    self._delete(to_delete)
                    to_delete = []
                if stopping:
                    return

                if self._sending and self._generation == generation:
                    cursor = self._send(inflight, buffer, cursor)
                with self._counters_lock:
                    self._inflight = len(inflight)
            except Exception:
                # e.g. a full disk: keep the thread alive, start over from the spool (duplicates only)
                log.exception("publisher drain failed; retrying from the spool")
                to_delete = []
                generation = -1
                self._stop_drain.wait(1.0)
                continue
            self._wake.wait(DELETE_DELAY_S if to_delete else 1.0)

    def _send(
        self,
        inflight: dict[int, int],
        buffer: collections.deque[tuple[int, SpoolMessage]],
        cursor: int,
    ) -> int:
        """Hand spooled rows to paho until the in-flight window is full; returns the new cursor."""
        sent = 0
        while len(inflight) < self._window:
            if not buffer:
                buffer.extend(self.spool.peek(READ_BATCH, after_id=cursor))
                if not buffer:
                    break
            row_id, m = buffer[0]
            try:
                info = self.client.publish(m.topic, m.payload, m.qos, m.retain)
            except ValueError as exc:
                # cannot be sent ever (a row from before validation existed): drop it, loudly,
                # rather than block the FIFO
                log.error("dropping unpublishable spool row %d (%r): %s", row_id, m.topic, exc)
                buffer.popleft()
                cursor = row_id
                self.spool.delete([row_id])
                with self._counters_lock:
                    self._rejected += 1
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                break  # paho's queue or mid space is full: retry once acks free it
            # MQTT_ERR_SUCCESS: sent or queued in paho. MQTT_ERR_NO_CONN: the connection just
            # dropped; the next connection's resend covers it. Either way it is now in flight.
            buffer.popleft()
            cursor = row_id
            inflight[info.mid] = row_id
            sent += 1
        if sent:
            with self._counters_lock:
                self._published += sent
        return cursor

    def _delete(self, rows: list[int]) -> None:
        if not rows:
            return
        deleted = self.spool.delete(rows)
        with self._counters_lock:
            self._acked += deleted
        with self._drained:
            self._drained.notify_all()
