"""History a device already holds: its TrendLog buffers, read with ReadRange into `sensor_readings`.

A new site should start with the days of history its controllers kept, not with an empty chart. For
each device this finds its trend-log objects, maps each to the point it logs (logDeviceObjectProperty),
pages through the buffer by sequence number, and stores the records like any reading (quality from the
record's status flags), marking each reading it added in `imported_reading` (sql/014_trend_history.sql).

Idempotent and resumable: `trend_log_import.last_sequence` is where the next run starts, and the unique
key of `sensor_readings` ignores a record already stored. A device that answers an error or garbage for
one log costs that log only: it is reported, and the device's other logs and other devices go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from bacpypes3.apdu import ReadRangeACK, ReadRangeRequest
from bacpypes3.basetypes import LogRecord, Range, RangeByPosition, RangeBySequenceNumber
from bacpypes3.constructeddata import ListOf
from bacpypes3.primitivedata import ObjectIdentifier

from bacpipes.db import connect
from bacpipes.partitions import create_partition
from bacpipes.settings import Settings
from bacpipes.staging import move_staged
from edge.bacnet import BacnetClient, BacnetError, describe_error, gather_limited
from edge.catalog import PollDevice
from edge.polling import quality_from_flags

log = logging.getLogger(__name__)

TREND_LOG = "trend-log"
_BUFFER = ListOf(LogRecord)
_RECORD_BYTES = 24  # one REAL record with status flags, encoded (22), plus slack
_ACK_OVERHEAD = 40  # a ReadRange-ACK around its records (measured 26), plus slack
_NUMERIC = ("realValue", "unsignedValue", "signedValue", "enumValue", "booleanValue")


@dataclass(slots=True)
class LogImport:
    """What one trend log gave: records read, readings added, and an error if it failed part-way."""

    device_id: int
    log_instance: int
    point_id: int | None = None
    read: int = 0
    added: int = 0
    skipped: int = 0  # log-status, failure or time-change records, or before --since: no reading
    error: str | None = None


@dataclass
class HistoryReport:
    logs: list[LogImport] = field(default_factory=list)
    device_errors: dict[int, str] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return sum(x.added for x in self.logs)

    @property
    def failed(self) -> list[LogImport]:
        return [x for x in self.logs if x.error]


@dataclass(frozen=True, slots=True)
class Reading:
    time: datetime
    value: float
    quality: str
    sequence: int | None


# -- the device side ------------------------------------------------------------------------------


async def trend_logs(client: BacnetClient, dev: PollDevice) -> list[int]:
    """Instances of the device's trend-log objects, from its object list."""
    objects = await client.object_list(dev.address, dev.device_id)
    return sorted(int(o[1]) for o in objects if str(o[0]) == TREND_LOG)


async def read_range(
    client: BacnetClient, address: str, log_instance: int, by_sequence: int | None, position: int | None,
    count: int,
) -> tuple[list[LogRecord], bool, int | None]:
    """One ReadRange of logBuffer: (records, more-items, first sequence number).

    Sent through the client (the device's own invoke ids, bounded wait, errors as `BacnetError`); decode
    errors of any kind become `BacnetError` too, and the answer is checked against the question.
    """
    oid = ObjectIdentifier((TREND_LOG, log_instance))
    request = ReadRangeRequest(objectIdentifier=oid, propertyIdentifier="logBuffer")
    if by_sequence is not None:
        request.range = Range(
            bySequenceNumber=RangeBySequenceNumber(referenceSequenceNumber=by_sequence, count=count)
        )
    else:
        request.range = Range(byPosition=RangeByPosition(referenceIndex=position or 1, count=count))
    ack = await client.request(address, request)
    if not isinstance(ack, ReadRangeACK):
        raise BacnetError(f"unexpected answer to ReadRange: {type(ack).__name__}")
    try:
        if ack.objectIdentifier != oid:
            raise BacnetError(f"answer for {ack.objectIdentifier}, asked for {oid}")
        records = list(ack.itemData.cast_out(_BUFFER)) if ack.itemData is not None else []
        flags = list(ack.resultFlags or [0, 0, 0])
        more = bool(flags[2]) if len(flags) > 2 else False
        first = None if ack.firstSequenceNumber is None else int(ack.firstSequenceNumber)
    except BacnetError:
        raise
    except Exception as exc:  # a decode error on an odd answer: this log's problem, nobody else's
        raise BacnetError(f"undecodable ReadRange answer: {describe_error(exc)}") from None
    if int(ack.itemCount) != len(records):
        raise BacnetError(f"ReadRange answer says {int(ack.itemCount)} records, holds {len(records)}")
    return records, more, first


async def read_log(
    client: BacnetClient, dev: PollDevice, log_instance: int, after_sequence: int | None
) -> tuple[list[tuple[int | None, LogRecord]], str | None]:
    """Every record newer than `after_sequence` (all of them when None), page by page.

    Returns (sequence number, record) pairs and an error if paging stopped early: what was read before
    the error is kept, so a flaky device still yields its history over several runs.
    """
    oid = ObjectIdentifier((TREND_LOG, log_instance))
    total = int(await client.read(dev.address, oid, "total-record-count"))
    held = int(await client.read(dev.address, oid, "record-count"))
    oldest = total - held + 1
    start = oldest if after_sequence is None else max(after_sequence + 1, oldest)
    fits = max(1, (dev.max_apdu - _ACK_OVERHEAD) // _RECORD_BYTES)
    out: list[tuple[int | None, LogRecord]] = []
    by_position = False
    nxt = start
    while nxt <= total:
        remaining = total - nxt + 1
        # a device that cannot segment must trim its answer to one APDU (more-items tells us); one that
        # can would segment a large answer, which bacpypes3 handles poorly under load: ask for what fits
        segments = dev.segmentation not in ("no-segmentation", "noSegmentation")
        count = min(remaining, fits) if segments else remaining
        try:
            if by_position:
                records, more, _ = await read_range(client, dev.address, log_instance, None,
                                                    nxt - oldest + 1, count)
                first = nxt
            else:
                records, more, first = await read_range(client, dev.address, log_instance, nxt, None, count)
        except BacnetError as exc:
            text = str(exc)
            if "segmentation" in text.lower() and count > fits:
                fits = max(1, fits // 2)
                continue
            if not by_position and not out and ("reject" in text.lower() or "service" in text.lower()):
                by_position = True  # a device without by-sequence-number support
                continue
            return out, f"ReadRange from sequence {nxt}: {text}"
        if not records:
            if nxt < oldest + held and not out:
                return out, f"ReadRange from sequence {nxt}: the device returned no records"
            break
        if first is not None and first != nxt:
            return out, f"ReadRange from sequence {nxt}: answer starts at sequence {first}"
        out.extend((nxt + k, r) for k, r in enumerate(records))
        nxt += len(records)
        if not more and nxt <= total and len(records) < count:
            break  # the device says that was all (appended records arrive in the next run)
    return out, None


# -- records -> readings --------------------------------------------------------------------------


def to_reading(seq: int | None, record: LogRecord, tz: ZoneInfo) -> Reading | None:
    """A log record as a reading, or None when it carries no value (log status, failure, time change)."""
    datum = record.logDatum
    value = None
    for name in _NUMERIC:
        raw = getattr(datum, name, None)
        if raw is not None:
            value = float(raw)
            break
    if value is None:
        return None
    year, month, day, _dow = record.timestamp.date
    hour, minute, second, hundredth = record.timestamp.time
    if 255 in (year, month, day, hour, minute) or month > 12:
        return None  # an unspecified date or time: no instant to file it under
    local = datetime(year + 1900, month, day, hour, minute, second % 60, (hundredth % 100) * 10000, tzinfo=tz)
    flags = record.statusFlags  # a record without status flags is good
    return Reading(local, value, "good" if flags is None else quality_from_flags(flags), seq)


# -- the database side ----------------------------------------------------------------------------

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS history_stage (time timestamptz, point_id bigint,"
    " value double precision, quality text, sequence bigint) ON COMMIT DELETE ROWS"
)
_COPY = "COPY history_stage (time, point_id, value, quality, sequence) FROM STDIN"

# the provenance of exactly the rows the insert added (`ins` in bacpipes.staging's statement)
_MARK = """, mark AS (
    INSERT INTO imported_reading (site_id, point_id, time, device_id, log_instance, sequence)
    SELECT %(site)s, ins.point_id, ins.time, %(device)s, %(log)s, s.sequence
    FROM ins JOIN history_stage s USING (point_id, time)
    ON CONFLICT DO NOTHING
)"""

_STATE = """
INSERT INTO trend_log_import AS t (site_id, device_id, log_instance, object_name, logged, point_id,
    last_sequence, first_time, last_time, records_read, readings_added, last_run, last_run_read,
    last_run_added, last_error, last_error_at)
VALUES (%(site)s, %(device)s, %(log)s, %(name)s, %(logged)s, %(point)s, %(seq)s, %(first)s, %(last)s,
    %(read)s, %(added)s, now(), %(read)s, %(added)s, %(error)s::text,
    CASE WHEN %(error)s::text IS NULL THEN NULL ELSE now() END)
ON CONFLICT (site_id, device_id, log_instance) DO UPDATE SET
    object_name = coalesce(EXCLUDED.object_name, t.object_name), logged = coalesce(EXCLUDED.logged, t.logged),
    point_id = coalesce(EXCLUDED.point_id, t.point_id),
    last_sequence = greatest(t.last_sequence, EXCLUDED.last_sequence),
    first_time = least(t.first_time, EXCLUDED.first_time),
    last_time = greatest(t.last_time, EXCLUDED.last_time),
    records_read = t.records_read + EXCLUDED.records_read,
    readings_added = t.readings_added + EXCLUDED.readings_added,
    last_run = now(), last_run_read = EXCLUDED.last_run_read, last_run_added = EXCLUDED.last_run_added,
    last_error = EXCLUDED.last_error, last_error_at = coalesce(EXCLUDED.last_error_at, t.last_error_at)
"""


def load_devices(conn: psycopg.Connection, site_id: str, device: int | None) -> list[PollDevice]:
    rows = conn.execute(
        "SELECT device_id, address, coalesce(max_apdu, 480), coalesce(segmentation, 'no-segmentation')"
        " FROM device WHERE site_id = %s AND missing_since IS NULL AND (%s::int IS NULL OR device_id = %s)"
        " ORDER BY device_id",
        (site_id, device, device),
    ).fetchall()
    return [PollDevice(*r) for r in rows]


def store(
    conn: psycopg.Connection, site_id: str, device_id: int, log_instance: int, point_id: int,
    readings: list[Reading],
) -> int:
    """Insert one log's readings (duplicates ignored) and mark the ones added; returns how many."""
    if not readings:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        days = sorted({r.time.astimezone(ZoneInfo("UTC")).date() for r in readings})
        _ensure_partitions(conn, days)
        cur.execute(_STAGE)
        with cur.copy(_COPY) as copy:
            for r in readings:
                copy.write_row((r.time, point_id, r.value, r.quality, r.sequence))
        return move_staged(conn, cur, "history_stage", site_id, also=_MARK,
                           params={"device": device_id, "log": log_instance})


def _ensure_partitions(conn: psycopg.Connection, days: list[date]) -> None:
    """History is older than the partitions made ahead: give its days their own partitions rather than
    filling DEFAULT (which the retention run would otherwise have to empty)."""
    for day in days:
        try:
            with conn.transaction():
                create_partition(conn, day)
        except psycopg.errors.DuplicateTable:
            pass  # another writer created it meanwhile


def record_state(
    conn: psycopg.Connection, site_id: str, result: LogImport, name: str | None, logged: str | None,
    seq: int | None, first: datetime | None, last: datetime | None,
) -> None:
    with conn.transaction():
        conn.execute(_STATE, {
            "site": site_id, "device": result.device_id, "log": result.log_instance, "name": name,
            "logged": logged, "point": result.point_id, "seq": seq, "first": first, "last": last,
            "read": result.read, "added": result.added, "error": result.error,
        })


# -- one log, one device, the site ------------------------------------------------------------------


async def import_log(
    client: BacnetClient, settings: Settings, dev: PollDevice, log_instance: int,
    points: dict[tuple[int, str, int], int], resume: dict[tuple[int, int], int | None],
    since: datetime | None,
) -> LogImport:
    """Import one trend log; every failure becomes `error` on the result, never an exception."""
    site, tz = settings.site.id, settings.site.tz
    result = LogImport(dev.device_id, log_instance)
    oid = ObjectIdentifier((TREND_LOG, log_instance))
    name = logged = None
    seq = first = last = None
    try:
        name = str(await client.read(dev.address, oid, "object-name"))
        ref = await client.read(dev.address, oid, "log-device-object-property")
        target = ref.objectIdentifier
        on = int(ref.deviceIdentifier[1]) if ref.deviceIdentifier is not None else dev.device_id
        prop = str(ref.propertyIdentifier)
        logged = f"device,{on} {target[0]},{int(target[1])} {prop}"
        result.point_id = points.get((on, str(target[0]), int(target[1])))
        if prop not in ("present-value", "presentValue"):
            raise BacnetError(f"logs {prop}, not present-value: not a point's reading")
        if result.point_id is None:
            raise BacnetError(f"logs {logged}, which is not in the catalogue (run discovery first)")
        records, error = await read_log(client, dev, log_instance, resume.get((dev.device_id, log_instance)))
        readings = []
        for s, record in records:
            reading = to_reading(s, record, tz)
            if reading is None or (since is not None and reading.time < since):
                result.skipped += 1
            else:
                readings.append(reading)
        result.read = len(records)
        if records:
            seq = max(s for s, _ in records if s is not None)
        if readings:
            first, last = min(r.time for r in readings), max(r.time for r in readings)
        with connect(settings.database.dsn) as conn:
            result.added = store(conn, site, dev.device_id, log_instance, result.point_id, readings)
        result.error = error
    except (BacnetError, TimeoutError) as exc:
        result.error = str(exc) or type(exc).__name__
    except Exception as exc:  # an odd answer bacpypes3 could not decode: this log fails, not the rest
        result.error = f"unexpected answer: {describe_error(exc)}"
    if result.error:
        log.warning("device %s trend-log %s: %s", dev.device_id, log_instance, result.error)
    with connect(settings.database.dsn) as conn:
        record_state(conn, site, result, name, logged, seq, first, last)
    return result


async def import_device(
    client: BacnetClient, settings: Settings, dev: PollDevice,
    points: dict[tuple[int, str, int], int], resume: dict[tuple[int, int], int | None],
    since: datetime | None, known: list[int] | None = None,
) -> list[LogImport] | str:
    try:
        instances = known if known is not None else await trend_logs(client, dev)
    except (BacnetError, TimeoutError) as exc:
        return f"object list: {exc}"
    except Exception as exc:
        return f"object list: unexpected answer: {describe_error(exc)}"
    return [await import_log(client, settings, dev, i, points, resume, since) for i in instances]


async def import_history(
    client: BacnetClient, settings: Settings, device: int | None = None, since: datetime | None = None,
    known_logs: dict[int, list[int]] | None = None,
) -> HistoryReport:
    """Import the trend-log history of every present device (or one), resuming after the last run.

    `since` skips older records; an aware datetime, or naive in the site's timezone. `known_logs` (device
    -> trend-log instances, as discovery just read them) limits the import to those, without re-reading
    object lists.
    """
    site = settings.site.id
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=settings.site.tz)
    with connect(settings.database.dsn) as conn:
        devices = load_devices(conn, site, device)
        points = {
            (d, t, i): p for p, d, t, i in conn.execute(
                "SELECT point_id, device_id, object_type, object_instance FROM point WHERE site_id = %s",
                (site,),
            ).fetchall()
        }
        resume = {
            (d, i): s for d, i, s in conn.execute(
                "SELECT device_id, log_instance, last_sequence FROM trend_log_import WHERE site_id = %s",
                (site,),
            ).fetchall()
        }
    if known_logs is not None:
        devices = [d for d in devices if d.device_id in known_logs]
    report = HistoryReport()
    results = await gather_limited(
        (
            import_device(client, settings, d, points, resume, since, (known_logs or {}).get(d.device_id))
            for d in devices
        ),
        limit=8,
    )
    for dev, result in zip(devices, results, strict=True):
        if isinstance(result, str):
            report.device_errors[dev.device_id] = result
            log.warning("device %s: history import failed: %s", dev.device_id, result)
        else:
            report.logs.extend(result)
    return report


def history_window(text: str | None, tz: ZoneInfo) -> datetime | None:
    """--since: an ISO date/time (site time when no offset), or a span back from now like '2d', '12h'."""
    if not text:
        return None
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(tz) - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: not an ISO date/time nor a span like 2d or 12h") from None
    return when if when.tzinfo else when.replace(tzinfo=tz)
