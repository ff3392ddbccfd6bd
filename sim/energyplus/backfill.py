"""`bacpipes sim backfill --building energyplus:<prototype> --weather <epw>`: an EnergyPlus reference
building's history, written straight into the site's PostgreSQL (issue 16, item 3).

The RC model's backfill (`sim.backfill`) is the template; this module differs only where EnergyPlus does:

- **The catalog is the served building's.** Devices and points come from `describe()`, the same list the
  BACnet server serves, and become `DiscoveredDevice`s holding what discovery reads over BACnet (object
  name, description, units, priority array -> commandable/writable, min/max present value, COV
  increment; device name, vendor, model, location, APDU, segmentation): `discovered_devices` is that
  mapping, and `record_discovery` stores it, so names, topics and Haystack tags are a discovered site's.
  The controllers' identity (vendor ``sim.devices.VENDOR_NAME``, model ``VB-EP-<family>``, location
  ``<prototype>, weather <epw>``, 1476-byte APDUs with segmentation, addresses from 127.0.0.10) and
  their rounding are those `sim.energyplus.devices` serves, read from it.
- **Values are what the controllers would serve.** A point's present value is its `Sample` key (a
  setpoint: the value in effect, which with no command is the thermostat's schedule), rounded as the
  controller does (2 decimals; a kWh register 1), then published as the poller does (a BACnet REAL's
  shortest decimal, `as_published`).
- **EnergyPlus's clock is local standard time** (daylight saving time shifts the prototypes' schedules,
  never the clock). The building is taken to stand in the site's time zone: a sample at UTC instant t
  reads the building at t + the zone's *standard* offset at t, so in July in Tampa (EDT) the 08:00
  occupancy shows at 08:00 local on the site's clock and at 12:00 UTC. The weather file's own zone
  should match (its sun is placed by it); when it does not, the report says so.
- **A sample sees the latest EnergyPlus step.** The building runs from the local standard day before
  the first sample (EnergyPlus sizes the building and repeats that day until it converges: its own
  warmup), and the sample at t holds the zone timestep that ended at or before t; values are the step's
  means (powers) or end states (temperatures). With the default interval (one zone timestep), every
  sample is one step. A step is read only when a sample needs it (`EnergyPlusBuilding.run`'s
  ``keep_every``), so a coarse interval costs less than a fine one.
- **Deterministic.** Same model, weather, steps per hour, interval, end, days and site time zone: the
  same values, bit for bit (the engine test checks EnergyPlus is).
- **Written like the RC backfill** (`sim.backfill.store`): one UTC day per transaction, binary COPY into
  staging, then the ingester's one statement (`sensor_readings`, `readings_hourly`, `point_state`);
  partitions made first; re-runs add only what is missing; real buildings' sites are refused, and so
  is a site holding another virtual building's points (the RC model's share device ids with ours).
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg

from bacpipes.catalogue import DiscoveredDevice, DiscoveredPoint, PeerInfo, is_writable
from bacpipes.settings import Settings
from sim.backfill import (
    _EPOCH,
    MAX_DAYS,
    BackfillReport,
    DayProducer,
    Timeline,
    as_published,
    copy_payload,
    default_end,
    store,
    timeline,
)
from sim.devices import VENDOR_ID, VENDOR_NAME
from sim.energyplus.devices import MAX_APDU, SEGMENTATION, digits, location, model_name
from sim.energyplus.engine import DEFAULT_MODEL, DEFAULT_WEATHER, PREFIX, EnergyPlusBuilding, Sample
from sim.energyplus.idf import VALID_TIMESTEPS
from sim.energyplus.points import DeviceSpec, describe
from sim.server import device_addresses

DEFAULT_TIMESTEPS_PER_HOUR = 12  # 5-minute steps: 7 days in ~5 s of EnergyPlus, 30 days in ~15 s
MIN_TIMESTEPS_PER_HOUR = 4  # the coarsest a prototype is meant to run at (their own files say 4 or 6)
ADDRESS_BASE = "127.0.0.10"
PORT = 47808


# --- the catalog ---------------------------------------------------------------------------------


def weather_zone_hours(weather: Path) -> float | None:
    """The weather file's time zone (hours from UTC, standard time), LOCATION's 9th field."""
    try:
        with open(weather, encoding="latin-1") as f:
            head = f.readline().strip().split(",")
        return float(head[8])
    except (OSError, IndexError, ValueError):
        return None


def discovered_devices(
    specs: list[DeviceSpec], place: str | None, address_base: str = ADDRESS_BASE, port: int = PORT,
) -> list[DiscoveredDevice]:
    """What `edge.discovery.read_device` finds on the served building: one per `describe()` device."""
    addresses = device_addresses(address_base, len(specs))
    out = []
    for spec, address in zip(specs, addresses, strict=True):
        peer = PeerInfo(
            device_id=spec.instance,
            address=address if port == 47808 else f"{address}:{port}",
            max_apdu=MAX_APDU,
            segmentation=SEGMENTATION,
            vendor_id=VENDOR_ID,
        )
        found = DiscoveredDevice(peer=peer, name=spec.name, vendor_name=VENDOR_NAME,
                                 model_name=model_name(spec),
                                 location=place)
        for p in spec.points:
            found.points.append(DiscoveredPoint(
                object_type=p.object_type,
                object_instance=p.instance,
                object_name=p.name,
                description=p.description,
                units=p.units,
                commandable=p.commandable,
                writable=is_writable(p.object_type, p.commandable),
                device_min_value=p.min_value,
                device_max_value=p.max_value,
                cov_increment=p.cov_increment,
            ))
        out.append(found)
    return out


def point_keys(specs: list[DeviceSpec]) -> tuple[list[tuple[int, str, int]], list[str]]:
    """(device, object type, instance) of every point, and the `Sample` key its present value reads."""
    keys = [(d.instance, p.object_type, p.instance) for d in specs for p in d.points]
    return keys, [p.key for d in specs for p in d.points]


def point_digits(specs: list[DeviceSpec]) -> list[int]:
    """The decimals each point's controller rounds its value to."""
    return [digits(p.units) for d in specs for p in d.points]


# --- time ----------------------------------------------------------------------------------------


def standard_time(t: datetime, settings: Settings) -> datetime:
    """The building's clock at UTC instant t: the site's local *standard* time, naive."""
    local = t.astimezone(settings.site.tz)
    offset = (local.utcoffset() or timedelta(0)) - (local.dst() or timedelta(0))
    return (t.astimezone(UTC) + offset).replace(tzinfo=None)


def resolve_timesteps(interval_s: float | None, timesteps_per_hour: int | None) -> tuple[int, float]:
    """(steps per hour, seconds between readings), each defaulting from the other (module docstring)."""
    if timesteps_per_hour is None:
        if interval_s is None:
            timesteps_per_hour = DEFAULT_TIMESTEPS_PER_HOUR
        else:  # the coarsest step (not under MIN) that the interval is a whole number of
            fits = [n for n in VALID_TIMESTEPS if n >= MIN_TIMESTEPS_PER_HOUR
                    and math.isclose((interval_s * n / 3600) % 1, 0, abs_tol=1e-9)]
            timesteps_per_hour = fits[0] if fits else VALID_TIMESTEPS[-1]
    if isinstance(timesteps_per_hour, bool) or timesteps_per_hour not in VALID_TIMESTEPS:
        raise ValueError(f"timesteps_per_hour must be one of {VALID_TIMESTEPS}, got {timesteps_per_hour!r}")
    if interval_s is None:
        interval_s = 3600 / timesteps_per_hour
    interval_s = float(interval_s)
    if not math.isfinite(interval_s) or interval_s < 1:
        raise ValueError(f"interval must be at least 1 s, got {interval_s!r}")
    return timesteps_per_hour, interval_s


def building_name(building: str | Path) -> str | Path:
    """``energyplus:<prototype>`` (the CLI's spelling) or a prototype name/key or an .idf path."""
    if isinstance(building, str) and building.startswith(PREFIX):
        building = building[len(PREFIX):]
    if not str(building):
        raise ValueError("name an EnergyPlus prototype, e.g. "
                         "energyplus:ASHRAE901_OfficeMedium_STD2019_Denver")
    return building


# --- the report ----------------------------------------------------------------------------------


@dataclass
class EnergyPlusBackfillReport(BackfillReport):
    model: str = ""
    weather: str = ""
    timesteps_per_hour: int = 0
    start_seconds: float = 0.0  # of physics_seconds: EnergyPlus's sizing and warmup

    def source(self) -> str:
        return (f"{self.devices} EnergyPlus controllers ({self.model}, weather {self.weather}, "
                f"{self.timesteps_per_hour} steps/h)")

    def seed_note(self) -> str:
        return ""  # deterministic: no seed

    def physics(self) -> str:
        return f"EnergyPlus {self.physics_seconds:.1f} s of which start {self.start_seconds:.1f} s"


# --- the run -------------------------------------------------------------------------------------


def _take(b: EnergyPlusBuilding, at: int, wanted: list[int]) -> tuple[list[Sample], int]:
    """The samples of steps `wanted` (non-decreasing, none before `at`, the step `b.sample` is of),
    in as few engine orders as evenly spaced runs of them allow. Returns them and the step now at."""
    out: list[Sample] = []
    i = 0
    while i < len(wanted):
        gap = wanted[i] - at
        if gap == 0:
            assert b.sample is not None
            out.append(b.sample)
            i += 1
            continue
        j = i
        while j + 1 < len(wanted) and wanted[j + 1] - wanted[j] == gap:
            j += 1
        n = j - i + 1
        got = b.run(gap * n, keep_every=gap)
        if len(got) != n:
            raise RuntimeError(f"EnergyPlus ended its run period early, at {b.time}")
        out += got
        at += gap * n
        i = j + 1
    return out, at


def _producer(
    b: EnergyPlusBuilding, line: Timeline, local: list[datetime], run_start: datetime, keys: list[str],
    digits: list[int], report: EnergyPlusBackfillReport,
) -> DayProducer:
    """`store`'s producer: per UTC day, (first, last sample time, COPY payload, rows)."""
    step = timedelta(seconds=b.step_s)
    wanted = [(t - run_start) // step for t in local]  # the step that ended at or before each sample
    read = operator.itemgetter(*keys)
    analog = np.ones(len(keys), dtype=bool)  # every point is an analog input or value
    interval_us = line.interval // timedelta(microseconds=1)
    first_us = (line.first - _EPOCH) // timedelta(microseconds=1)

    def days(point_ids: np.ndarray) -> Iterator[tuple[datetime, datetime, bytes, int]]:
        at = 1  # start() published the first step
        for _day, k0, k1 in line.days():
            p0 = time.perf_counter()
            samples, at = _take(b, at, wanted[k0:k1])
            for s, k in zip(samples, range(k0, k1), strict=True):
                if s.time != run_start + wanted[k] * step:  # the engine's clock is ours
                    raise RuntimeError(f"EnergyPlus is at {s.time}, expected {run_start + wanted[k] * step}")
            rows = np.array([[round(v, d) for v, d in zip(read(s.values), digits, strict=True)]
                             for s in samples], dtype=np.float64)
            values = as_published(rows.reshape(len(samples), len(keys)), analog)
            report.physics_seconds += time.perf_counter() - p0
            times_us = first_us + np.arange(k0, k1, dtype=np.int64) * interval_us
            payload = copy_payload(
                np.tile(times_us, len(point_ids)), np.repeat(point_ids, k1 - k0), values.T.ravel()
            )
            yield line.at(k0), line.at(k1 - 1), payload, values.size

    return days


def _not_another_building(
    site_id: str, keys: list[tuple[int, str, int]], names: list[str]
) -> Callable[[psycopg.Connection], None]:
    """A guard for `store`: the site holds no live point of another virtual building (the RC model's
    controllers have the same device ids, other objects): its history and ours must not mix."""
    ours = {(*k, n) for k, n in zip(keys, names, strict=True)}

    def guard(conn: psycopg.Connection) -> None:
        rows = conn.execute(
            "SELECT device_id, object_type, object_instance, object_name FROM point"
            " WHERE site_id = %s AND missing_since IS NULL",
            (site_id,),
        ).fetchall()
        other = [r for r in rows if tuple(r) not in ours]
        if other:
            d, t, i, n = other[0]
            raise ValueError(
                f"site {site_id!r} holds {len(other)} points of another building (e.g. {n!r}, "
                f"{t},{i} on device {d}): backfill this building into another site id or database"
            )

    return guard


def backfill(
    settings: Settings,
    days: int,
    building: str | Path = DEFAULT_MODEL,
    weather: str | Path = DEFAULT_WEATHER,
    timesteps_per_hour: int | None = None,
    interval_s: float | None = None,
    end: datetime | None = None,
) -> EnergyPlusBackfillReport:
    """Write `days` days of an EnergyPlus prototype's readings, ending at `end`, into the site's database.

    building: ``energyplus:<prototype>``, a prototype's name or dataset key (``office_medium``), or an
    .idf path; weather: an .epw path or a shipped file's name part (``tampa``). timesteps_per_hour
    defaults to 12, or when only interval_s is given, to the coarsest valid one (at least 4) whose step
    divides it; interval_s defaults to one step; end to now (UTC) floored to the interval. A naive `end`
    is the site's local time. Safe to re-run: rows already present are left alone and not re-counted.
    """
    t0 = time.perf_counter()
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}, got {days!r}")
    tph, interval_s = resolve_timesteps(interval_s, timesteps_per_hour)
    site_id, tz = settings.site.id, settings.site.tz
    if end is None:
        end = default_end(interval_s)
    elif end.tzinfo is None:
        end = end.replace(tzinfo=tz)
    line = timeline(end.astimezone(UTC), days, interval_s)
    if not line.steps:
        raise ValueError(f"no {interval_s:g} s slot falls in {days} days to {end.isoformat()}")
    local = [standard_time(line.at(k), settings) for k in range(line.steps)]
    step = timedelta(seconds=3600 / tph)
    start_day: date = (local[0] - step).date()  # the first sample's step ends after this day's midnight
    run_start = datetime.combine(start_day, datetime.min.time())
    run_days = (local[-1].date() - start_day).days + 1

    p0 = time.perf_counter()
    b = EnergyPlusBuilding(building_name(building), weather, start_day, days=run_days, timesteps_per_hour=tph)
    try:
        b.start()
        start_s = time.perf_counter() - p0
        specs = describe(b)
        keys, sample_keys = point_keys(specs)
        names = [p.name for d in specs for p in d.points]
        report = EnergyPlusBackfillReport(
            site_id=site_id, rows=0, points=len(keys), devices=len(specs), first=line.first,
            last=line.at(line.steps - 1), seconds=0.0, interval_s=interval_s, seed=0, days=days,
            physics_seconds=start_s, model=b.model_path.stem, weather=b.weather_path.name,
            timesteps_per_hour=tph, start_seconds=start_s,
        )
        zone = weather_zone_hours(b.weather_path)
        std = (local[0] - line.first.replace(tzinfo=None)).total_seconds() / 3600
        if zone is not None and not math.isclose(zone, std):
            report.notes.append(
                f"the weather file {b.weather_path.name} is at UTC{zone:+g}, the site's standard time at "
                f"UTC{std:+g}: the building keeps the site's clock, so its sun is {abs(zone - std):g} h off"
            )
        if interval_s < b.step_s:
            report.notes.append(f"readings every {interval_s:g} s repeat: the building steps every "
                                f"{b.step_s:g} s (raise timesteps_per_hour)")
        description = (
            f"bacpipes sim backfill: EnergyPlus {b.model_path.stem}, weather {b.weather_path.name}, "
            f"{tph} steps per hour, {len(specs)} devices, {len(keys)} points, every {interval_s:g} s, "
            f"{days} days to {line.end.isoformat()}"
        )
        store(settings, report, line, description, None,
              discovered_devices(specs, location(b)), keys,
              _producer(b, line, local, run_start, sample_keys, point_digits(specs), report),
              guard=_not_another_building(site_id, keys, names))
    finally:
        b.close()
    report.seconds = time.perf_counter() - t0
    return report
