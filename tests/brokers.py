"""Real Mosquitto brokers the tests own (so they can stop, kill and restart them) and a subscriber
that records what actually arrived. Nothing here is a mock: outage tests need a broker that really
goes away and really comes back with its persisted sessions."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bacpipes.mqtt import connect_async, make_client
from bacpipes.settings import MqttSettings

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A port nobody listens on right now (the broker keeps it across restarts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """A private mosquitto on 127.0.0.1, configured for lossless tests.

    Mosquitto's defaults drop messages in exactly the situations outage tests create: an offline
    persistent session queues only 1000 QoS1 messages (`max_queued_messages`) and only 20 are in
    flight per client. Both are lifted here; persistence keeps sessions across `restart()`.
    """

    def __init__(
        self,
        tmp_path: Path,
        port: int | None = None,
        persistence: bool = True,
        extra_conf: str = "",
        config_file: Path | None = None,
        config_overrides: dict[str, str] | None = None,
    ) -> None:
        """`config_file` runs a deployment config (e.g. deploy/mosquitto.conf) instead of the lossless
        test one, with this broker's port, data dir and log file substituted, and `config_overrides`
        replacing further options (e.g. password_file) by name."""
        self.dir = Path(tmp_path)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.config_file = Path(config_file) if config_file else None
        self.config_overrides = dict(config_overrides or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        if self.config_file is not None:
            self._write_deploy_conf()
            return
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {data}/",
            "max_queued_messages 0",  # 0 = unlimited
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",  # as deploy/mosquitto.conf: write commands and results are tiny
            "log_dest file " + str(self.log_path),
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # as root mosquitto would switch to user "mosquitto", who cannot write the persistence
            # files in a root-owned tmp dir
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n" + self.extra_conf + "\n")

    def _write_deploy_conf(self) -> None:
        """The deployment file, minus the options that would bind it to the host's port and paths."""
        assert self.config_file is not None
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ours = {
            "listener": f"{self.port} 127.0.0.1",
            "persistence_location": f"{data}/",
            "log_dest": f"file {self.log_path}",
            **self.config_overrides,
        }
        if os.geteuid() == 0:
            ours["user"] = "root"  # see _write_conf
        kept = [
            line for line in self.config_file.read_text().splitlines()
            if not line.split() or line.split()[0] not in ours
        ]
        head = [f"{key} {value}" for key, value in ours.items()]
        self.conf_path.write_text("\n".join(head + kept) + "\n" + self.extra_conf + "\n")

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start (or start again, same port and data) and return once the port accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}"
                                   f"{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a clean shutdown, which is when mosquitto writes its persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever mosquitto had not autosaved is gone."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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
