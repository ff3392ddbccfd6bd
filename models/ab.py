"""A/B evaluation of ML control against the building's own (baseline) control, by switchback.

ML and baseline alternate by period (half a day, a day or more); within each pair of consecutive periods the
order is random, so weather and weekday even out. Energy per period is normalised by the baseline
model's prediction for that period (weather and occupancy taken out); comfort is thermal discomfort in
kelvin-hours per zone (BOPTEST: the time integral of the zone temperature's distance outside the comfort
band). Savings come with a bootstrap confidence interval over periods; when ML is worse than the
thresholds allow, the verdict is to roll back.

Carry-over: a building's mass remembers the previous arm. Field switchbacks handle it with a washout
(`score_periods(..., washout_h=…)`: the first hours of each period are scored to neither arm; the edge
still follows the schedule then), a switch at a quiet hour (`switchback(..., switch_hour=22, tz=…)`:
periods start at that local wall-clock hour) and periods of whole days (`hours_per_period=48`, scored
after a day's washout). Whether they work depends on how long the building remembers: on the EnergyPlus
office (`sim.energyplus.ab_check`) the stored heat comes back over the whole next occupied day, so daily
periods read an MPC's 4.1 % saving as +11.7 % with or without a washout of 3 or 6 h, at midnight or 22:00;
2-day periods after a 24 h washout read +6.0 % [+3.0, +9.0].
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    arm: str  # 'ml' or 'baseline'

    def scored_from(self, washout_h: float = 0.0) -> datetime:
        """Where scoring starts: `washout_h` hours after the switch (never past the period's end)."""
        return min(self.start + timedelta(hours=washout_h), self.end)


def complement(periods: Sequence[Period]) -> list[Period]:
    """The same periods with the arms swapped: run after `periods`, every period is seen under both arms
    (same weather, same weekday), which a simulation can afford and a building cannot."""
    return [Period(p.start, p.end, "baseline" if p.arm == "ml" else "ml") for p in periods]


def switchback(start: datetime, days: int, hours_per_period: int = 24, seed: int = 0, *,
               switch_hour: int | None = None, tz: tzinfo | str | None = None) -> list[Period]:
    """Balanced pairs of periods, each pair's order drawn at random.

    Periods of whole days (48, 72 h…) are for buildings whose mass carries an arm into the next day:
    with a washout of a day, each period's later days are scored (see `sim.energyplus.ab_check`).
    Without `switch_hour`, periods start at `start` and last exactly `hours_per_period` (the behaviour
    callers relied on). With it, they start at that local wall-clock hour (and 12 h later, for half days),
    from the first such instant at or after `start`: the switch happens when the building is quiet. Local
    means `tz` (a zone or its name; default `start`'s own tzinfo, or the naive wall clock); boundaries are
    wall-clock, so a period spanning a DST change lasts 23 or 25 h, and an hour that does not exist that
    day (spring forward) falls an hour later. Periods keep `start`'s tzinfo (an aware start: instants).
    """
    if hours_per_period not in (12, 24) and (hours_per_period <= 0 or hours_per_period % 24):
        raise ValueError("switch by the day (24), half-day (12) or whole days (48, 72, …)")
    rng = random.Random(seed)
    count = days * 24 // hours_per_period
    arms: list[str] = []
    while len(arms) < count:
        arms += rng.sample(["ml", "baseline"], 2)
    if switch_hour is None:
        length = timedelta(hours=hours_per_period)
        bounds = [start + i * length for i in range(count + 1)]
    else:
        bounds = _local_bounds(start, count, hours_per_period, switch_hour, tz)
    return [Period(bounds[i], bounds[i + 1], arm) for i, arm in enumerate(arms[:count])]


def _local_bounds(start: datetime, count: int, hours_per_period: int, switch_hour: int,
                  tz: tzinfo | str | None) -> list[datetime]:
    """`count + 1` period boundaries at the local hours `switch_hour` (+12), the first at or after start."""
    if not 0 <= switch_hour <= 23:
        raise ValueError(f"switch_hour must be 0..23, not {switch_hour}")
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    if zone is None and start.tzinfo is not None:
        zone = start.tzinfo
    if zone is not None and start.tzinfo is None:
        raise ValueError("a time zone needs an aware start (a naive start is read on its own wall clock)")
    local = start.astimezone(zone) if zone is not None else start
    hours = [switch_hour] if hours_per_period >= 24 else sorted({switch_hour, (switch_hour + 12) % 24})
    every = max(hours_per_period // 24, 1)  # whole-day periods: every n-th daily boundary
    bounds: list[datetime] = []
    day = local.date() - timedelta(days=1)
    while len(bounds) < (count * every) + 1:
        for hour in hours:
            wall = datetime.combine(day, time(hour), tzinfo=zone)
            if zone is not None:  # normalise through UTC: a nonexistent wall time moves past the gap
                wall = wall.astimezone(UTC).astimezone(zone)
            if wall >= local and len(bounds) < count * every + 1:
                bounds.append(wall.astimezone(start.tzinfo) if zone is not None else wall)
        day += timedelta(days=1)
    return bounds[::every]


def discomfort_kh(zone_temps: pd.DataFrame, band: tuple[float, float], step_h: float) -> float:
    """Kelvin-hours outside the band, summed over zones (columns) and time (rows `step_h` apart)."""
    low, high = band
    outside = (low - zone_temps).clip(lower=0) + (zone_temps - high).clip(lower=0)
    return float(outside.to_numpy().sum() * step_h)


@dataclass(frozen=True)
class PeriodResult:
    period: Period
    normalised_energy: float  # actual / baseline prediction
    discomfort_kh_per_zone: float


def score_periods(periods: Sequence[Period], energy: pd.Series, reference: pd.Series, *,
                  washout_h: float = 0.0, zone_temps: pd.DataFrame | None = None,
                  band: tuple[float, float] = (22.0, 25.0), step_h: float = 1.0,
                  zones: int | None = None) -> list[PeriodResult]:
    """Each period's energy over its scored hours (after the washout) divided by the reference's over the
    same hours, and its discomfort per zone over the same hours.

    `energy` and `reference` (e.g. the baseline model's prediction, or in a simulation the counterfactual
    run) are per interval, indexed by the interval's start; `zone_temps` one column per zone, rows `step_h`
    hours apart. A washout drops the first `washout_h` hours after each switch from both arms, so the
    previous arm's carry-over is scored to neither; the same hours go for energy and comfort. A period with
    no reference energy in its scored hours is left out (nothing to normalise by).
    """
    results = []
    for p in periods:
        lo = p.scored_from(washout_h)
        inside = (energy.index >= lo) & (energy.index < p.end)
        ref = (reference.index >= lo) & (reference.index < p.end)
        expected = float(reference[ref].sum())
        if expected <= 0:
            continue
        discomfort = 0.0
        if zone_temps is not None:
            rows = (zone_temps.index >= lo) & (zone_temps.index < p.end)
            discomfort = discomfort_kh(zone_temps[rows], band, step_h) / max(zones or zone_temps.shape[1], 1)
        results.append(PeriodResult(p, float(energy[inside].sum()) / expected, discomfort))
    return results


@dataclass(frozen=True)
class Verdict:
    savings: float  # 1 - mean normalised energy (ml) / mean (baseline)
    ci: tuple[float, float]
    discomfort_ml: float  # mean K·h per zone per period
    discomfort_baseline: float
    periods: tuple[int, int]  # (ml, baseline)
    rollback: bool
    reason: str


def evaluate(results: Sequence[PeriodResult], *, max_energy_loss: float = 0.02,
             max_extra_discomfort_kh: float = 0.5, confidence: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> Verdict:
    """Savings with a percentile-bootstrap interval (periods resampled within each arm).

    Roll back when ML uses more energy than `max_energy_loss` (savings < −max) or adds more than
    `max_extra_discomfort_kh` K·h per zone and period — judged on the point estimates, so that a
    clearly worse model is caught even before the interval is narrow.
    """
    ml = np.array([r.normalised_energy for r in results if r.period.arm == "ml"])
    base = np.array([r.normalised_energy for r in results if r.period.arm == "baseline"])
    if len(ml) < 2 or len(base) < 2:
        raise ValueError(f"need at least 2 periods of each arm, have {len(ml)} ML and {len(base)} baseline")
    rng = np.random.default_rng(seed)
    draws = 1 - (rng.choice(ml, (resamples, len(ml))).mean(axis=1)
                 / rng.choice(base, (resamples, len(base))).mean(axis=1))
    tail = (1 - confidence) / 2
    ci = (float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail)))
    savings = float(1 - ml.mean() / base.mean())
    comfort_ml = float(np.mean([r.discomfort_kh_per_zone for r in results if r.period.arm == "ml"]))
    comfort_base = float(np.mean([r.discomfort_kh_per_zone for r in results if r.period.arm == "baseline"]))
    reasons = []
    if savings < -max_energy_loss:
        reasons.append(f"ML used {-savings:.1%} more energy than baseline control "
                       f"(limit {max_energy_loss:.0%})")
    if comfort_ml - comfort_base > max_extra_discomfort_kh:
        reasons.append(f"ML added {comfort_ml - comfort_base:.2f} K·h of discomfort per zone and period "
                       f"(limit {max_extra_discomfort_kh:g})")
    return Verdict(savings, ci, comfort_ml, comfort_base, (len(ml), len(base)), bool(reasons),
                   "; ".join(reasons) or "ML within limits")
