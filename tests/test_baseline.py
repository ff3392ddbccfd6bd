"""The M&V baseline against synthetic buildings whose true consumption we wrote down ourselves.

The known building: a per-hour-of-week base load, an occupied adder, heating below 15 °C (steeper below
10 °C), cooling above 20 °C (steeper above 25 °C, and much steeper when occupied), small noise. Occupancy
follows a weekday 08–18 schedule, except on holidays, so the occupied/unoccupied split is not just a
function of the hour of week.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from models.baseline import (
    BaselineModel,
    avoided_energy,
    fit_baseline,
    fractional_savings_uncertainty,
    metrics,
)

TZ = "Europe/Zurich"
START = pd.Timestamp("2025-04-07", tz=TZ)  # a Monday, after the spring clock change
BASELINE_HOURS = 90 * 24
HOLDOUT_HOURS = 30 * 24
NOISE_KWH = 1.0


@dataclass(frozen=True)
class Building:
    frame: pd.DataFrame  # energy_kwh (with noise), outdoor_temp_c, occupancy
    true_kwh: pd.Series  # the noise-free consumption

    @property
    def baseline(self) -> pd.DataFrame:
        return self.frame.iloc[:BASELINE_HOURS]

    @property
    def holdout(self) -> pd.DataFrame:
        return self.frame.iloc[BASELINE_HOURS:]


def synthetic_building(seed: int = 7) -> Building:
    rng = np.random.default_rng(seed)
    index = pd.date_range(START, periods=BASELINE_HOURS + HOLDOUT_HOURS, freq="h")
    hour, weekday = index.hour.to_numpy(), index.day_of_week.to_numpy()
    day = np.arange(len(index)) // 24
    hour_of_week = weekday * 24 + hour

    temperature = 17 + 6 * np.sin(2 * np.pi * (hour - 9) / 24) + weather(rng, len(index))
    holiday = day % 11 == 3  # falls on every weekday within the baseline
    scheduled = (weekday < 5) & (hour >= 8) & (hour < 18) & ~holiday
    occupancy = np.where(scheduled, rng.uniform(0.6, 1.0, len(index)), rng.uniform(0.0, 0.2, len(index)))

    base_load = 30 + 8 * ((np.arange(168) % 24 >= 7) & (np.arange(168) % 24 <= 20)) + rng.uniform(-3, 3, 168)
    occupied_adder = 45 + rng.uniform(0, 10, 168)
    heating = 2.0 * np.maximum(15 - temperature, 0) + 1.5 * np.maximum(10 - temperature, 0)
    cooling_unoccupied = 0.8 * np.maximum(temperature - 20, 0) + 0.7 * np.maximum(temperature - 25, 0)
    cooling_occupied = 2.5 * np.maximum(temperature - 20, 0) + 1.5 * np.maximum(temperature - 25, 0)
    true_kwh = (
        base_load[hour_of_week]
        + heating
        + np.where(scheduled, occupied_adder[hour_of_week] + cooling_occupied, cooling_unoccupied)
    )
    frame = pd.DataFrame(
        {
            "energy_kwh": true_kwh + rng.normal(0, NOISE_KWH, len(index)),
            "outdoor_temp_c": temperature,
            "occupancy": occupancy,
        },
        index=index,
    )
    return Building(frame=frame, true_kwh=pd.Series(true_kwh, index=index))


def weather(rng: np.random.Generator, hours: int) -> np.ndarray:
    """Slow AR(1) weather swings, sd about 6 K, stationary: the holdout is like the baseline."""
    phi = 0.98
    shocks = rng.normal(0, 6 * math.sqrt(1 - phi**2), hours)
    swings = np.empty(hours)
    swings[0] = rng.normal(0, 6)
    for i in range(1, hours):
        swings[i] = phi * swings[i - 1] + shocks[i]
    return swings


@pytest.fixture(scope="module")
def building() -> Building:
    return synthetic_building()


@pytest.fixture(scope="module")
def model(building: Building) -> BaselineModel:
    return fit_baseline(building.baseline)


def slope_at(regime_knots: tuple[float, ...], slopes: tuple[float, ...], temperature: float) -> float:
    return slopes[int(np.searchsorted(regime_knots, temperature, side="right"))]


def test_fit_recovers_the_known_building(model: BaselineModel) -> None:
    fit = model.metrics
    assert fit.n == BASELINE_HOURS
    assert model.dropped_rows == 0
    assert fit.cv_rmse < 0.05
    assert abs(fit.nmbe) < 0.005
    assert fit.r_squared > 0.98
    assert fit.meets_guideline_14
    # the temperature response, segment by segment: occupied cooling above 25 °C is 2.5 + 1.5 kWh/K,
    # unoccupied heating below 10 °C is −(2.0 + 1.5) kWh/K
    occupied, unoccupied = model.occupied, model.unoccupied
    assert slope_at(occupied.knots, occupied.temperature_slopes, 27.0) == pytest.approx(4.0, abs=0.2)
    assert slope_at(unoccupied.knots, unoccupied.temperature_slopes, 5.0) == pytest.approx(-3.5, abs=0.2)


def test_held_out_month_is_predicted_closely(model: BaselineModel, building: Building) -> None:
    holdout = building.holdout
    predicted = model.predict(holdout)
    assert predicted.index.equals(holdout.index)
    assert predicted.notna().all()
    score = metrics(holdout["energy_kwh"], predicted, n_params=0)  # nothing was fitted on these hours
    assert score.cv_rmse < 0.05
    assert abs(score.nmbe) < 0.01
    truth = building.true_kwh.iloc[BASELINE_HOURS:]
    assert (predicted - truth).abs().mean() < 0.5  # kWh/h, against a mean load of ~60


def test_pure_noise_does_not_meet_guideline_14(building: Building) -> None:
    rng = np.random.default_rng(11)
    noise = building.baseline.assign(energy_kwh=rng.gamma(2.0, 50.0, BASELINE_HOURS))  # mean 100, sd 71
    fit = fit_baseline(noise).metrics
    assert fit.cv_rmse > 0.3
    assert not fit.meets_guideline_14


def test_injected_fifteen_percent_saving_is_found(model: BaselineModel, building: Building) -> None:
    reporting = building.holdout.assign(energy_kwh=building.true_kwh.iloc[BASELINE_HOURS:] * 0.85)
    result = avoided_energy(model, reporting)
    assert result.percent_savings == pytest.approx(15.0, abs=1.0)
    assert result.avoided_kwh == pytest.approx(result.counterfactual_kwh - result.actual_kwh)
    assert result.reporting_hours == HOLDOUT_HOURS
    assert result.dropped_rows == 0
    assert math.isfinite(result.fractional_savings_uncertainty)
    assert 0 < result.fractional_savings_uncertainty < 0.5  # reportable under Guideline 14 at 68 %


def test_metrics_match_a_hand_computed_example() -> None:
    actual = pd.Series([10.0, 12.0, 9.0, 11.0, 13.0])
    predicted = pd.Series([11.0, 11.0, 10.0, 10.0, 12.0])
    # residuals −1, 1, −1, 1, 1: Σ = 1, Σ² = 5; n − p = 4; ȳ = 11; Σ(y − ȳ)² = 10
    score = metrics(actual, predicted, n_params=1)
    assert score.n == 5
    assert score.cv_rmse == pytest.approx(math.sqrt(5 / 4) / 11)  # 0.10164
    assert score.nmbe == pytest.approx(1 / (4 * 11))  # 0.02273
    assert score.r_squared == pytest.approx(0.5)


def test_savings_uncertainty_corrects_for_autocorrelation() -> None:
    # ρ = 1/3 → n' = 100 · (2/3) / (4/3) = 50; sqrt((100/50) · (1 + 2/50) / 100) = 0.144222
    # FSU = 0.994458 (t at 68 %) · 1.26 · 0.1 · 0.144222 / 0.1 = 0.180715
    fsu = fractional_savings_uncertainty(cv_rmse=0.1, n=100, m=100, rho=1 / 3, savings_fraction=0.1)
    assert fsu == pytest.approx(0.180715, rel=1e-4)
    uncorrelated = fractional_savings_uncertainty(cv_rmse=0.1, n=100, m=100, rho=0.0, savings_fraction=0.1)
    assert uncorrelated < fsu


def test_missing_rows_are_dropped_and_counted(building: Building) -> None:
    frame = building.baseline.copy()
    frame.iloc[10:15, frame.columns.get_loc("energy_kwh")] = np.nan
    frame.iloc[100:103, frame.columns.get_loc("outdoor_temp_c")] = np.nan
    frame.iloc[200:202, frame.columns.get_loc("occupancy")] = np.nan
    fitted = fit_baseline(frame)
    assert fitted.dropped_rows == 10
    assert fitted.metrics.n == BASELINE_HOURS - 10
    predicted = fitted.predict(frame)  # energy is not an input: only the 5 rows missing a feature are NaN
    assert predicted.isna().sum() == 5
    assert predicted.iloc[10:15].notna().all()


def test_to_dict_from_dict_round_trip_predicts_identically(model: BaselineModel, building: Building) -> None:
    stored = json.loads(json.dumps(model.to_dict(), allow_nan=False))  # strict JSON, fit for a jsonb column
    restored = BaselineModel.from_dict(stored)
    assert restored == model
    pd.testing.assert_series_equal(restored.predict(building.holdout), model.predict(building.holdout))


def test_predicting_without_a_column_names_it(model: BaselineModel, building: Building) -> None:
    with pytest.raises(ValueError, match="outdoor_temp_c"):
        model.predict(building.holdout.drop(columns="outdoor_temp_c"))


def test_a_stored_version_1_baseline_still_reads(model: BaselineModel, building: Building) -> None:
    """Rows written before the occupancy lookup existed are models with measured occupancy."""
    stored = model.to_dict()
    del stored["occupancy_lookup"], stored["electricity"]
    restored = BaselineModel.from_dict({**stored, "format_version": 1})
    assert restored == model
    pd.testing.assert_series_equal(restored.predict(building.holdout), model.predict(building.holdout))
