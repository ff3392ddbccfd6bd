"""Closed-loop evaluation on the EnergyPlus building, at the physics level (no BACnet): the same July days
in Tampa under the building's own schedule control, a fixed 24.5 °C setpoint, the previous one-step
policy, and the MPC (`models.mpc`), each deciding every 15 minutes with the feature builder the edge
uses. The models are trained first on an exploration run (June, setpoints drawn at random per zone within
the ML limits) that never sees the evaluation days; the model family is chosen there by multi-step error
on held-back June days (`models.setpoint.select`).

Conventions (say them with every figure):
- Occupied hours are the prototype's own: its thermostat schedule at the occupied cooling setpoint
  (24.0 °C; weekdays 06-21 h, Saturdays 06-16 h, Sundays never). Comfort (K·h outside the band, per
  zone) and humid zone-hours (> 60 % RH) count only then, at every EnergyPlus step.
- Controllers act while the building's HVAC is on by its own schedule (occupied, plus its morning start
  ramp from 04 h, so pre-cooling is possible) and release the zone to the schedule otherwise.
- Peak demand is the highest 15-minute mean of whole-building electricity (Electricity:Facility).
- HVAC electricity is EnergyPlus's Electricity:HVAC meter (DX compressors, fans, pumps).
- `energy_kw` fed to the models is each zone's sensible cooling delivered (thermal), the per-zone
  quantity the site exposes (``…-CLG-KW``); electricity is judged on the meters.

What it finds (14 days from 2025-07-07, 12 steps/h, band 22-25 °C; `python -m sim.energyplus.closed_loop`,
~6.5 min): the schedule uses 12,139 kWh of HVAC electricity (0.30 K·h/zone discomfort, 79 humid
zone-hours); fixed 24.5 °C saves 3.9 % and 25.0 °C 6.5 %, but both are less comfortable than the schedule
(0.44 and 0.70 K·h/zone): the DX coils mostly treat Tampa's outdoor air, which no zone setpoint changes,
so >= 13 % is out of reach through zone cooling setpoints alone. The family chosen among the physical ones
(piecewise-ridge; poly-2, random forest and MLP fail the setpoint-response check on 52-89 % of held-back
instants) drives the MPC with the outlook the edge learns (`models.outlook`: occupancy by time of week,
outdoor temperature ahead, HVAC electricity per kW of cooling). Occupied steps from forecast occupancy
(> 7.5 %, zone or building), as the edge must: 2.0 % saved (11,894 kWh), discomfort 0.36 vs 0.30
K·h/zone, peak 160.8 vs 170.1 kW, 70 vs 79 humid zone-hours; switchback A/B +8.5 % [+5.9 %, +11.3 %]
(biased: see below). Those steps include 05-06 h on working days (10 % of people in, the thermostat
schedule not yet occupied); told the thermostat schedule instead (`mpc(known_schedule=True)`, which the
edge cannot be) the MPC saved 4.1 % at 0.41 K·h/zone (measured before the MPC paid for its later moves
too): the hour's pull-down is most of the saving, bought with morning discomfort. (Charging only a plan's
first move made it put moves off for ever: 0.5 % then.) Whole-day switchback periods carry over
(a warm building's night and morning cost falls on the next day, whatever its arm): the full runs are
the truth here.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time as wallclock
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import onnxruntime as ort
import polars as pl

from models.ab import Period, PeriodResult, Verdict, complement, evaluate, switchback
from models.features import FEATURES, build_features
from models.mpc import MpcConfig, ZoneState, decide, session_predictor
from models.outlook import Outlook
from models.policy import best_setpoint, candidates
from models.setpoint import Trained, export, select
from sim.energyplus.engine import EnergyPlusBuilding, Sample, zone_key

TZ = "UTC"  # the engine's clock is naive local standard time; the features need only consistency
OCCUPIED_BELOW = 24.5  # schedule cooling setpoint at or below: occupied (prototype: 24.0 °C)
HVAC_ON_BELOW = 26.5  # schedule cooling setpoint below: the HVAC is on (occupied or start ramp; setback 26.7)
HUMID_RH = 60.0
EVERY_S = 900.0
DAY_S = 86400.0


@dataclass
class Moment:
    """What a controller sees at a decision instant."""

    time: datetime
    sample: Sample
    zones: list[str]
    history: dict[str, list[dict]]  # per zone: one row per interval, INPUTS + time
    commanded: dict[str, float | None]  # per zone: the controller's standing command (None: schedule)

    def hvac_on(self, zone: str) -> bool:
        return self.sample[zone_key(zone, "cooling_sp_schedule")] < HVAC_ON_BELOW

    def occupied(self, zone: str) -> bool:
        return self.sample[zone_key(zone, "cooling_sp_schedule")] <= OCCUPIED_BELOW


Controller = Callable[[Moment], dict[str, float | None]]


@dataclass
class Kpis:
    hvac_kwh: float
    elec_kwh: float
    peak_kw: float  # highest 15-minute mean, whole building
    discomfort_kh_per_zone: float  # mean over zones, occupied hours
    discomfort_kh_worst_zone: float
    humid_zone_hours: float  # zone-hours above 60 % RH in occupied hours, summed over zones
    changes_per_zone_day: float  # commanded setpoint changes (a write or a release), per zone and day
    mean_occupied_temp: float
    wall_s: float = 0.0


@dataclass
class LoopRun:
    kpis: Kpis
    day_hvac_kwh: dict[date, float]
    day_discomfort_kh: dict[date, float]  # per zone (mean)
    frames: dict[str, pl.DataFrame] = field(repr=False)  # per zone, the interval rows (INPUTS + time)
    site: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)  # time, hvac_kw, outdoor_temp


def run(controller: Controller, start: date, days: int, timesteps_per_hour: int = 12,
        band: tuple[float, float] = (22.0, 25.0),
        building: Callable[..., EnergyPlusBuilding] = EnergyPlusBuilding) -> LoopRun:
    """Step the building `days` days from `start`, letting the controller command every zone's cooling
    setpoint every 15 minutes; collect the KPIs (see the module docstring). `building` makes the (not yet
    started) building from start, days and timesteps_per_hour: a variant of it (an IDF edit, more output
    variables; `sim.energyplus.levers`) is judged by the same code."""
    t0 = wallclock.perf_counter()
    steps = round(EVERY_S * timesteps_per_hour / 3600)
    step_h = 1 / timesteps_per_hour
    b = building(start=start, days=days, timesteps_per_hour=timesteps_per_hour).start()
    try:
        zones = list(b.layout.zones)
        history: dict[str, list[dict]] = {z: [] for z in zones}
        site: list[dict] = []
        commanded: dict[str, float | None] = dict.fromkeys(zones)
        changes = 0
        day_hvac: dict[date, float] = defaultdict(float)
        day_dis: dict[date, float] = defaultdict(float)
        dis_zone = dict.fromkeys(zones, 0.0)
        humid = occupied_temp_sum = occupied_n = 0.0
        hvac = elec = peak = 0.0
        while not b.finished:
            moment = Moment(b.time, b.sample, zones, history, commanded)
            for zone, value in controller(moment).items():
                if value != commanded[zone]:
                    changes += 1
                    commanded[zone] = value
                    b.override(zone, "cooling", value)
            before = b.sample
            samples = b.run(steps, keep_every=1)
            if len(samples) < steps:
                break
            d_hvac = b.sample["site/hvac_kwh"] - before["site/hvac_kwh"]
            d_elec = b.sample["site/elec_kwh"] - before["site/elec_kwh"]
            hvac, elec = hvac + d_hvac, elec + d_elec
            peak = max(peak, d_elec * 3600 / EVERY_S)
            day = (b.time - timedelta(seconds=1)).date()
            day_hvac[day] += d_hvac
            for s in samples:
                for zone in zones:
                    if s[zone_key(zone, "cooling_sp_schedule")] > OCCUPIED_BELOW:
                        continue
                    temp = s[zone_key(zone, "temp")]
                    outside = max(band[0] - temp, 0.0, temp - band[1]) * step_h
                    dis_zone[zone] += outside
                    day_dis[day] += outside / len(zones)
                    humid += step_h * (s[zone_key(zone, "rh")] > HUMID_RH)
                    occupied_temp_sum += temp
                    occupied_n += 1
            now = b.sample
            for zone in zones:
                history[zone].append({
                    "time": now.time.replace(tzinfo=ZoneInfo(TZ)),
                    "zone_temp": now[zone_key(zone, "temp")],
                    "cooling_setpoint": now[zone_key(zone, "cooling_sp")],
                    "energy_kw": float(np.mean([s[zone_key(zone, "cooling_load_kw")] for s in samples])),
                    "occupancy": now[zone_key(zone, "occupancy_pct")] / 100.0,
                    "outdoor_temp": now["site/oa_temp"],
                    "zone_rh": now[zone_key(zone, "rh")],
                })
            site.append({"time": now.time.replace(tzinfo=ZoneInfo(TZ)), "hvac_kw": d_hvac * 3600 / EVERY_S,
                         "outdoor_temp": now["site/oa_temp"]})
    finally:
        b.close()
    kpis = Kpis(
        hvac_kwh=hvac, elec_kwh=elec, peak_kw=peak,
        discomfort_kh_per_zone=sum(dis_zone.values()) / len(zones),
        discomfort_kh_worst_zone=max(dis_zone.values()),
        humid_zone_hours=humid, changes_per_zone_day=changes / len(zones) / days,
        mean_occupied_temp=occupied_temp_sum / max(occupied_n, 1),
        wall_s=wallclock.perf_counter() - t0,
    )
    frames = {z: pl.DataFrame(rows) for z, rows in history.items()}
    return LoopRun(kpis, dict(day_hvac), dict(day_dis), frames, pl.DataFrame(site))


# -- controllers ----------------------------------------------------------------------------------------

def schedule() -> Controller:
    """The building's own control: never command anything."""
    return lambda moment: {}


def fixed(setpoint: float = 24.5) -> Controller:
    """A fixed cooling setpoint in occupied hours, the schedule otherwise."""
    return lambda m: {z: (setpoint if m.occupied(z) else None) for z in m.zones}


def explorer(low: float, high: float, seed: int, step_c: float = 0.5) -> Controller:
    """Random setpoints per zone (held 1-4 h, a quarter of the time the schedule's own) while the HVAC is
    on: data that shows what a setpoint, and a change of it, does."""
    rng = random.Random(seed)
    levels = candidates(low, high, step_c)
    until: dict[str, datetime] = {}
    value: dict[str, float | None] = {}

    def control(m: Moment) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for z in m.zones:
            if not m.hvac_on(z):
                out[z] = None
                continue
            if m.time >= until.get(z, datetime.min):
                until[z] = m.time + timedelta(hours=rng.randint(1, 4))
                value[z] = None if rng.random() < 0.25 else rng.choice(levels)
            out[z] = value[z]
        return out

    return control


def _feature_row(rows: list[dict]) -> np.ndarray | None:
    if len(rows) < 2:
        return None
    features = build_features(pl.DataFrame(rows[-3:]), TZ, with_targets=False).tail(1)
    return None if features.is_empty() else features.select(FEATURES).to_numpy()[0]


def one_step(session: ort.InferenceSession, limits: tuple[float, float], band: tuple[float, float],
             max_step: float = 1.0, margin: float = 0.3) -> Controller:
    """The previous policy (`models.policy.best_setpoint`): one interval ahead, aiming `margin` inside the
    band, the same margin and step limit the MPC gets."""
    aim = (band[0] + margin, band[1] - margin)

    def control(m: Moment) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for z in m.zones:
            row = _feature_row(m.history[z]) if m.hvac_on(z) else None
            if row is None:
                out[z] = None
                continue
            present = m.sample[zone_key(z, "cooling_sp")]
            options = candidates(*limits, present=present, max_change=max_step)
            frame = pl.DataFrame([row], schema=list(FEATURES), orient="row")
            out[z] = best_setpoint(session, frame, options, aim).setpoint
        return out

    return control


def occupied_at(t: datetime) -> bool:
    """The prototype's occupied hours, known ahead as any building's schedule is: weekdays 06-21 h,
    Saturdays 06-16 h (its thermostat schedule; `Moment.occupied` reads the same from the building)."""
    wd, h = t.weekday(), t.hour
    return (wd < 5 and 6 <= h < 21) or (wd == 5 and 6 <= h < 16)


def mpc(session: ort.InferenceSession, limits: tuple[float, float], band: tuple[float, float],
        max_step: float = 1.0, config: MpcConfig | None = None, outlook: Outlook | None = None,
        known_schedule: bool = False) -> Controller:
    """`models.mpc.decide` for every zone whose HVAC is on, in one batch; with an `outlook`
    (`models.outlook`, as the edge runs it), forecasts of outdoor temperature and occupancy, comfort
    bound only in occupied steps (the outlook's: forecast occupancy; `known_schedule`: the prototype's
    thermostat schedule, `occupied_at`, which the edge does not know), and the objective in HVAC
    electricity. Its outdoor forecast reads the run's own last day (the learnt history is the
    exploration's, weeks before)."""
    config = config or MpcConfig()
    predict = session_predictor(session)
    per_day = round(DAY_S / EVERY_S)

    def control(m: Moment) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        states, names = [], []
        price = None
        for z in m.zones:
            row = _feature_row(m.history[z]) if m.hvac_on(z) else None
            if row is None:
                out[z] = None
                continue
            present = m.sample[zone_key(z, "cooling_sp")]
            forecast = occupied = None
            if outlook is not None:
                rows = m.history[z][-(per_day + 1):]
                recent = {r["time"]: r["outdoor_temp"] for r in rows}
                forecast, occupied, weights = outlook.ahead(z, m.time, config.horizon_steps,
                                                            rows[-1]["outdoor_temp"], recent)
                price = weights if price is None else price  # one site, one outdoor temperature
                if known_schedule:
                    occupied = tuple(occupied_at(m.time + timedelta(seconds=EVERY_S * (k + 1)))
                                     for k in range(config.horizon_steps))
            states.append(ZoneState(row, m.history[z][-1]["energy_kw"], present, *limits, max_step,
                                    forecast, occupied))
            names.append(z)
        for z, plan in zip(names, decide(predict, states, band, config, price), strict=True):
            out[z] = plan.setpoint
        return out

    return control


def switched(ml: Controller, periods: list[Period]) -> Controller:
    """The switchback: `ml` in the ML periods, the schedule (everything released) in baseline ones."""

    def control(m: Moment) -> dict[str, float | None]:
        arm = next((p.arm for p in periods if p.start <= m.time < p.end), "baseline")
        return ml(m) if arm == "ml" else dict.fromkeys(m.zones)

    return control


# -- the evaluation -------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    kpis: dict[str, Kpis]
    verdict: Verdict
    trained: Trained
    comfort_band: tuple[float, float]
    days: int
    start: date
    exploration: tuple[date, int]

    def savings(self, name: str) -> float:
        return 1 - self.kpis[name].hvac_kwh / self.kpis["schedule"].hvac_kwh

    def table(self) -> str:
        head = (f"{'controller':<10} {'HVAC kWh':>9} {'saved':>6} {'bldg kWh':>9} {'peak kW':>8} "
                f"{'K·h/zone':>8} {'worst':>6} {'RH>60 zh':>8} {'chg/z/d':>7} {'T occ':>6}")
        lines = [head]
        for name, k in self.kpis.items():
            lines.append(
                f"{name:<10} {k.hvac_kwh:>9,.0f} {self.savings(name):>6.1%} {k.elec_kwh:>9,.0f} "
                f"{k.peak_kw:>8.1f} {k.discomfort_kh_per_zone:>8.2f} {k.discomfort_kh_worst_zone:>6.2f} "
                f"{k.humid_zone_hours:>8.1f} {k.changes_per_zone_day:>7.1f} {k.mean_occupied_temp:>6.2f}")
        v = self.verdict
        lines.append(f"A/B (switchback, both orders, MPC vs schedule): savings {v.savings:+.1%} "
                     f"[95 % CI {v.ci[0]:+.1%}, {v.ci[1]:+.1%}], discomfort {v.discomfort_ml:.2f} vs "
                     f"{v.discomfort_baseline:.2f} K·h/zone/day, {v.reason}")
        return "\n".join(lines)

    def models(self) -> str:
        cells = " ".join(f"{'E' + h + ' kW':>8} {'T' + h + ' K':>8}" for h in ("1", "4", "8"))
        lines = [f"{'family':<14} {cells}"]
        for c in self.trained.candidates:
            m = c["multistep_mae"]
            lines.append(f"{c['family']:<14} " + " ".join(
                f"{m[h]['energy_kw_next']:>8.3f} {m[h]['zone_temp_next']:>8.3f}" for h in ("1", "4", "8")))
        lines.append(f"chosen: {self.trained.family}")
        return "\n".join(lines)

    def card_kpis(self) -> dict:
        """What the model's card records (`central.registry.record_closed_loop`, `models.card.KPIS`): every
        controller's KPIs, and the A/B module's savings of the MPC against the schedule."""
        def card(k: Kpis) -> dict[str, float]:
            return {"hvac_kwh": k.hvac_kwh, "site_kwh": k.elec_kwh, "peak_kw": k.peak_kw,
                    "discomfort_kh": k.discomfort_kh_per_zone, "humid_zone_hours": k.humid_zone_hours,
                    "setpoint_changes": k.changes_per_zone_day}

        low, high = self.verdict.ci
        return {"controllers": {name: card(k) for name, k in self.kpis.items()},
                "savings_pct": 100 * self.verdict.savings, "savings_interval_pct": [100 * low, 100 * high],
                "savings_of": "HVAC electricity", "model_arm": "mpc", "baseline_arm": "schedule",
                "method": (f"EnergyPlus medium office, Tampa TMY, {self.days} days from {self.start} at the"
                           " physics level (sim.energyplus.closed_loop); discomfort K·h per zone in occupied"
                           f" hours outside {self.comfort_band[0]:g}-{self.comfort_band[1]:g} °C; savings:"
                           " daily switchback in both orders")}

    def to_dict(self) -> dict:
        return {"kpis": {n: asdict(k) for n, k in self.kpis.items()},
                "savings": {n: self.savings(n) for n in self.kpis},
                "ab": {"savings": self.verdict.savings, "ci": self.verdict.ci, "reason": self.verdict.reason,
                       "discomfort_ml": self.verdict.discomfort_ml,
                       "discomfort_baseline": self.verdict.discomfort_baseline},
                "family": self.trained.family, "candidates": list(self.trained.candidates),
                "band": self.comfort_band, "days": self.days, "start": str(self.start)}


def train_on_exploration(start: date, days: int, limits: tuple[float, float], seed: int,
                         timesteps_per_hour: int, families: tuple[str, ...] | None = None,
                         ) -> tuple[Trained, ort.InferenceSession]:
    """Explore, choose the family by multi-step error on the held-back days, export (parity-checked)."""
    trained, session, _ = explore_and_train(start, days, limits, seed, timesteps_per_hour, families)
    return trained, session


def explore_and_train(start: date, days: int, limits: tuple[float, float], seed: int,
                      timesteps_per_hour: int, families: tuple[str, ...] | None = None,
                      ) -> tuple[Trained, ort.InferenceSession, Outlook]:
    """`train_on_exploration`, and the MPC's `Outlook` learnt from the same exploration run."""
    explored = run(explorer(*limits, seed), start, days, timesteps_per_hour)
    zones = [build_features(f, TZ) for f in explored.frames.values()]
    trained = select(zones, EVERY_S, **({"families": families} if families else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "closed-loop.onnx"
        export(trained, path, version="closed-loop")
        session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    return trained, session, Outlook.learn(explored.frames, explored.site, every_s=EVERY_S, timezone=TZ)


# the MPC as evaluated: setpoints on a quarter-kelvin grid, aiming a quarter kelvin inside the band
EVALUATED = MpcConfig(step_c=0.25, margin_c=0.25)


def evaluate_controllers(start: date = date(2025, 7, 7), days: int = 14,
                         exploration: tuple[date, int] = (date(2025, 6, 2), 28),
                         band: tuple[float, float] = (22.0, 25.0), limits: tuple[float, float] = (22.0, 26.0),
                         max_step: float = 1.0, timesteps_per_hour: int = 12, seed: int = 0,
                         families: tuple[str, ...] | None = None, controllers: tuple[str, ...] = (
                             "schedule", "fixed-24.5", "fixed-25.0", "one-step", "mpc"),
                         config: MpcConfig | None = None) -> Evaluation:
    """Train, then run each controller on the same days, then the switchback A/B of MPC vs schedule in
    both orders (every day seen once under each arm; each period's HVAC energy normalised by the
    schedule run's on that day, the exact counterfactual here)."""
    config = config or EVALUATED
    trained, session, outlook = explore_and_train(*exploration, limits, seed, timesteps_per_hour, families)
    make = {
        "schedule": lambda: schedule(),
        "fixed-24.5": lambda: fixed(24.5),
        "fixed-25.0": lambda: fixed(25.0),
        "one-step": lambda: one_step(session, limits, band, max_step, config.margin_c),
        "mpc": lambda: mpc(session, limits, band, max_step, config, outlook),
    }
    runs = {name: run(make[name](), start, days, timesteps_per_hour, band) for name in controllers}
    periods = switchback(datetime.combine(start, datetime.min.time()), days, 24, seed)
    flipped = complement(periods)
    base = runs["schedule"] if "schedule" in runs else run(schedule(), start, days, timesteps_per_hour, band)
    results = []
    for plan in (periods, flipped):
        arm_run = run(switched(make["mpc"](), plan), start, days, timesteps_per_hour, band)
        for p in plan:
            d = p.start.date()
            results.append(PeriodResult(p, arm_run.day_hvac_kwh[d] / base.day_hvac_kwh[d],
                                        arm_run.day_discomfort_kh.get(d, 0.0)))
    verdict = evaluate(results)
    return Evaluation({n: r.kpis for n, r in runs.items()}, verdict, trained, band, days, start, exploration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2025, 7, 7))
    parser.add_argument("--explore-days", type=int, default=28)
    parser.add_argument("--timesteps", type=int, default=12)
    parser.add_argument("--band-high", type=float, default=25.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    t0 = wallclock.perf_counter()
    ev = evaluate_controllers(args.start, args.days, (date(2025, 6, 2), args.explore_days),
                              band=(22.0, args.band_high), timesteps_per_hour=args.timesteps)
    print(ev.models())
    print(ev.table())
    print(f"wall {wallclock.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(ev.to_dict(), indent=1, default=str))


if __name__ == "__main__":
    main()
