"""A short field trial through the real path (issue 17): the EnergyPlus building served over BACnet/IP in its
own process, `bacpipes edge discover` and `bacpipes edge run` as processes, a real PostgreSQL and broker,
the agent on the building's clock (`[clock]`), an ML period then a baseline period (`ab_schedule`).

Tampa's July, 06:00-12:00 on a Tuesday in two 3-hour periods after a 1.5-hour lead-in, at 900x with
5-minute EnergyPlus steps; controllers on 127.0.0.160-164:47870 (port 47870: test_inference serves one
device on 127.0.0.160:47808), the agent on 127.0.0.165:47962 (this file's block: 127.0.0.160-169).
What it checks is the path, not the model: a small model is trained on three June days of the same building,
and two days of the building's own history are backfilled first, as a site has them, for the MPC's outlook.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bacpipes.clock import WALL, ScaledClock, clock_from
from bacpipes.errors import UserError
from bacpipes.settings import load_settings
from models.ab import Period
from sim.energyplus.field_trial import Trial, drop_database, exploration_model, report, run_once
from tests.conftest import ADMIN_DSN

# alone (pyproject): the building runs at 900x: a shared CPU loses the polls the coverage check counts
pytestmark = pytest.mark.alone

TRIAL = Trial(first=datetime(2026, 7, 7, 6), periods=2, hours_per_period=3, lead_in_h=1.5, speed=900.0,
              timesteps_per_hour=12, poll_interval_s=300.0, ml_interval_s=900.0, site_id="ft-test",
              address_base="127.0.0.160", port=47870, agent_address="127.0.0.165/8:47962",
              agent_device_id=3001962, history_days=2)
ML_PRIORITY = 8


def test_the_clock_is_the_wall_clock_unless_a_simulation_sets_one() -> None:
    assert clock_from(load_settings(None).clock) is WALL
    origin = datetime(2026, 7, 7, 6, tzinfo=UTC)
    wall0 = time.time() - 100  # the clock read `origin` 100 wall seconds ago
    settings = load_settings(None, clock={"origin": origin.isoformat(), "speed": 600, "wall_start": wall0})
    clock = clock_from(settings.clock)
    before, t, after = time.time(), clock.time(), time.time()
    assert origin.timestamp() + (before - wall0) * 600 <= t <= origin.timestamp() + (after - wall0) * 600
    assert clock.now(UTC).tzinfo is UTC and clock.wall_s(900) == 1.5
    building = ScaledClock(datetime(2026, 7, 7, 1), 600)  # a simulator's naive local standard time
    assert building.now().tzinfo is None and building.anchor()["speed"] == 600
    before = building.now()
    faster = building.rescaled(1200)  # continuous: reads on from where it was
    assert before <= faster.origin <= faster.now() and faster.wall_s(1200) == 1.0
    assert math.isinf(ScaledClock(origin, 0).wall_s(1))  # paused
    with pytest.raises(UserError, match=r"clock\.origin"):
        load_settings(None, clock={"origin": "2026-07-07T06:00:00"})  # naive: which zone?


def test_a_switchback_runs_ml_over_bacnet_then_releases_it_and_scores_both_arms(broker, tmp_path):
    pytest.importorskip("pyenergyplus")
    model = exploration_model(TRIAL, days=3, families=("piecewise-ridge",))
    middle = TRIAL.start + timedelta(hours=3)
    ml, baseline = Period(TRIAL.start, middle, "ml"), Period(middle, TRIAL.end, "baseline")
    result = run_once(TRIAL, [ml, baseline], model, admin_dsn=ADMIN_DSN, mqtt_url=broker.url,
                      workdir=tmp_path, keep_database=True, progress=lambda _: None)
    assert result.database
    try:
        with psycopg.connect(make_conninfo(ADMIN_DSN, dbname=result.database)) as conn:
            first, last = conn.execute("SELECT min(time), max(time) FROM sensor_readings").fetchone()
            lead_in = TRIAL.start - timedelta(hours=TRIAL.lead_in_h)
            polled_first = conn.execute("SELECT min(time) FROM sensor_readings WHERE time >= %s",
                                        (lead_in,)).fetchone()[0]
            outlooks = conn.execute("SELECT count(*) FROM inference_log WHERE detail LIKE 'outlook: %%days of"
                                    " history, HVAC meter%%'").fetchone()[0]
            writes = conn.execute(
                "SELECT l.at, c.value, c.priority, e.priority_array, e.value_read, c.point_id"
                " FROM inference_log l"
                " JOIN write_commands c ON c.id = l.command_id JOIN command_events e ON e.command_id = c.id"
                " WHERE e.status = 'completed' ORDER BY l.at").fetchall()
            baseline_log = conn.execute(
                "SELECT count(*), count(command_id), array_agg(DISTINCT detail) FROM inference_log"
                " WHERE at >= %s AND at < %s", (baseline.start, baseline.end)).fetchone()
            releases = conn.execute(
                "SELECT c.priority, e.priority_array, c.point_id FROM write_commands c"
                " JOIN command_events e ON e.command_id = c.id AND e.status = 'completed'"
                " WHERE c.source = 'ml' AND c.command_type = 'release_priority'").fetchall()
    finally:
        drop_database(ADMIN_DSN, result.database)

    # the site's own history before the trial (backfilled), then readings polled and stamped in building
    # time (July), not the wall clock's (the database's now()); the MPC's outlook was learnt from them
    assert first <= lead_in - timedelta(days=TRIAL.history_days) + timedelta(minutes=5)
    assert lead_in <= polled_first < TRIAL.start
    assert outlooks >= 15
    assert TRIAL.end <= last < TRIAL.end + timedelta(hours=1)
    assert last < datetime.now(UTC) - timedelta(days=30)
    assert result.coverage > 0.8

    # ML periods: writes decided by edge inference, executed over BACnet at the ML priority, in effect
    assert len(writes) >= 15  # at least a round for the 15 zones
    assert all(ml.start <= at < ml.end for at, *_ in writes)
    assert {priority for _, _, priority, *_ in writes} == {ML_PRIORITY}
    wrong = [(at, value, array, read) for at, value, _, array, read, _ in writes
             if not array[ML_PRIORITY - 1] == pytest.approx(value, abs=1e-4) == read]  # a REAL: float32
    assert not wrong, wrong[:3]
    assert all(22.0 <= value <= 26.0 for _, value, *_ in writes)  # the ML limits, as the demo sets them

    # the baseline period: inference steps back, writes nothing, and gives every zone's priority back
    count, commanded, details = baseline_log
    assert count >= 15 and commanded == 0 and details == ["A/B: a baseline period"]
    assert sorted(p for *_, p in releases) == sorted({p for *_, p in writes})  # once per zone ML held
    assert len(releases) >= 10  # most of the 15 zones: the MPC holds only the zones it moves (12-15 seen)
    assert all(p == ML_PRIORITY and array[ML_PRIORITY - 1] is None for p, array, _ in releases)

    # KPIs for both arms, from the building's own values
    by_arm = {k.period.arm: k for k in result.periods}
    assert set(by_arm) == {"ml", "baseline"}
    for k in by_arm.values():
        assert k.zones == 15
        assert 0 < k.hvac_kwh < k.site_kwh and 0 < k.hvac_peak_kw < k.peak_kw
        assert k.discomfort_kh >= 0 and 0 <= k.rh_zone_h <= 15 * 3
    assert by_arm["ml"].ml_writes == len(writes) and by_arm["baseline"].ml_writes == 0
    assert by_arm["baseline"].ml_releases == len(releases) and by_arm["ml"].ml_releases == 0
    assert by_arm["ml"].setpoint_changes > 0
    table = report(TRIAL, model, [result]).table()
    assert "HVAC electricity (kWh)" in table and "one run, unpaired" in table
