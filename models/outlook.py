"""What the MPC knows of its horizon beyond the present readings, learnt from a site's own history.

The receding-horizon policy (`models.mpc.decide`) takes, per zone, a forecast of outdoor temperature and
occupancy over the horizon, which steps are occupied (comfort binds only then), and a price per step.
Without them it holds the present values and treats every step as occupied, and on the EnergyPlus medium
office that costs it its saving (+1.1 % HVAC electricity against the schedule, -4.0 % with them;
`sim.energyplus.closed_loop`). Everything here comes from the readings an edge already stores:

- occupancy ahead: each zone's mean occupancy by time of week (weekday, slot of `every_s`) over the
  history; a time of week not yet seen (less than a week of history) falls back to the same slot of day
  over all days seen, then to 0.
- occupied steps: the zone's or the whole building's forecast occupancy (its mean over zones) above
  `OCCUPIED_ABOVE`: the site's schedule is not known to the edge, and a zone that empties for an hour
  while the building is in use (a meeting room) is still kept comfortable. 7.5 %: above the DOE
  prototypes' 5 % off-hours trickle (cleaning), below their 10 % first arrivals. On the EnergyPlus
  office (learnt from 28 June days, judged over the 14 July days) it agrees with the thermostat
  schedule's occupied hours (`sim.energyplus.closed_loop.occupied_at`) except 05-06 h on working days,
  when the first 10 % of people arrive an hour before the schedule calls the building occupied.
- outdoor temperature ahead: the same time on the latest day with readings (yesterday, as a rule),
  shifted by how much warmer or cooler it is now than then; the present value held when there is none.
- price: HVAC electricity per kW of zone cooling (what the zone models predict, thermal) as a + b x outdoor
  temperature (a DX coil's efficiency falls as it gets hotter outside), fitted on the site's HVAC meter
  when it has one; weights 1 otherwise.

Time labels are the frames' own (bucket starts on the edge, interval ends in the closed loop): a forecast
for a feature row labelled `at` is for the labels `at + k x every_s`, k = 1..H, the convention its own
history was learnt in. Pure: polars and numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

OCCUPIED_ABOVE = 0.075  # forecast occupancy (0..1) above which a step counts as occupied
SITE = "*"  # the key of the whole building's occupancy (mean over zones) in `Outlook.occupancy`
MIN_WEIGHT = 0.05  # a price never below this: a fitted line must not make cooling free
LOOKBACK_DAYS = 7  # the outdoor forecast looks this many days back at most for the same time of day


class NotEnoughHistory(ValueError):
    """Too little history to learn an outlook from; the caller runs without one."""


@dataclass(frozen=True)
class Outlook:
    every_s: float
    timezone: str
    occupancy: dict[str, dict[tuple[int, int], float]]  # zone (or SITE) -> (weekday 0-6, slot) -> 0..1
    by_slot: dict[str, dict[int, float]]  # zone -> slot of day -> 0..1 (for a time of week not yet seen)
    outdoor: dict[datetime, float]  # the site's outdoor temperature by time label (naive, site-local)
    elec_per_kw: tuple[float, float] | None  # HVAC kW per zone-cooling kW = a + b * outdoor; None: weights 1
    days: float  # how much history it was learnt from

    # -- learning ---------------------------------------------------------------------------------------

    @staticmethod
    def learn(frames: Mapping[str, pl.DataFrame], site: pl.DataFrame | None = None, *, every_s: float = 900.0,
              timezone: str = "UTC", min_days: float = 1.0) -> Outlook:
        """From per-zone frames (time, occupancy 0..1, outdoor_temp, energy_kw: one row per `every_s`) and
        optionally the site's HVAC electricity (time, hvac_kw[, outdoor_temp]) on the same time labels.
        Raises NotEnoughHistory when the zones' history spans less than `min_days`."""
        local = {z: _local(f, timezone).drop_nulls(["occupancy"]) for z, f in frames.items()}
        local = {z: f for z, f in local.items() if not f.is_empty()}
        if not local:
            raise NotEnoughHistory("no zone has occupancy readings")
        span = max((f["time"].max() - f["time"].min()).total_seconds() for f in local.values()) / 86400
        if span < min_days:
            raise NotEnoughHistory(f"{span * 24:.1f} h of history, an outlook needs {min_days * 24:g} h")
        slot = _slot_expr(every_s)
        occupancy, by_slot = {}, {}
        building = pl.concat([f.select("time", "occupancy") for f in local.values()]).group_by("time").agg(
            pl.col("occupancy").mean())
        for zone, f in {**local, SITE: building}.items():
            g = f.with_columns((pl.col("time").dt.weekday() - 1).alias("wd"), slot.alias("slot"))
            week = g.group_by("wd", "slot").agg(pl.col("occupancy").mean())
            day = g.group_by("slot").agg(pl.col("occupancy").mean())
            occupancy[zone] = {(int(w), int(s)): float(v) for w, s, v in week.iter_rows()}
            by_slot[zone] = {int(s): float(v) for s, v in day.iter_rows()}
        outdoor_rows = pl.concat([f.select("time", "outdoor_temp") for f in local.values()]).drop_nulls()
        outdoor_rows = outdoor_rows.group_by("time").agg(pl.col("outdoor_temp").mean())
        outdoor = dict(zip(outdoor_rows["time"].to_list(), outdoor_rows["outdoor_temp"].to_list(),
                           strict=True))
        elec = None
        if site is not None and not site.is_empty():
            elec = _fit_electricity(local, _local(site, timezone), outdoor_rows)
        return Outlook(every_s, timezone, occupancy, by_slot, outdoor, elec, span)

    # -- the horizon --------------------------------------------------------------------------------------

    def times(self, at: datetime, steps: int) -> list[datetime]:
        """The time labels of the horizon's steps after a row labelled `at` (naive, site-local)."""
        start = _naive_local(at, self.timezone)
        return [start + timedelta(seconds=self.every_s * (k + 1)) for k in range(steps)]

    def occupancy_ahead(self, zone: str, at: datetime, steps: int) -> np.ndarray:
        """The zone's (or with SITE, the building's) mean occupancy at each step's time of week."""
        week, day = self.occupancy.get(zone, {}), self.by_slot.get(zone, {})
        out = []
        for t in self.times(at, steps):
            s = _slot(t, self.every_s)
            out.append(week.get((t.weekday(), s), day.get(s, 0.0)))
        return np.array(out, dtype=float)

    def outdoor_ahead(self, at: datetime, steps: int, now: float,
                      recent: Mapping[datetime, float] | None = None) -> np.ndarray:
        """Same time on the latest day with readings, plus (now - then); `recent` (time label -> outdoor
        temperature, e.g. the last day of readings) replaces the learnt history when given."""
        table = self.outdoor if recent is None else {
            _naive_local(t, self.timezone): v for t, v in recent.items()}
        start = _naive_local(at, self.timezone)
        ahead = self.times(at, steps)
        for days in range(1, LOOKBACK_DAYS + 1):
            back = timedelta(days=days)
            then = table.get(start - back)
            values = [table.get(t - back) for t in ahead]
            if then is not None and all(v is not None for v in values):
                return np.array(values, dtype=float) + (now - then)
        return np.full(steps, float(now))

    def forecast(self, zone: str, at: datetime, steps: int, outdoor_now: float,
                 recent: Mapping[datetime, float] | None = None) -> np.ndarray:
        """(steps, 2): outdoor temperature and occupancy (0..1) at each step, as `models.mpc` takes it."""
        return np.column_stack([self.outdoor_ahead(at, steps, outdoor_now, recent),
                                self.occupancy_ahead(zone, at, steps)])

    def occupied(self, zone: str, at: datetime, steps: int,
                 above: float = OCCUPIED_ABOVE) -> tuple[bool, ...]:
        """Which steps are occupied: the zone's or the building's forecast occupancy above `above`."""
        either = np.maximum(self.occupancy_ahead(zone, at, steps), self.occupancy_ahead(SITE, at, steps))
        return tuple(bool(v > above) for v in either)

    def weights(self, outdoor: np.ndarray) -> np.ndarray:
        """Price per step: HVAC electricity per kW of zone cooling at each step's outdoor temperature."""
        outdoor = np.asarray(outdoor, dtype=float)
        if self.elec_per_kw is None:
            return np.ones_like(outdoor)
        a, b = self.elec_per_kw
        return np.maximum(a + b * outdoor, MIN_WEIGHT)

    def ahead(self, zone: str, at: datetime, steps: int, outdoor_now: float,
              recent: Mapping[datetime, float] | None = None,
              ) -> tuple[np.ndarray, tuple[bool, ...], np.ndarray]:
        """Everything `models.mpc.decide` takes for one zone: forecast, occupied steps, price."""
        forecast = self.forecast(zone, at, steps, outdoor_now, recent)
        return forecast, self.occupied(zone, at, steps), self.weights(forecast[:, 0])


def _fit_electricity(frames: Mapping[str, pl.DataFrame], site: pl.DataFrame,
                     outdoor: pl.DataFrame) -> tuple[float, float] | None:
    """HVAC kW = c0 + c1 T + load (a + b T), least squares where the zones cool (load > 1 kW); (a, b), or
    None when there are too few such instants or the line gives no positive price in the range seen."""
    if "outdoor_temp" not in site.columns:
        site = site.join(outdoor, on="time", how="inner")
    load = pl.concat([f.select("time", "energy_kw") for f in frames.values()]).group_by("time").agg(
        pl.col("energy_kw").sum().alias("load"))
    data = site.drop_nulls(["hvac_kw", "outdoor_temp"]).join(load, on="time").filter(pl.col("load") > 1.0)
    if data.height < 48:
        return None
    x = data.select(pl.lit(1.0).alias("one"), pl.col("outdoor_temp"), pl.col("load"),
                    (pl.col("load") * pl.col("outdoor_temp")).alias("load_x_oa")).to_numpy()
    coef, *_ = np.linalg.lstsq(x, data["hvac_kw"].to_numpy(), rcond=None)
    a, b = float(coef[2]), float(coef[3])
    t = data["outdoor_temp"].to_numpy()
    if not np.isfinite([a, b]).all() or max(a + b * t.min(), a + b * t.max()) <= 0:
        return None
    return a, b


def _local(frame: pl.DataFrame, timezone: str) -> pl.DataFrame:
    """The frame with naive site-local time labels (aware ones converted; naive ones taken as local)."""
    dtype = frame.schema["time"]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        frame = frame.with_columns(pl.col("time").dt.convert_time_zone(timezone).dt.replace_time_zone(None))
    return frame.with_columns(pl.col("time").dt.cast_time_unit("us"))


def _naive_local(t: datetime, timezone: str) -> datetime:
    return t.astimezone(ZoneInfo(timezone)).replace(tzinfo=None) if t.tzinfo is not None else t


def _slot_expr(every_s: float) -> pl.Expr:
    seconds = (pl.col("time").dt.hour().cast(pl.Int64) * 3600 + pl.col("time").dt.minute().cast(pl.Int64) * 60
               + pl.col("time").dt.second().cast(pl.Int64))
    return (seconds // int(every_s)).cast(pl.Int64)


def _slot(t: datetime, every_s: float) -> int:
    return (t.hour * 3600 + t.minute * 60 + t.second) // int(every_s)
