"""Alarms from the building itself: zones out of their band and points outside their limits, judged
periodically by the edge agent; and what operators do with any alarm (acknowledge, shelve, put back).

Alarms are rows of `alerts` (raised and cleared through `bacpipes.alerts`, the one writer of that table)
with the point and the equipment they are about; the operators' actions are an append-only trail in
`alarm_actions` (sql/022_alarms.sql), from which the `alarm_state` view reads each alarm's state.

How a zone is found: a zone's temperature and its setpoints are paired by the controller's object names,
`<zone>-ZN-T`, `<zone>-ZN-CLG-SP`, `<zone>-ZN-HTG-SP` (the virtual buildings' and many vendors' convention,
as `bacpipes.zones` pairs them for the models: the EnergyPlus building's `AHU1_ZN3-ZN-T`); a point named
otherwise is paired by its Haystack tags (an operator's `user_tags` win), within one device's equipment
(`equipType`/`equipId`), when that equipment has exactly one zone-air temperature sensor and one cooling
or heating zone setpoint, so an ambiguous guess never raises an alarm.

The rules, and why:
- a zone is out of band when its temperature is above its cooling setpoint, or below its heating setpoint,
  by more than `deadband_k` (0.3 K: a zone 0.5 K above its cooling setpoint is out; a thermostat's own
  swing is not); it is back once within half of that (hysteresis, so a zone riding the edge does not
  chatter);
- a point is outside its limits when its value is below or above them: the operator's limits (Devices &
  points), else the device's own present-value range read at discovery;
- either alarms only once it has held for `delay_s` by the readings' own times (two readings at least, so
  a single sample never alarms, and a simulated building's minutes count as its minutes); it clears at the
  first reading back in band. With no new reading nothing changes: a stale value neither raises nor clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from bacpipes.alerts import Alert, deliver, raise_alert, resolve_alert
from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.settings import AlarmSettings, Settings

log = logging.getLogger(__name__)

ZONE_BAND = "alarms:zone_band"
LIMITS = "alarms:limits"
SOURCES = (ZONE_BAND, LIMITS)
ZONE_SUFFIXES = {"ZN-T": "temp", "ZN-CLG-SP": "cooling", "ZN-HTG-SP": "heating"}
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
MAX_SHELVE = timedelta(days=7)  # shelving hides an alarm; it must come back by itself
_SYMBOLS = {"degrees-celsius": "°C", "degrees-fahrenheit": "°F", "degrees-kelvin": "K"}


AlarmRules = AlarmSettings  # the rules are the site's [alarms] settings


@dataclass(frozen=True)
class ZoneBand:
    """A zone's temperature point and its setpoints (either may be missing, not both)."""

    zone: str
    equipment: str
    temp: int
    cooling: int | None = None
    heating: int | None = None


@dataclass(frozen=True)
class _Point:
    point_id: int
    device_id: int
    object_name: str
    equipment: str
    tags: dict[str, Any]


def zone_bands(conn: psycopg.Connection, site_id: str) -> list[ZoneBand]:
    """Every zone of the site whose temperature can be judged against a setpoint (module docstring)."""
    rows = conn.execute(
        "SELECT point_id, device_id, coalesce(object_name, ''), split_part(coalesce(topic, ''), '/', 2),"
        " auto_tags || user_tags FROM point WHERE site_id = %s AND missing_since IS NULL AND publish"
        " ORDER BY point_id", (site_id,)).fetchall()
    points = [_Point(*row) for row in rows]
    by_name: dict[str, dict[str, _Point]] = {}
    for p in points:
        prefix, _, suffix = p.object_name.partition("-")
        if prefix and suffix in ZONE_SUFFIXES:
            by_name.setdefault(prefix, {})[ZONE_SUFFIXES[suffix]] = p
    bands = [_band(zone, roles) for zone, roles in sorted(by_name.items())]
    named = {p.point_id for roles in by_name.values() for p in roles.values()}
    by_tags: dict[tuple[int, str], dict[str, list[_Point]]] = {}
    for p in points:
        role = _tag_role(p.tags)
        if role and p.point_id not in named:
            by_tags.setdefault((p.device_id, p.equipment), {}).setdefault(role, []).append(p)
    for (_, equipment), roles in sorted(by_tags.items()):
        if all(len(found) == 1 for found in roles.values()):
            bands.append(_band(equipment, {role: found[0] for role, found in roles.items()}))
    return [b for b in bands if b is not None]


def _band(zone: str, roles: dict[str, _Point]) -> ZoneBand | None:
    temp = roles.get("temp")
    if temp is None or ("cooling" not in roles and "heating" not in roles):
        return None
    cooling, heating = roles.get("cooling"), roles.get("heating")
    return ZoneBand(zone, temp.equipment, temp.point_id, cooling.point_id if cooling else None,
                    heating.point_id if heating else None)


def _tag_role(tags: dict[str, Any]) -> str | None:
    if tags.get("subject") != "zone-air":
        return None
    if tags.get("function") == "sensor" and tags.get("quantity") == "temp":
        return "temp"
    if tags.get("function") == "sp":
        return {"cooling": "cooling", "heating": "heating"}.get(str(tags.get("qualifier")))
    return None


# --- judging ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One condition as the latest reading shows it: out (raise after the delay), back (clear), or
    neither (inside the hysteresis: leave an open alarm open, forget a pending one)."""

    source: str
    point_id: int
    equipment: str
    time: datetime
    out: bool
    back: bool
    message: str


def zone_observation(band: ZoneBand, temp: float, time: datetime, units: str | None,
                     cooling: float | None, heating: float | None, deadband_k: float) -> Observation:
    """A zone's latest temperature against its setpoints' latest values."""
    deadband = deadband_k * (1.8 if units == "degrees-fahrenheit" else 1.0)
    above = temp - cooling if cooling is not None else float("-inf")
    below = heating - temp if heating is not None else float("-inf")
    deviation = max(above, below)
    sym = _SYMBOLS.get(units or "", units or "")
    delta = "°F" if units == "degrees-fahrenheit" else "K"
    if above >= below:
        message = (f"{band.zone} at {temp:.1f} {sym}, {above:.1f} {delta} above its cooling setpoint "
                   f"{cooling:.1f} {sym}")
    else:
        message = (f"{band.zone} at {temp:.1f} {sym}, {below:.1f} {delta} below its heating setpoint "
                   f"{heating:.1f} {sym}")
    return Observation(ZONE_BAND, band.temp, band.equipment, time, deviation > deadband,
                       deviation <= deadband / 2, message)


def limit_observation(point_id: int, name: str, equipment: str, value: float, time: datetime,
                      units: str | None, low: float | None, high: float | None) -> Observation:
    sym = _SYMBOLS.get(units or "", units or "")
    if low is not None and value < low:
        message = f"{name} reads {value:g} {sym}, below its limit {low:g} {sym}".replace("  ", " ")
    elif high is not None and value > high:
        message = f"{name} reads {value:g} {sym}, above its limit {high:g} {sym}".replace("  ", " ")
    else:
        message = ""
    return Observation(LIMITS, point_id, equipment, time, bool(message), not message, message)


def observe(conn: psycopg.Connection, site_id: str, rules: AlarmRules) -> list[Observation]:
    """Every zone and every point with limits, as their latest readings (point_state) show them."""
    rows = conn.execute(
        "SELECT s.point_id, s.value, s.time, p.units, coalesce(p.object_name, p.dis, p.point_id::text),"
        " split_part(coalesce(p.topic, ''), '/', 2) FROM point_state s JOIN point p USING (site_id, point_id)"
        " WHERE s.site_id = %s AND s.value IS NOT NULL AND s.time IS NOT NULL", (site_id,)).fetchall()
    state = {pid: rest for pid, *rest in rows}
    out: list[Observation] = []
    for band in zone_bands(conn, site_id):
        if band.temp not in state:
            continue
        temp, time, units, _, _ = state[band.temp]
        cooling = state[band.cooling][0] if band.cooling in state else None
        heating = state[band.heating][0] if band.heating in state else None
        if cooling is None and heating is None:
            continue
        out.append(zone_observation(band, temp, time, units, cooling, heating, rules.deadband_k))
    limited = conn.execute(
        "SELECT point_id, coalesce(min_value, device_min_value), coalesce(max_value, device_max_value)"
        " FROM point WHERE site_id = %s AND missing_since IS NULL AND publish"
        " AND coalesce(min_value, device_min_value, max_value, device_max_value) IS NOT NULL",
        (site_id,)).fetchall()
    for pid, low, high in limited:
        if pid in state:
            value, time, units, name, equipment = state[pid]
            out.append(limit_observation(pid, name, equipment, value, time, units, low, high))
    return out


@dataclass
class Changes:
    raised: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


class BandWatch:
    """Raises and clears the out-of-band alarms of one site; remembers since when each condition has
    held (a restart only delays an alarm by `delay_s`: the open alarms themselves are in the database)."""

    def __init__(self, site_id: str, rules: AlarmRules | None = None) -> None:
        self.site_id = site_id
        self.rules = rules or AlarmRules()
        self.pending: dict[tuple[str, int], datetime] = {}

    def check(self, conn: psycopg.Connection) -> Changes:
        changes = Changes()
        with conn.transaction():
            observations = {(o.source, o.point_id): o for o in observe(conn, self.site_id, self.rules)}
            opened = {(source, pid): alert_id for alert_id, source, pid in conn.execute(
                "SELECT id, source, point_id FROM alerts WHERE site_id = %s AND resolved_at IS NULL"
                " AND source = ANY(%s) AND point_id IS NOT NULL", (self.site_id, list(SOURCES))).fetchall()}
            for key, seen in observations.items():
                self._judge(conn, key, seen, opened.get(key), changes)
            for key, alert_id in opened.items():  # the point is gone, or no longer has a band or limits
                if key not in observations and (gone := resolve_alert(conn, alert_id)):
                    changes.resolved.append(gone)
        return changes

    def _judge(self, conn: psycopg.Connection, key: tuple[str, int], seen: Observation, open_id: int | None,
               changes: Changes) -> None:
        if seen.out:
            since = self.pending.setdefault(key, seen.time)
            if open_id is None and seen.time - since >= timedelta(seconds=self.rules.delay_s):
                minutes = (seen.time - since).total_seconds() / 60
                message = f"{seen.message} for {minutes:.0f} min"
                alert = raise_alert(conn, self.site_id, seen.source, self.rules.severity, message,
                                    point_id=seen.point_id, equipment=seen.equipment or None)
                changes.raised.append(alert)
            return
        self.pending.pop(key, None)
        if seen.back and open_id is not None and (gone := resolve_alert(conn, open_id)):
            changes.resolved.append(gone)


async def watch(settings: Settings, stop: asyncio.Event, rules: AlarmRules | None = None) -> None:
    """The edge agent's periodic evaluation, until `stop`; a failing round is logged and tried again."""
    band = BandWatch(settings.site.id, rules or settings.alarms)
    while not stop.is_set():
        try:
            changes = await asyncio.to_thread(_check_once, settings.database.dsn, band)
            for alert in changes.raised:
                log.warning("alarm: %s", alert.text())
            # every channel set in [alerts]; resolves go to PagerDuty, which closes the incident
            await asyncio.to_thread(deliver, changes.raised, settings.alerts, resolved=changes.resolved)
        except Exception:  # the database away, or not migrated yet: polling must go on
            log.exception("out-of-band alarm round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=band.rules.interval_s)


def _check_once(dsn: str, band: BandWatch) -> Changes:
    with connect(dsn, autocommit=True) as conn:
        return band.check(conn)


# --- what operators do --------------------------------------------------------------------------------


def acknowledge(conn: psycopg.Connection, alert_id: int, by: str, comment: str) -> None:
    """An operator has seen the alarm and says what is being done; once per alarm."""
    _require(conn, alert_id, comment)
    try:
        with conn.transaction():
            conn.execute("INSERT INTO alarm_actions (alert_id, action, by_user, comment)"
                         " VALUES (%s, 'acknowledge', %s, %s)", (alert_id, by, comment.strip()))
    except psycopg.errors.UniqueViolation:
        who = conn.execute("SELECT by_user, at FROM alarm_actions WHERE alert_id = %s"
                           " AND action = 'acknowledge'", (alert_id,)).fetchone()
        first = who[0] if who else "someone"
        raise UserError(f"Alarm {alert_id} was already acknowledged by {first}.") from None


def shelve(conn: psycopg.Connection, alert_id: int, by: str, comment: str, duration: timedelta) -> datetime:
    """Hide an active alarm from the active list for `duration` (at most MAX_SHELVE): it comes back by
    itself then, or earlier with `unshelve`. Returns when it comes back."""
    if not timedelta(0) < duration <= MAX_SHELVE:
        raise UserError(f"Shelve for more than 0 and at most {MAX_SHELVE.days} days, not {duration}.")
    resolved = _require(conn, alert_id, comment)
    if resolved:
        raise UserError(f"Alarm {alert_id} has cleared already: there is nothing to shelve.")
    row = conn.execute("INSERT INTO alarm_actions (alert_id, action, by_user, comment, at, until)"
                       " SELECT %s, 'shelve', %s, %s, t, t + %s FROM clock_timestamp() AS t RETURNING until",
                       (alert_id, by, comment.strip(), duration)).fetchone()
    return row[0]  # type: ignore[index]


def unshelve(conn: psycopg.Connection, alert_id: int, by: str, comment: str) -> None:
    """Put a shelved alarm back on the active list before its time is over."""
    _require(conn, alert_id, comment)
    shelved = conn.execute("SELECT shelved_until > clock_timestamp() FROM alarm_state WHERE id = %s",
                           (alert_id,)).fetchone()
    if not (shelved and shelved[0]):
        raise UserError(f"Alarm {alert_id} is not shelved.")
    conn.execute("INSERT INTO alarm_actions (alert_id, action, by_user, comment)"
                 " VALUES (%s, 'unshelve', %s, %s)", (alert_id, by, comment.strip()))


def _require(conn: psycopg.Connection, alert_id: int, comment: str) -> bool:
    """The alarm exists and the comment says something; whether the alarm has cleared."""
    if not comment or not comment.strip():
        raise UserError("Say why in the comment: it is kept with your name in the alarm's history.")
    row = conn.execute("SELECT resolved_at IS NOT NULL FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    if row is None:
        raise UserError(f"No alarm {alert_id}.")
    return bool(row[0])
