"""Polling: per-point intervals aligned to the clock, per-device ReadPropertyMultiple batches.

Each device has its own task, so a dead or slow device backs off on its own and never delays the rest.
A 30 s point is read at :00 and :30; a missed slot is skipped, not caught up in a burst.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from bacpypes3.primitivedata import Double, ObjectIdentifier, Real

from bacpipes.clock import WALL, Clock
from bacpipes.contracts import Quality, Reading
from edge.bacnet import (
    BacnetClient,
    BacnetError,
    BadAnswer,
    NoResponse,
    describe_error,
    object_id,
    rpm_batch_size,
)
from edge.catalog import PollDevice, PollPoint

log = logging.getLogger(__name__)

_POLL_PROPS = ("present-value", "status-flags")
_DUE_WINDOW_S = 0.05  # points due within this window are read in the same batch


@dataclass
class PointOutcome:
    """What one poll of one point produced, for point_state (a reading, or an error)."""

    point_id: int
    polled_at: datetime
    reading: Reading | None = None
    error: str | None = None
    no_response: bool = False  # the device was silent (not a refusal or a bad value): it may have restarted


@dataclass
class DeviceStats:
    requests: int = 0
    reads_ok: int = 0
    reads_failed: int = 0
    backoffs: int = 0
    rpm_fallbacks: int = 0
    failures_contained: int = 0  # anything unexpected from this device: recorded, backed off, survived
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


def next_slot(interval_s: float, after: float) -> float:
    """The first clock-aligned slot strictly after `after` (epoch-aligned, so :00/:30 for 30 s)."""
    return (math.floor(after / interval_s) + 1) * interval_s


def quality_from_flags(flags: Any) -> Quality:
    """BACnet status flags: [in-alarm, fault, overridden, out-of-service]."""
    try:
        bits = [*flags, 0, 0, 0, 0]
    except TypeError:  # absent, an error, or not a bit string
        return "uncertain"
    if bits[1]:
        return "bad"
    if bits[2] or bits[3]:
        return "uncertain"
    return "good"


def plain_value(value: Any) -> float | int | str | None:
    """bacpypes3 values (Real, Enumerated, Unsigned, Boolean) as plain JSON-able numbers.

    A BACnet Real is 32-bit: publish its shortest exact decimal (24.42, not 24.420000076293945).
    """
    if value is None:
        return None
    if isinstance(value, Real) and not isinstance(value, Double):  # Double subclasses Real
        return float(str(np.float32(value)))
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):  # a CharacterString is text, even when it looks like a number
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class DevicePoller:
    """Polls one device's points on their schedules until stopped."""

    def __init__(
        self,
        client: BacnetClient,
        device: PollDevice,
        points: list[PollPoint],
        sink: Callable[[list[PointOutcome]], None],
        tz: ZoneInfo,
        max_backoff_s: float = 300.0,
        clock: Clock = WALL,
    ) -> None:
        self.client = client
        self.device = device
        self.points = {p.point_id: p for p in points}
        self.sink = sink
        self.tz = tz
        self.max_backoff_s = max_backoff_s
        self.clock = clock  # slots and stamps: the wall clock, or a simulated building's (bacpipes.clock)
        self.stats = DeviceStats()
        self.use_rpm = True
        self.failures = 0
        self.batch_size = rpm_batch_size(device.max_apdu)
        now = self.clock.time()
        self.due = {p.point_id: next_slot(p.interval_s, now) for p in points}
        self._rescheduled = asyncio.Event()

    def set_interval(self, point_id: int, interval_s: float) -> None:
        """Poll a point at another interval from now on (COV falls back to polling, or back again)."""
        point = self.points.get(point_id)
        if point is None:
            return
        self.points[point_id] = replace(point, interval_s=interval_s)
        self.due[point_id] = next_slot(interval_s, self.clock.time())
        self._rescheduled.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and self.due:
            delay = min(self.due.values()) - self.clock.time()
            if delay > 0:
                self._rescheduled.clear()
                await _first_set((stop, self._rescheduled), self.clock.wall_s(delay))
                continue  # stopped, rescheduled, or due now: look again
            try:
                await self.poll_due()
            except Exception as exc:  # whatever the device sent: its points' error, never the agent's
                self._contain(exc)

    def _contain(self, exc: Exception) -> None:
        """An unexpected failure is this device's problem: its due points get the error, it backs off."""
        log.exception("device %s: unexpected failure while polling; backing off", self.device.device_id)
        self.stats.failures_contained += 1
        now = self.clock.time()
        due = [pid for pid, t in self.due.items() if t <= now + _DUE_WINDOW_S]
        polled_at = self.clock.now(self.tz)
        self.sink([PointOutcome(pid, polled_at, error=describe_error(exc)) for pid in due])
        self._back_off(due)

    def _back_off(self, due: list[int]) -> None:
        self.failures += 1
        self.stats.backoffs += 1
        backoff = min(self.max_backoff_s, 2.0 ** min(self.failures, 16))
        retry = self.clock.time() + backoff
        log.warning("device %s not answering; retry in %.0f s", self.device.device_id, backoff)
        for pid in due:
            self.due[pid] = max(retry, next_slot(self.points[pid].interval_s, self.clock.time()))

    async def poll_due(self) -> None:
        started = self.clock.time()
        due = sorted(pid for pid, t in self.due.items() if t <= started + _DUE_WINDOW_S)
        for pid in due:
            self.stats.lateness_s.append(max(0.0, started - self.due[pid]))
        outcomes, device_dead = await self._read_points([self.points[pid] for pid in due])
        self.sink(outcomes)
        if device_dead:
            self._back_off(due)
            return
        self.failures = 0
        now = self.clock.time()
        for pid in due:
            self.due[pid] = next_slot(self.points[pid].interval_s, max(now, self.due[pid]))

    async def _read_points(self, points: list[PollPoint]) -> tuple[list[PointOutcome], bool]:
        outcomes: list[PointOutcome] = []
        start = 0
        while start < len(points):
            batch = points[start : start + self.batch_size]  # the size may shrink during the loop
            try:
                values = await self._read_batch(batch)
            except NoResponse as exc:
                message = str(exc) or type(exc).__name__
                polled_at = self.clock.now(self.tz)
                outcomes.extend(
                    PointOutcome(p.point_id, polled_at, error=message, no_response=True)
                    for p in points[start:]
                )
                self.stats.reads_failed += len(points) - start
                return outcomes, True
            polled_at = self.clock.now(self.tz)
            outcomes.extend(self._outcome(p, values, polled_at) for p in batch)
            start += len(batch)
        return outcomes, False

    async def _read_batch(self, batch: list[PollPoint]) -> dict[tuple[ObjectIdentifier, str], Any]:
        specs = [(_oid(p), _POLL_PROPS) for p in batch]
        self.stats.requests += 1
        if self.use_rpm:
            try:
                return await self.client.read_multiple(self.device.address, specs)
            except NoResponse:
                raise
            except BadAnswer as exc:  # discarded and counted by the client; ask again, one value at a time
                log.info("device %s: %s; this batch one by one", self.device.device_id, exc)
                return await self._read_singly(specs)
            except BacnetError as exc:
                self.stats.rpm_fallbacks += 1
                if "unrecognized-service" in str(exc):
                    self.use_rpm = False  # the device has no RPM at all
                elif len(batch) > 1:
                    self.batch_size = max(1, len(batch) // 2)  # too big for it: smaller from now on
                log.info(
                    "device %s: RPM of %d refused (%s); this batch one by one, next batches of %d",
                    self.device.device_id,
                    len(batch),
                    exc,
                    self.batch_size,
                )
        return await self._read_singly(specs)

    async def _read_singly(self, specs: list[tuple[ObjectIdentifier, tuple[str, ...]]]) -> dict:
        values: dict[tuple[ObjectIdentifier, str], Any] = {}
        for oid, props in specs:
            for prop in props:
                try:
                    values[(oid, prop)] = await self.client.read(self.device.address, oid, prop)
                except NoResponse:
                    raise
                except BacnetError as exc:
                    values[(oid, prop)] = exc
        return values

    def _outcome(self, point: PollPoint, values: dict, polled_at: datetime) -> PointOutcome:
        oid = _oid(point)
        value, flags = values.get((oid, "present-value")), values.get((oid, "status-flags"))
        outcome = point_outcome(point, value, flags, polled_at)
        if outcome.reading is None:
            self.stats.reads_failed += 1
        else:
            self.stats.reads_ok += 1
        return outcome


def point_outcome(point: PollPoint, value: Any, flags: Any, at: datetime) -> PointOutcome:
    """A present value as read (by a poll or a COV notification): a reading, or why it is none."""
    number = None if isinstance(value, BacnetError) else plain_value(value)
    if not isinstance(number, (int, float)) or not math.isfinite(number):
        return PointOutcome(point.point_id, at, error=_value_error(value))
    reading = Reading(
        point_id=point.point_id,
        value=number,
        timestamp=at,
        units=point.units,
        quality=quality_from_flags(flags),
        dis=point.dis,
        haystack_name=point.haystack_name,
    )
    return PointOutcome(point.point_id, at, reading=reading)


async def _first_set(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Wait until one of the events is set, or the timeout passes."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _value_error(value: Any) -> str:
    if value is None:
        return "no value returned"
    if isinstance(value, BacnetError):
        return str(value)
    return f"present value is not a finite number: {value!r:.60}"


def _oid(point: PollPoint) -> ObjectIdentifier:
    return object_id(f"{point.object_type},{point.object_instance}")
