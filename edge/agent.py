"""`bacpipes edge run`: poll every device, publish every reading, ingest them into the site database.

Readings go to the publisher's durable spool first, so a broker outage or an agent crash loses
nothing; point_state is best effort (latest values only) and is retried if the database is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import defaultdict
from datetime import UTC
from typing import Any

from bacpipes.alarms import watch as watch_bands
from bacpipes.clock import WALL, clock_from
from bacpipes.contracts import Reading, batch_payload, batch_topic
from bacpipes.db import connect
from bacpipes.replication import heartbeat
from bacpipes.settings import Settings
from edge.bacnet import BacnetClient
from edge.catalog import PollPoint, load_poll_plan
from edge.command_mqtt import CommandSubscriber
from edge.cov import CovSubscriber, cov_subscribers, polled_as
from edge.discovery import discover
from edge.executor import Executor, Result
from edge.guard import EdgeGuard
from edge.inference import EdgeInference
from edge.ingest import Ingester
from edge.polling import DevicePoller, PointOutcome
from edge.publisher import Publisher
from edge.spool import SpoolMessage

log = logging.getLogger(__name__)

_STATE_FLUSH_S = 5.0
_INFERENCE_RETRY_S = 60.0  # after a failed inference round, or one still waiting for inputs

# Polling health only: value, quality and time belong to the ingester, which writes them from the
# readings that actually reached the database. A failed read marks the point bad until the next reading.
_UPSERT_STATE = """
INSERT INTO point_state AS s (site_id, point_id, quality, last_poll, error_count, last_error, last_error_at)
VALUES (%(site)s, %(pid)s, %(bad)s, %(polled)s, %(errors)s, %(error)s,
        %(error_at)s)
ON CONFLICT (site_id, point_id) DO UPDATE SET
    quality = coalesce(EXCLUDED.quality, s.quality), last_poll = EXCLUDED.last_poll,
    error_count = s.error_count + EXCLUDED.error_count,
    last_error = coalesce(EXCLUDED.last_error, s.last_error),
    last_error_at = coalesce(EXCLUDED.last_error_at, s.last_error_at)
"""


class PointStateWriter:
    """Collects the latest outcome per point and upserts them in one batch, off the event loop."""

    def __init__(self, dsn: str, site_id: str) -> None:
        self.dsn = dsn
        self.site_id = site_id
        self._pending: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.failures = 0

    def add(self, outcomes: list[PointOutcome]) -> None:
        with self._lock:
            for o in outcomes:
                row = self._pending.get(o.point_id)
                errors = (row["errors"] if row else 0) + (1 if o.error else 0)
                # an error followed by a good read in the same flush is still recorded (e.g. a COV refusal)
                earlier = (row["error"], row["error_at"]) if row else (None, None)
                error, error_at = (o.error, o.polled_at) if o.error else earlier
                self._pending[o.point_id] = {
                    "site": self.site_id,
                    "pid": o.point_id,
                    "bad": "bad" if o.error else None,
                    "polled": o.polled_at,
                    "errors": errors,
                    "error": error,
                    "error_at": error_at,
                }

    def flush(self) -> int:
        with self._lock:  # in point order, as the ingester updates point_state: no deadlocks
            rows, self._pending = [self._pending[k] for k in sorted(self._pending)], {}
        if not rows:
            return 0
        try:
            with connect(self.dsn) as conn, conn.cursor() as cur:
                cur.executemany(_UPSERT_STATE, rows)
        except Exception as exc:  # the database being away must not stop polling
            self.failures += 1
            log.warning("point_state not written (%s); will retry", exc)
            with self._lock:  # keep the newest of each point, and every error, for the next attempt
                for row in rows:
                    newer = self._pending.get(row["pid"])
                    if newer:
                        newer["errors"] += row["errors"]
                        if newer["error"] is None:
                            newer["error"], newer["error_at"] = row["error"], row["error_at"]
                    else:
                        self._pending[row["pid"]] = row
            return 0
        return len(rows)


class EdgeAgent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = clock_from(settings.clock)  # the wall clock, or a simulated building's ([clock])
        self.stop_event = asyncio.Event()
        self.client: BacnetClient | None = None
        self.pollers: list[DevicePoller] = []
        self.covs: dict[int, CovSubscriber] = {}  # device id -> its COV points' subscriber
        self.points: dict[int, PollPoint] = {}
        self.publisher: Publisher | None = None
        self.ingester: Ingester | None = None
        self.executor: Executor | None = None
        self.commands: CommandSubscriber | None = None
        self.state = PointStateWriter(settings.database.dsn, settings.site.id)
        self.readings_published = 0
        self.started_at = time.time()
        self._rate_sample = (self.started_at, 0)  # (time, readings) at the last heartbeat

    def request_stop(self) -> None:
        self.stop_event.set()

    async def run(self, *, discover_first: bool = False) -> None:
        s = self.settings
        client = self.client = BacnetClient.open(s.bacnet, s.discovery.bbmd)
        try:
            if discover_first or not _has_devices(s):
                report = await discover(client, s)
                log.info("discovered %d devices, %d points", len(report.devices), report.point_count)
            devices, points = load_poll_plan(s.database.dsn, s.site.id, s.polling.default_interval_s)
            if not points:
                raise RuntimeError("no points to poll: run `bacpipes edge discover` and check targets")
            self.points = {p.point_id: p for p in points}
            self.publisher = Publisher(s.mqtt, s.site.id, s.spool.path)
            self.publisher.start()
            if s.ingest.enabled:
                self.ingester = Ingester(s).start()
            if s.writes.enabled:
                self.executor = Executor(s, client, self._publish_result, self.clock)
                executor = self.executor
                self.commands = CommandSubscriber(
                    s, asyncio.get_running_loop(), lambda payload: executor.intake_mqtt(payload, "mqtt")
                ).start()
            by_device: dict[int, list] = {}
            for p in points:
                by_device.setdefault(p.device_id, []).append(polled_as(p, s.cov))  # COV: polled as a check
            self.pollers = [
                DevicePoller(
                    client, d, by_device[d.device_id], self._on_outcomes, s.site.tz, s.polling.max_backoff_s,
                    self.clock,
                )
                for d in devices
                if d.device_id in by_device
            ]
            log.info("polling %d points on %d devices", len(points), len(self.pollers))
            self.covs = cov_subscribers(client, self.pollers, self.points, self._on_outcomes, s)
            tasks = [asyncio.create_task(p.run(self.stop_event)) for p in self.pollers]
            tasks += [asyncio.create_task(c.run(self.stop_event)) for c in self.covs.values()]
            tasks.append(asyncio.create_task(self._housekeeping()))
            tasks.append(asyncio.create_task(watch_bands(s, self.stop_event)))  # zones out of band: alarms
            if self.executor:
                tasks.append(asyncio.create_task(self.executor.run(self.stop_event)))
            if s.ml.enabled:
                tasks.append(asyncio.create_task(self._inference(EdgeInference(s))))
                if s.guard.enabled:
                    tasks.append(asyncio.create_task(self._guard(EdgeGuard(s, self.clock))))
            await asyncio.gather(*tasks)
        finally:
            if self.commands:
                await asyncio.to_thread(self.commands.stop)
            await asyncio.to_thread(self.state.flush)
            if self.publisher:
                await asyncio.to_thread(self.publisher.stop, 10.0)
            if self.ingester:
                await asyncio.to_thread(self.ingester.stop, 10.0)
            client.close()

    def _on_outcomes(self, outcomes: list[PointOutcome]) -> None:
        readings = [(self.points[o.point_id], o.reading) for o in outcomes if o.reading is not None]
        messages = [SpoolMessage(p.topic, r.payload(), p.qos, True) for p, r in readings]
        if self.settings.mqtt.batch_per_equipment:
            messages += self._batch_messages(readings)
        if messages and self.publisher:
            self.publisher.submit(messages)
            self.readings_published += len(readings)
        self.state.add(outcomes)

    def _publish_result(self, result: Result) -> None:
        if self.commands:
            self.commands.publish_result(result)

    def _batch_messages(self, readings: list[tuple[PollPoint, Reading]]) -> list[SpoolMessage]:
        by_equip: dict[str, list[Reading]] = defaultdict(list)
        for point, reading in readings:
            by_equip[point.topic.split("/")[1]].append(reading)
        site = self.settings.site.id
        return [SpoolMessage(batch_topic(site, e), batch_payload(rs), 1, False) for e, rs in by_equip.items()]

    async def _housekeeping(self) -> None:
        last_health = last_heartbeat = 0.0
        while not self.stop_event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=_STATE_FLUSH_S)
            await asyncio.to_thread(self.state.flush)
            if time.time() - last_heartbeat >= self.settings.replication.heartbeat_s:
                await asyncio.to_thread(self._heartbeat)
                last_heartbeat = time.time()
            if self.publisher and time.time() - last_health >= self.settings.mqtt.health_interval_s:
                self.publisher.publish_health(self.health())
                last_health = time.time()

    async def _inference(self, inference: EdgeInference) -> None:
        """Every ml.interval_s; a failing round, or one whose zones all still wait for inputs (an agent just
        started), is tried again within a minute, not a whole interval later (a database restart should
        not cost the building 15 minutes of control)."""
        while not self.stop_event.is_set():
            wait, started = self.settings.ml.interval_s, self.clock.time()
            try:
                decisions = await asyncio.to_thread(inference.step, self.clock.now(UTC))
                if self.clock is not WALL:  # simulated time: a round's own duration is building minutes
                    wait = max(0.0, wait - (self.clock.time() - started))
                if decisions and all(d.waiting for d in decisions):
                    wait = min(wait, _INFERENCE_RETRY_S)
            except Exception:
                log.exception("inference round failed; no write was made")
                wait = min(wait, _INFERENCE_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=self.clock.wall_s(wait))

    async def _guard(self, guard: EdgeGuard) -> None:
        """Every guard.interval_s while a model is active (edge/guard.py); a failing round is logged."""
        while not self.stop_event.is_set():
            try:
                await asyncio.to_thread(guard.check)
            except Exception:
                log.exception("edge guard round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(),
                                       timeout=self.clock.wall_s(self.settings.guard.interval_s))

    def _heartbeat(self) -> None:
        """Central measures replication lag by this row's age when it arrives there."""
        try:
            now, readings = time.time(), self.readings_published
            (then, before), self._rate_sample = self._rate_sample, (now, readings)
            rate = round((readings - before) / (now - then), 2) if now > then else None
            with connect(self.settings.database.dsn) as conn:
                heartbeat(conn, self.settings.site.id, {**self.health(), "readings_per_s": rate,
                                                        "heartbeat_s": self.settings.replication.heartbeat_s})
        except Exception as exc:  # the database being away must not stop polling
            log.warning("replication heartbeat not written: %s", exc)

    def health(self) -> dict[str, Any]:
        stats = [p.stats for p in self.pollers]
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "devices": len(self.pollers),
            "devices_backing_off": sum(1 for p in self.pollers if p.failures),
            "points": sum(len(p.points) for p in self.pollers),
            "readings": self.readings_published,
            "reads_failed": sum(s.reads_failed for s in stats),
            "device_errors": self.device_errors(),
            "requests": sum(s.requests for s in stats),
            "lateness_p99_s": _p99([x for s in stats for x in s.lateness_s]),
            "state_write_failures": self.state.failures,
            "publisher": self.publisher.stats() if self.publisher else {},
            "ingest": self.ingester.stats() if self.ingester else {},
            "writes": self.executor.stats() if self.executor else {},
            "cov": _sum_counters([c.health() for c in self.covs.values()]),
        }

    def device_errors(self) -> dict[str, dict[str, int]]:
        """Per device with any: answers discarded (mismatched, undecodable), failures contained, backoffs."""
        counters = self.client.counters if self.client else {}
        out: dict[str, dict[str, int]] = {}
        for poller in self.pollers:
            c = counters.get(poller.device.address)
            row = {
                "mismatched": c.mismatched if c else 0,
                "undecodable": c.undecodable if c else 0,
                "contained": poller.stats.failures_contained,
                "backoffs": poller.stats.backoffs,
            }
            if any(row.values()):
                out[str(poller.device.device_id)] = row
        return out


def _sum_counters(reports: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for report in reports:
        for key, value in report.items():
            out[key] += value
    return dict(out)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return round(values[min(len(values) - 1, int(len(values) * 0.99))], 4)


def _has_devices(settings: Settings) -> bool:
    with connect(settings.database.dsn) as conn:
        row = conn.execute("SELECT count(*) FROM device WHERE site_id = %s", (settings.site.id,)).fetchone()
    return bool(row and row[0])


def run_agent(settings: Settings, *, discover_first: bool = False) -> None:
    """Run until SIGTERM/SIGINT; the current poll cycle finishes, then the spool is flushed."""

    async def main() -> None:
        agent = EdgeAgent(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.run(discover_first=discover_first)

    asyncio.run(main())
