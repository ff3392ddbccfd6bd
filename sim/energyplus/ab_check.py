"""Does the switchback A/B (`models.ab`) read the MPC's true saving on the EnergyPlus office? With and
without a washout, switching at midnight or at 22:00.

The truth is the paired runs: every day under the schedule and every day under the MPC, same weather
(`sim.energyplus.closed_loop.run`). The switchback is the real thing, a run that follows the schedule's
arms (`closed_loop.switched`), in both orders so every day is scored once under each arm; each period's
HVAC electricity over its scored hours is normalised by the schedule run's over the same hours (the exact
counterfactual, which a site only approximates with its baseline model), then `models.ab.evaluate` gives
the saving and its 95 % interval. Beside it, `spliced`: the same schedule built from the two full runs
(each interval from its arm's run), which has no carry-over at all, so spliced minus truth is sampling and
the choice of scored hours, switched minus spliced is carry-over.

Truth is given twice: over every hour, and over the scored hours only (a washout that drops the ML arm's
own pre-cooling would flatter it; the second figure shows whether it does).

What it finds (14 days from 2025-07-07; HVAC electricity; savings [95 % interval]). With the MPC of
closed_loop at commit 17d8fe5 (its full run saves 4.1 %: 11,639 vs 12,139 kWh; ~6 min):

    design                  switchback A/B           spliced                truth  @scored  lag-1 regr.
    midnight, no washout    +11.7 % [+8.6, +14.7]    +2.7 % [-0.1, +5.2]    4.1    4.1      +8.7 ± 7.1
    midnight, washout 3 h   +11.7 % [+8.6, +14.7]    +2.7 % [-0.0, +5.3]    4.1    4.2      +8.7 ± 7.1
    midnight, washout 6 h   +11.6 % [+8.6, +14.5]    +3.6 % [+0.7, +6.2]    4.1    5.1      +9.3 ± 7.0
    22:00, no washout       +12.0 % [+8.6, +15.0]    +2.9 % [-0.0, +5.4]    4.3    4.3      +6.1 ± 6.4
    22:00, washout 3 h      +12.0 % [+8.7, +15.0]    +3.2 % [+0.2, +5.7]    4.3    4.7      +6.3 ± 6.4
    22:00, washout 6 h      +12.1 % [+8.9, +15.0]    +3.5 % [+0.5, +6.1]    4.3    5.0      +6.6 ± 6.4
    2-day, no washout       +9.2 % [+6.5, +12.1]     +3.5 % [+1.3, +6.0]    4.1    4.1      +5.8 ± 5.1
    2-day, washout 24 h     +6.0 % [+3.0, +9.0]      +3.2 % [+0.7, +5.4]    4.1    4.2      +3.8 ± 6.9

No washout of hours and no switch hour removes the bias: the carry-over is not a morning transient. A schedule
day after an MPC day uses 55 kWh (~5 %) more than the same day in the schedule-only run, spread over
03-20 h (most at 06-10 h); an MPC day after a schedule day uses 47 kWh less than in the MPC-only run:
the MPC spends the cold the schedule stored in the mass the day before, and the next schedule day pays
the heat back. The HVAC is off at night, so nothing is released before the morning start, and hours
washed out at night hold none of it. Splicing the full runs (no carry-over) reads the truth within its
interval; the lag-1 regression (`lag1_regression`) covers it too, but ± 6-7 points on 14 days. Only
2-day periods scored after a whole-day washout bring the interval over the truth (+6.0 % [+3.0, +9.0]
against 4.2 %), still reading high: some of the heat outlasts a day. A 6 h
washout after a midnight switch also drops the MPC's own pre-cooling (04-06 h): truth on the scored
hours 5.1 % against 4.1 %. With closed_loop at commit 2ea2a83 (its MPC saves 0.5 %: 12,083 kWh),
the daily switchback reads +2.4 % [-1.1, +6.0] (washout 6 h +3.7 %, 22:00 +2.3 %), 2-day periods +0.2 %
[-2.1, +2.4] and with a 24 h washout -2.7 % [-6.8, +0.8] (truth on those hours -3.4 %).

What would work: periods of several days scored after a whole-day washout (the 2-day rows), over a
trial long enough to narrow the interval (several weeks: 14 days give 7 such periods per order), or the
lag-1 estimator over such a trial.

`python -m sim.energyplus.ab_check` (~7 min here: a 28-day exploration run to train the model, then eight
14-day runs of 6-100 s each); `--cache DIR` keeps the runs' series, so the table can be redone in seconds
(runs cached by another version of closed_loop's controller are not comparable: use a fresh DIR).
Clock: the engine's naive local standard time (EST; 22:00 here is 23:00 EDT on the wall).
"""

from __future__ import annotations

import argparse
import itertools
import time as wallclock
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from models.ab import Period, Verdict, complement, evaluate, score_periods, switchback

STEP = timedelta(minutes=15)  # the closed loop's decision interval (its site rows)


@dataclass(frozen=True)
class Series:
    """One run, per 15-minute interval indexed by the interval's start (naive local standard time): HVAC
    electricity (kWh) and the zone temperatures in occupied hours (the band's middle otherwise)."""

    hvac_kwh: pd.Series
    zone_temps: pd.DataFrame

    def save(self, path: Path) -> None:
        self.zone_temps.assign(__hvac_kwh=self.hvac_kwh).to_parquet(path)

    @staticmethod
    def load(path: Path) -> Series:
        frame = pd.read_parquet(path)
        return Series(frame.pop("__hvac_kwh"), frame)


@dataclass(frozen=True)
class Design:
    label: str
    periods: list[Period]  # one order; its complement is run too
    washout_h: float


@dataclass(frozen=True)
class Row:
    label: str
    washout_h: float
    switched: Verdict  # the real switchback (carry-over and all)
    spliced: Verdict  # from the two full runs (no carry-over)
    truth_all: float  # paired saving, every hour of the days the periods cover
    truth_scored: float  # paired saving over the scored hours only
    lag1: tuple[float, float]  # carry-over regression on the switched runs: steady-state saving, ± 95 %


def splice(periods: Sequence[Period], schedule: pd.Series, ml: pd.Series) -> pd.Series:
    """The switchback series built from full runs: each interval from the run of its period's arm
    (the schedule's outside every period)."""
    out = schedule.copy()
    for p in periods:
        if p.arm == "ml":
            inside = (out.index >= p.start) & (out.index < p.end)
            out[inside] = ml[inside]
    return out


def paired_saving(periods: Sequence[Period], schedule: pd.Series, ml: pd.Series, washout_h: float) -> float:
    """1 - MPC / schedule over the hours the periods score (washout_h=0: the periods' every hour)."""
    mask = np.zeros(len(schedule), dtype=bool)
    for p in periods:
        mask |= (schedule.index >= p.scored_from(washout_h)) & (schedule.index < p.end)
    return float(1 - ml[mask].sum() / schedule[mask].sum())


def estimate(schedule: Series, runs: Sequence[tuple[Sequence[Period], Series]],
             washout_h: float, band: tuple[float, float], seed: int = 0) -> Verdict:
    """`models.ab` over the periods of each (plan, run): energy normalised by the schedule run's over the
    same scored hours, discomfort per zone over them."""
    results = []
    for plan, series in runs:
        results += score_periods(plan, series.hvac_kwh, schedule.hvac_kwh, washout_h=washout_h,
                                 zone_temps=series.zone_temps, band=band, step_h=STEP.total_seconds() / 3600)
    return evaluate(results, seed=seed)


def lag1_regression(schedule: Series, runs: Sequence[tuple[Sequence[Period], Series]],
                    washout_h: float) -> tuple[float, float]:
    """Each period's normalised energy regressed on its arm and the previous period's (carry-over of one
    period, as in Bojinov, Simchi-Levi & Zhao 2023): the saving of ML every period against baseline every
    period is -(arm + previous arm) / intercept; returned with its normal 95 % half-width."""
    x, y = [], []
    for plan, series in runs:
        scored = {r.period: r.normalised_energy for r in score_periods(
            plan, series.hvac_kwh, schedule.hvac_kwh, washout_h=washout_h)}
        for before, p in itertools.pairwise(plan):
            if p in scored:
                x.append([1.0, p.arm == "ml", before.arm == "ml"])
                y.append(scored[p])
    a, b = np.array(x, dtype=float), np.array(y)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    resid = b - a @ coef
    cov = np.linalg.inv(a.T @ a) * (resid @ resid) / (len(b) - a.shape[1])
    g = np.array([0.0, 1.0, 1.0])
    return float(-(coef[1] + coef[2]) / coef[0]), float(1.96 * np.sqrt(g @ cov @ g) / coef[0])


def check(designs: Sequence[Design], schedule: Series, ml: Series,
          switched: dict[str, tuple[Series, Series]], band: tuple[float, float] = (22.0, 25.0)) -> list[Row]:
    """Per design: the switchback's reading (both orders) and the spliced one, against the truth.
    `switched[design.label]` holds the runs of the design's periods and of their complement."""
    rows = []
    for d in designs:
        flipped = complement(d.periods)
        real = switched[d.label]
        spliced = [(plan, Series(splice(plan, schedule.hvac_kwh, ml.hvac_kwh),
                                 _splice_frame(plan, schedule.zone_temps, ml.zone_temps)))
                   for plan in (d.periods, flipped)]
        rows.append(Row(
            d.label, d.washout_h,
            estimate(schedule, [(d.periods, real[0]), (flipped, real[1])], d.washout_h, band),
            estimate(schedule, spliced, d.washout_h, band),
            paired_saving(d.periods, schedule.hvac_kwh, ml.hvac_kwh, 0.0),
            paired_saving(d.periods, schedule.hvac_kwh, ml.hvac_kwh, d.washout_h),
            lag1_regression(schedule, [(d.periods, real[0]), (flipped, real[1])], d.washout_h),
        ))
    return rows


def _splice_frame(periods: Sequence[Period], schedule: pd.DataFrame, ml: pd.DataFrame) -> pd.DataFrame:
    out = schedule.copy()
    for p in periods:
        if p.arm == "ml":
            inside = (out.index >= p.start) & (out.index < p.end)
            out.loc[inside] = ml.loc[inside]
    return out


def table(rows: Sequence[Row]) -> str:
    lines = [f"{'design':<30} {'switchback A/B [95 % CI]':>26} {'spliced [95 % CI]':>26} "
             f"{'truth':>6} {'truth@scored':>12} {'lag-1 regression':>17} {'K·h ml/base':>12}"]
    for r in rows:
        s, p = r.switched, r.spliced
        lines.append(
            f"{r.label:<30} {s.savings:>+7.1%} [{s.ci[0]:+6.1%}, {s.ci[1]:+6.1%}] "
            f"{p.savings:>+7.1%} [{p.ci[0]:+6.1%}, {p.ci[1]:+6.1%}] {r.truth_all:>6.1%} "
            f"{r.truth_scored:>12.1%} {r.lag1[0]:>+8.1%} ± {r.lag1[1]:>5.1%} "
            f"{s.discomfort_ml:>5.2f}/{s.discomfort_baseline:<5.2f}")
    return "\n".join(lines)


# -- the simulation (pyenergyplus needed from here on) ---------------------------------------------------

def series_of(run: object, band: tuple[float, float]) -> Series:
    """A closed-loop run's per-interval series (its rows are labelled by the interval's end)."""
    from sim.energyplus.closed_loop import occupied_at

    site = run.site.to_pandas()  # type: ignore[attr-defined]
    index = pd.DatetimeIndex(site["time"]).tz_localize(None) - STEP
    hvac = pd.Series(site["hvac_kw"].to_numpy() * STEP.total_seconds() / 3600, index=index, name="hvac_kwh")
    temps = {}
    for zone, frame in run.frames.items():  # type: ignore[attr-defined]
        f = frame.to_pandas()
        temps[zone] = pd.Series(f["zone_temp"].to_numpy(),
                                index=pd.DatetimeIndex(f["time"]).tz_localize(None) - STEP)
    zone_temps = pd.DataFrame(temps).reindex(index)
    occupied = np.array([occupied_at(t) for t in zone_temps.index])
    zone_temps.loc[~occupied] = sum(band) / 2
    return Series(hvac, zone_temps)


def simulate(start: date, days: int, cache: Path | None, band: tuple[float, float] = (22.0, 25.0),
             limits: tuple[float, float] = (22.0, 26.0), seed: int = 0) -> tuple[list[Design], list[Row]]:
    from sim.energyplus.closed_loop import EVALUATED, explore_and_train, mpc, run, schedule, switched

    midnight = switchback(datetime.combine(start, datetime.min.time()), days, 24, seed)
    quiet = switchback(datetime.combine(start, datetime.min.time()), days - 1, 24, seed, switch_hour=22)
    two_day = switchback(datetime.combine(start, datetime.min.time()), days, 48, seed)
    designs = [Design("midnight, no washout", midnight, 0.0), Design("midnight, washout 3 h", midnight, 3.0),
               Design("midnight, washout 6 h", midnight, 6.0), Design("22:00, no washout", quiet, 0.0),
               Design("22:00, washout 3 h", quiet, 3.0), Design("22:00, washout 6 h", quiet, 6.0),
               Design("2-day, no washout", two_day, 0.0), Design("2-day, washout 24 h", two_day, 24.0)]
    plans = {"midnight": midnight, "22:00": quiet, "2-day": two_day}
    names = ["schedule", "mpc"] + [f"{k}-{o}" for k in plans for o in ("a", "b")]
    loaded: dict[str, Series] = {}
    if cache is not None:
        loaded = {n: Series.load(cache / f"{n}.parquet") for n in names if (cache / f"{n}.parquet").exists()}
    if len(loaded) < len(names):
        t0 = wallclock.perf_counter()
        _, session, outlook = explore_and_train(date(2025, 6, 2), 28, limits, seed, 12)
        print(f"exploration and training: {wallclock.perf_counter() - t0:.0f} s", flush=True)

        def make():
            return mpc(session, limits, band, 1.0, EVALUATED, outlook)

        controllers = {"schedule": schedule(), "mpc": make()}
        for key, plan in plans.items():
            controllers[f"{key}-a"] = switched(make(), plan)
            controllers[f"{key}-b"] = switched(make(), complement(plan))
        for name, controller in controllers.items():
            if name in loaded:
                continue
            t0 = wallclock.perf_counter()
            loaded[name] = series_of(run(controller, start, days, 12, band), band)
            print(f"{name}: {wallclock.perf_counter() - t0:.0f} s, "
                  f"{loaded[name].hvac_kwh.sum():,.0f} kWh HVAC", flush=True)
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                loaded[name].save(cache / f"{name}.parquet")
    switched_runs = {d.label: (loaded[f"{d.label.split(',')[0]}-a"], loaded[f"{d.label.split(',')[0]}-b"])
                     for d in designs}
    return designs, check(designs, loaded["schedule"], loaded["mpc"], switched_runs, band)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, default=date(2025, 7, 7))
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    t0 = wallclock.perf_counter()
    _, rows = simulate(args.start, args.days, args.cache)
    print(table(rows))
    print(f"wall {wallclock.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
