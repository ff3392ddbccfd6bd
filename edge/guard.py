"""The edge guard: a bad active model is stood down in minutes, on the site, without waiting for central.

While the site's newest deployment of the model is active, every `guard.interval_s` the guard looks at the
setpoints the model holds (its latest command to the point, at the ML priority, is a write) and at their
zones since the model first wrote to each:

- comfort_band: the zone temperature outside ml.comfort_low_c..comfort_high_c by more than
  `comfort_tolerance_k` for longer than `comfort_grace_s`;
- comfort_ramp: the zone temperature changing by more than `ramp_k` within `ramp_window_s` (ASHRAE 55's
  limit on drifts and ramps, 1.1 K in 15 minutes): a model that yanks a zone around shows here minutes
  before the zone leaves the band;
- humidity: the zone's RH (`<prefix>-ZN-RH`, where the site has one) above `humidity_max_pct` for longer
  than `humidity_grace_s`;
- chatter: the model's executed setpoint commands to a zone changing direction more than
  `chatter_max_reversals` times within `window_s`;
- short_cycling: the cooling of the zone's air handler switching on more than `cycling_max_starts` times
  within `window_s`. The signal is the first point of the setpoint's own controller named `…-CMP-S` or
  `…-CLG-S` (a status), `…-CLG-ELEC-KW` (compressor power: the EnergyPlus building's) or `…-CLG-VLV`
  (valve: the RC building's); "on" is above `cycling_on_fraction` of the signal's peak in the window. A
  signal that is a time-step average (EnergyPlus reports a part-load ratio, not the compressor's own cycles)
  can only show cycling slower than its step.

Comfort and humidity count in occupied hours only (`occupied_only`: the zone's occupancy reading > 0; a
zone with none is always occupied), and only readings since the model took the zone: discomfort the
building had before is not the model's.

On a breach it records the trip (`model_guard_trips`, one per deployment, replicated to central, whose
trigger rolls the deployment back: sql/020_model_guard.sql), releases the ML priority of every setpoint the
model holds through `write_commands` (the one audited write path), and raises an alert in the site's
`alerts`. Inference stands down for a tripped deployment (`stood_down`, checked in `EdgeInference.step`);
if a round already under way wrote after the trip, the guard's next round releases that too. A newer
deployment (a new row, a new id) re-arms the guard.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg

from bacpipes.alerts import deliver, raise_alert, resolve_alert
from bacpipes.commands import Command, insert_command
from bacpipes.db import connect
from bacpipes.settings import Settings
from bacpipes.zones import find_zones

log = logging.getLogger(__name__)

RULES = ("comfort_band", "comfort_ramp", "humidity", "chatter", "short_cycling")
RH_SUFFIX = "ZN-RH"
CYCLING_SUFFIXES = ("CMP-S", "CLG-S", "CLG-ELEC-KW", "CLG-VLV")  # in order of preference
CREATED_BY = "edge-guard"

_LATEST = """
SELECT id, version, mode, created_at FROM model_deployments
WHERE site_id = %s AND name = %s ORDER BY created_at DESC, id DESC LIMIT 1
"""
# the model's commands at the ML priority that did not fail or get refused, oldest first
_ML_COMMANDS = """
SELECT point_id, command_type, value, created_at, status FROM write_command_status
WHERE site_id = %s AND source = 'ml' AND priority = %s AND created_at >= %s
  AND status NOT IN ('rejected', 'failed')
ORDER BY point_id, created_at, id
"""
_READINGS = """
SELECT point_id, time, value FROM sensor_readings
WHERE site_id = %s AND point_id = ANY(%s) AND time >= %s AND time <= %s
ORDER BY point_id, time
"""


@dataclass(frozen=True)
class Deployment:
    id: Any  # uuid of the model_deployments row
    version: str
    mode: str
    created_at: datetime


@dataclass(frozen=True)
class Breach:
    rule: str
    zone: str
    detail: str


@dataclass(frozen=True)
class Trip:
    deployment: Deployment
    breach: Breach
    released: list[int]


@dataclass
class Held:
    """A setpoint the model holds: since when (its first write after the last release), and what it wrote."""

    since: datetime
    executed: list[tuple[datetime, float]]  # completed writes, oldest first


def latest_deployment(conn: psycopg.Connection, site_id: str, name: str) -> Deployment | None:
    row = conn.execute(_LATEST, (site_id, name)).fetchone()
    return Deployment(*row) if row else None


def stood_down(conn: psycopg.Connection, site_id: str, deployment: Any) -> bool:
    """True when the guard tripped on this deployment: inference makes no decision for it any more."""
    return conn.execute("SELECT 1 FROM model_guard_trips WHERE site_id = %s AND deployment_id = %s",
                        (site_id, deployment)).fetchone() is not None


def held_setpoints(conn: psycopg.Connection, site_id: str, priority: int, after: datetime,
                   on_clock: Any = None) -> dict[int, Held]:
    """Setpoints whose latest ML command since `after` is a write (pending or done): the model holds them.
    `on_clock` maps the database's (wall-clock) command times onto the readings' clock."""
    by_point: dict[int, list[tuple[str, float | None, datetime, str]]] = defaultdict(list)
    for pid, kind, value, at, status in conn.execute(_ML_COMMANDS, (site_id, priority, after)):
        by_point[pid].append((kind, value, on_clock(at) if on_clock else at, status))
    held: dict[int, Held] = {}
    for pid, commands in by_point.items():
        if commands[-1][0] != "write_value":
            continue
        stint = commands
        for k in range(len(commands) - 1, -1, -1):  # the writes since the last release
            if commands[k][0] != "write_value":
                stint = commands[k + 1:]
                break
        held[pid] = Held(stint[0][2], [(at, v) for kind, v, at, status in stint
                                      if status == "completed" and v is not None])
    return held


class EdgeGuard:
    """`clock`: the agent's (`bacpipes.clock`; None: the wall clock). Readings are stamped on it, while the
    database stamps commands and deployments on the wall clock: `_on_clock` maps those onto it."""

    def __init__(self, settings: Settings, clock: Any = None) -> None:
        self.settings = settings
        self.clock = clock

    def _on_clock(self, now: datetime) -> Any:
        if self.clock is None or getattr(self.clock, "origin", None) is None:
            return lambda at: at
        wall, speed = datetime.now(UTC), self.clock.speed
        return lambda at: now - (wall - at) * speed

    def check(self, now: datetime | None = None) -> Trip | None:
        """One round; the trip when this round tripped. Never raises for a zone's missing data."""
        now = now or (self.clock.now(UTC) if self.clock is not None else datetime.now(UTC))
        s = self.settings
        on_clock = self._on_clock(now)
        with connect(s.database.dsn) as conn:
            deployment = latest_deployment(conn, s.site.id, s.ml.model)
            if deployment is None:
                return None
            priority = s.writes.ml_priority
            if stood_down(conn, s.site.id, deployment.id):
                if deployment.mode == "active":
                    # a round of inference under way at the trip may have written after it: give that back
                    self._release(conn, held_setpoints(conn, s.site.id, priority, deployment.created_at),
                                  "edge guard: stood down")
                return None
            self._resolve_trips(conn)
            if deployment.mode != "active":
                return None
            held = held_setpoints(conn, s.site.id, priority, deployment.created_at, on_clock)
            if not held:
                return None
            breach = next(iter(self.breaches(conn, held, now)), None)
            conn.commit()
            if breach is None:
                return None
            return self._trip(conn, deployment, breach, held)

    # -- the rules ----------------------------------------------------------------------------------

    def breaches(self, conn: psycopg.Connection, held: dict[int, Held], now: datetime) -> list[Breach]:
        """Every breach found this round, comfort first (what occupants feel), then equipment."""
        g, site = self.settings.guard, self.settings.site.id
        zones = [z for z in find_zones(conn, site) if z.setpoint in held]
        if not zones:
            return []
        points = _points(conn, site)
        by_name = {name: pid for pid, (_, name) in points.items()}
        humidity = {z.name: by_name.get(f"{z.name}-{RH_SUFFIX}") for z in zones}
        cycling = _cycling_signals(points, {points[z.setpoint][0] for z in zones})
        lookback = timedelta(seconds=max(g.window_s, g.ramp_window_s, g.comfort_grace_s, g.humidity_grace_s))
        start = max(min(held[z.setpoint].since for z in zones), now - lookback)
        wanted = {p for z in zones for p in (z.points["zone_temp"], z.points["occupancy"], humidity[z.name])}
        wanted |= {p for p, _ in cycling.values()}
        # an hour more than the window: the occupancy in effect at its start
        series = _readings(conn, site, [p for p in wanted if p is not None], start - timedelta(hours=1), now)

        found: list[Breach] = []
        for zone in zones:
            since = max(held[zone.setpoint].since, now - lookback)
            occupied = _occupied(series.get(zone.points["occupancy"], []), g.occupied_only)

            def watched(point: int | None, since: datetime = since, occupied: Any = occupied) -> list:
                values = series.get(point, []) if point is not None else []
                return [(t, v) for t, v in values if t >= since and occupied(t)]

            found += self._comfort(zone.name, watched(zone.points["zone_temp"]))
            found += _longer_than(watched(humidity[zone.name]), lambda v: v > g.humidity_max_pct,
                                  g.humidity_grace_s, "humidity", zone.name,
                                  f"relative humidity above {g.humidity_max_pct:g} %", "%")
            window = max(held[zone.setpoint].since, now - timedelta(seconds=g.window_s))
            writes = [v for t, v in held[zone.setpoint].executed if t >= window]
            reversals = _reversals(writes)
            if reversals > g.chatter_max_reversals:
                found.append(Breach("chatter", zone.name, (
                    f"{zone.name}: the model's cooling setpoint changed direction {reversals} times in"
                    f" {_minutes((now - window).total_seconds())} (at most {g.chatter_max_reversals} in"
                    f" {_minutes(g.window_s)}): {' → '.join(f'{v:g}' for v in writes[-8:])} °C")))
        for device, (signal, name) in sorted(cycling.items()):
            mine = [z for z in zones if points[z.setpoint][0] == device]
            window = max(min(held[z.setpoint].since for z in mine), now - timedelta(seconds=g.window_s))
            starts = _starts([v for t, v in series.get(signal, []) if t >= window], g.cycling_on_fraction)
            if starts > g.cycling_max_starts:
                span = _minutes((now - window).total_seconds())
                found.append(Breach("short_cycling", name.split("-")[0], (
                    f"{name}: cooling switched on {starts} times in {span} (at most {g.cycling_max_starts}"
                    f" in {_minutes(g.window_s)}) while the model held {', '.join(z.name for z in mine)}")))
        return sorted(found, key=lambda b: RULES.index(b.rule))

    def _comfort(self, zone: str, temps: list[tuple[datetime, float]]) -> list[Breach]:
        g, ml = self.settings.guard, self.settings.ml
        low, high = ml.comfort_low_c - g.comfort_tolerance_k, ml.comfort_high_c + g.comfort_tolerance_k
        found = _longer_than(temps, lambda v: not low <= v <= high, g.comfort_grace_s, "comfort_band", zone,
                             f"zone temperature outside {ml.comfort_low_c:g}–{ml.comfort_high_c:g} °C by more"
                             f" than {g.comfort_tolerance_k:g} K", "°C")
        ramp = _ramp(temps, g.ramp_k, g.ramp_window_s)
        if ramp is not None:
            (t1, v1), (t2, v2) = ramp
            found.append(Breach("comfort_ramp", zone, (
                f"{zone}: zone temperature {'rose' if v2 > v1 else 'fell'} {v1:.1f} → {v2:.1f} °C in"
                f" {_minutes((t2 - t1).total_seconds())} (more than {g.ramp_k:g} K within"
                f" {_minutes(g.ramp_window_s)}, ASHRAE 55 drift/ramp)")))
        return found

    # -- the trip -----------------------------------------------------------------------------------

    def _trip(self, conn: psycopg.Connection, deployment: Deployment, breach: Breach,
              held: dict[int, Held]) -> Trip | None:
        s = self.settings
        # the trip first: from this commit on, inference stands down for the deployment
        row = conn.execute(
            "INSERT INTO model_guard_trips (site_id, deployment_id, model, version, rule, zone, detail,"
            " released) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING at",
            (s.site.id, deployment.id, s.ml.model, deployment.version, breach.rule, breach.zone,
             breach.detail, len(held)),
        ).fetchone()
        if row is None:  # another guard (a second agent) tripped first
            conn.commit()
            return None
        alert = raise_alert(conn, s.site.id, CREATED_BY, "critical",
                            f"model {s.ml.model}@{deployment.version} stood down by the edge guard"
                            f" ({breach.rule}): {breach.detail}; the ML priority of {len(held)} setpoint(s)"
                            " released")
        conn.commit()
        log.error("edge guard tripped %s@%s (%s): %s", s.ml.model, deployment.version, breach.rule,
                  breach.detail)
        released = self._release(conn, held, f"edge guard: {breach.rule}")
        deliver([alert], s.alerts)  # after the release: a slow webhook must not delay it
        return Trip(deployment, breach, released)

    def _resolve_trips(self, conn: psycopg.Connection) -> None:
        """A deployment the guard has not stood down replaced the one it did: the trip's alert is over,
        and PagerDuty keeps an incident open until told so."""
        site = self.settings.site.id
        open_ids = [r[0] for r in conn.execute("SELECT id FROM alerts WHERE site_id = %s AND source = %s"
                                                " AND resolved_at IS NULL", (site, CREATED_BY))]
        resolved = [a for i in open_ids if (a := resolve_alert(conn, i)) is not None]
        conn.commit()
        if resolved:
            log.info("edge guard: %d trip alert(s) resolved, a new deployment of %s is armed", len(resolved),
                     self.settings.ml.model)
            deliver([], self.settings.alerts, resolved=resolved)

    def _release(self, conn: psycopg.Connection, held: Iterable[int], reason: str) -> list[int]:
        s = self.settings
        released = []
        for point in sorted(held):
            insert_command(conn, Command(s.site.id, point, None, priority=s.writes.ml_priority, release=True,
                                         source="ml", created_by=CREATED_BY, reason=reason))
            released.append(point)
        return released


# -- helpers over (time, value) series -----------------------------------------------------------------


def _readings(conn: psycopg.Connection, site: str, points: list[int], start: datetime,
              end: datetime) -> dict[int, list[tuple[datetime, float]]]:
    out: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
    for pid, t, v in conn.execute(_READINGS, (site, points, start, end)):
        out[pid].append((t, v))
    return out


def _points(conn: psycopg.Connection, site: str) -> dict[int, tuple[int, str]]:
    """point id -> (device id, object name), for the site's named points."""
    rows = conn.execute("SELECT point_id, device_id, object_name FROM point WHERE site_id = %s"
                        " AND object_name IS NOT NULL AND missing_since IS NULL", (site,)).fetchall()
    return {pid: (device, name) for pid, device, name in rows}


def _cycling_signals(points: dict[int, tuple[int, str]], devices: set[int]) -> dict[int, tuple[int, str]]:
    """device id -> (point, name) of its cooling on/off signal (the controller's, not a zone's)."""
    out: dict[int, tuple[int, str]] = {}
    for device in devices:
        for suffix in CYCLING_SUFFIXES:
            match = [(pid, name) for pid, (d, name) in points.items()
                     if d == device and name.endswith(f"-{suffix}") and "_ZN" not in name]
            if match:
                out[device] = min(match)
                break
    return out


def _occupied(occupancy: list[tuple[datetime, float]], only: bool) -> Any:
    """t -> whether the zone was occupied at t (its latest occupancy reading at or before t is > 0)."""
    if not only or not occupancy:
        return lambda t: True

    times = [when for when, _ in occupancy]

    def at(t: datetime) -> bool:
        k = bisect_right(times, t)
        return k > 0 and occupancy[k - 1][1] > 0

    return at


def _longer_than(values: list[tuple[datetime, float]], bad: Any, grace_s: float, rule: str, zone: str,
                 what: str, unit: str) -> list[Breach]:
    """A breach when consecutive readings are all `bad` for longer than `grace_s` (any run in the series)."""
    run: list[tuple[datetime, float]] = []
    for t, v in values:
        if not bad(v):
            run = []
            continue
        run.append((t, v))
        lasted = (t - run[0][0]).total_seconds()
        if lasted > grace_s or grace_s == 0:
            return [Breach(rule, zone, f"{zone}: {what} for {_minutes(lasted)} (grace {_minutes(grace_s)}),"
                                       f" {run[0][1]:.1f} → {v:.1f} {unit}")]
    return []


def _ramp(values: list[tuple[datetime, float]], limit: float,
          window_s: float) -> tuple[tuple[datetime, float], tuple[datetime, float]] | None:
    """The first pair of readings within `window_s` of each other that differ by more than `limit`."""
    for j, (t2, v2) in enumerate(values):
        for t1, v1 in values[:j]:
            if (t2 - t1).total_seconds() <= window_s and abs(v2 - v1) > limit:
                return (t1, v1), (t2, v2)
    return None


def _reversals(values: list[float]) -> int:
    """How often a sequence of setpoints changes direction (steps of no change are skipped)."""
    steps = [b - a for a, b in pairwise(values) if abs(b - a) > 1e-9]
    return sum(1 for a, b in pairwise(steps) if (a > 0) != (b > 0))


def _starts(values: list[float], on_fraction: float) -> int:
    """Off -> on transitions, "on" being above `on_fraction` of the series' peak."""
    peak = max(values, default=0.0)
    if peak <= 0:
        return 0
    on = [v > on_fraction * peak for v in values]
    return sum(1 for a, b in pairwise(on) if b and not a)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
