"""The physics-level closed loop on the EnergyPlus building (`sim.energyplus.closed_loop`), short: a model
trained on June exploration days only, then two July weekdays under the schedule and under the MPC with
the outlook the edge learns (`models.outlook`)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import polars as pl
import psycopg
import pytest

from bacpipes.settings import load_settings
from flows.ml import register_evaluated
from models.ab import Period, PeriodResult, evaluate
from models.outlook import Outlook
from sim.energyplus.closed_loop import (
    EVERY_S,
    OCCUPIED_BELOW,
    Evaluation,
    explore_and_train,
    mpc,
    occupied_at,
    run,
    schedule,
)
from streamlit_app.queries import model_cards

pytest.importorskip("pyenergyplus")
LIMITS, BAND = (22.0, 26.0), (22.0, 25.0)
START, DAYS = date(2025, 7, 7), 2  # a Monday and Tuesday


@pytest.fixture(scope="module")
def runs() -> dict:
    trained, session, outlook = explore_and_train(date(2025, 6, 2), 5, LIMITS, seed=0, timesteps_per_hour=12,
                                                  families=("poly2-ridge", "linear-arx"))
    return {"trained": trained, "outlook": outlook, "schedule": run(schedule(), START, DAYS, band=BAND),
            "mpc": run(mpc(session, LIMITS, BAND, max_step=1.0, outlook=outlook), START, DAYS, band=BAND)}


def test_the_outlooks_occupied_steps_are_the_buildings_schedule(runs: dict) -> None:
    """Learnt from the zones' occupancy readings alone (June weekdays), judged against the thermostat
    schedule's occupied hours on the July weekdays: the same, but for 05-06 h, when the prototype's first
    10 % of people arrive an hour before its schedule calls the building occupied."""
    outlook: Outlook = runs["outlook"]
    labels = next(iter(runs["schedule"].frames.values()))["time"].dt.replace_time_zone(None).to_list()
    start, steps = labels[0] - timedelta(seconds=EVERY_S), len(labels)
    times = [start + timedelta(seconds=EVERY_S * (k + 1)) for k in range(steps)]
    assert times == labels and times[0].date() == START
    assert len(outlook.occupancy) == 16  # 15 zones and the building
    for zone in outlook.occupancy:
        occupied = outlook.occupied(zone, start, steps)
        wrong = {t.hour for t, o in zip(times, occupied, strict=True) if o != occupied_at(t)}
        assert wrong == {5}, zone
    assert outlook.elec_per_kw is not None and outlook.weights([25.0])[0] < outlook.weights([35.0])[0]


def test_the_model_is_chosen_by_multistep_error_on_held_back_days(runs: dict) -> None:
    trained = runs["trained"]
    assert [c["family"] for c in trained.candidates] == ["poly2-ridge", "linear-arx"]
    assert trained.family in ("poly2-ridge", "linear-arx") and set(trained.multistep) == {"1", "4", "8"}
    assert "2025-06" in trained.window[1]  # trained on June only, never on the evaluation days


def test_the_schedule_is_the_prototypes_own_and_comfortable(runs: dict) -> None:
    k = runs["schedule"].kpis
    assert k.hvac_kwh > 0 and k.elec_kwh > k.hvac_kwh and k.peak_kw > 0
    assert k.changes_per_zone_day == 0  # nothing commanded
    assert abs(k.mean_occupied_temp - 24.0) < 0.2  # its occupied cooling setpoint
    assert k.discomfort_kh_per_zone < 0.5


def test_the_mpc_keeps_comfort_and_its_setpoints_within_the_limits_and_step(runs: dict) -> None:
    base, ml = runs["schedule"].kpis, runs["mpc"].kpis
    assert ml.discomfort_kh_per_zone <= base.discomfort_kh_per_zone + 0.5  # K·h per zone over two days
    assert ml.changes_per_zone_day < 20  # no cycling every interval
    for frame in runs["mpc"].frames.values():
        # the setpoint in effect: the ML's while the HVAC is on (within the ML limits), else the schedule's
        commanded = frame.filter(pl.col("cooling_setpoint") <= OCCUPIED_BELOW + 2.0)["cooling_setpoint"]
        assert commanded.min() >= LIMITS[0] and commanded.max() <= LIMITS[1]
        steps = frame["cooling_setpoint"].diff().abs().drop_nulls()
        ml_steps = steps.filter((frame["cooling_setpoint"].shift(1) <= LIMITS[1]).drop_nulls()
                                & (frame["cooling_setpoint"].drop_nulls().tail(len(steps)) <= LIMITS[1]))
        assert ml_steps.max() <= 1.0 + 1e-6
    # energy: reported, not asserted (over the 14 July days the MPC does not beat the schedule; see the
    # module docstring of sim.energyplus.closed_loop and the issue note)
    assert ml.hvac_kwh > 0


def test_the_evaluated_model_is_registered_with_the_kpis_it_achieved(runs: dict, db_dsn: str,
                                                                     tmp_path) -> None:
    """The closed-loop flow's last step (`flows.ml.register_evaluated`): the model's card on the Models page
    then shows what it achieved against the schedule, and how that was measured."""
    days = [START + timedelta(days=k) for k in range(DAYS)]
    base = runs["schedule"].day_hvac_kwh

    def day(d: date, arm: str) -> Period:
        return Period(datetime.combine(d, time()), datetime.combine(d, time()) + timedelta(days=1), arm)

    results = [PeriodResult(day(d, arm), runs[name].day_hvac_kwh[d] / base[d], 0.0)
               for d in days for arm, name in (("ml", "mpc"), ("baseline", "schedule"))]
    kpis = {n: runs[n].kpis for n in ("schedule", "mpc")}
    explored = (date(2025, 6, 2), 5)
    evaluation = Evaluation(kpis, evaluate(results), runs["trained"], BAND, DAYS, START, explored)
    settings = load_settings(None, database={"dsn": db_dsn}, ml={"models_dir": str(tmp_path)})
    version = register_evaluated(settings, evaluation, version="closed-loop-test")
    with psycopg.connect(db_dsn) as conn:
        [card] = [c for name, v, c in model_cards(conn) if (name, v) == ("setpoint", version)]
    measured = card.closed_loop
    assert set(measured.controllers) == {"schedule", "mpc"}
    assert measured.controllers["mpc"]["hvac_kwh"] == pytest.approx(runs["mpc"].kpis.hvac_kwh)
    assert measured.savings_pct == pytest.approx(100 * evaluation.verdict.savings)  # the A/B module's
    assert measured.interval_pct == pytest.approx(tuple(100 * c for c in evaluation.verdict.ci))
    assert measured.savings_of == "HVAC electricity" and "EnergyPlus medium office" in measured.method
    assert card.family == runs["trained"].family and (tmp_path / f"setpoint-{version}.onnx").exists()
