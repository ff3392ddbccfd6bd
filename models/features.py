"""The one feature builder: training on central and inference on the edge call the same function, so a
model never sees features computed two different ways.

Input is one zone's readings on a regular grid (`every` apart), columns named by role (INPUTS); output is
one row per instant with the features known at that instant and, for training, the targets one step
ahead. Time of week is encoded as sine/cosine pairs (smooth, 4 numbers instead of 168 dummies), in the
site's local time because occupancy follows the local clock.

Two features carry the thermostat's physics, which no smooth function of the raw setpoint learns from
data: `cooling_gap`, how far the zone is above its cooling setpoint (clipped at zero: a zone below its
setpoint gets no more cooling however high the setpoint goes), and `setpoint_headroom`, how far the
setpoint is above the zone (clipped: the zone then floats, warming by its loads). Both depend on the
setpoint, so whoever changes the setpoint of a row (`with_setpoint`, `set_setpoint`, `advance`) recomputes
them (`derive`). The setpoint stays the last feature.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

# the input's columns, one per point role (`bacpipes.zones.ROLES` maps a site's points to them)
INPUTS = ("zone_temp", "cooling_setpoint", "energy_kw", "occupancy", "outdoor_temp")
FEATURES = (
    "how_sin", "how_cos", "hod_sin", "hod_cos",
    "outdoor_temp", "occupancy", "zone_temp", "zone_temp_lag1", "energy_kw_lag1",
    "cooling_gap", "setpoint_headroom", "cooling_setpoint",
)  # fmt: skip
TARGETS = ("energy_kw_next", "zone_temp_next")
WEEK_S, DAY_S = 7 * 86400, 86400


def build_features(frame: pl.DataFrame, timezone: str, with_targets: bool = True) -> pl.DataFrame:
    """`frame`: a `time` column (tz-aware) and the INPUTS, one row per interval, sorted by time.

    Rows whose lags or targets do not exist (the first and last) or with missing inputs are dropped:
    a model must not be trained on, or asked about, a half-known instant.
    """
    missing = [c for c in ("time", *INPUTS) if c not in frame.columns]
    if missing:
        raise ValueError(f"feature input lacks column(s) {missing}; expected time and {list(INPUTS)}")
    local = pl.col("time").dt.convert_time_zone(timezone)
    seconds_of_week = (local.dt.weekday() - 1) * DAY_S + local.dt.hour() * 3600 + local.dt.minute() * 60
    seconds_of_day = local.dt.hour() * 3600 + local.dt.minute() * 60
    out = frame.sort("time").with_columns(
        (2 * math.pi * seconds_of_week / WEEK_S).sin().alias("how_sin"),
        (2 * math.pi * seconds_of_week / WEEK_S).cos().alias("how_cos"),
        (2 * math.pi * seconds_of_day / DAY_S).sin().alias("hod_sin"),
        (2 * math.pi * seconds_of_day / DAY_S).cos().alias("hod_cos"),
        pl.col("zone_temp").shift(1).alias("zone_temp_lag1"),
        pl.col("energy_kw").shift(1).alias("energy_kw_lag1"),
        (pl.col("zone_temp") - pl.col("cooling_setpoint")).clip(lower_bound=0.0).alias("cooling_gap"),
        (pl.col("cooling_setpoint") - pl.col("zone_temp")).clip(lower_bound=0.0).alias("setpoint_headroom"),
    )
    columns = ["time", *FEATURES]
    if with_targets:
        out = out.with_columns(
            pl.col("energy_kw").shift(-1).alias("energy_kw_next"),
            pl.col("zone_temp").shift(-1).alias("zone_temp_next"),
        )
        columns += TARGETS
    return out.select(columns).drop_nulls().filter(pl.all_horizontal(pl.exclude("time").is_finite()))


def with_setpoint(features: pl.DataFrame, setpoint: float) -> pl.DataFrame:
    """The same instant with another cooling setpoint: how the policy asks "what if"."""
    sp = float(setpoint)
    return features.with_columns(
        pl.lit(sp).alias("cooling_setpoint"),
        (pl.col("zone_temp") - sp).clip(lower_bound=0.0).alias("cooling_gap"),
        (sp - pl.col("zone_temp")).clip(lower_bound=0.0).alias("setpoint_headroom"),
    )


_COL = {name: i for i, name in enumerate(FEATURES)}


def derive(rows: np.ndarray) -> np.ndarray:
    """Recompute, in place, the features that follow from others (the setpoint gaps); returns `rows`."""
    gap = rows[:, _COL["zone_temp"]] - rows[:, _COL["cooling_setpoint"]]
    rows[:, _COL["cooling_gap"]] = np.maximum(gap, 0.0)
    rows[:, _COL["setpoint_headroom"]] = np.maximum(-gap, 0.0)
    return rows


def set_setpoint(rows: np.ndarray, setpoint: np.ndarray | float) -> np.ndarray:
    """A copy of the feature rows with another cooling setpoint (and the gaps that follow from it)."""
    out = rows.copy()
    out[:, _COL["cooling_setpoint"]] = setpoint
    return derive(out)


def advance(rows: np.ndarray, predicted: np.ndarray, energy_now: np.ndarray, setpoint: np.ndarray,
            every_s: float, outdoor: np.ndarray | None = None, occupancy: np.ndarray | None = None,
            ) -> np.ndarray:
    """The feature rows one interval later, from the model's own prediction: how a multi-step rollout
    (the MPC, and the multi-step error it is chosen by) walks forward without a feature frame.

    `rows` (n, FEATURES) at t; `predicted` (n, TARGETS) for t+1; `energy_now` (n,) the energy reading at
    t (the next row's lag); `setpoint` (n,) the setpoint for t+1. Time of week and day turn by `every_s`;
    outdoor temperature and occupancy are the forecast's for t+1 when given (`outdoor`, `occupancy`,
    each (n,)), else held (persistence).
    """
    out = rows.copy()
    for s, c, period in (("how_sin", "how_cos", WEEK_S), ("hod_sin", "hod_cos", DAY_S)):
        turn = 2 * math.pi * every_s / period
        sin, cos = rows[:, _COL[s]], rows[:, _COL[c]]
        out[:, _COL[s]] = sin * math.cos(turn) + cos * math.sin(turn)
        out[:, _COL[c]] = cos * math.cos(turn) - sin * math.sin(turn)
    out[:, _COL["zone_temp_lag1"]] = rows[:, _COL["zone_temp"]]
    out[:, _COL["zone_temp"]] = predicted[:, TARGETS.index("zone_temp_next")]
    out[:, _COL["energy_kw_lag1"]] = energy_now
    out[:, _COL["cooling_setpoint"]] = setpoint
    if outdoor is not None:
        out[:, _COL["outdoor_temp"]] = outdoor
    if occupancy is not None:
        out[:, _COL["occupancy"]] = occupancy
    return derive(out)
