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
  occupied and unoccupied hours get a model each. CalTRACK infers occupancy per hour of week from the data;
  this platform measures it, so we split on the measured fraction (occupied = occupancy ≥ threshold).

Not reproduced from CalTRACK: its month-by-month weighted fits (one model covers the whole baseline here).

The fit is ordinary least squares on a design matrix built by `design_matrix`, the one function used both to
fit and to predict, so the two cannot drift apart. Goodness of fit follows ASHRAE Guideline 14 (CV(RMSE),
NMBE); avoided energy follows IPMVP Option C (whole facility: adjusted baseline minus measured energy), with
the Guideline 14 Annex B fractional savings uncertainty.

    model = fit_baseline(baseline_frame)               # energy_kwh, outdoor_temp_c, occupancy; hourly
    model.metrics.meets_guideline_14                   # is the baseline good enough to report savings?
    result = avoided_energy(model, reporting_frame)    # same columns, after the measure
    row = model.to_dict()                              # JSON for the database; BaselineModel.from_dict(row)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from statistics import NormalDist
from typing import Any

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
FORMAT_VERSION = 1  # of to_dict(); bump when its shape changes


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

    `dropped_rows` counts training rows left out for a missing (or non-finite) value. `metrics` are the
    in-sample Guideline 14 metrics; `residual_autocorrelation` is the lag-1 autocorrelation of the training
    residuals, which the savings uncertainty needs.
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

    @property
    def n_params(self) -> int:
        return self.occupied.n_params + self.unoccupied.n_params

    def predict(self, frame: pd.DataFrame) -> pd.Series:
        """kWh per hour on `frame`'s index (needs outdoor_temp_c and occupancy; energy_kwh is not read).

        NaN where an input is missing, or where the hour of week never occurred in that row's occupancy
        regime during training (the model does not invent a profile it never saw).
        """
        _require_columns(frame, FEATURES)
        _require_hourly_index(frame.index)
        complete = _complete_rows(frame, FEATURES)
        predicted = pd.Series(np.nan, index=frame.index, name="predicted_kwh")
        predicted.loc[complete] = _predict_regimes(
            self.occupied, self.unoccupied, self.occupancy_threshold, frame.loc[complete], self.timezone
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineModel:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"baseline format_version {version!r} is not {FORMAT_VERSION}: refit the model")
        timezone = data["timezone"]
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
) -> BaselineModel:
    """Fit the baseline on hourly `frame` (tz-aware index; energy_kwh, outdoor_temp_c, occupancy 0..1).

    Rows missing any of the three values are dropped and counted in `dropped_rows`. Hours with
    occupancy ≥ `occupancy_threshold` train the occupied regime, the others the unoccupied one. Each regime
    keeps only the `knots` that leave at least 20 of its training hours in every temperature segment.
    """
    _require_columns(frame, (ENERGY, *FEATURES))
    _require_hourly_index(frame.index)
    timezone = _timezone_name(frame.index)
    complete = _complete_rows(frame, (ENERGY, *FEATURES))
    rows = frame.loc[complete]
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
    model: BaselineModel, reporting: pd.DataFrame, *, confidence: float = 0.68
) -> AvoidedEnergy:
    """IPMVP Option C savings over `reporting` (same columns as the baseline frame, after the measure).

    Only hours with both a metered value and a prediction count, on both sides of the subtraction; the others
    are reported in `dropped_rows`. No non-routine adjustments are made.
    """
    _require_columns(reporting, (ENERGY, *FEATURES))
    predicted = model.predict(reporting).to_numpy(dtype=float)
    measured = reporting[ENERGY].to_numpy(dtype=float, na_value=np.nan)
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
