"""Edge inference against a real site database: shadow logs only, active writes inside the ML limits,
a model whose bytes do not match its checksum is refused while the verified one keeps running, stale
inputs never write, and the ML priority is given back when the model is switched off."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.settings import Settings, load_settings
from central.ab import publish_schedule
from central.registry import deploy as deploy_model
from central.registry import register, rollback
from edge.inference import EdgeInference
from models.ab import Period
from models.features import build_features
from models.setpoint import export, train
from sim.server import ThreadedBuilding
from tests.conftest import make_settings
from tests.edge_harness import discover_site, running_agent
from tests.test_training import zone_history

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
POINTS = {  # point_id: (object_type, instance, object_name)
    1: ("analog-input", 1, "AHU1-ZN-T"), 2: ("analog-value", 1, "AHU1-ZN-CLG-SP"),
    3: ("analog-input", 6, "AHU1-CLG-KW"), 4: ("analog-input", 7, "AHU1-OCC-PCT"),
    5: ("analog-input", 101, "PLANT-OA-T"),
}
VALUES = {1: 24.5, 2: 24.0, 3: 60.0, 4: 80.0, 5: 31.0}


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("models") / "setpoint.onnx"
    export(train(build_features(zone_history(), "UTC")), path, version="1")
    return path.read_bytes()


@pytest.fixture
def site(db_dsn: str) -> Settings:
    settings = load_settings(None, site={"id": "s1", "timezone": "UTC"}, database={"dsn": db_dsn})
    with psycopg.connect(db_dsn) as conn:
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('s1', 1001, '127.0.0.10')")
        for pid, (kind, instance, name) in POINTS.items():
            conn.execute(
                "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, object_name,"
                " writable, commandable, ml_min_value, ml_max_value) VALUES ('s1', %s, 1001, %s, %s, %s,"
                " %s, %s, %s, %s)",
                (pid, kind, instance, name, pid == 2, pid == 2, 22.0 if pid == 2 else None,
                 26.0 if pid == 2 else None),
            )
    readings(db_dsn, NOW - timedelta(hours=1))
    return settings


def readings(dsn: str, start: datetime) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor().copy(
        "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN"
    ) as copy:
        for step in range(5):
            for pid, value in VALUES.items():
                copy.write_row((start + timedelta(minutes=15 * step), "s1", pid, value + 0.1 * step))


def deploy(dsn: str, model: bytes | None, version: str, mode: str, sha256: str | None = None) -> None:
    digest = sha256 or (hashlib.sha256(model).hexdigest() if model else "-")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by)"
            " VALUES ('s1', 'setpoint', %s, %s, %s, %s, 'test')", (version, mode, digest, model)
        )


def rows(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def test_shadow_mode_logs_a_choice_and_never_writes(site: Settings, onnx_model: bytes) -> None:
    deploy(site.database.dsn, onnx_model, "1", "shadow")
    [decision] = EdgeInference(site).step(NOW)
    assert 22.0 <= decision.setpoint <= 26.0
    # an hour of history: no outlook (models.outlook), the MPC holds the present values, and says so
    assert decision.detail.startswith("no outlook (") and "h of history" in decision.detail, decision.detail
    logged = rows(site.database.dsn, "SELECT mode, version, setpoint, command_id FROM inference_log")
    assert logged == [("shadow", "1", decision.setpoint, None)]


def test_with_a_day_of_history_the_mpc_decides_with_an_outlook(site: Settings, onnx_model: bytes) -> None:
    """Occupancy by time of day and HVAC electricity per kW of cooling learnt from the site's own readings
    (its SITE-HVAC-KW meter), once: a second round reuses it."""
    with psycopg.connect(site.database.dsn) as conn:
        conn.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance,"
                     " object_name) VALUES ('s1', 6, 1001, 'analog-input', 201, 'SITE-HVAC-KW')")
        with conn.cursor().copy("COPY sensor_readings (time, site_id, point_id, value) FROM STDIN") as copy:
            for step in range(4 * 30):  # 30 h at 15 min, up to the fixture's last hour
                t = NOW - timedelta(hours=31) + timedelta(minutes=15 * step)
                day = 8 <= t.hour < 18
                outdoor, load = 28.0 + 4 * day + 0.01 * step, 20.0 + 40.0 * day + 0.1 * (step % 7)
                for pid, value in {1: 24.0, 2: 24.0, 3: load, 4: 90.0 * day, 5: outdoor,
                                   6: load * (0.1 + 0.01 * outdoor) + 5.0}.items():
                    copy.write_row((t, "s1", pid, value))
    deploy(site.database.dsn, onnx_model, "1", "shadow")
    inference = EdgeInference(site)
    [decision] = inference.step(NOW)
    # by the hour the test runs at: a decision with the outlook, or, no one expected for 2 h, a step back
    learnt_from = "1.3 days of history, HVAC meter"
    assert decision.detail.startswith((f"outlook: {learnt_from}", f"unoccupied for the next 2 h (outlook: "
                                       f"{learnt_from}")), decision.detail
    learnt = inference.outlook
    assert learnt.elec_per_kw == pytest.approx((0.1, 0.01), abs=1e-3)
    far = [h for h in range(24) if min(abs(h - NOW.hour), 24 - abs(h - NOW.hour)) > 2]  # not the fixture's
    night = NOW.replace(hour=next(h for h in far if not 8 <= h < 18), minute=0)
    noon = NOW.replace(hour=next(h for h in far if 8 <= h < 17), minute=0)
    assert learnt.occupancy_ahead("AHU1", night, 1)[0] == 0.0
    assert learnt.occupancy_ahead("AHU1", noon, 1)[0] == pytest.approx(0.9)
    inference.step(NOW + timedelta(minutes=15))
    assert inference.outlook is learnt  # learnt at most once a day
    assert rows(site.database.dsn, "SELECT count(*) FROM write_commands") == [(0,)]


def test_with_no_one_expected_the_mpc_steps_back_and_gives_the_priority_back(
    site: Settings, onnx_model: bytes
) -> None:
    """Nights and weekends are the building's own schedule (its setback): an active model that held a zone
    releases it as soon as its outlook sees no one over the horizon, and writes nothing."""
    deploy(site.database.dsn, onnx_model, "1", "active")
    inference = EdgeInference(site)
    [held] = inference.step(NOW)  # too little history for an outlook: it decides, and holds the zone
    assert held.command_id is not None and not held.step_back
    with psycopg.connect(site.database.dsn) as conn, \
            conn.cursor().copy("COPY sensor_readings (time, site_id, point_id, value) FROM STDIN") as copy:
        for step in range(4 * 30):  # 30 h at 15 min of an empty building
            t = NOW - timedelta(hours=31) + timedelta(minutes=15 * step)
            for pid, value in {1: 24.0, 2: 24.0, 3: 2.0, 4: 0.0, 5: 27.0}.items():
                copy.write_row((t, "s1", pid, value))
    inference.outlook_learnt = None  # learn now, not tomorrow
    [back] = inference.step(NOW + timedelta(minutes=15))
    assert back.step_back and back.setpoint is None and back.command_id is None
    assert back.detail.startswith("unoccupied for the next 2 h (outlook: 1.3 days of history"), back.detail
    assert rows(site.database.dsn, "SELECT command_type, value, priority, source FROM write_commands"
                " ORDER BY created_at") == [("write_value", held.setpoint, 8, "ml"),
                                            ("release_priority", None, 8, "ml")]


def test_active_mode_writes_inside_the_ml_limits_and_releases_when_switched_off(
    site: Settings, onnx_model: bytes
) -> None:
    with psycopg.connect(site.database.dsn) as conn:  # narrow limits: the choice is clamped into them
        conn.execute("UPDATE point SET ml_min_value = 23.0, ml_max_value = 23.5 WHERE point_id = 2")
    deploy(site.database.dsn, onnx_model, "1", "active")
    inference = EdgeInference(site)
    [decision] = inference.step(NOW)
    [command] = rows(site.database.dsn, "SELECT point_id, value, priority, source, created_by, command_type,"
                     " not_after FROM write_commands")
    assert command[:4] == (2, decision.setpoint, 8, "ml") and 23.0 <= command[1] <= 23.5
    # it expires one interval after the decision (not after now(): NOW is when the module was collected)
    assert command[4:] == ("ml:setpoint@1", "write_value", NOW + timedelta(seconds=site.ml.interval_s))
    deploy(site.database.dsn, None, "1", "off")
    inference.step(NOW + timedelta(minutes=15))
    released = rows(site.database.dsn, "SELECT priority, command_type FROM write_commands"
                    " WHERE command_type = 'release_priority'")
    assert released == [(8, "release_priority")]


def test_a_model_failing_its_checksum_is_refused_and_the_verified_one_keeps_running(
    site: Settings, onnx_model: bytes
) -> None:
    inference = EdgeInference(site)
    deploy(site.database.dsn, onnx_model, "1", "shadow")
    inference.step(NOW)
    deploy(site.database.dsn, onnx_model, "2", "shadow", sha256="0" * 64)  # corrupted in transit
    inference.step(NOW + timedelta(minutes=1))
    deploy(site.database.dsn, onnx_model, "3", "shadow")  # hot-swapped, same process
    inference.step(NOW + timedelta(minutes=2))
    versions = rows(site.database.dsn, "SELECT version FROM inference_log ORDER BY at")
    assert versions == [("1",), ("1",), ("3",)]


def test_stale_inputs_make_no_decision_and_no_write(db_dsn: str, site: Settings, onnx_model: bytes) -> None:
    deploy(site.database.dsn, onnx_model, "1", "active")
    [decision] = EdgeInference(site).step(NOW + timedelta(hours=3))  # newest reading 3 h old
    assert decision.setpoint is None and decision.detail == "stale or missing inputs"
    assert rows(site.database.dsn, "SELECT count(*) FROM write_commands") == [(0,)]
    assert rows(site.database.dsn, "SELECT detail FROM inference_log") == [("stale or missing inputs",)]


def test_the_first_round_after_a_gap_decides_on_held_inputs(site: Settings, onnx_model: bytes) -> None:
    """History to NOW, then the agent's first polls 22 minutes later (a site's history backfilled, then the
    set-up before its agent runs): with 5-minute rounds the last three intervals hold only the partial
    live one; the readings before the gap hold (within stale_after_s) and give it its lag."""
    settings = site.model_copy(update={"ml": site.ml.model_copy(update={"interval_s": 300.0})})
    deploy(site.database.dsn, onnx_model, "1", "shadow")
    with psycopg.connect(site.database.dsn) as conn, conn.cursor().copy(
            "COPY sensor_readings (time, site_id, point_id, value) FROM STDIN") as copy:
        for pid, value in VALUES.items():
            copy.write_row((NOW + timedelta(minutes=22), "s1", pid, value))
    [decision] = EdgeInference(settings).step(NOW + timedelta(minutes=23))
    assert 22.0 <= decision.setpoint <= 26.0 and not decision.waiting, decision.detail
    # with nothing recent at all the round waits for inputs, and the agent tries again within a minute
    [later] = EdgeInference(settings).step(NOW + timedelta(hours=3))
    assert later.setpoint is None and later.waiting and later.detail == "stale or missing inputs"


def test_no_model_no_write(site: Settings, tmp_path: Path) -> None:
    [decision] = EdgeInference(site).step(NOW)
    assert decision.detail == "no model deployed"
    assert rows(site.database.dsn, "SELECT count(*) FROM write_commands") == [(0,)]


def test_register_deploy_and_roll_back(site: Settings, onnx_model: bytes, tmp_path: Path) -> None:
    """Central's side of a rollout (here in the same database; replication carries it in production)."""
    path = tmp_path / "setpoint.onnx"
    path.write_bytes(onnx_model)
    inference = EdgeInference(site)
    with psycopg.connect(site.database.dsn) as conn:
        assert register(conn, "setpoint", "1", path, "central:test") == hashlib.sha256(onnx_model).hexdigest()
        register(conn, "setpoint", "2", path, "central:test")
        deploy_model(conn, "s1", "setpoint", "1", "shadow", "central:test")
        inference.step(NOW)
        deploy_model(conn, "s1", "setpoint", "2", "active", "central:test")
        inference.step(NOW + timedelta(minutes=1))
        assert rollback(conn, "s1", "setpoint", "central:ab", "ML used more energy") == "1"
        inference.step(NOW + timedelta(minutes=2))
        with pytest.raises(ValueError, match="not registered"):
            deploy_model(conn, "s1", "setpoint", "9", "shadow", "central:test")
    logged = rows(site.database.dsn, "SELECT version, mode FROM inference_log ORDER BY at")
    assert logged == [("1", "shadow"), ("2", "active"), ("1", "active")]


def test_the_edge_follows_the_ab_schedule(site: Settings, onnx_model: bytes) -> None:
    periods = [Period(NOW - timedelta(hours=1), NOW + timedelta(minutes=30), "ml"),
               Period(NOW + timedelta(minutes=30), NOW + timedelta(hours=2), "baseline")]
    with psycopg.connect(site.database.dsn) as conn:
        assert publish_schedule(conn, "s1", periods) == 2
    deploy(site.database.dsn, onnx_model, "1", "active")
    inference = EdgeInference(site)
    [during_ml] = inference.step(NOW)
    [during_baseline] = inference.step(NOW + timedelta(minutes=45))
    assert during_ml.command_id is not None
    assert during_baseline.command_id is None and during_baseline.detail == "A/B: a baseline period"
    kinds = rows(site.database.dsn, "SELECT command_type FROM write_commands ORDER BY created_at")
    assert kinds == [("write_value",), ("release_priority",)]  # the building's own control is back


def test_choices_stay_within_the_ml_step_of_the_present_setpoint(site: Settings, onnx_model: bytes) -> None:
    with psycopg.connect(site.database.dsn) as conn:
        conn.execute("UPDATE point SET ml_max_step = 0.5 WHERE point_id = 2")
        conn.execute("INSERT INTO point_state (site_id, point_id, value) VALUES ('s1', 2, 24.0)")
    deploy(site.database.dsn, onnx_model, "1", "shadow")
    [decision] = EdgeInference(site).step(NOW)
    assert 23.5 <= decision.setpoint <= 24.5


def test_a_new_deployment_is_hot_swapped_in_a_running_agent(db_dsn: str, broker, tmp_path: Path,
                                                             onnx_model: bytes) -> None:
    agent_settings = make_settings(
        db_dsn, broker.url, tmp_path, site={"id": "s1", "timezone": "UTC"},
        bacnet={"address": "127.0.0.105/8:47905"}, discovery={"targets": ["127.0.0.160"]},
        polling={"default_interval_s": 1}, ml={"enabled": True, "interval_s": 1},
    )

    def versions() -> set[str]:
        return {v for (v,) in rows(db_dsn, "SELECT DISTINCT version FROM inference_log")}

    with ThreadedBuilding(devices=1, address_base="127.0.0.160", seed=1, speed=0):
        discover_site(agent_settings)
        with running_agent(agent_settings, discover_first=False) as agent:
            deploy(db_dsn, onnx_model, "1", "shadow")
            wait_for(lambda: versions() == {"1"}, 20)
            deploy(db_dsn, onnx_model, "2", "shadow")
            wait_for(lambda: "2" in versions(), 20)
            assert all(not p.failures for p in agent.pollers)  # polling carried on throughout
    assert rows(db_dsn, "SELECT count(*) FROM write_commands") == [(0,)]  # shadow never writes


def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
