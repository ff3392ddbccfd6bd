"""A field trial of ML control through the real path: the EnergyPlus building served over BACnet/IP, the real
edge agent, a switchback A/B schedule, KPIs from the building's own values (issue 17, item 2).

What runs, per trial run:
- the building: `sim.server.ThreadedBuilding` (the medium office, Tampa weather, July) in a process of its
  own (EnergyPlus and its BACnet server; a process-wide lock serialises EnergyPlus runs within a process);
- a fresh site database (migrated), discovered over BACnet by ``bacpipes edge discover``; the *-ZN-CLG-SP
  points get the demo's ML limits; the ONNX model is deployed active (`model_deployments`); the schedule's
  periods go into `ab_schedule`;
- the agent: ``bacpipes edge run`` in its own process (polling over BACnet, MQTT, ingest into PostgreSQL,
  edge inference issuing `write_commands`, the executor writing at the ML priority). Edge inference already
  honours the schedule: in a baseline period it steps back and releases the ML priority.

Time: 14 building days cannot run in real time, so the building runs at ``speed`` x wall time and the agent
reads the same clock (`bacpipes.clock.ScaledClock`, `[clock]` in its settings): the building is started
paused, ``set_speed`` anchors its clock (naive local standard time, EnergyPlus's), and the agent gets the
same anchor as an aware origin (the site's standard offset; `sim.energyplus.backfill.standard_time` is the
same mapping), so its poll slots, reading stamps, decisions, command expiries and A/B periods are all in
building time, months before the database's now(). The ingester, the DEFAULT partition (the trial's days
get partitions of their own first), point_state and the executor's claim query (which looks at created_at,
the database's wall time) take that as it is.

Same weather for both arms: one run can only be in one arm at a time, so `field_trial` makes two runs of
the same days, the second with the complementary schedule, and pairs them period by period: every period
is seen once under ML and once under the building's own control, same weather, same weekday, same start
state at the trial's first period. Carry-over between periods (a zone warmed by ML handed to the schedule)
stays in, as it would in a real switchback.

KPIs (`PeriodKpis`), from the site database: HVAC and whole-building electricity (the meters' cumulative
kWh registers, SITE-HVAC-KWH and SITE-MTR-KWH, so sampling does not bias energy), peak demand (SITE-MTR-KW),
thermal discomfort (K·h outside [ml.comfort_low_c, ml.comfort_high_c], summed over zones, only while the
zone's occupancy reads > 0), zone-hours above 60 % relative humidity (all hours), and changes of each
zone's setpoint in effect (as polled) per zone and day. Savings with a 95 % interval come from
`models.ab.evaluate` over the periods, each period's energy normalised by the mean of its two arms.

The model: `exploration_model` (today's placeholder: random setpoints hourly on June days of the same
building, then `models.setpoint` train/export) is one `ModelMaker`; pass another (e.g. an MPC model).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
import tomli_w
from psycopg.conninfo import make_conninfo

from bacpipes.clock import ScaledClock
from bacpipes.commands import grant_remote
from bacpipes.db import ensure_database, migrate
from bacpipes.partitions import create_partition
from bacpipes.points import update_points
from bacpipes.settings import Settings, load_settings
from models.ab import Period, PeriodResult, Verdict, complement, evaluate
from models.features import build_features
from models.policy import candidates
from models.setpoint import FAMILIES, export, select
from sim.energyplus.backfill import backfill
from sim.energyplus.engine import EnergyPlusBuilding, zone_key

log = logging.getLogger(__name__)

PROTOTYPE = "ASHRAE901_OfficeMedium_STD2019_Denver"
BUILDING = f"energyplus:{PROTOTYPE}"
WEATHER = "USA_FL_Tampa.Intl.AP.722110_TMY3"
TIMEZONE = "America/New_York"  # Tampa; EnergyPlus keeps its standard time (EST)
# as the demo sets them (bacpipes.cli.demo.ML_LIMITS; sim/ may not import the CLI): °C per zone setpoint
ML_LIMITS = {"ml_min_value": "22", "ml_max_value": "26", "ml_max_step": "1"}
SETPOINTS = "*-ZN-CLG-SP"
RH_LIMIT = 60.0
CHANGE_K = 0.05  # a setpoint reading that moved less than this is the same setpoint


@dataclass(frozen=True)
class Trial:
    """One trial's building, schedule and pace. Times are the site's local time (America/New_York)."""

    # a Monday, site-local midnight: the first period starts here. In the past: the ingester refuses readings
    # stamped in the future, and EnergyPlus's weekdays are this year's
    first: datetime = datetime(2026, 7, 6)
    periods: int = 14
    hours_per_period: float = 24.0
    lead_in_h: float = 3.0  # served before the first period: agent start-up and the model's first inputs
    speed: float = 600.0
    timesteps_per_hour: int = 60
    poll_interval_s: float = 300.0
    ml_interval_s: float = 900.0
    seed: int = 0
    site_id: str = "field-trial"
    timezone: str = TIMEZONE
    building: str = BUILDING
    weather: str = WEATHER
    address_base: str = "127.0.0.160"  # five controllers from here
    port: int = 47808
    agent_address: str = "127.0.0.165/8:47960"
    agent_device_id: int = 3001960
    # the edge guard (edge/guard.py) stands a model down at its first breach, which would end the ML arm:
    # off while a controller is measured, on to measure the guard
    guard: bool = False
    # days of the building's own history backfilled before the lead-in, as a site has when ML is switched
    # on: the MPC's outlook (occupancy by time of week, HVAC meter weights) is learnt from it
    history_days: int = 0

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def start(self) -> datetime:
        """The first period's start, aware."""
        return self.first.replace(tzinfo=self.tz) if self.first.tzinfo is None else self.first

    @property
    def end(self) -> datetime:
        return self.start + timedelta(hours=self.hours_per_period * self.periods)

    def standard_offset(self) -> timedelta:
        local = self.start.astimezone(self.tz)
        return (local.utcoffset() or timedelta(0)) - (local.dst() or timedelta(0))

    def building_time(self, t: datetime) -> datetime:
        """The building's clock (naive local standard time) at aware instant t."""
        return (t.astimezone(UTC) + self.standard_offset()).replace(tzinfo=None)


def schedule(trial: Trial) -> list[Period]:
    """Balanced switchback pairs, each pair's order drawn at random (`models.ab.switchback`, any length)."""
    rng = random.Random(trial.seed)
    arms: list[str] = []
    while len(arms) < trial.periods:
        arms += rng.sample(["ml", "baseline"], 2)
    length = timedelta(hours=trial.hours_per_period)
    return [Period(trial.start + i * length, trial.start + (i + 1) * length, arm)
            for i, arm in enumerate(arms[: trial.periods])]


# --- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    version: str
    onnx: bytes
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()


ModelMaker = Callable[[Trial], Model]


def exploration_frames(trial: Trial, start: date = date(2026, 6, 1), days: int = 14,
                       every_s: float = 900.0, timesteps_per_hour: int = 12) -> list[pl.DataFrame]:
    """Per zone, the model's inputs every `every_s` (time as the site's UTC instant) from days of the same
    building and weather in which every zone's cooling setpoint is drawn at random each hour within the ML
    limits: data that shows what a setpoint does. June, so the July evaluation days are never seen."""
    low, high = float(ML_LIMITS["ml_min_value"]), float(ML_LIMITS["ml_max_value"])
    rng = random.Random(trial.seed + 1000)
    offset = trial.standard_offset()
    b = EnergyPlusBuilding(trial.building.removeprefix("energyplus:"), trial.weather, start, days=days + 1,
                           timesteps_per_hour=timesteps_per_hour)
    rows: dict[str, list[dict[str, Any]]] = {z: [] for z in b.layout.zones}
    per = max(1, round(every_s * timesteps_per_hour / 3600))
    try:
        b.start()
        hour = None
        end = datetime.combine(start + timedelta(days=days), datetime.min.time())
        while b.time < end:
            if b.time.hour != hour:
                hour = b.time.hour
                for zone in rows:
                    b.override(zone, "cooling", rng.choice(candidates(low, high)))
            [s] = b.run(per, keep_every=per) or [None]
            if s is None:
                break
            at = (s.time - offset).replace(tzinfo=UTC)
            for zone, out in rows.items():
                out.append({"time": at, "zone_temp": s[zone_key(zone, "temp")],
                            "cooling_setpoint": s[zone_key(zone, "cooling_sp")],
                            "energy_kw": s[zone_key(zone, "cooling_load_kw")],
                            "occupancy": s.values.get(zone_key(zone, "occupancy_pct"), 0.0) / 100.0,
                            "outdoor_temp": s["site/oa_temp"]})
    finally:
        b.close()
    return [pl.DataFrame(r).with_columns(pl.col("time").dt.convert_time_zone(trial.timezone))
            for r in rows.values()]


def exploration_model(trial: Trial, days: int = 14, workdir: Path | None = None,
                      families: Sequence[str] = tuple(FAMILIES)) -> Model:
    """The setpoint model chosen as the nightly training flow chooses it (`models.setpoint.select`: every
    family, least multi-step error among the physical ones), trained on `days` of `exploration_frames`."""
    frames = exploration_frames(trial, days=days, every_s=trial.ml_interval_s)
    trained = select([build_features(f, trial.timezone) for f in frames], trial.ml_interval_s, families)
    path = (workdir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"field-trial-{uuid.uuid4().hex[:8]}.onnx"
    try:
        export(trained, path, version="field-trial-explore", created_by="sim.energyplus.field_trial")
        data = path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
    return Model("field-trial-explore", data, {"family": trained.family, "holdout": trained.metrics,
                                               "multistep_mae": trained.multistep, "window": trained.window})


# --- the building, in its own process ------------------------------------------------------------


def _serve(conn: Any, kwargs: dict[str, Any]) -> None:
    """Serve the building paused; ("run", speed) starts its clock and answers its anchor; ("lag",) answers
    how far EnergyPlus is behind; ("stop",) ends."""
    from sim.server import ThreadedBuilding

    tb = ThreadedBuilding(**kwargs)
    try:
        tb.start()
    except BaseException as exc:  # told to the parent, which raises it
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", tb.describe()))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "run":
                tb.set_speed(msg[1])
                conn.send(("clock", tb.clock().anchor()))
            elif msg[0] == "lag":
                conn.send(("lag", tb.vb.lag_s(), repr(tb.vb.failed) if tb.vb.failed else None))
            else:
                break
    finally:
        tb.stop()
        conn.send(("stopped",))


class BuildingProcess:
    """The served building in a child process (spawned: EnergyPlus and bacpypes3 start clean there)."""

    def __init__(self, trial: Trial) -> None:
        run_start = trial.building_time(trial.start - timedelta(hours=trial.lead_in_h))
        days = math.ceil((trial.building_time(trial.end) - run_start).total_seconds() / 86400) + 1
        self.kwargs = {"building": trial.building, "weather": trial.weather,
                       "timesteps_per_hour": trial.timesteps_per_hour, "speed": 0, "start": run_start,
                       "days": days, "address_base": trial.address_base, "port": trial.port}
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, self.kwargs), daemon=True)

    def start(self, timeout: float = 900.0) -> list[tuple[int, str, int]]:
        self.process.start()
        kind, *rest = self._recv(timeout)
        if kind != "ready":
            raise RuntimeError(f"the building did not start: {rest}")
        return rest[0]

    def run(self, speed: float) -> ScaledClock:
        self.conn.send(("run", speed))
        _, anchor = self._recv(120)
        return ScaledClock(anchor["origin"], anchor["speed"], anchor["wall_start"])

    def lag(self) -> tuple[float, str | None]:
        self.conn.send(("lag",))
        _, lag, failed = self._recv(30)
        return lag, failed

    def stop(self) -> None:
        if self.process.pid is None:
            return  # never started
        if self.process.is_alive():
            with contextlib.suppress(OSError, EOFError, TimeoutError):
                self.conn.send(("stop",))
                self._recv(60)
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()

    def _recv(self, timeout: float) -> tuple:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"no answer from the building process in {timeout:g} s")
        return self.conn.recv()


# --- the site --------------------------------------------------------------------------------------


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Settings by tomli_w (TOML has no null: a None leaves the key to its default)."""
    doc = {name: {k: v for k, v in body.items() if v is not None} for name, body in sections.items()}
    path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    return path


def site_sections(trial: Trial, dsn: str, mqtt_url: str, workdir: Path, site_id: str, addresses: list[str],
                  clock: ScaledClock | None = None) -> dict[str, dict[str, Any]]:
    """The agent's settings: its own site, database, broker and spool; the served controllers; ML on; and,
    once the building's clock runs, that clock (`[clock]`, its origin in the site's standard time)."""
    port = "" if trial.port == 47808 else f":{trial.port}"
    sections: dict[str, dict[str, Any]] = {
        "site": {"id": site_id, "timezone": trial.timezone},
        "database": {"dsn": dsn},
        "mqtt": {"url": mqtt_url, "client_id": f"{site_id}-{uuid.uuid4().hex[:6]}",
                 "health_interval_s": 30.0},
        "bacnet": {"address": trial.agent_address, "device_id": trial.agent_device_id,
                   "apdu_timeout_ms": 1000, "apdu_retries": 1},
        "discovery": {"targets": [f"{a}{port}" for a in addresses], "timeout_s": 2.0,
                      "import_history": False},
        "polling": {"default_interval_s": trial.poll_interval_s},
        "spool": {"path": str(workdir / f"{site_id}-spool.sqlite")},
        "writes": {"poll_interval_s": 1.0},
        "ml": {"enabled": True, "interval_s": trial.ml_interval_s},
        "guard": {"enabled": trial.guard},
    }
    if clock is not None:
        origin = clock.origin.replace(tzinfo=timezone(trial.standard_offset()))  # EnergyPlus's clock: EST
        sections["clock"] = {"origin": origin, "speed": clock.speed, "wall_start": clock.wall0}
    return sections


def create_database(admin_dsn: str, name: str) -> str:
    dsn = make_conninfo(admin_dsn, dbname=name)
    ensure_database(dsn)
    migrate(dsn)
    return dsn


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_site(settings: Settings, trial: Trial, periods: Sequence[Period], model: Model) -> None:
    """ML limits on the setpoints, the trial's partitions, the model deployed active, the schedule."""
    if not update_points(settings, match=SETPOINTS, limits=ML_LIMITS):
        raise RuntimeError(f"no {SETPOINTS} points discovered")
    site = settings.site.id
    first = (trial.start - timedelta(hours=trial.lead_in_h)).astimezone(UTC).date()
    wall_h = (trial.end - trial.start).total_seconds() / trial.speed / 3600 + trial.lead_in_h + 1
    with psycopg.connect(settings.database.dsn) as conn:
        # ML writes need the site's remote grant, in wall time (the database's clock)
        grant_remote(conn, site, timedelta(hours=wall_h), "field-trial", "ML field trial (simulated)")
        for k in range((trial.end.astimezone(UTC).date() - first).days + 2):
            create_partition(conn, first + timedelta(days=k))
        conn.execute(
            "INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by, reason)"
            " VALUES (%s, %s, %s, 'active', %s, %s, 'field-trial', 'sim.energyplus.field_trial')",
            (site, settings.ml.model, model.version, model.sha256, model.onnx))
        # the lead-in and what follows the last period are the building's own control (no row: ML would act)
        lead_in = Period(trial.start - timedelta(hours=trial.lead_in_h), periods[0].start, "baseline")
        after = Period(periods[-1].end, periods[-1].end + timedelta(days=1), "baseline")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO ab_schedule (site_id, period_start, period_end, arm) VALUES (%s, %s, %s, %s)",
                [(site, p.start, p.end, p.arm) for p in (lead_in, *periods, after)])


def _cli(*args: str, log_file: Path) -> subprocess.Popen:
    out = open(log_file, "ab")  # noqa: SIM115 - the child's, closed by the parent after it ends
    try:
        return subprocess.Popen([sys.executable, "-m", "bacpipes.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    finally:
        out.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- KPIs ------------------------------------------------------------------------------------------


@dataclass
class PeriodKpis:
    period: Period
    hvac_kwh: float
    site_kwh: float
    peak_kw: float
    hvac_peak_kw: float
    discomfort_kh: float  # summed over zones, occupied readings only
    rh_zone_h: float  # zone-hours above RH_LIMIT, all hours
    setpoint_changes: int  # summed over zones
    zones: int
    ml_writes: int = 0  # completed at the ML priority, decided in this period
    ml_releases: int = 0  # completed, issued in this period

    @property
    def hours(self) -> float:
        return (self.period.end - self.period.start).total_seconds() / 3600


@dataclass
class RunResult:
    periods: list[PeriodKpis]
    wall_s: float
    building_s: float
    readings: int
    first_reading: datetime | None
    last_reading: datetime | None
    ml_writes_total: int
    ml_rejected: int  # ML writes refused or failed (e.g. expired: the round took longer than the interval)
    max_lag_s: float  # EnergyPlus behind building time, worst seen (one step or less: it keeps up)
    coverage: float  # readings in the periods / (points x poll slots): below 1, slots were missed
    clock: dict[str, Any]
    database: str | None = None


def _named(conn: psycopg.Connection, site: str, like: str) -> dict[int, str]:
    rows = conn.execute("SELECT point_id, object_name FROM point WHERE site_id = %s AND object_name LIKE %s",
                        (site, like)).fetchall()
    return dict(rows)


def _readings(conn: psycopg.Connection, site: str, ids: Sequence[int], start: datetime,
              end: datetime) -> pl.DataFrame:
    rows = conn.execute("SELECT time, point_id, value FROM sensor_readings WHERE site_id = %s"
                        " AND point_id = ANY(%s) AND time >= %s AND time < %s ORDER BY time",
                        (site, list(ids), start, end)).fetchall()
    return pl.DataFrame(rows, schema={"time": pl.Datetime("us", "UTC"), "point_id": pl.Int64,
                                      "value": pl.Float64}, orient="row")


def _register_at(frame: pl.DataFrame, point: int, t: datetime) -> float:
    """A cumulative register's value at t: its last reading at or before t."""
    before = frame.filter((pl.col("point_id") == point) & (pl.col("time") <= t))
    if before.is_empty():
        raise ValueError(f"no reading of register {point} by {t}")
    return float(before["value"][-1])


def period_kpis(settings: Settings, trial: Trial, periods: Sequence[Period], clock: ScaledClock
                ) -> list[PeriodKpis]:
    """Each period's KPIs from the site database (see the module docstring)."""
    site, low, high = settings.site.id, settings.ml.comfort_low_c, settings.ml.comfort_high_c
    step_h = trial.poll_interval_s / 3600
    out = []
    with psycopg.connect(settings.database.dsn) as conn:
        site_kwh, hvac_kwh = _named(conn, site, "SITE-MTR-KWH"), _named(conn, site, "SITE-HVAC-KWH")
        site_kw, hvac_kw = _named(conn, site, "SITE-MTR-KW"), _named(conn, site, "SITE-HVAC-KW")
        temps, rhs = _named(conn, site, "%-ZN-T"), _named(conn, site, "%-ZN-RH")
        occs, sps = _named(conn, site, "%-OCC-PCT"), _named(conn, site, "%-ZN-CLG-SP")
        zone_of = {pid: name.split("-")[0] for d in (temps, rhs, occs, sps) for pid, name in d.items()}
        registers = [*site_kwh, *hvac_kwh]
        ml_writes = conn.execute(
            "SELECT l.at FROM inference_log l JOIN command_events e ON e.command_id = l.command_id"
            " WHERE l.site_id = %s AND e.status = 'completed'", (site,)).fetchall()
        releases = conn.execute(
            "SELECT c.created_at FROM write_commands c JOIN command_events e ON e.command_id = c.id"
            " WHERE c.site_id = %s AND c.source = 'ml' AND c.command_type = 'release_priority'"
            " AND e.status = 'completed'", (site,)).fetchall()
        release_times = [_building(clock, trial, t) for (t,) in releases]
        for p in periods:
            start, end = p.start.astimezone(UTC), p.end.astimezone(UTC)
            frame = _readings(conn, site, [*registers, *site_kw, *hvac_kw, *temps, *rhs, *occs, *sps],
                              start - timedelta(hours=1), end)
            inside = frame.filter(pl.col("time") >= start)
            [s_kwh], [h_kwh] = list(site_kwh), list(hvac_kwh)
            energy = {k: _register_at(frame, k, end) - _register_at(frame, k, start) for k in (s_kwh, h_kwh)}
            slot = (pl.col("time").dt.epoch("s") // int(trial.poll_interval_s)).alias("slot")
            zoned = (inside.filter(pl.col("point_id").is_in(list(zone_of)))
                     .with_columns(slot, pl.col("point_id").replace_strict(zone_of, return_dtype=pl.Utf8)
                                   .alias("zone"),
                                   pl.col("point_id").replace_strict(
                                       {**dict.fromkeys(temps, "t"), **dict.fromkeys(rhs, "rh"),
                                        **dict.fromkeys(occs, "occ"), **dict.fromkeys(sps, "sp")},
                                       return_dtype=pl.Utf8).alias("role")))
            wide = zoned.group_by("zone", "slot", "role").agg(pl.col("value").mean()).pivot(
                on="role", index=["zone", "slot"], values="value").sort("zone", "slot")
            outside = ((low - pl.col("t")).clip(lower_bound=0) + (pl.col("t") - high).clip(lower_bound=0))
            discomfort = wide.filter(pl.col("occ") > 0).select(outside.sum()).item() or 0.0
            rh_slots = wide.filter(pl.col("rh") > RH_LIMIT).height
            changes = (wide.drop_nulls("sp").with_columns(
                (pl.col("sp") - pl.col("sp").shift(1).over("zone")).abs().alias("d"))
                .filter(pl.col("d") > CHANGE_K).height)
            out.append(PeriodKpis(
                period=p, hvac_kwh=energy[h_kwh], site_kwh=energy[s_kwh],
                peak_kw=_peak(inside, site_kw), hvac_peak_kw=_peak(inside, hvac_kw),
                discomfort_kh=float(discomfort) * step_h, rh_zone_h=rh_slots * step_h,
                setpoint_changes=changes, zones=len(sps),
                ml_writes=sum(1 for (t,) in ml_writes if p.start <= t < p.end),
                ml_releases=sum(1 for t in release_times if p.start <= t < p.end),
            ))
    return out


def _peak(frame: pl.DataFrame, ids: dict[int, str]) -> float:
    values = frame.filter(pl.col("point_id").is_in(list(ids)))["value"]
    return float(values.max()) if len(values) else float("nan")  # type: ignore[arg-type]


def _building(clock: ScaledClock, trial: Trial, wall: datetime) -> datetime:
    """The building time (aware) at a wall-clock instant, by the shared clock."""
    naive = clock.origin + timedelta(seconds=(wall.timestamp() - clock.wall0) * clock.speed)
    return naive.replace(tzinfo=timezone(trial.standard_offset()))


def score_database(admin_dsn: str, database: str, trial: Trial, periods: Sequence[Period],
                   clock: dict[str, Any], tag: str = "a") -> list[PeriodKpis]:
    """The KPIs of a kept run's database again (`RunResult.database` and `.clock`), e.g. after a KPI fix."""
    settings = load_settings(None, site={"id": f"{trial.site_id}-{tag}", "timezone": trial.timezone},
                             database={"dsn": make_conninfo(admin_dsn, dbname=database)})
    anchor = ScaledClock(clock["origin"], clock["speed"], clock["wall_start"])
    return period_kpis(settings, trial, periods, anchor)


# --- one run ---------------------------------------------------------------------------------------


def run_once(trial: Trial, periods: Sequence[Period], model: Model, *, admin_dsn: str, mqtt_url: str,
             workdir: Path, tag: str = "a", keep_database: bool = False,
             progress: Callable[[str], None] = print) -> RunResult:
    """Serve the building, discover it, deploy, run the agent through every period, score the periods."""
    workdir.mkdir(parents=True, exist_ok=True)
    site_id = f"{trial.site_id}-{tag}"  # its own MQTT topics: readings are retained on the broker
    db_name = f"bacpipes_field_trial_{tag}_{uuid.uuid4().hex[:8]}"
    dsn = create_database(admin_dsn, db_name)
    agent_log = workdir / f"agent-{tag}.log"
    building = BuildingProcess(trial)
    agent: subprocess.Popen | None = None
    t0 = time.monotonic()
    try:
        described = building.start()
        progress(f"[{tag}] building up ({time.monotonic() - t0:.0f} s): "
                 f"{sum(n for _, _, n in described)} objects on {len(described)} controllers")
        addresses = [address for _, address, _ in described]
        config = write_toml(workdir / f"site-{tag}.toml",
                            site_sections(trial, dsn, mqtt_url, workdir, site_id, addresses))
        if trial.history_days:  # before discovery, which then moves the devices to the served addresses
            history = backfill(load_settings(config), trial.history_days, trial.building, trial.weather,
                               interval_s=trial.poll_interval_s,
                               end=trial.start - timedelta(hours=trial.lead_in_h))
            progress(f"[{tag}] {history.rows} readings of {trial.history_days} days' history backfilled "
                     f"({history.seconds:.0f} s)")
        discover = _cli("edge", "discover", "--config", str(config), log_file=agent_log)
        if discover.wait(120) != 0:
            raise RuntimeError(f"discovery failed:\n{_tail(agent_log)}")
        settings = load_settings(config)
        prepare_site(settings, trial, periods, model)
        clock = building.run(trial.speed)
        wall0 = time.monotonic()
        config = write_toml(workdir / f"site-{tag}.toml",
                            site_sections(trial, dsn, mqtt_url, workdir, site_id, addresses, clock))
        agent = _cli("edge", "run", "--config", str(config), log_file=agent_log)
        end = trial.building_time(trial.end) + timedelta(seconds=2 * trial.poll_interval_s)
        max_lag, last_note = 0.0, time.monotonic()
        while clock.now() < end:
            time.sleep(min(2.0, max(0.05, clock.wall_s((end - clock.now()).total_seconds()))))
            if agent.poll() is not None:
                raise RuntimeError(f"the agent stopped (exit {agent.returncode}):\n{_tail(agent_log)}")
            lag, failed = building.lag()
            if failed:
                raise RuntimeError(f"the building stopped: {failed}")
            max_lag = max(max_lag, lag)
            if time.monotonic() - last_note > 60:
                last_note = time.monotonic()
                progress(f"[{tag}] building time {clock.now():%Y-%m-%d %H:%M} (until {end:%m-%d %H:%M}), "
                         f"wall {time.monotonic() - wall0:.0f} s, EnergyPlus lag {lag:.0f} s")
        wall_s = time.monotonic() - wall0
        agent.terminate()
        agent.wait(60)
        agent = None
        kpis = period_kpis(settings, trial, periods, clock)
        with psycopg.connect(dsn) as conn:
            n, first, last = conn.execute(
                "SELECT count(*), min(time), max(time) FROM sensor_readings").fetchone()
            ml_total, rejected = conn.execute(
                "SELECT count(*) FILTER (WHERE e.status = 'completed'), count(*) FILTER (WHERE e.status"
                " IN ('rejected', 'failed')) FROM write_commands c"
                " JOIN command_events e ON e.command_id = c.id"
                " WHERE c.source = 'ml' AND c.command_type = 'write_value'").fetchone()
            points, inside = conn.execute(
                "SELECT (SELECT count(*) FROM point), count(*) FROM sensor_readings WHERE time >= %s AND"
                " time < %s", (trial.start, trial.end)).fetchone()
        slots = (trial.end - trial.start).total_seconds() / trial.poll_interval_s
        return RunResult(kpis, wall_s, wall_s * trial.speed, n, first, last, ml_total, rejected, max_lag,
                         inside / max(points * slots, 1), clock.anchor(), db_name if keep_database else None)
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(30)
            if agent.poll() is None:
                agent.kill()
        building.stop()
        if not keep_database:
            drop_database(admin_dsn, db_name)


# --- the trial: two complementary runs, paired ----------------------------------------------------


@dataclass
class ArmKpis:
    hvac_kwh: float
    site_kwh: float
    peak_kw: float
    hvac_peak_kw: float
    discomfort_kh: float
    rh_zone_h: float
    changes_per_zone_day: float
    periods: int


def arm_kpis(kpis: Sequence[PeriodKpis]) -> ArmKpis:
    days = sum(k.hours for k in kpis) / 24
    zones = max((k.zones for k in kpis), default=1)
    return ArmKpis(
        hvac_kwh=sum(k.hvac_kwh for k in kpis), site_kwh=sum(k.site_kwh for k in kpis),
        peak_kw=max((k.peak_kw for k in kpis), default=float("nan")),
        hvac_peak_kw=max((k.hvac_peak_kw for k in kpis), default=float("nan")),
        discomfort_kh=sum(k.discomfort_kh for k in kpis), rh_zone_h=sum(k.rh_zone_h for k in kpis),
        changes_per_zone_day=sum(k.setpoint_changes for k in kpis) / max(zones * days, 1e-9),
        periods=len(kpis),
    )


@dataclass
class TrialReport:
    trial: Trial
    model: dict[str, Any]
    runs: list[RunResult]
    ml: ArmKpis
    baseline: ArmKpis
    verdict: Verdict | None  # None with fewer than 2 periods per arm
    paired: bool  # True: every period seen under both arms (two complementary runs)

    @property
    def savings(self) -> dict[str, float]:
        def saved(a: float, b: float) -> float:
            return 1 - a / b if b else float("nan")

        return {"hvac": saved(self.ml.hvac_kwh, self.baseline.hvac_kwh),
                "site": saved(self.ml.site_kwh, self.baseline.site_kwh)}

    def table(self) -> str:
        rows = [("HVAC electricity (kWh)", "hvac_kwh", ",.0f"),
                ("site electricity (kWh)", "site_kwh", ",.0f"),
                ("peak site demand (kW)", "peak_kw", ",.1f"),
                ("peak HVAC demand (kW)", "hvac_peak_kw", ",.1f"),
                ("discomfort, occupied (K·h, all zones)", "discomfort_kh", ",.1f"),
                (f"zone-hours above {RH_LIMIT:g} % RH", "rh_zone_h", ",.1f"),
                ("setpoint changes per zone per day", "changes_per_zone_day", ".1f")]
        b, m = asdict(self.baseline), asdict(self.ml)
        lines = [f"{'KPI':40} {'baseline':>12} {'ML':>12} {'change':>9}"]
        for label, key, fmt in rows:
            change = (m[key] / b[key] - 1) if b[key] else float("nan")
            lines.append(f"{label:40} {b[key]:>12{fmt}} {m[key]:>12{fmt}} {change:>+9.1%}")
        lines.append(f"periods: {self.baseline.periods} baseline, {self.ml.periods} ML "
                     f"({'paired: the same periods under each arm' if self.paired else 'one run, unpaired'})")
        if self.verdict is not None:
            v = self.verdict
            lines.append(f"models.ab: HVAC savings {v.savings:+.1%} (95 % interval {v.ci[0]:+.1%} to "
                         f"{v.ci[1]:+.1%}), {v.reason}")
        return "\n".join(lines)


def verdict(pairs: Sequence[tuple[PeriodKpis, PeriodKpis]]) -> Verdict | None:
    """models.ab over periods (ml, baseline): each period's HVAC energy normalised by its two arms' mean."""
    results = []
    for ml, base in pairs:
        mean = (ml.hvac_kwh + base.hvac_kwh) / 2
        if mean <= 0:
            continue
        for k in (ml, base):
            results.append(PeriodResult(k.period, k.hvac_kwh / mean, k.discomfort_kh / max(k.zones, 1)))
    try:
        return evaluate(results)
    except ValueError:
        return None


def report(trial: Trial, model: Model, runs: Sequence[RunResult]) -> TrialReport:
    """Both arms' KPIs: paired by period across runs when there are two, else from the one run."""
    kpis = [k for r in runs for k in r.periods]
    ml = [k for k in kpis if k.period.arm == "ml"]
    base = [k for k in kpis if k.period.arm == "baseline"]
    by_start = {k.period.start: k for k in base}
    pairs = [(k, by_start[k.period.start]) for k in ml if k.period.start in by_start]
    paired = len(runs) > 1 and len(pairs) == len(ml) == len(base)
    if not paired:
        pairs = list(zip(ml, base, strict=False))  # unpaired: different days, for the statistics only
    return TrialReport(trial, {"version": model.version, "sha256": model.sha256, **model.metrics}, list(runs),
                       arm_kpis(ml), arm_kpis(base), verdict(pairs), paired)


def field_trial(trial: Trial, *, admin_dsn: str, mqtt_url: str, workdir: Path,
                make_model: ModelMaker = exploration_model, paired: bool = True,
                progress: Callable[[str], None] = print) -> TrialReport:
    """The model made, then the schedule run, and its complement too when `paired` (same weather)."""
    t0 = time.monotonic()
    model = make_model(trial)
    progress(f"model {model.version} made in {time.monotonic() - t0:.0f} s: {model.metrics.get('holdout')}")
    plan = schedule(trial)
    runs = [run_once(trial, plan, model, admin_dsn=admin_dsn, mqtt_url=mqtt_url, workdir=workdir, tag="a",
                     progress=progress)]
    if paired:
        runs.append(run_once(trial, complement(plan), model, admin_dsn=admin_dsn, mqtt_url=mqtt_url,
                             workdir=workdir, tag="b", progress=progress))
    return report(trial, model, runs)


__all__ = [
    "Model",
    "ModelMaker",
    "Trial",
    "complement",
    "exploration_model",
    "field_trial",
    "report",
    "run_once",
    "schedule",
]
