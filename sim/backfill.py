"""`bacpipes sim backfill`: N days of the virtual building's history, written straight into PostgreSQL.

For anyone without a real building: the baseline a model or a notebook needs (e.g. 90 days at the
polling cadence), produced in minutes instead of months, and marked as simulated in `data_source`.

How it works, and why:

- **The catalog goes through discovery's own path.** The virtual controllers' objects are built exactly
  as the simulator serves them (bacpypes3 objects, no sockets), turned into `DiscoveredDevice`s with what
  discovery would have read over BACnet (names, descriptions, units, priority arrays, APDU limits), and
  recorded by `record_discovery`: names, topics and Haystack tags are those of a discovered site.
- **Values are what the devices would serve.** The physics is stepped in its fixed building time; at each
  sample every point takes the value its object would hold at that instant (32-bit REAL of the value
  rounded to 2 decimals, published as the poller does: its shortest decimal), binary points 0/1,
  multi-state points their state number. Reading the values from the bacpypes3 objects themselves costs
  ~1.4 ms per device per sample (their ``__setattr__``), 20x the physics, so `VirtualSite.sample` reads
  the physics directly; the tests check it equals the objects' present values as the poller reads them.
- **The building runs on the site's local clock.** Weather (sun elevation) and occupancy read the clock's
  wall time as local time, so the building's clock is the site's local time (its UTC offset at the start
  of the history, held for the whole run: a DST zone keeps standard/summer time throughout), and each
  reading's timestamp is that instant in UTC. For a UTC site, building time and timestamp are equal.
- **A sample sees the latest physics step.** The physics steps every 10 s of building time; a sample at
  time t holds the state of the last step at or before t (as a read of the live simulator holds its last
  tick). For intervals that are multiples of 10 s that step is at t exactly.
- **It starts a day early.** The physics starts from a fixed initial state (zone at 24.5 °C, PI loops
  empty); `WARMUP` of unrecorded building time lets it settle, as a real building would have.
- **Deterministic.** Samples sit on the epoch-aligned grid of the interval (the poller's clock-aligned
  slots) within [end - days, end); the physics starts `WARMUP` before the first sample. So the values are
  a function of seed, end, days, devices, interval and the site's time zone.
- **Written like the ingester writes.** One UTC day per transaction: binary COPY into a temporary staging
  table, then one statement that inserts into `sensor_readings` and, from the rows the insert returned,
  adds to `readings_hourly` (sum/count/min/max per point and UTC hour) and updates `point_state`. Every
  day's partition is created first (`create_partition`), so nothing lands in DEFAULT.
- **Re-runs are idempotent.** Rows already present are skipped (ON CONFLICT DO NOTHING) and, since the
  rollup only sees rows really inserted, never counted twice: re-running a range adds nothing, and an
  interrupted run (committed day by day) is completed by running it again. A later run over an
  overlapping range keeps the rows already stored (they came from another trajectory if `end` or `days`
  differ) and adds only the missing ones. The report says how many rows were skipped. `data_source`
  keeps the latest run's seed and description, and the span of every run's readings.
- **It refuses a real building's site.** Simulated history must never mix with real readings: a site
  whose `data_source` says not simulated, or that has any device other than the virtual controllers, is
  refused with a ValueError before anything is written.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from bacpipes.catalogue import (
    SKIP_TYPES,
    DiscoveredDevice,
    DiscoveredPoint,
    PeerInfo,
    is_writable,
    record_discovery,
)
from bacpipes.db import connect
from bacpipes.partitions import create_partition
from bacpipes.settings import Settings
from bacpipes.staging import move_staged
from sim.devices import VENDOR_NAME, SimDevice, plant_points, zone_points
from sim.physics import STEP_S, Building, Zone
from sim.server import device_addresses

ADDRESS_BASE = "127.0.0.10"  # where `bacpipes sim` serves the same controllers
PORT = 47808
WARMUP = timedelta(days=1)
MAX_SEED = 2**31 - 1  # data_source.seed is an integer column
MAX_DAYS = 3660

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds: binary timestamptz's zero
_FLOAT32_EXACT = 131072.0  # below 2**17 a float32 tells 2-decimal values apart (see as_published)

# Readers: (physics, zone) -> the object's value at the building's current time.
Reader = Callable[[Building, Zone], float]


# --- the virtual site ----------------------------------------------------------------------------


class VirtualSite:
    """The virtual building's controllers without a network: their catalog, and their values per sample."""

    def __init__(self, devices: int, seed: int, start: datetime, address_base: str = ADDRESS_BASE) -> None:
        self.building = Building(devices, seed=seed, start=start)
        addresses = device_addresses(address_base, devices)
        self.devices = [SimDevice(k, self.building, a, PORT, 0, _no_write) for k, a in enumerate(addresses)]
        with _event_loop():  # bacpypes3 objects schedule a task when constructed, even with no network
            for dev in self.devices:
                dev.build()  # objects only: no Application, so no socket
        # (device instance, object type, object instance) per column, and how to read it
        self.keys: list[tuple[int, str, int]] = []
        self._readers: list[tuple[Reader, Zone]] = []
        analog: list[bool] = []
        for dev in self.devices:
            for key, reader, is_analog in _readers(dev):
                self.keys.append(key)
                self._readers.append((reader, dev.zone))
                analog.append(is_analog)
        self._analog = np.array(analog)

    def discovered(self) -> list[DiscoveredDevice]:
        return [discovered_device(dev) for dev in self.devices]

    def sample(self) -> list[float]:
        """Every point's value now, rounded to 2 decimals as the device does (then `as_published`)."""
        b = self.building
        return [round(read(b, zone), 2) for read, zone in self._readers]

    def as_published(self, rows: np.ndarray) -> np.ndarray:
        """Samples (rows × points) as the poller publishes them: a BACnet REAL's shortest decimal."""
        return as_published(rows, self._analog)


@contextmanager
def _event_loop() -> Iterator[None]:
    """A loop for the calling thread if it has none (after `asyncio.run` the main thread has none)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
        loop.run_until_complete(asyncio.sleep(0))  # let those tasks finish rather than die pending
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _no_write() -> None:
    """The backfill writes nothing to the objects; SimDevice wants a callback anyway."""


def _readers(dev: SimDevice) -> list[tuple[tuple[int, str, int], Reader, bool]]:
    """One reader per object of the device, mirroring `SimDevice.refresh` (no commands are ever given,
    so the commandables hold their relinquish defaults and the valve follows its PI loop)."""
    measured = {("analog-input", m.instance): m.read for m in zone_points() + plant_points()}
    out: list[tuple[tuple[int, str, int], Reader, bool]] = []
    for obj in dev.objects[2:]:
        otype, inst = str(obj.objectIdentifier[0]), int(obj.objectIdentifier[1])
        if otype in SKIP_TYPES:  # trend logs: no present value to backfill
            continue
        reader: Reader
        if obj is dev.fan_status:
            reader = _fan_status
        elif obj is dev.valve:
            reader = _valve
        elif (otype, inst) in measured:
            reader = measured[(otype, inst)]
        elif otype == "analog-input":
            raise ValueError(f"{otype},{inst} of device {dev.instance} has no known source")
        else:
            reader = _constant(float(obj.presentValue))
        out.append(((dev.instance, otype, inst), reader, otype.startswith("analog")))
    return out


def _fan_status(b: Building, z: Zone) -> float:
    return 1.0 if z.fan_on else 0.0


def _valve(b: Building, z: Zone) -> float:
    return z.valve_auto_pct


def _constant(value: float) -> Reader:
    return lambda b, z: value


def as_published(rows: np.ndarray, analog: np.ndarray) -> np.ndarray:
    """`plain_value(Real(f32(v)))` for whole arrays of already rounded values.

    The poller publishes a REAL as its shortest decimal. Below 2**17 a float32's spacing is under 0.01,
    so distinct 2-decimal values stay distinct and that decimal is the rounded value itself; above (an
    energy meter after some weeks) the float32 is coarser and only the string round trip gives it.
    """
    out = rows.astype(np.float64, copy=True)
    big = (np.abs(out) >= _FLOAT32_EXACT) & analog
    if big.any():
        out[big] = [float(str(x)) for x in out[big].astype(np.float32)]
    return out


def discovered_device(dev: SimDevice) -> DiscoveredDevice:
    """What `edge.discovery.read_device` would find on this controller, read from its objects."""
    device = dev.objects[0]
    peer = PeerInfo(
        device_id=dev.instance,
        address=dev.address if dev.port == 47808 else f"{dev.address}:{dev.port}",
        max_apdu=int(device.maxApduLengthAccepted),
        segmentation=str(device.segmentationSupported),
        vendor_id=int(device.vendorIdentifier),
    )
    found = DiscoveredDevice(
        peer=peer,
        name=str(device.objectName),
        vendor_name=_text(device.vendorName),
        model_name=_text(device.modelName),
        location=_text(device.location),
    )
    for obj in dev.objects:
        otype = str(obj.objectIdentifier[0])
        if otype in SKIP_TYPES:
            continue
        commandable = getattr(obj, "priorityArray", None) is not None
        found.points.append(
            DiscoveredPoint(
                object_type=otype,
                object_instance=int(obj.objectIdentifier[1]),
                object_name=_text(obj.objectName),
                description=_text(getattr(obj, "description", None)),
                units=_text(getattr(obj, "units", None)),
                commandable=commandable,
                writable=is_writable(otype, commandable),
                state_text=[str(t) for t in obj.stateText] if getattr(obj, "stateText", None) else None,
                inactive_text=_text(getattr(obj, "inactiveText", None)),
                active_text=_text(getattr(obj, "activeText", None)),
                relinquish_default=_number(getattr(obj, "relinquishDefault", None)) if commandable else None,
            )
        )
    return found


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    """A relinquish default as discovery stores it (a binary object's inactive/active as 0/1)."""
    return None if value is None else float(value)


# --- time ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Sample k is at `first + k * interval` (UTC), k in [0, steps); all on the epoch-aligned grid."""

    first: datetime
    interval: timedelta
    steps: int
    start: datetime  # the range asked for: [start, end)
    end: datetime

    def at(self, k: int) -> datetime:
        return self.first + k * self.interval

    def days(self) -> list[tuple[date, int, int]]:
        """(UTC day, first k, k past the last) of each day holding samples, in order."""
        out = []
        k = 0
        while k < self.steps:
            day = self.at(k).date()
            midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
            stop = min(self.steps, _ceil_div(midnight - self.first, self.interval))
            out.append((day, k, stop))
            k = stop
        return out


def timeline(end: datetime, days: int, interval_s: float) -> Timeline:
    interval = timedelta(seconds=interval_s)
    start = end - timedelta(days=days)
    k0 = _ceil_div(start - _EPOCH, interval)
    k1 = _ceil_div(end - _EPOCH, interval)
    return Timeline(_EPOCH + k0 * interval, interval, k1 - k0, start, end)


def _ceil_div(a: timedelta, b: timedelta) -> int:
    return -(-a // b)


def default_end(interval_s: float, now: datetime | None = None) -> datetime:
    """Now (UTC), floored to the interval's epoch-aligned grid."""
    now = now or datetime.now(UTC)
    interval = timedelta(seconds=interval_s)
    return _EPOCH + ((now - _EPOCH) // interval) * interval


# --- the report ----------------------------------------------------------------------------------


@dataclass
class BackfillReport:
    site_id: str
    rows: int  # inserted now
    points: int
    devices: int
    first: datetime | None  # first and last sample of the range (UTC)
    last: datetime | None
    seconds: float  # wall time, all of it
    interval_s: float
    seed: int
    days: int
    skipped: int = 0  # already present (a re-run), so left as they were
    physics_seconds: float = 0.0  # of `seconds`: stepping the building and sampling it
    partitions_created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the operator should know (e.g. retention)

    @property
    def rows_per_s(self) -> float:
        return (self.rows + self.skipped) / self.seconds if self.seconds > 0 else 0.0

    @property
    def sim_days_per_s(self) -> float:
        return self.days / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        span = (
            f"{self.first:%Y-%m-%d %H:%M}..{self.last:%Y-%m-%d %H:%M} UTC" if self.first and self.last
            else "no samples"
        )
        skipped = f", {self.skipped:,} already present" if self.skipped else ""
        return (
            f"{self.site_id}: {self.rows:,} simulated readings{skipped} for {self.points} points on "
            f"{self.source()}, every {self.interval_s:g} s, {span}{self.seed_note()}, "
            f"in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s, {self.sim_days_per_s:.2f} "
            f"simulated days/s; {self.physics()})"
        )

    # what a building's own backfill says of itself in the summary
    def source(self) -> str:
        return f"{self.devices} virtual devices"

    def seed_note(self) -> str:
        return f" (seed {self.seed})"

    def physics(self) -> str:
        return f"physics {self.physics_seconds:.1f} s"


# --- database ------------------------------------------------------------------------------------

_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS backfill_stage ("
    " time timestamptz, point_id bigint, value double precision) ON COMMIT DELETE ROWS"
)
_COPY = "COPY backfill_stage (time, point_id, value) FROM STDIN (FORMAT BINARY)"

_MARK = """
INSERT INTO data_source AS d (site_id, simulated, description, seed, generated_at)
VALUES (%(site)s, true, %(description)s, %(seed)s, now())
ON CONFLICT (site_id) DO UPDATE SET
    simulated = true, description = EXCLUDED.description, seed = EXCLUDED.seed, generated_at = now()
"""
_SPAN = """
UPDATE data_source SET first_reading = least(first_reading, %(first)s),
                       last_reading = greatest(last_reading, %(last)s)
WHERE site_id = %(site)s
"""

# binary COPY: signature, flags, header extension length; per row a field count and (length, bytes)
# per field; a -1 field count ends the data
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_COPY_ROW = np.dtype([
    ("fields", ">i2"),
    ("time_len", ">i4"), ("time", ">i8"),
    ("point_len", ">i4"), ("point", ">i8"),
    ("value_len", ">i4"), ("value", ">f8"),
])  # fmt: skip


def copy_payload(times_us: np.ndarray, point_ids: np.ndarray, values: np.ndarray) -> bytes:
    """The rows in PostgreSQL's binary COPY format, built in numpy (per-row `write_row` is ~50x slower).

    times_us are Unix microseconds (UTC).
    """
    rows = np.empty(len(values), _COPY_ROW)
    rows["fields"] = 3
    rows["time_len"] = rows["point_len"] = rows["value_len"] = 8
    rows["time"] = times_us - _PG_EPOCH_US
    rows["point"] = point_ids
    rows["value"] = values
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def check_site(conn: psycopg.Connection, site_id: str) -> None:
    """Refuse a site holding a real building's data: simulated history must never mix with it."""
    row = conn.execute("SELECT simulated FROM data_source WHERE site_id = %s", (site_id,)).fetchone()
    if row is not None and not row[0]:
        raise ValueError(
            f"site {site_id!r} is marked as a real building (data_source.simulated = false); "
            "backfill simulated history into another site id or database"
        )
    foreign = conn.execute(
        "SELECT count(*) FROM device WHERE site_id = %s AND vendor_name IS DISTINCT FROM %s",
        (site_id, VENDOR_NAME),
    ).fetchone()[0]
    if foreign:
        raise ValueError(
            f"site {site_id!r} has {foreign} devices that are not virtual ({VENDOR_NAME!r}): it is a real "
            "building; backfill simulated history into another site id or database"
        )


def _point_ids(conn: psycopg.Connection, site_id: str, keys: list[tuple[int, str, int]]) -> np.ndarray:
    rows = conn.execute(
        "SELECT device_id, object_type, object_instance, point_id FROM point"
        " WHERE site_id = %s AND device_id = ANY(%s)",
        (site_id, sorted({k[0] for k in keys})),
    ).fetchall()
    ids = {(d, t, i): pid for d, t, i, pid in rows}
    return np.array([ids[k] for k in keys], dtype=np.int64)


def _write_day(conn: psycopg.Connection, site_id: str, payload: bytes, first: datetime,
               last: datetime) -> int:
    """One day in one transaction; returns the rows inserted (the others were present already)."""
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy(_COPY) as copy:
            copy.write(payload)
        # the ingester's statement: fresh days insert plainly, a re-run skips what is there
        inserted = move_staged(conn, cur, "backfill_stage", site_id, quality="'good'", stamp_poll=True)
        cur.execute(_SPAN, {"site": site_id, "first": first, "last": last})
    return inserted


# --- the backfill --------------------------------------------------------------------------------


def _days(
    site: VirtualSite, line: Timeline, local_first: datetime, point_ids: np.ndarray, report: BackfillReport
) -> Iterator[tuple[datetime, datetime, bytes, int]]:
    """Per UTC day: (first, last sample time, COPY payload, rows), stepping the building through it.

    Rows go point by point (each point's day in time order): PostgreSQL inserts them into the primary
    key's index ~30 % faster than time by time.
    """
    interval_us = line.interval // timedelta(microseconds=1)
    first_us = (line.first - _EPOCH) // timedelta(microseconds=1)
    b = site.building
    for _day, k0, k1 in line.days():
        p0 = time.perf_counter()
        samples = np.empty((k1 - k0, len(site.keys)))
        for i, k in enumerate(range(k0, k1)):
            b.advance_to(local_first + k * line.interval)
            samples[i] = site.sample()
        values = site.as_published(samples)
        report.physics_seconds += time.perf_counter() - p0
        times_us = first_us + np.arange(k0, k1, dtype=np.int64) * interval_us
        payload = copy_payload(
            np.tile(times_us, len(point_ids)), np.repeat(point_ids, k1 - k0), values.T.ravel()
        )
        yield line.at(k0), line.at(k1 - 1), payload, values.size


def _account(report: BackfillReport, written: Future[int], rows: int) -> None:
    inserted = written.result()
    report.rows += inserted
    report.skipped += rows - inserted


# Produces, given the point ids in `keys` order, per UTC day: (first, last sample time, COPY payload, rows).
DayProducer = Callable[[np.ndarray], Iterator[tuple[datetime, datetime, bytes, int]]]


def store(
    settings: Settings,
    report: BackfillReport,
    line: Timeline,
    description: str,
    seed: int | None,
    discovered: list[DiscoveredDevice],
    keys: list[tuple[int, str, int]],
    produce: DayProducer,
    guard: Callable[[psycopg.Connection], None] | None = None,
) -> None:
    """The database half of a backfill, shared by every simulated building (the RC model's above,
    EnergyPlus's in `sim.energyplus.backfill`): refuse a real building's site (and whatever `guard`
    refuses), mark the site simulated, record the catalog through discovery's path, create the days'
    partitions, then write `produce`'s days, one transaction each, while the next day is computed.
    Adds rows, skipped rows, partitions and notes to `report`.
    """
    site_id = settings.site.id
    dsn = settings.database.dsn
    with connect(dsn) as conn:
        with conn.transaction():
            check_site(conn, site_id)
            if guard is not None:
                guard(conn)
            conn.execute(_MARK, {"site": site_id, "description": description, "seed": seed})
        record_discovery(dsn, site_id, discovered, [d.peer.device_id for d in discovered])
        with conn.transaction():
            # the virtual controllers were there for the whole history, not just since now
            conn.execute(
                "UPDATE device SET first_seen = least(first_seen, %(at)s) WHERE site_id = %(site)s",
                {"site": site_id, "at": line.start},
            )
            conn.execute(
                "UPDATE point SET first_seen = least(first_seen, %(at)s) WHERE site_id = %(site)s",
                {"site": site_id, "at": line.start},
            )
            point_ids = _point_ids(conn, site_id, keys)
        for day, _, _ in line.days():
            made = create_partition(conn, day)
            if made:
                report.partitions_created.append(made[0])
        conn.commit()
        conn.execute(_STAGE)
        conn.commit()

        # The next day's physics runs while PostgreSQL stores this one (psycopg waits without the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="backfill-writer") as writer:
            pending: tuple[Future[int], int] | None = None
            for day_start, day_end, payload, count in produce(point_ids):
                if pending:
                    _account(report, *pending)
                pending = writer.submit(_write_day, conn, site_id, payload, day_start, day_end), count
            if pending:
                _account(report, *pending)

    retention = settings.database.retention_days
    if report.days > retention:
        report.notes.append(
            f"database.retention_days is {retention}: the next retention run drops the days older than "
            f"that; raise it (or backfill into central) to keep all {report.days} days"
        )


def _validate(days: int, seed: int, devices: int, interval_s: float) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}, got {days!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be at least 1, got {devices!r}")
    if not math.isfinite(interval_s) or interval_s < 1:
        raise ValueError(f"interval must be at least 1 s, got {interval_s!r}")


def backfill(
    settings: Settings,
    days: int,
    seed: int = 0,
    devices: int = 3,
    interval_s: float | None = None,
    end: datetime | None = None,
) -> BackfillReport:
    """Write `days` days of the virtual building's readings, ending at `end`, into the site's database.

    interval_s defaults to the polling default; end to now (UTC) floored to the interval. A naive `end`
    is the site's local time. Safe to re-run: rows already present are left alone and not re-counted.
    """
    t0 = time.perf_counter()
    interval_s = float(settings.polling.default_interval_s if interval_s is None else interval_s)
    _validate(days, seed, devices, interval_s)
    site_id, tz = settings.site.id, settings.site.tz
    if end is None:
        end = default_end(interval_s)
    elif end.tzinfo is None:
        end = end.replace(tzinfo=tz)
    line = timeline(end.astimezone(UTC), days, interval_s)

    # The building's clock: the site's local wall time (see the module docstring).
    offset = line.first.astimezone(tz).utcoffset() or timedelta(0)
    local_first = (line.first + offset).replace(tzinfo=None)
    # Building() takes one step on construction: start one step early so its clock lands on the grid.
    site = VirtualSite(devices, seed, local_first - WARMUP - timedelta(seconds=STEP_S))

    report = BackfillReport(
        site_id=site_id, rows=0, points=len(site.keys), devices=devices, first=None, last=None,
        seconds=0.0, interval_s=interval_s, seed=seed, days=days,
    )
    if line.steps:
        report.first, report.last = line.first, line.at(line.steps - 1)
    description = (
        f"bacpipes sim backfill: virtual building, {devices} devices, {len(site.keys)} points, "
        f"every {interval_s:g} s, {days} days to {line.end.isoformat()}, seed {seed}"
    )
    store(settings, report, line, description, seed, site.discovered(), site.keys,
          lambda point_ids: _days(site, line, local_first, point_ids, report))
    report.seconds = time.perf_counter() - t0
    return report
