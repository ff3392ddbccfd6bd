"""Energy baseline for measurement & verification (M&V): what the building would have used without a measure.

Why this model
--------------
It follows the CalTRACK hourly method, the open, publicly tested method used for pay-for-performance
programmes: hourly consumption is a time-of-week profile plus a piecewise-linear response to outdoor
temperature, fitted separately for occupied and unoccupied hours.

* Time of week (168 hour-of-week indicators) carries the schedules — the Monday 06:00 HVAC start, the
  Saturday cleaning crew — that no weather term can explain.
* The segmented temperature term lets the slope change from heating through a neutral band to cooling
  without guessing a single balance point. Segments are bounded (CalTRACK style), so each coefficient is the
  slope within its segment and the response is continuous at every knot.
* An occupied building answers the weather differently (ventilation, internal gains, set-points), so
  occupied and unoccupied hours get a model each. This platform measures occupancy, so a frame with an
  `occupancy` column splits on it (occupied = occupancy ≥ threshold); without one, the split is estimated
  from the data as CalTRACK hourly does (`estimate_occupancy`).

Not reproduced from CalTRACK: its month-by-month weighted fits (one model covers the whole baseline here).

The fit is ordinary least squares on a design matrix built by `design_matrix`, the one function used both to
fit and to predict, so the two cannot drift apart. Goodness of fit follows ASHRAE Guideline 14 (CV(RMSE),
NMBE); avoided energy follows IPMVP Option C (whole facility: adjusted baseline minus measured energy), with
the Guideline 14 Annex B fractional savings uncertainty.

    model = fit_baseline(baseline_frame)               # energy_kwh, outdoor_temp_c, occupancy; hourly
    model.metrics.meets_guideline_14                   # is the baseline good enough to report savings?
    result = avoided_energy(model, reporting_frame)    # same columns, after the measure
    row = model.to_dict()                              # JSON for the database; BaselineModel.from_dict(row)

Data that did not come from our database
----------------------------------------
`hourly_frame` reads the common shapes into the model's own, and every public function here takes the same
keywords (`InputShape`): named columns (`energy="kwh", temperature="temp_f"`), eemeter's shapes (a meter
frame with `value` and a separate temperature series, or `observed` + `temperature` columns), a
`timezone=` for the building's clock, and `temperature_unit="F"`. It refuses what would fit silently wrong:
a temperature that only makes sense in Fahrenheit, and warns when hour of week would be computed in UTC or
an unknown zone. Zero electricity readings are missing data, as in CalTRACK.

    model = fit_baseline(meter, energy="kwh", temperature="temp_f", temperature_unit="F",
                         timezone="America/New_York")   # no occupancy column: estimated
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from statistics import NormalDist
from typing import Any, Literal, TypedDict, Unpack

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

ENERGY = "energy_kwh"
TEMPERATURE = "outdoor_temp_c"
OCCUPANCY = "occupancy"
FEATURES = (TEMPERATURE, OCCUPANCY)
HOURS_PER_WEEK = 168
DEFAULT_KNOTS: tuple[float, ...] = (10.0, 15.0, 20.0, 25.0, 30.0)
MIN_HOURS_PER_TEMPERATURE_SEGMENT = 20  # CalTRACK merges temperature bins with fewer hours into a neighbour
CV_RMSE_LIMIT = 0.30  # Guideline 14, hourly
NMBE_LIMIT = 0.10  # Guideline 14, hourly
FORMAT_VERSION = 2  # of to_dict(); bump when its shape changes (2 added the occupancy lookup)
READABLE_VERSIONS = (1, 2)  # a version-1 row is a version-2 model with measured occupancy

# How other tools name the columns, tried in order when the caller names none: ours, eemeter >= 4
# (HourlyBaselineData: observed, temperature), eemeter <= 3 (meter_data: value; temperature a Series).
ENERGY_NAMES = (ENERGY, "observed", "value")
TEMPERATURE_NAMES = (TEMPERATURE, "temperature")

# CalTRACK hourly occupancy (methods 3.8): a temperature-only fit with fixed balance points of 50 °F and
# 65 °F; an hour of week whose share of under-predicted hours exceeds 65 % is occupied.
HEATING_BALANCE_C = 10.0  # 50 °F
COOLING_BALANCE_C = (65.0 - 32.0) * 5.0 / 9.0  # 65 °F
OCCUPIED_SHARE = 0.65

# Outdoor air in °C stays within the records (56.7 °C, Death Valley; −89.2 °C, Vostok) and no site's mean
# over months is near 45 °C; values past these are another unit.
HOTTEST_C = 57.0
COLDEST_C = -90.0
HOTTEST_MEAN_C = 45.0


class BaselineInputWarning(UserWarning):
    """Data the baseline can fit, but perhaps not as meant (e.g. hour of week taken on a UTC clock)."""


class InputShape(TypedDict, total=False):
    """How to read a frame that is not in the model's own shape; see `hourly_frame` for each key."""

    energy: str
    temperature: str | pd.Series
    occupancy: str
    temperature_unit: Literal["C", "F"]
    timezone: str


@dataclass(frozen=True)
class Metrics:
    """Goodness of fit per ASHRAE Guideline 14, as fractions (0.12 means 12 %). See `metrics`."""

    cv_rmse: float
    nmbe: float
    r_squared: float
    n: int
    n_params: int

    @property
    def meets_guideline_14(self) -> bool:
        """Guideline 14's limits for hourly models: CV(RMSE) ≤ 30 % and |NMBE| ≤ 10 %."""
        return self.cv_rmse <= CV_RMSE_LIMIT and abs(self.nmbe) <= NMBE_LIMIT


@dataclass(frozen=True)
class RegimeFit:
    """The fitted model of one occupancy regime (occupied or unoccupied hours).

    prediction = tow_coefficients[hour of week] + Σ temperature_slopes · temperature_segments(T, knots)

    `seen_hours` are the hours of week present in this regime's training rows; the regime knows nothing
    about the others and predicts NaN there rather than guess.
    """

    knots: tuple[float, ...]
    tow_coefficients: tuple[float, ...]
    temperature_slopes: tuple[float, ...]
    seen_hours: tuple[int, ...]
    n_params: int
    n_rows: int

    def predict(self, rows: pd.DataFrame, timezone: str) -> np.ndarray:
        coefficients = np.array(self.tow_coefficients + self.temperature_slopes)
        predicted = design_matrix(rows, self.knots, timezone) @ coefficients
        predicted[~np.isin(hour_of_week(rows.index, timezone), self.seen_hours)] = np.nan
        return predicted

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegimeFit:
        return cls(
            knots=tuple(float(k) for k in data["knots"]),
            tow_coefficients=tuple(float(c) for c in data["tow_coefficients"]),
            temperature_slopes=tuple(float(s) for s in data["temperature_slopes"]),
            seen_hours=tuple(int(h) for h in data["seen_hours"]),
            n_params=int(data["n_params"]),
            n_rows=int(data["n_rows"]),
        )

    @classmethod
    def empty(cls) -> RegimeFit:
        """A regime with no training rows (e.g. a building never occupied): it predicts nothing."""
        return cls(
            knots=(),
            tow_coefficients=(0.0,) * HOURS_PER_WEEK,
            temperature_slopes=(0.0,),
            seen_hours=(),
            n_params=0,
            n_rows=0,
        )


@dataclass(frozen=True)
class BaselineModel:
    """A fitted baseline: two occupancy regimes, how to tell them apart, and how well it fits its data.

    `dropped_rows` counts training rows left out for a missing (or non-finite) value, zero electricity
    readings included. `metrics` are the in-sample Guideline 14 metrics; `residual_autocorrelation` is the
    lag-1 autocorrelation of the training residuals, which the savings uncertainty needs.
    `occupancy_lookup` is None when occupancy was measured (an input, then, for every prediction), else the
    estimated 168 hour-of-week flags (1 = occupied) that stand in for it. `electricity`: zero readings of
    this meter are missing data (CalTRACK), in the baseline and in reporting periods alike.
    """

    occupancy_threshold: float
    candidate_knots: tuple[float, ...]
    timezone: str
    occupied: RegimeFit
    unoccupied: RegimeFit
    training_start: pd.Timestamp
    training_end: pd.Timestamp
    dropped_rows: int
    residual_autocorrelation: float
    metrics: Metrics
    occupancy_lookup: tuple[int, ...] | None = None
    electricity: bool = True

    @property
    def n_params(self) -> int:
        return self.occupied.n_params + self.unoccupied.n_params

    def predict(self, frame: pd.DataFrame, **shape: Unpack[InputShape]) -> pd.Series:
        """kWh per hour on `frame`'s index (energy is not read).

        Needs the outdoor temperature, and occupancy if the model was fitted on measured occupancy; `shape`
        reads other shapes as in `fit_baseline`. A naive index is taken as the model's own zone.
        NaN where an input is missing, or where the hour of week never occurred in that row's occupancy
        regime during training (the model does not invent a profile it never saw).
        """
        shape.setdefault("timezone", self.timezone)
        rows = hourly_frame(frame, **shape)
        if self.occupancy_lookup is not None:
            rows[OCCUPANCY] = occupancy_from_lookup(rows.index, self.occupancy_lookup, self.timezone)
        elif OCCUPANCY not in rows.columns:
            raise ValueError(
                f"frame lacks column(s) {OCCUPANCY}: this model was fitted on measured occupancy "
                f"(needs {', '.join(FEATURES)})"
            )
        complete = _complete_rows(rows, FEATURES)
        # the caller's own labels, unless ambiguous wall-clock hours were dropped on the way
        labels = frame.index if len(rows) == len(frame) else rows.index
        predicted = pd.Series(np.nan, index=labels, name="predicted_kwh")
        predicted.iloc[np.flatnonzero(complete)] = _predict_regimes(
            self.occupied, self.unoccupied, self.occupancy_threshold, rows.loc[complete], self.timezone
        )
        return predicted

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, for a database row."""
        return {
            "format_version": FORMAT_VERSION,
            "occupancy_threshold": self.occupancy_threshold,
            "candidate_knots": list(self.candidate_knots),
            "timezone": self.timezone,
            "training_start": self.training_start.isoformat(),
            "training_end": self.training_end.isoformat(),
            "dropped_rows": self.dropped_rows,
            "residual_autocorrelation": self.residual_autocorrelation,
            "metrics": asdict(self.metrics),
            "occupied": self.occupied.to_dict(),
            "unoccupied": self.unoccupied.to_dict(),
            "occupancy_lookup": None if self.occupancy_lookup is None else list(self.occupancy_lookup),
            "electricity": self.electricity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineModel:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"baseline format_version {version!r} is not {FORMAT_VERSION}: refit the model")
        timezone = data["timezone"]
        lookup = data.get("occupancy_lookup")
        return cls(
            occupancy_threshold=float(data["occupancy_threshold"]),
            candidate_knots=tuple(float(k) for k in data["candidate_knots"]),
            timezone=timezone,
            occupied=RegimeFit.from_dict(data["occupied"]),
            unoccupied=RegimeFit.from_dict(data["unoccupied"]),
            training_start=pd.Timestamp(data["training_start"]).tz_convert(timezone),
            training_end=pd.Timestamp(data["training_end"]).tz_convert(timezone),
            dropped_rows=int(data["dropped_rows"]),
            residual_autocorrelation=float(data["residual_autocorrelation"]),
            metrics=Metrics(**data["metrics"]),
            occupancy_lookup=None if lookup is None else tuple(int(flag) for flag in lookup),
            electricity=bool(data.get("electricity", True)),
        )


@dataclass(frozen=True)
class AvoidedEnergy:
    """IPMVP Option C avoided energy over a reporting period.

    counterfactual_kwh: the adjusted baseline — the model's prediction for the reporting period's weather,
        occupancy and calendar. actual_kwh: what was metered in the same hours.
    avoided_kwh = counterfactual_kwh − actual_kwh; percent_savings = 100 · avoided / counterfactual.
    fractional_savings_uncertainty: ΔE/E at `confidence` (0.2 means avoided_kwh ± 20 %); Guideline 14 wants
        it below 0.5 at 68 % confidence.
    reporting_hours: hours used (m); dropped_rows: hours left out for a missing measurement or prediction.
    """

    counterfactual_kwh: float
    actual_kwh: float
    avoided_kwh: float
    percent_savings: float
    fractional_savings_uncertainty: float
    confidence: float
    reporting_hours: int
    dropped_rows: int


def fit_baseline(
    frame: pd.DataFrame,
    occupancy_threshold: float = 0.5,
    *,
    knots: Sequence[float] = DEFAULT_KNOTS,
    electricity: bool = True,
    **shape: Unpack[InputShape],
) -> BaselineModel:
    """Fit the baseline on hourly `frame`: energy per hour, outdoor temperature and, if measured, occupancy.

    The model's own shape is a tz-aware index and energy_kwh, outdoor_temp_c, occupancy (0..1); `shape`
    reads others (`hourly_frame`). Rows missing a value are dropped and counted in `dropped_rows`; with
    `electricity`, a zero reading counts as missing (CalTRACK 2.2.1.4). Hours with occupancy ≥
    `occupancy_threshold` train the occupied regime, the others the unoccupied one; without an occupancy
    column, the occupied hours of the week are estimated from the data (`estimate_occupancy`). Each regime
    keeps only the `knots` (°C) that leave at least 20 of its training hours in every temperature segment.
    """
    data = hourly_frame(frame, electricity=electricity, **shape)
    _require_energy(data, frame)
    timezone = _timezone_name(data.index)
    lookup = None
    if OCCUPANCY not in data.columns:
        lookup = estimate_occupancy(data.loc[_complete_rows(data, (ENERGY, TEMPERATURE))], timezone)
        data[OCCUPANCY] = occupancy_from_lookup(data.index, lookup, timezone)
    complete = _complete_rows(data, (ENERGY, *FEATURES))
    rows = data.loc[complete]
    if rows.empty:
        raise ValueError(f"no complete rows to fit: each misses one of {ENERGY}, {TEMPERATURE}, {OCCUPANCY}")

    is_occupied = rows[OCCUPANCY].to_numpy(dtype=float) >= occupancy_threshold
    candidate_knots = tuple(sorted(float(k) for k in knots))
    occupied = _fit_regime(rows.loc[is_occupied], candidate_knots, timezone)
    unoccupied = _fit_regime(rows.loc[~is_occupied], candidate_knots, timezone)
    fitted = pd.Series(
        _predict_regimes(occupied, unoccupied, occupancy_threshold, rows, timezone), index=rows.index
    )
    return BaselineModel(
        occupancy_threshold=float(occupancy_threshold),
        candidate_knots=candidate_knots,
        timezone=timezone,
        occupied=occupied,
        unoccupied=unoccupied,
        training_start=rows.index.min(),
        training_end=rows.index.max(),
        dropped_rows=int((~complete).sum()),
        residual_autocorrelation=_lag1_autocorrelation(rows[ENERGY] - fitted),
        metrics=metrics(rows[ENERGY], fitted, occupied.n_params + unoccupied.n_params),
        occupancy_lookup=lookup,
        electricity=electricity,
    )


def metrics(actual: pd.Series, predicted: pd.Series, n_params: int) -> Metrics:
    """ASHRAE Guideline 14 goodness of fit of `predicted` against `actual` (same index; NaN pairs skipped).

        CV(RMSE) = sqrt( Σ(y − ŷ)² / (n − p) ) / ȳ
        NMBE     = Σ(y − ŷ) / ( (n − p) · ȳ )
        R²       = 1 − Σ(y − ŷ)² / Σ(y − ȳ)²

    with n points, p = `n_params` and ȳ the mean of `actual`. Guideline 14 divides by n − p, not n, because
    the p parameters were estimated from these same n points: the residuals are smaller than the model's
    true error, and n − p degrees of freedom is what makes Σ(y − ŷ)²/(n − p) an unbiased estimate of the
    residual variance. It matters here: the model has hundreds of parameters (up to 2 × 174; about 230 for a
    weekday-daytime occupancy schedule), so on 90 days of hours dividing by n would understate CV(RMSE) by
    about 6 %. Pass n_params=0 when scoring hours the model was not fitted on.

    On its own training data a least-squares fit with a full set of hour-of-week indicators has residuals
    summing to zero, so in-sample NMBE is ~0 by construction; NMBE tells more on held-out data.
    """
    if not actual.index.equals(predicted.index):
        raise ValueError("actual and predicted must share the same index")
    y = actual.to_numpy(dtype=float, na_value=np.nan)
    y_hat = predicted.to_numpy(dtype=float, na_value=np.nan)
    both = np.isfinite(y) & np.isfinite(y_hat)
    y, y_hat = y[both], y_hat[both]
    n = len(y)
    degrees_of_freedom = n - n_params
    if degrees_of_freedom <= 0:
        raise ValueError(f"need more points than parameters: n={n}, n_params={n_params}")
    mean = float(y.mean())
    if mean <= 0:
        raise ValueError(
            f"CV(RMSE) and NMBE are relative to mean consumption, which must be positive: {mean}"
        )
    residuals = y - y_hat
    sse = float(residuals @ residuals)
    sst = float(((y - mean) ** 2).sum())
    return Metrics(
        cv_rmse=math.sqrt(sse / degrees_of_freedom) / mean,
        nmbe=float(residuals.sum()) / (degrees_of_freedom * mean),
        r_squared=1.0 - sse / sst if sst > 0 else math.nan,
        n=n,
        n_params=n_params,
    )


def avoided_energy(
    model: BaselineModel, reporting: pd.DataFrame, *, confidence: float = 0.68, **shape: Unpack[InputShape]
) -> AvoidedEnergy:
    """IPMVP Option C savings over `reporting` (the baseline frame's kind of data, after the measure).

    Only hours with both a metered value and a prediction count, on both sides of the subtraction; the others
    (zero electricity readings among them) are reported in `dropped_rows`. No non-routine adjustments.
    """
    shape.setdefault("timezone", model.timezone)
    rows = hourly_frame(reporting, electricity=model.electricity, **shape)
    _require_energy(rows, reporting)
    predicted = model.predict(rows).to_numpy(dtype=float)
    measured = rows[ENERGY].to_numpy(dtype=float, na_value=np.nan)
    usable = np.isfinite(predicted) & np.isfinite(measured)
    reporting_hours = int(usable.sum())
    if reporting_hours == 0:
        raise ValueError("no reporting hour has both a measured and a predicted energy")
    counterfactual_kwh = float(predicted[usable].sum())
    if counterfactual_kwh <= 0:
        raise ValueError(
            f"the counterfactual must be positive to express savings as a fraction: {counterfactual_kwh}"
        )
    actual_kwh = float(measured[usable].sum())
    savings_fraction = (counterfactual_kwh - actual_kwh) / counterfactual_kwh
    return AvoidedEnergy(
        counterfactual_kwh=counterfactual_kwh,
        actual_kwh=actual_kwh,
        avoided_kwh=counterfactual_kwh - actual_kwh,
        percent_savings=100.0 * savings_fraction,
        fractional_savings_uncertainty=fractional_savings_uncertainty(
            cv_rmse=model.metrics.cv_rmse,
            n=model.metrics.n,
            m=reporting_hours,
            rho=model.residual_autocorrelation,
            savings_fraction=savings_fraction,
            confidence=confidence,
        ),
        confidence=confidence,
        reporting_hours=reporting_hours,
        dropped_rows=len(reporting) - reporting_hours,
    )


def fractional_savings_uncertainty(
    *, cv_rmse: float, n: int, m: int, rho: float, savings_fraction: float, confidence: float = 0.68
) -> float:
    """ΔE_save / E_save, the fractional savings uncertainty of ASHRAE Guideline 14-2014, Annex B
    (after Reddy & Claridge 2000), with its correction for autocorrelated residuals:

        FSU = t · 1.26 · CV · sqrt( (n / n′) · (1 + 2 / n′) · (1 / m) ) / F
        n′  = n · (1 − ρ) / (1 + ρ)

    CV: the baseline's CV(RMSE) as a fraction; n: baseline points; m: reporting points; ρ: lag-1
    autocorrelation of the baseline residuals; F: savings as a fraction of the counterfactual; 1.26: Annex B's
    empirical correction factor. With uncorrelated residuals (ρ = 0, n′ = n) this is the plain
    t · 1.26 · CV · sqrt((1 + 2/n) / m) / F. Hourly residuals are strongly autocorrelated, and ignoring it
    would understate the uncertainty several-fold.

    Choices: ρ < 0 is taken as 0 (never claim less uncertainty than for independent residuals); t is the
    two-sided normal quantile for `confidence` (0.68 → 0.99), which the Student t with n′ − p degrees of
    freedom approaches for the hundreds of effective points of hourly data; |F| is used, so a negative saving
    gets a positive uncertainty; F = 0 or ρ ≥ 1 gives infinity.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1: {confidence}")
    rho = min(max(rho, 0.0), 1.0)
    effective_n = n * (1 - rho) / (1 + rho)
    if effective_n <= 0 or savings_fraction == 0:
        return math.inf
    t = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = math.sqrt((n / effective_n) * (1 + 2 / effective_n) / m)
    return t * 1.26 * cv_rmse * spread / abs(savings_fraction)


# --- data from elsewhere: the common shapes read into the model's own ---


def hourly_frame(
    data: pd.DataFrame,
    *,
    energy: str | None = None,
    temperature: str | pd.Series | None = None,
    occupancy: str | None = None,
    temperature_unit: Literal["C", "F"] | None = None,
    timezone: str | None = None,
    electricity: bool = True,
) -> pd.DataFrame:
    """`data` as the model reads it: a tz-aware hourly index and energy_kwh, outdoor_temp_c (°C) and
    occupancy columns (energy and occupancy only where `data` has them).

    A baseline fitted on someone else's meter is only as good as the reading of its columns, units and
    clock, and every mistake there fits without complaint: hence the checks.

    energy, temperature, occupancy: column names; unnamed, the first present of ENERGY_NAMES /
        TEMPERATURE_NAMES / "occupancy". `temperature` may instead be a Series on its own time index
        (eemeter's `temperature_data`): it is averaged per hour and matched to `data`'s hours.
    temperature_unit: "C" or "F". Unsaid, the values must be plausible as °C; a column that only makes
        sense in Fahrenheit is refused rather than read as a heat wave.
    timezone: the building's zone (IANA name). A naive index is taken as its wall clock (the repeated hour
        when clocks go back is ambiguous and dropped); an aware one is converted. Unsaid, a UTC or naive index
        is fitted as it is, with a warning: hour of week is where the schedules live, and in UTC a
        building's 08:00 start falls on different hours in summer and winter.
    electricity: a zero reading is missing data, not a building using nothing (CalTRACK 2.2.1.4, 3.5.2.1;
        gas meters legitimately read zero, so pass False for them).
    """
    if not isinstance(data.index, pd.DatetimeIndex):
        raise ValueError(
            "frame needs a DatetimeIndex of hours, "
            "e.g. frame.set_index(pd.to_datetime(frame['start'], utc=True))"
        )
    columns: dict[str, pd.Series] = {}
    energy_column = _column(data, energy, ENERGY_NAMES)
    if energy_column is not None:
        kwh = pd.to_numeric(data[energy_column]).astype(float)
        columns[ENERGY] = kwh.mask(kwh == 0) if electricity else kwh
    columns[TEMPERATURE] = _to_celsius(_temperature(data, temperature), temperature_unit)
    occupancy_column = _column(data, occupancy, (OCCUPANCY,))
    if occupancy_column is not None:
        columns[OCCUPANCY] = pd.to_numeric(data[occupancy_column]).astype(float)
    frame = pd.DataFrame(columns).set_axis(_local_index(data.index, timezone), axis=0)
    frame = frame.loc[frame.index.notna()]
    _require_hourly_index(frame.index)
    return frame


def fahrenheit_to_celsius(temperatures: pd.Series) -> pd.Series:
    return (temperatures - 32.0) * 5.0 / 9.0


def estimate_occupancy(rows: pd.DataFrame, timezone: str) -> tuple[int, ...]:
    """Which hours of the week are "occupied", estimated from the data when no one measured it.

    Follows CalTRACK hourly (methods 3.8.3-3.8.4; eemeter's `estimate_hour_of_week_occupancy`): fit energy on
    heating and cooling degree-hours with fixed balance points of 50 °F and 65 °F (one least-squares fit, no
    time of week), and call an hour of week occupied when that fit under-predicts more than 65 % of its
    hours. What the flag really marks is high load for the weather (HVAC on, people in), which is the split
    the two regimes need. Ordinary least squares, as CalTRACK's weighted fit has uniform weights when one
    model covers the baseline. `rows`: complete energy_kwh and outdoor_temp_c. Returns 168 flags
    (1 = occupied); hours of the week absent from `rows` are 0.
    """
    temperatures = rows[TEMPERATURE].to_numpy(dtype=float)
    degree_hours = np.column_stack([
        np.maximum(HEATING_BALANCE_C - temperatures, 0.0),
        np.maximum(temperatures - COOLING_BALANCE_C, 0.0),
    ])
    energy = rows[ENERGY].to_numpy(dtype=float)
    residuals = energy - LinearRegression().fit(degree_hours, energy).predict(degree_hours)
    hours = hour_of_week(rows.index, timezone)
    under_predicted = np.bincount(hours, weights=residuals > 0, minlength=HOURS_PER_WEEK)
    seen = np.bincount(hours, minlength=HOURS_PER_WEEK)
    share = np.divide(under_predicted, seen, out=np.zeros(HOURS_PER_WEEK), where=seen > 0)
    return tuple(int(flag) for flag in share > OCCUPIED_SHARE)


def occupancy_from_lookup(index: pd.DatetimeIndex, lookup: Sequence[int], timezone: str) -> np.ndarray:
    """Each hour's occupancy (0 or 1) from a 168-flag hour-of-week lookup."""
    return np.asarray(lookup, dtype=float)[hour_of_week(index, timezone)]


# --- features: the one place they are built, for fitting and predicting alike ---


def design_matrix(frame: pd.DataFrame, knots: Sequence[float], timezone: str) -> np.ndarray:
    """168 hour-of-week indicator columns, then one column per temperature segment.

    No intercept column: the indicators already give every hour of the week its own level.
    """
    hours = hour_of_week(frame.index, timezone)
    indicators = np.zeros((len(frame), HOURS_PER_WEEK))
    indicators[np.arange(len(frame)), hours] = 1.0
    temperatures = frame[TEMPERATURE].to_numpy(dtype=float)
    return np.hstack([indicators, temperature_segments(temperatures, knots)])


def hour_of_week(index: pd.DatetimeIndex, timezone: str) -> np.ndarray:
    """0 = Monday 00:00–01:00 local time … 167 = Sunday 23:00–24:00; local, because schedules are."""
    local = index.tz_convert(timezone)
    return np.asarray(local.day_of_week * 24 + local.hour, dtype=int)


def temperature_segments(temperatures: np.ndarray, knots: Sequence[float]) -> np.ndarray:
    """CalTRACK-style bounded segments: column i is how far the temperature reaches into segment i.

    With knots 10 and 20: 25 °C gives [10, 10, 5], 12 °C gives [10, 2, 0], 4 °C gives [4, 0, 0] (the first
    segment is open below, the last open above). The columns add up to the temperature, and each coefficient
    is the slope within its segment.
    """
    edges = [-math.inf, *knots, math.inf]
    columns = [
        np.clip(temperatures, low, high) - (low if math.isfinite(low) else 0.0)
        for low, high in pairwise(edges)
    ]
    return np.column_stack(columns)


# --- fitting helpers ---


def _fit_regime(rows: pd.DataFrame, candidate_knots: tuple[float, ...], timezone: str) -> RegimeFit:
    if rows.empty:
        return RegimeFit.empty()
    knots = _supported_knots(rows[TEMPERATURE].to_numpy(dtype=float), candidate_knots)
    regression = LinearRegression(fit_intercept=False)
    regression.fit(design_matrix(rows, knots, timezone), rows[ENERGY].to_numpy(dtype=float))
    coefficients = regression.coef_
    return RegimeFit(
        knots=knots,
        tow_coefficients=tuple(float(c) for c in coefficients[:HOURS_PER_WEEK]),
        temperature_slopes=tuple(float(c) for c in coefficients[HOURS_PER_WEEK:]),
        seen_hours=tuple(int(h) for h in np.unique(hour_of_week(rows.index, timezone))),
        n_params=int(regression.rank_),  # hours of week never seen add an empty column, not a parameter
        n_rows=len(rows),
    )


def _supported_knots(temperatures: np.ndarray, candidates: tuple[float, ...]) -> tuple[float, ...]:
    """Drop knots until every temperature segment holds enough training hours.

    As CalTRACK merges sparse temperature bins: a slope fitted on a handful of hours is noise, and one
    fitted on none is an arbitrary extrapolation. The sparsest segment merges into the one above it (the top
    segment into the one below).
    """
    knots = list(candidates)
    while knots:
        segment = np.searchsorted(knots, temperatures, side="right")
        counts = np.bincount(segment, minlength=len(knots) + 1)
        sparsest = int(np.argmin(counts))
        if counts[sparsest] >= MIN_HOURS_PER_TEMPERATURE_SEGMENT:
            break
        knots.pop(min(sparsest, len(knots) - 1))
    return tuple(knots)


def _predict_regimes(
    occupied: RegimeFit, unoccupied: RegimeFit, threshold: float, rows: pd.DataFrame, timezone: str
) -> np.ndarray:
    """Each complete row by the regime its occupancy puts it in."""
    is_occupied = rows[OCCUPANCY].to_numpy(dtype=float) >= threshold
    return np.where(is_occupied, occupied.predict(rows, timezone), unoccupied.predict(rows, timezone))


def _lag1_autocorrelation(residuals: pd.Series) -> float:
    """Correlation of each residual with the one an hour earlier; pairs across a gap are not pairs."""
    an_hour_later = residuals.shift(freq="h")  # re-stamped, so corr() aligns only hours exactly 1 h apart
    rho = residuals.corr(an_hour_later)
    return 0.0 if math.isnan(rho) else float(rho)


# --- input checks ---


def _column(data: pd.DataFrame, named: str | None, usual: Sequence[str]) -> str | None:
    """The column the caller named (which must exist), else the first of the usual names present."""
    if named is not None:
        if named not in data.columns:
            raise ValueError(f"frame has no column {named!r}; {_columns_hint(data, ())}")
        return named
    return next((name for name in usual if name in data.columns), None)


def _require_energy(rows: pd.DataFrame, given: pd.DataFrame) -> None:
    if ENERGY not in rows.columns:
        hint = _columns_hint(given, ENERGY_NAMES)
        raise ValueError(f"frame has no energy column: name it (energy='...'); {hint}")


def _columns_hint(data: pd.DataFrame, usual: Sequence[str]) -> str:
    known = f"unnamed, one of {', '.join(usual)} is used; " if usual else ""
    return f"{known}its columns are {', '.join(map(str, data.columns))}"


def _temperature(data: pd.DataFrame, temperature: str | pd.Series | None) -> pd.Series:
    """The outdoor temperature on `data`'s rows, from a column or from a series on its own time index."""
    if isinstance(temperature, pd.Series):
        if not isinstance(temperature.index, pd.DatetimeIndex):
            raise ValueError("the temperature series needs a DatetimeIndex")
        if (temperature.index.tz is None) != (data.index.tz is None):
            raise ValueError("the temperature series and the frame must both have a time zone, or both not")
        hourly = pd.to_numeric(temperature).astype(float).resample("h").mean()
        if data.index.tz is not None:
            hourly = hourly.tz_convert(data.index.tz)
        return hourly.reindex(data.index)
    column = _column(data, temperature, TEMPERATURE_NAMES)
    if column is None:
        raise ValueError(f"frame has no temperature column: name it (temperature='...'); "
                         f"{_columns_hint(data, TEMPERATURE_NAMES)}")
    return pd.to_numeric(data[column]).astype(float)


def _to_celsius(temperatures: pd.Series, unit: str | None) -> pd.Series:
    """°C, or a refusal naming the unit the values look like: a wrong unit fits without any error."""
    if unit not in (None, "C", "F"):
        raise ValueError(f"temperature_unit must be 'C' or 'F', not {unit!r}")
    celsius = fahrenheit_to_celsius(temperatures) if unit == "F" else temperatures
    implausible = _implausible_as_celsius(celsius)
    if implausible is None:
        return celsius
    if unit is None and _implausible_as_celsius(fahrenheit_to_celsius(temperatures)) is None:
        raise ValueError(
            f"outdoor temperature looks like Fahrenheit ({implausible} as °C); "
            "convert it (models.baseline.fahrenheit_to_celsius) or pass temperature_unit='F'"
        )
    raise ValueError(
        f"outdoor temperature read as °{unit or 'C'} is not plausible ({implausible} in °C): "
        "check the column and its unit (kelvin? a sensor fault?)"
    )


def _implausible_as_celsius(celsius: pd.Series) -> str | None:
    """What makes these values impossible as outdoor air in °C, or None if nothing does."""
    values = celsius.to_numpy(dtype=float, na_value=np.nan)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high, mean = float(values.min()), float(values.max()), float(values.mean())
    if mean > HOTTEST_MEAN_C or high > HOTTEST_C or low < COLDEST_C:
        return f"mean {mean:.1f}, range {low:.1f} to {high:.1f}"
    return None


def _local_index(index: pd.DatetimeIndex, timezone: str | None) -> pd.DatetimeIndex:
    """The index on the building's clock, where its schedules are (see `hourly_frame`)."""
    if timezone is not None:
        if index.tz is None:
            return index.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
        return index.tz_convert(timezone)
    if index.tz is None:
        warnings.warn(
            "the index has no time zone: hour of week is computed on its clock as it stands, in an unknown "
            "zone (taken as UTC); pass timezone='Area/City' (the building's zone) to say which",
            BaselineInputWarning,
            stacklevel=4,
        )
        return index.tz_localize("UTC")
    if _is_utc(index.tz):
        warnings.warn(
            "the index is in UTC: hour of week is computed in UTC, where a building's schedule moves by an "
            "hour with daylight saving time; pass timezone='Area/City' (the building's zone) to convert it",
            BaselineInputWarning,
            stacklevel=4,
        )
    return index


def _is_utc(zone: Any) -> bool:
    return str(zone).upper().removeprefix("ETC/") in {"UTC", "UCT", "GMT", "ZULU", "UNIVERSAL", "TZUTC()"}


def _require_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {', '.join(missing)} (needs {', '.join(columns)})")


def _require_hourly_index(index: pd.Index) -> None:
    if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
        raise ValueError("frame needs a time-zone-aware DatetimeIndex (hour of week is local time)")
    if not index.is_unique:
        raise ValueError("frame index has duplicate timestamps")
    if np.any((index.minute != 0) | (index.second != 0)):
        raise ValueError("frame must be hourly: every timestamp on the hour, energy_kwh per hour")


def _timezone_name(index: pd.DatetimeIndex) -> str:
    """The index's zone as a string the stored model can turn back into the same zone."""
    name = str(index.tz)
    try:
        index[:1].tz_convert(name)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"time zone {index.tz!r} cannot be stored by name; use an IANA zone or UTC"
        ) from error
    return name


def _complete_rows(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """True where every one of `columns` holds a finite number."""
    values = frame[list(columns)].to_numpy(dtype=float, na_value=np.nan)
    return np.isfinite(values).all(axis=1)
