"""The receding-horizon policy (`models.mpc`), the multi-step rollout it shares with model selection,
and the multi-step error recorded in the exported model."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl

from models.artifact import metadata
from models.features import FEATURES, TARGETS, advance, build_features
from models.mpc import MpcConfig, ZoneState, decide, rollout, session_predictor, trajectories
from models.setpoint import export, multistep_mae, select, shape_violations
from tests.test_training import zone_history

SP = FEATURES.index("cooling_setpoint")
TEMP = FEATURES.index("zone_temp")


def toy(x: np.ndarray) -> np.ndarray:
    """A zone that relaxes halfway to its setpoint each step; cooling falls 3 kW per kelvin of setpoint."""
    temp = x[:, TEMP] + 0.5 * (x[:, SP] - x[:, TEMP])
    energy = 100.0 - 3.0 * x[:, SP]
    out = np.empty((len(x), len(TARGETS)))
    out[:, TARGETS.index("energy_kw_next")], out[:, TARGETS.index("zone_temp_next")] = energy, temp
    return out


def state(temp: float = 24.0, present: float | None = 24.0, max_step: float | None = 1.0) -> ZoneState:
    row = np.zeros(len(FEATURES))
    row[FEATURES.index("hod_cos")] = row[FEATURES.index("how_cos")] = 1.0  # Monday midnight
    row[TEMP] = row[FEATURES.index("zone_temp_lag1")] = temp
    row[SP] = present if present is not None else 24.0
    return ZoneState(row, 10.0, present, 22.0, 26.0, max_step)


def test_trajectories_stay_in_the_limits_move_by_the_step_and_include_precooling() -> None:
    config = MpcConfig()
    paths = trajectories(24.0, 22.0, 26.0, 1.0, config)
    assert paths.shape[1] == config.horizon_steps and paths.min() >= 22.0 and paths.max() <= 26.0
    moves = np.abs(np.diff(np.hstack([np.full((len(paths), 1), 24.0), paths]), axis=1))
    assert moves.max() <= 1.0 + 1e-9
    precool = (paths[:, 0] < 24.0) & (paths[:, -1] > 24.0)  # colder first, warmer later
    assert precool.any()
    assert len(np.unique(paths, axis=0)) == len(paths)


def test_advance_walks_time_and_feeds_predictions_back() -> None:
    rows = np.array([state().features])
    y = toy(rows)
    nxt = advance(rows, y, np.array([7.0]), np.array([25.0]), 900)
    assert nxt[0, TEMP] == y[0, TARGETS.index("zone_temp_next")]
    assert nxt[0, FEATURES.index("zone_temp_lag1")] == rows[0, TEMP]
    assert nxt[0, FEATURES.index("energy_kw_lag1")] == 7.0 and nxt[0, SP] == 25.0
    day = rows
    for _ in range(96):  # a day of 15-minute steps: the hour-of-day angle comes back round
        day = advance(day, toy(day), np.array([7.0]), np.array([24.0]), 900)
    hod = FEATURES.index("hod_sin"), FEATURES.index("hod_cos")
    assert np.allclose(day[0, list(hod)], rows[0, list(hod)], atol=1e-9)
    how = math.atan2(day[0, FEATURES.index("how_sin")], day[0, FEATURES.index("how_cos")])
    assert math.isclose(how, 2 * math.pi / 7, rel_tol=1e-9)


def test_rollout_uses_its_own_predictions() -> None:
    rows = np.array([state(24.0).features])
    energy, temp = rollout(toy, rows, np.array([10.0]), np.full((1, 3), 26.0), 900)
    assert np.allclose(temp, [[25.0, 25.5, 25.75]]) and np.allclose(energy, 100.0 - 78.0)


def test_cheapest_comfortable_plan_first_move_within_the_step() -> None:
    band = (22.0, 25.0)
    plan = decide(toy, [state(24.0, present=24.0)], band)[0]
    # the warmest setpoint whose predicted temperature stays <= 25 - margin over the whole horizon
    assert plan.in_band and plan.setpoint == 24.5 and max(plan.trajectory) <= 24.7
    far = decide(toy, [state(22.0, present=22.0)], band)[0]
    assert far.setpoint == 23.0  # wants 24.5 but may move only 1 K per interval
    hot = decide(toy, [state(28.0, present=24.0)], band)[0]
    assert not hot.in_band and hot.setpoint == 23.0  # nothing keeps it in band: closest to it, step-limited


def test_a_zone_decides_the_same_alone_and_in_a_site_batch() -> None:
    zones = [state(23.0 + 0.2 * i, present=23.0 + 0.5 * (i % 4)) for i in range(15)]
    batch = decide(toy, zones, (22.0, 25.0))
    alone = [decide(toy, [z], (22.0, 25.0))[0] for z in zones]
    assert batch == alone


def test_a_price_moves_energy_out_of_expensive_steps() -> None:
    """Energy here depends on the setpoint only, so a peak price late in the horizon makes the plan end
    warmer than it starts (the cheap steps get the cooling): pre-cooling."""
    price = [1.0] * 4 + [10.0] * 4
    plan = decide(toy, [state(23.0, present=23.0)], (22.0, 26.0), MpcConfig(change_cost=0.0), price)[0]
    assert plan.trajectory[-1] >= plan.trajectory[0]


def test_selection_reports_every_family_and_the_export_records_it(tmp_path: Path) -> None:
    zones = [build_features(zone_history(1500, seed=s), "UTC") for s in (4, 5)]
    trained = select(zones, 900, families=("poly2-ridge", "linear-arx", "random-forest"))
    assert [c["family"] for c in trained.candidates] == ["poly2-ridge", "linear-arx", "random-forest"]
    assert trained.multistep is not None and set(trained.multistep) == {"1", "4", "8"}
    path = tmp_path / "m.onnx"
    export(trained, path, version="1")
    meta = metadata(path.read_bytes())
    mae = json.loads(meta["multistep_mae"])
    assert set(mae["4"]) == set(TARGETS) and mae == trained.multistep
    assert json.loads(meta["candidates"])[0]["family"] == "poly2-ridge"
    # errors grow with the horizon (each step builds on the last prediction), here for the temperature
    assert mae["1"]["zone_temp_next"] <= mae["8"]["zone_temp_next"]
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    again = multistep_mae(session_predictor(session), [z.tail(300) for z in zones], 900)
    assert set(again) == {"1", "4", "8"}


def test_a_gap_in_the_grid_is_not_rolled_across() -> None:
    frame = build_features(zone_history(200), "UTC")
    gapped = pl.concat([frame.head(60), frame.tail(60)])
    assert multistep_mae(toy, [gapped], 900, horizons=(1, 8))["8"]  # only the windows without the gap


def test_comfort_binds_only_in_occupied_steps_so_the_zone_may_float_before_the_day() -> None:
    """Before people come (the first steps unoccupied), the plan may start warm; it is back in the band
    (here: at most 24.7 °C by the toy's physics and the setpoint) by the first occupied step."""
    band, h = (22.0, 25.0), MpcConfig().horizon_steps
    early = replace(state(26.0, present=26.0), occupied=(False,) * 4 + (True,) * (h - 4))
    plan = decide(toy, [early], band)[0]
    assert plan.in_band and plan.setpoint > 25.0  # floats while nobody is there
    assert max(plan.trajectory[4:]) <= 24.7 + 1e-9
    always = decide(toy, [state(26.0, present=26.0)], band)[0]
    assert always.setpoint == 25.0  # every step occupied: cools straight away (one 1 K step)


def test_a_forecast_reaches_the_model_each_step() -> None:
    """A model that answers with the outdoor temperature it is given: the rollout sees the forecast."""
    oat = FEATURES.index("outdoor_temp")

    def echo(x: np.ndarray) -> np.ndarray:
        return np.column_stack([x[:, oat], x[:, TEMP]])

    rows = np.array([state().features])
    forecast = np.column_stack([np.arange(30.0, 38.0), np.ones(8)])[None]
    energy, _ = rollout(echo, rows, np.array([0.0]), np.full((1, 8), 24.0), 900, forecast)
    assert np.allclose(energy[0], [0.0, *np.arange(30.0, 37.0)])


def test_a_family_whose_setpoint_response_is_not_physical_is_not_chosen() -> None:
    """The toy's response is the thermostat's; its mirror image (warmer setpoint, colder zone) is not,
    and `shape_violations` says so on every instant."""
    zones = [build_features(zone_history(300), "UTC")]

    def mirror(x: np.ndarray) -> np.ndarray:
        y = toy(x)
        y[:, TARGETS.index("zone_temp_next")] = 48.0 - y[:, TARGETS.index("zone_temp_next")]
        return y

    assert shape_violations(toy, zones, 900) == 0.0
    assert shape_violations(mirror, zones, 900) == 1.0
