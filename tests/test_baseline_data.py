"""The baseline on data that did not come from our database: other names, eemeter's shapes, UTC and naive
clocks, Fahrenheit, zero readings, and no measured occupancy.

The known building: an office in New York (its clock moves against UTC on 2 November, inside the baseline),
open on weekdays 07:00-19:00 local time; base load, an occupied adder, heating below 12 °C and cooling above
20 °C (both harder while open), 1.5 kWh of noise. Another project's export of it has UTC timestamps, `kwh`
and `temp_f` columns and no occupancy.
"""

from __future__ import annotations

import filecmp
import json
import math
import runpy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.baseline import (
    BaselineInputWarning,
    BaselineModel,
    avoided_energy,
    fahrenheit_to_celsius,
    fit_baseline,
    hourly_frame,
    metrics,
)

ZONE = "America/New_York"
START = pd.Timestamp("2025-09-29", tz=ZONE)  # a Monday; clocks go back on 2 November
BASELINE_HOURS = 12 * 7 * 24
HOLDOUT_HOURS = 2 * 7 * 24
OPEN = (7, 19)  # weekdays, local time
METER_DATA = Path(__file__).resolve().parents[1] / "notebooks" / "data"
FOREIGN = {"energy": "kwh", "temperature": "temp_f", "temperature_unit": "F", "timezone": ZONE}


def open_hours_of_week() -> tuple[int, ...]:
    return tuple(int(h % 24 in range(*OPEN) and h // 24 < 5) for h in range(168))


def office(seed: int = 5) -> pd.DataFrame:
    """Our own shape: local index, energy_kwh, outdoor_temp_c, occupancy (measured, 0..1)."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(START, periods=BASELINE_HOURS + HOLDOUT_HOURS, freq="h")
    hour, weekday = index.hour.to_numpy(), index.day_of_week.to_numpy()
    hour_of_week = weekday * 24 + hour
    is_open = np.asarray(open_hours_of_week())[hour_of_week] == 1

    autumn = 17 - 12 * np.arange(len(index)) / len(index)
    temperature = autumn + 5 * np.sin(2 * np.pi * (hour - 9) / 24) + weather(rng, len(index))
    heating = np.where(is_open, 5.0, 3.0) * np.maximum(12 - temperature, 0)
    cooling = np.where(is_open, 4.0, 1.0) * np.maximum(temperature - 20, 0)
    energy = (40 + rng.uniform(-4, 4, 168)[hour_of_week] + np.where(is_open, 60 + rng.uniform(0, 10, 168)
              [hour_of_week], 0) + heating + cooling + rng.normal(0, 1.5, len(index)))
    occupancy = np.where(is_open, rng.uniform(0.6, 1.0, len(index)), rng.uniform(0.0, 0.2, len(index)))
    return pd.DataFrame({"energy_kwh": energy, "outdoor_temp_c": temperature, "occupancy": occupancy},
                        index=index)


def weather(rng: np.random.Generator, hours: int) -> np.ndarray:
    phi = 0.97
    shocks = rng.normal(0, 4 * math.sqrt(1 - phi**2), hours)
    swings = np.zeros(hours)
    for i in range(1, hours):
        swings[i] = phi * swings[i - 1] + shocks[i]
    return swings


def exported(frame: pd.DataFrame) -> pd.DataFrame:
    """As another project exports it: UTC, its own names, °F, no occupancy."""
    return pd.DataFrame(
        {"kwh": frame["energy_kwh"].to_numpy(), "temp_f": frame["outdoor_temp_c"].to_numpy() * 9 / 5 + 32},
        index=frame.index.tz_convert("UTC").rename("start"),
    )


@pytest.fixture(scope="module")
def ours() -> pd.DataFrame:
    return office()


@pytest.fixture(scope="module")
def baseline(ours: pd.DataFrame) -> pd.DataFrame:
    return ours.iloc[:BASELINE_HOURS]


@pytest.fixture(scope="module")
def holdout(ours: pd.DataFrame) -> pd.DataFrame:
    return ours.iloc[BASELINE_HOURS:]


@pytest.fixture(scope="module")
def measured(baseline: pd.DataFrame) -> BaselineModel:
    return fit_baseline(baseline)


@pytest.fixture(scope="module")
def estimated(baseline: pd.DataFrame) -> BaselineModel:
    """Fitted on the export: no occupancy, UTC, °F."""
    return fit_baseline(exported(baseline), **FOREIGN)


def test_an_export_reads_as_our_own_shape(baseline: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the zone is given: nothing to warn about
        frame = hourly_frame(exported(baseline), **FOREIGN)
    expected = baseline.drop(columns="occupancy")
    pd.testing.assert_frame_equal(frame, expected, check_names=False, check_freq=False)
    assert str(frame.index.tz) == ZONE


def test_named_columns_with_measured_occupancy_fit_as_ours_do(
    baseline: pd.DataFrame, holdout: pd.DataFrame, measured: BaselineModel
) -> None:
    export = exported(baseline).assign(people=baseline["occupancy"].to_numpy())
    model = fit_baseline(export, occupancy="people", **FOREIGN)
    assert model.occupancy_lookup is None and model.timezone == ZONE
    assert model.metrics.cv_rmse == pytest.approx(measured.metrics.cv_rmse, rel=1e-9)
    later = exported(holdout).assign(people=holdout["occupancy"].to_numpy())
    np.testing.assert_allclose(model.predict(later, occupancy="people", **FOREIGN).to_numpy(),
                               measured.predict(holdout).to_numpy(), rtol=1e-9)


def test_eemeter_shapes_are_read(baseline: pd.DataFrame, estimated: BaselineModel) -> None:
    export = exported(baseline)
    # eemeter <= 3: meter_data with a `value` column, temperature_data a Series on its own (longer) index
    meter_data = export[["kwh"]].rename(columns={"kwh": "value"})
    temperature_data = pd.concat([
        pd.Series([50.0], index=pd.DatetimeIndex([export.index[0] - pd.Timedelta(hours=1)])),
        export["temp_f"],
    ]).sample(frac=1.0, random_state=1)  # shuffled: matched by time, not position
    old = fit_baseline(meter_data, temperature=temperature_data, temperature_unit="F", timezone=ZONE)
    # eemeter >= 4: HourlyBaselineData's frame, `observed` and `temperature`
    new = fit_baseline(export.set_axis(["observed", "temperature"], axis=1), temperature_unit="F",
                       timezone=ZONE)
    for model in (old, new):
        assert model.metrics.n == BASELINE_HOURS
        assert model.metrics.cv_rmse == pytest.approx(estimated.metrics.cv_rmse, rel=1e-9)


def test_a_utc_index_warns_and_the_fit_shows_why(baseline: pd.DataFrame, estimated: BaselineModel) -> None:
    export = exported(baseline)
    with pytest.warns(BaselineInputWarning) as caught:
        in_utc = fit_baseline(export, energy="kwh", temperature="temp_f", temperature_unit="F")
    assert [str(w.message) for w in caught] == [
        "the index is in UTC: hour of week is computed in UTC, where a building's schedule moves by an hour "
        "with daylight saving time; pass timezone='Area/City' (the building's zone) to convert it"
    ]
    assert caught[0].filename == __file__  # points at the caller's line
    assert in_utc.timezone == "UTC"
    # the opening hour falls on two UTC hours of the week either side of 2 November: a worse fit
    assert in_utc.metrics.cv_rmse > 1.3 * estimated.metrics.cv_rmse


def test_a_naive_index_warns_unless_the_zone_is_given(baseline: pd.DataFrame) -> None:
    export = exported(baseline)
    with pytest.warns(BaselineInputWarning, match=r"^the index has no time zone: hour of week is computed on "
                      r"its clock as it stands, in an unknown zone \(taken as UTC\); pass timezone="):
        fit_baseline(export.tz_localize(None), energy="kwh", temperature="temp_f", temperature_unit="F")

    wall_clock = export.tz_convert(ZONE).tz_localize(None)  # local wall time: 01:00 twice on 2 November
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fit_baseline(wall_clock, **FOREIGN)
    assert model.timezone == ZONE
    assert model.metrics.n == BASELINE_HOURS - 2  # the repeated hour is ambiguous: both dropped


def test_fahrenheit_is_refused_with_the_way_out(baseline: pd.DataFrame, estimated: BaselineModel) -> None:
    export = exported(baseline)
    f = export["temp_f"]
    mean, low, high = f.mean(), f.min(), f.max()
    with pytest.raises(ValueError) as refused:
        fit_baseline(export, energy="kwh", temperature="temp_f", timezone=ZONE)
    assert str(refused.value) == (
        f"outdoor temperature looks like Fahrenheit (mean {mean:.1f}, range {low:.1f} to {high:.1f} as °C); "
        "convert it (models.baseline.fahrenheit_to_celsius) or pass temperature_unit='F'"
    )
    converted = export.assign(temp_c=fahrenheit_to_celsius(f))
    model = fit_baseline(converted, energy="kwh", temperature="temp_c", timezone=ZONE)
    assert model.metrics == estimated.metrics  # as if temperature_unit='F' had been passed

    kelvin = export.assign(temp_k=baseline["outdoor_temp_c"].to_numpy() + 273.15)
    implausible = r"^outdoor temperature read as °C is not plausible \(mean 28\d\.\d, .*\(kelvin\?"
    with pytest.raises(ValueError, match=implausible):
        fit_baseline(kelvin, energy="kwh", temperature="temp_k", timezone=ZONE)
    with pytest.raises(ValueError, match=r"read as °F is not plausible \(mean 14\d\.\d, .* in °C\)"):
        fit_baseline(kelvin, energy="kwh", temperature="temp_k", temperature_unit="F", timezone=ZONE)
    with pytest.raises(ValueError, match="temperature_unit must be 'C' or 'F', not 'K'"):
        fit_baseline(kelvin, energy="kwh", temperature="temp_k", temperature_unit="K", timezone=ZONE)  # type: ignore[typeddict-item]


def test_zero_electricity_readings_are_missing(baseline: pd.DataFrame, holdout: pd.DataFrame,
                                               measured: BaselineModel) -> None:
    zeros = np.r_[np.arange(300, 330), 500, 811, 1200, 1500, 1601, 1999]  # a 30-hour outage and 6 strays
    with_zeros = baseline.copy()
    with_zeros.iloc[zeros, 0] = 0.0
    model = fit_baseline(with_zeros)
    assert model.dropped_rows == len(zeros) and model.metrics.n == BASELINE_HOURS - len(zeros)
    missing = baseline.copy()
    missing.iloc[zeros, 0] = np.nan
    assert model.metrics == fit_baseline(missing).metrics  # exactly as if the values were missing

    as_gas = fit_baseline(with_zeros, electricity=False)  # a gas meter's zero is a reading
    assert as_gas.dropped_rows == 0 and as_gas.metrics.cv_rmse > 2 * model.metrics.cv_rmse

    reporting = holdout.copy()
    reporting.iloc[10:15, 0] = 0.0
    result = avoided_energy(measured, reporting)
    assert result.dropped_rows == 5 and result.reporting_hours == HOLDOUT_HOURS - 5
    assert abs(result.percent_savings) < 1  # the zeros are not a saving


def test_estimated_occupancy_finds_the_schedule_and_fits_as_well_as_measured(
    holdout: pd.DataFrame, measured: BaselineModel, estimated: BaselineModel
) -> None:
    assert estimated.occupancy_lookup == open_hours_of_week()
    assert estimated.metrics.cv_rmse == pytest.approx(measured.metrics.cv_rmse, rel=0.05)
    assert estimated.metrics.meets_guideline_14

    later = exported(holdout)
    held_out = metrics(holdout["energy_kwh"], estimated.predict(later, **FOREIGN).set_axis(holdout.index), 0)
    by_measurement = metrics(holdout["energy_kwh"], measured.predict(holdout), 0)
    assert held_out.cv_rmse == pytest.approx(by_measurement.cv_rmse, rel=0.05)
    assert abs(held_out.nmbe) < 0.01


def test_an_estimated_lookup_is_stored_with_the_model(holdout: pd.DataFrame,
                                                      estimated: BaselineModel) -> None:
    stored = json.loads(json.dumps(estimated.to_dict(), allow_nan=False))
    assert stored["format_version"] == 2 and len(stored["occupancy_lookup"]) == 168
    restored = BaselineModel.from_dict(stored)
    assert restored == estimated
    later = exported(holdout)
    pd.testing.assert_series_equal(restored.predict(later, **FOREIGN), estimated.predict(later, **FOREIGN))


def test_a_measured_occupancy_model_asks_for_occupancy(measured: BaselineModel,
                                                       holdout: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="fitted on measured occupancy"):
        measured.predict(holdout.drop(columns="occupancy"))


def test_missing_columns_are_named_with_what_the_frame_has(baseline: pd.DataFrame) -> None:
    export = exported(baseline)
    with pytest.raises(ValueError, match=r"no energy column: name it \(energy='...'\); unnamed, one of "
                                         r"energy_kwh, observed, value is used; its columns are kwh, temp_f"):
        fit_baseline(export, temperature="temp_f", temperature_unit="F", timezone=ZONE)
    with pytest.raises(ValueError, match="frame has no column 'kWh'; its columns are kwh, temp_f"):
        fit_baseline(export, energy="kWh", temperature="temp_f", temperature_unit="F", timezone=ZONE)
    with pytest.raises(ValueError, match=r"DatetimeIndex of hours, e\.g\. frame\.set_index"):
        fit_baseline(export.reset_index(), **FOREIGN)


def test_the_notebook_meter_file_is_what_its_script_writes(tmp_path: Path) -> None:
    script = runpy.run_path(str(METER_DATA / "make_meter_csv.py"))
    written = script["write"](tmp_path / "office_meter.csv")
    assert filecmp.cmp(written, METER_DATA / "office_meter.csv", shallow=False)
    assert (METER_DATA / "office_meter.csv").stat().st_size < 1_000_000


def test_the_notebook_meter_file_fits_within_guideline_14() -> None:
    script = runpy.run_path(str(METER_DATA / "make_meter_csv.py"))
    meter = pd.read_csv(METER_DATA / "office_meter.csv", index_col="start", parse_dates=True)
    zeros = int((meter["kwh"] == 0).sum())
    assert zeros == script["OUTAGE_HOURS"] + script["STRAY_ZEROS"]
    model = fit_baseline(meter, energy="kwh", temperature="temp_f", temperature_unit="F",
                         timezone=script["ZONE"])
    assert model.dropped_rows == zeros
    assert model.metrics.meets_guideline_14
    opening = range(script["OPEN_HOUR"], script["CLOSE_HOUR"])
    assert model.occupancy_lookup == tuple(int(h % 24 in opening and h // 24 < 5) for h in range(168))
