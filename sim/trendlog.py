"""Trend logs in the virtual building: the history a controller keeps, served with ReadRange.

Real controllers log their key points (zone temperature, setpoints) every few minutes into a circular
buffer, and a new site's first wish is that history. Each controller here logs its zone temperature and
both setpoints every ``LOG_INTERVAL_S`` into a buffer of ``BUFFER_SIZE`` records, prefilled at start with
a deterministic past (same seed, same records) and appended as building time passes.

bacpypes3 0.0.110 does not serve ReadRange (its handler raises NotImplementedError), so
``serve_read_range`` answers it by position, by sequence number and by time, and returns only as many
records as fit the smaller of the device's and the client's max APDU, with the more-items flag set:
a client must page, as it must with a real controller that does not segment.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from bacpypes3.apdu import ReadRangeACK, ReadRangeRequest
from bacpypes3.basetypes import (
    DateTime,
    DeviceObjectPropertyReference,
    LogRecord,
    LogRecordLogDatum,
    ResultFlags,
    StatusFlags,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.constructeddata import ListOf
from bacpypes3.errors import ExecutionError, PropertyError
from bacpypes3.local.object import Object as LocalObject
from bacpypes3.object import TrendLogObject
from bacpypes3.primitivedata import Date, ObjectIdentifier, Time

from sim.objects import SimObject

LOG_INTERVAL_S = 300
BUFFER_SIZE = 288  # one day at five minutes
PREFILL = BUFFER_SIZE  # the buffer starts full: a controller that has been running for a while
# encoded bytes of a ReadRange-ACK around its records: APDU header 3, object id 5, property 2-3,
# result flags 4, item count 2-5, item data open/close 2, first sequence number 2-5 (measured: 26)
_ACK_OVERHEAD = 32
_RECORD_BYTES = 22  # one record with a REAL and status flags, as encoded (measured)

_BUFFER_TYPE = ListOf(LogRecord)


@dataclass(frozen=True, slots=True)
class Record:
    """One log record: its sequence number (the total record count when it was logged), local time,
    value and status flags [in-alarm, fault, overridden, out-of-service]."""

    sequence: int
    time: datetime
    value: float
    flags: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class LogSpec:
    """What a controller logs: trend-log instance, the logged object, and its deterministic past."""

    instance: int
    name: str
    logged: tuple[str, int]
    past: Callable[[int, datetime], float]  # (record index, time) -> value


def _f32(value: float) -> float:
    return float(np.float32(round(value, 2)))


def zone_temp_past(seed: int, device_index: int) -> Callable[[int, datetime], float]:
    """A day curve around 23.5 °C (warmest mid-afternoon) with seeded noise: plausible and exact."""
    rng = np.random.default_rng([seed, device_index, 13])
    noise = rng.normal(0.0, 0.15, PREFILL)
    phase = rng.uniform(-1.0, 1.0)

    def value(k: int, t: datetime) -> float:
        hour = t.hour + t.minute / 60.0
        return _f32(23.5 + 1.2 * math.sin(2 * math.pi * (hour - 9.0 + phase) / 24.0) + noise[k % PREFILL])

    return value


def setpoint_past(default: float, step: float) -> Callable[[int, datetime], float]:
    """A setpoint at its default, lowered by ``step`` during the afternoon (an operator's habit)."""

    def value(_k: int, t: datetime) -> float:
        return _f32(default - step if 14 <= t.hour < 17 else default)

    return value


def log_specs(seed: int, device_index: int, cooling_default: float, heating_default: float) -> list[LogSpec]:
    prefix = f"AHU{device_index + 1}"
    return [
        LogSpec(1, f"{prefix}-ZN-T-TL", ("analog-input", 1), zone_temp_past(seed, device_index)),
        LogSpec(2, f"{prefix}-ZN-CLG-SP-TL", ("analog-value", 1), setpoint_past(cooling_default, 1.0)),
        LogSpec(3, f"{prefix}-ZN-HTG-SP-TL", ("analog-value", 2), setpoint_past(heating_default, 0.0)),
    ]


class SimTrendLog(SimObject, LocalObject, TrendLogObject):
    """A polled (periodic) trend log whose buffer lives in a deque, not in a bacpypes3 property.

    Storing thousands of records as a bacpypes3 ListOf would re-validate the list on every append;
    the buffer is only ever read through ReadRange, which reads the deque directly. ReadProperty of
    logBuffer is refused (read-access-denied), as the standard requires.
    """

    records: deque[Record]
    source: Any = None  # the logged local object, whose presentValue is appended as time passes
    fault: str | None = None  # for tests: "error" answers an Error, "garbage" an undecodable ACK

    async def read_property(self, attr: int | str, index: int | None = None) -> Any:
        if attr in ("logBuffer", "log-buffer"):
            raise PropertyError("readAccessDenied")
        return await super().read_property(attr, index)

    def set_fault(self, fault: str | None) -> None:
        """Make this log misbehave like a broken controller: "error", "garbage", or None (healthy)."""
        self.__dict__["fault"] = fault

    def append(self, when: datetime, value: float, flags: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        total = int(self.totalRecordCount) + 1
        self.records.append(Record(total, when, _f32(value), flags))
        self.__dict__["totalRecordCount"] = type(self.totalRecordCount)(total)
        self.__dict__["recordCount"] = type(self.recordCount)(len(self.records))

    def log_until(self, now: datetime) -> int:
        """Log the source's present value at every interval boundary up to ``now``; returns how many."""
        if self.source is None:
            return 0
        interval = timedelta(seconds=int(self.logInterval) / 100)
        added = 0
        last = self.records[-1].time if self.records else _align(now, interval) - interval
        while last + interval <= now:
            last += interval
            self.append(last, float(self.source.presentValue))
            added += 1
        return added


def _align(t: datetime, interval: timedelta) -> datetime:
    seconds = interval.total_seconds()
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(seconds=math.floor((t - midnight).total_seconds() / seconds) * seconds)


def make_trend_log(device_instance: int, spec: LogSpec, source: Any, now: datetime) -> SimTrendLog:
    """A trend log of ``source`` on this device, its buffer prefilled with ``spec.past`` up to ``now``."""
    log = SimTrendLog(
        objectIdentifier=("trend-log", spec.instance),
        objectName=spec.name,
        description=f"Trend of {spec.logged[0]} {spec.logged[1]} every {LOG_INTERVAL_S} s",
        enable=True,
        stopWhenFull=False,
        bufferSize=BUFFER_SIZE,
        recordCount=0,
        totalRecordCount=0,
        loggingType="polled",
        logInterval=LOG_INTERVAL_S * 100,  # hundredths of a second
        logDeviceObjectProperty=DeviceObjectPropertyReference(
            objectIdentifier=ObjectIdentifier(spec.logged),
            propertyIdentifier="presentValue",
            deviceIdentifier=ObjectIdentifier(("device", device_instance)),
        ),
        statusFlags=[0, 0, 0, 0],
        eventState="normal",
        reliability="noFaultDetected",
    )
    # plain attributes, not BACnet properties: bacpypes3's __setattr__ accepts only the latter
    log.__dict__["records"] = deque(maxlen=BUFFER_SIZE)
    interval = timedelta(seconds=LOG_INTERVAL_S)
    first = _align(now, interval) - (PREFILL - 1) * interval
    for k in range(PREFILL):
        t = first + k * interval
        # one record a day flagged as overridden (an operator held the point in hand): not 'good'
        flags = (0, 0, 1, 0) if k % 96 == 50 else (0, 0, 0, 0)
        log.append(t, spec.past(k, t), flags)
    log.__dict__["source"] = source
    return log


# -- ReadRange --------------------------------------------------------------------------------------


def _bacnet_datetime(t: datetime) -> DateTime:
    return DateTime(
        date=Date((t.year - 1900, t.month, t.day, t.isoweekday())),
        time=Time((t.hour, t.minute, t.second, t.microsecond // 10000)),
    )


def _from_bacnet(dt: DateTime) -> datetime:
    year, month, day, _dow = dt.date
    hour, minute, second, hundredth = dt.time
    return datetime(year + 1900, month, day, hour, minute, second, hundredth * 10000)


def _log_record(r: Record) -> LogRecord:
    return LogRecord(
        timestamp=_bacnet_datetime(r.time),
        logDatum=LogRecordLogDatum(realValue=r.value),
        statusFlags=StatusFlags(list(r.flags)),
    )


def select(log: SimTrendLog, request: ReadRangeRequest) -> tuple[list[Record], bool, bool]:
    """The records a ReadRange asks for, in buffer order, with (first-item, last-item) flags.

    By position: the reference index is 1-based in the buffer (oldest first), count signs the
    direction. By sequence number: the same around the record with that sequence number, and an empty
    answer when it is no longer in the buffer. By time: records strictly after (count > 0) or before
    (count < 0) the reference time. No range: the whole buffer.
    """
    records = list(log.records)
    rng = request.range
    if rng is None or (rng.byPosition is None and rng.bySequenceNumber is None and rng.byTime is None):
        chosen = records
    elif rng.byPosition is not None:
        index, count = int(rng.byPosition.referenceIndex), int(rng.byPosition.count)
        chosen = _around(records, index - 1, count) if 1 <= index <= len(records) else []
    elif rng.bySequenceNumber is not None:
        seq, count = int(rng.bySequenceNumber.referenceSequenceNumber), int(rng.bySequenceNumber.count)
        first_seq = records[0].sequence if records else 0
        index = seq - first_seq
        chosen = _around(records, index, count) if records and 0 <= index < len(records) else []
    else:
        when, count = _from_bacnet(rng.byTime.referenceTime), int(rng.byTime.count)
        if count > 0:
            chosen = [r for r in records if r.time > when][:count]
        else:
            chosen = [r for r in records if r.time < when][count:] if count else []
    first = bool(chosen) and bool(records) and chosen[0] is records[0]
    last = bool(chosen) and bool(records) and chosen[-1] is records[-1]
    return chosen, first, last


def _around(records: list[Record], index: int, count: int) -> list[Record]:
    if count >= 0:
        return records[index : index + count]
    return records[max(0, index + count + 1) : index + 1]


def fitting(count: int, max_apdu: int) -> int:
    """How many records fit one APDU of ``max_apdu`` bytes."""
    return max(0, min(count, (max_apdu - _ACK_OVERHEAD) // _RECORD_BYTES))


def read_range_ack(log: SimTrendLog, request: ReadRangeRequest, max_apdu: int) -> ReadRangeACK:
    """The answer: as many of the selected records as fit, more-items set when some were left out.

    When the records were asked for backwards (negative count), the ones nearest the reference are
    the ones kept, as the standard says, so a client paging backwards loses nothing.
    """
    prop = str(request.propertyIdentifier)
    if prop not in ("logBuffer", "log-buffer"):
        raise ExecutionError(errorClass="services", errorCode="propertyIsNotAList")
    if request.propertyArrayIndex is not None:
        raise ExecutionError(errorClass="property", errorCode="propertyIsNotAnArray")
    chosen, first, last = select(log, request)
    n = fitting(len(chosen), max_apdu)
    backwards = _count(request) < 0
    sent = chosen[len(chosen) - n :] if backwards else chosen[:n]
    more = n < len(chosen)
    if more:
        first = first and not backwards
        last = last and backwards
    ack = ReadRangeACK(context=request)
    ack.objectIdentifier = request.objectIdentifier
    ack.propertyIdentifier = request.propertyIdentifier
    ack.resultFlags = ResultFlags([int(first), int(last), int(more)])
    ack.itemCount = len(sent)
    ack.itemData = AnyValue(_BUFFER_TYPE([_log_record(r) for r in sent]))
    if sent and request.range is not None and request.range.byPosition is None:
        ack.firstSequenceNumber = sent[0].sequence
    return ack


def _count(request: ReadRangeRequest) -> int:
    rng = request.range
    for part in (rng.byPosition, rng.bySequenceNumber, rng.byTime) if rng is not None else ():
        if part is not None:
            return int(part.count)
    return 1


def garbage_ack(request: ReadRangeRequest) -> ReadRangeACK:
    """A misbehaving controller's answer: the flags say 'here are records', the data is a bare date."""
    ack = ReadRangeACK(context=request)
    ack.objectIdentifier = request.objectIdentifier
    ack.propertyIdentifier = request.propertyIdentifier
    ack.resultFlags = ResultFlags([1, 1, 0])
    ack.itemCount = 1
    ack.itemData = AnyValue(Date((126, 1, 1, 4)))
    return ack
