"""A/B evaluation of ML control against the building's own (baseline) control, by switchback.

ML and baseline alternate by period (a day or half a day); within each pair of consecutive periods the
order is random, so weather and weekday even out. Energy per period is normalised by the baseline
model's prediction for that period (weather and occupancy taken out); comfort is thermal discomfort in
kelvin-hours per zone (BOPTEST: the time integral of the zone temperature's distance outside the comfort
band). Savings come with a bootstrap confidence interval over periods; when ML is worse than the
thresholds allow, the verdict is to roll back.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    arm: str  # 'ml' or 'baseline'


def switchback(start: datetime, days: int, hours_per_period: int = 24, seed: int = 0) -> list[Period]:
    """Balanced pairs of periods, each pair's order drawn at random."""
    if hours_per_period not in (12, 24):
        raise ValueError("switch by the day (24) or half-day (12)")
    rng = random.Random(seed)
    length = timedelta(hours=hours_per_period)
    count = days * 24 // hours_per_period
    arms: list[str] = []
    while len(arms) < count:
        arms += rng.sample(["ml", "baseline"], 2)
    return [Period(start + i * length, start + (i + 1) * length, arm) for i, arm in enumerate(arms[:count])]


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
