"""The shared feature builder, training, and the ONNX export with its parity gate."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest

from models.artifact import metadata
from models.features import FEATURES, TARGETS, build_features, set_setpoint, with_setpoint
from models.setpoint import ParityError, check_parity, export, train

START = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday


def zone_history(rows: int = 2000, seed: int = 4) -> pl.DataFrame:
    """A zone whose physics is known: temperature relaxes to the setpoint, energy grows with the gap
    between outdoor air and setpoint and with occupancy."""
    rng = np.random.default_rng(seed)
    time = [START + timedelta(minutes=15 * i) for i in range(rows)]
    hour = np.array([t.hour + t.minute / 60 for t in time])
    outdoor = 28 + 4 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 0.3, rows)
    occupancy = np.clip(np.sin(np.pi * (hour - 7) / 14), 0, 1)
    setpoint = rng.choice([22.0, 23.0, 24.0, 25.0, 26.0], rows)
    zone = np.empty(rows)
    zone[0] = 24.0
    for i in range(1, rows):
        zone[i] = zone[i - 1] + 0.5 * (setpoint[i - 1] - zone[i - 1]) + rng.normal(0, 0.05)
    energy = 5 + 3 * (outdoor - setpoint) + 20 * occupancy + rng.normal(0, 0.5, rows)
    return pl.DataFrame({"time": time, "zone_temp": zone, "cooling_setpoint": setpoint,
                         "energy_kw": energy, "occupancy": occupancy, "outdoor_temp": outdoor})


def test_features_are_the_known_instants_with_lags_and_targets() -> None:
    raw = zone_history(200)
    features = build_features(raw, "UTC")
    assert features.columns == ["time", *FEATURES, *TARGETS]
    assert features.height == 198  # the first has no lag, the last no target
    second = features.row(0, named=True)
    assert second["zone_temp_lag1"] == raw["zone_temp"][0]
    assert second["energy_kw_next"] == raw["energy_kw"][2]
    monday_midnight = build_features(raw, "UTC").filter(pl.col("time") == START + timedelta(days=1))
    assert monday_midnight["how_cos"][0] == pytest.approx(np.cos(2 * np.pi / 7))  # Tuesday 00:00
    assert build_features(raw, "UTC", with_targets=False).height == 199
    assert (with_setpoint(features, 21.0)["cooling_setpoint"] == 21.0).all()
    # the thermostat's gaps follow the setpoint, however it is changed
    hot = with_setpoint(features, 20.0)
    assert (hot["cooling_gap"] == (hot["zone_temp"] - 20.0).clip(lower_bound=0)).all()
    assert (hot["setpoint_headroom"] == 0).all()
    rows = set_setpoint(features.select(FEATURES).to_numpy(), 30.0)
    assert (rows[:, FEATURES.index("cooling_gap")] == 0).all()
    assert np.allclose(rows[:, FEATURES.index("setpoint_headroom")], 30.0 - features["zone_temp"].to_numpy())
    assert FEATURES[-1] == "cooling_setpoint"


def test_a_missing_role_is_named() -> None:
    with pytest.raises(ValueError, match=r"outdoor_temp"):
        build_features(zone_history(20).drop("outdoor_temp"), "UTC")


def test_train_export_with_metadata_and_parity(tmp_path: Path) -> None:
    trained = train(build_features(zone_history(), "Asia/Macau"))
    assert trained.metrics["zone_temp_next"]["r2"] > 0.9
    assert trained.metrics["energy_kw_next"]["r2"] > 0.9
    path = tmp_path / "models" / "setpoint-1.onnx"
    digest = export(trained, path, version="1")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    meta = metadata(path.read_bytes())
    assert json.loads(meta["features"]) == list(FEATURES)
    assert json.loads(meta["units"])["zone_temp_next"] == "degC"
    assert meta["version"] == "1" and json.loads(meta["metrics"]) == trained.metrics
    assert check_parity(trained, path.read_bytes()) < 1e-3


def test_a_graph_that_disagrees_with_scikit_learn_is_refused(tmp_path: Path) -> None:
    trained = train(build_features(zone_history(), "UTC"))
    path = tmp_path / "m.onnx"
    export(trained, path, version="1")
    model = onnx.load(str(path))
    regressor = next(n for n in model.graph.node if n.op_type == "LinearRegressor")
    coefficients = next(a for a in regressor.attribute if a.name == "coefficients")
    coefficients.floats[:] = [c * 1.01 for c in coefficients.floats]  # a 1 % corruption of the ridge
    with pytest.raises(ParityError, match="not registering"):
        check_parity(trained, model.SerializeToString())


def test_too_little_data_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too little data"):
        train(build_features(zone_history(30), "UTC"))
