"""The EnergyPlus building served over BACnet/IP, discovered and written by the real agent (issue 16).

The medium office in Tampa's July at 10-minute steps, on 127.0.0.180-184 (AHU-1..3, PLANT-1, MTR-1),
the agent on 127.0.0.185:47965; a real PostgreSQL and broker. Building time runs at SPEED only while a
test wants it to, and pausing (``set_speed(0)``) waits for EnergyPlus to catch up, so what the test
compares is a definite step. The counterfactual is the same building without the write, run to that same
step in this process (EnergyPlus is deterministic: before the write the two are bit-identical).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.commands import Command, insert_command
from bacpipes.settings import Settings
from bacpipes.tagging import auto_tags
from bacpipes.waiting import poll_until
from bacpipes.zones import find_zones
from edge.writes import slot_value
from sim.energyplus import EnergyPlusBuilding
from sim.energyplus.engine import site_key, zone_key
from sim.server import ThreadedBuilding
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent, wait_outcome

# alone (pyproject): a write lands within the building's next steps at 500 ms timeouts
pytestmark = pytest.mark.alone

pytest.importorskip("pyenergyplus")

BASE = "127.0.0.180"  # this file's own: five controllers, 180-184
LAST = "127.0.0.184"
AGENT = "127.0.0.185/8:47965"
PROTOTYPE = "ASHRAE901_OfficeMedium_STD2019_Denver"  # names as shipped in pyenergyplus/data
WEATHER = "USA_FL_Tampa.Intl.AP.722110_TMY3"
START = datetime(2025, 7, 15, 8, 0)  # a Tuesday: the office fills up, Tampa is hot
STEPS_PER_HOUR = 6
SPEED = 1800.0  # half an hour of building time per wall second: a step every 0.33 s
ZONE = "Perimeter_mid_ZN_1"  # south-facing, middle floor: AHU-2's
RAISED = 27.0  # the cooling setpoint written; the schedule's is 24 °C in occupied hours


def energyplus() -> EnergyPlusBuilding:
    return EnergyPlusBuilding(PROTOTYPE, WEATHER, START.date(), days=1, timesteps_per_hour=STEPS_PER_HOUR)


@pytest.fixture(scope="module")
def building() -> Iterator[ThreadedBuilding]:
    with ThreadedBuilding(building=energyplus(), address_base=BASE, speed=0, start=START) as b:
        yield b


def site_settings(db_dsn: str, url: str, tmp_path: Path) -> Settings:
    # test_trendlog's timeouts (2 s, one retry): the 500 ms default timed out on the first device under xdist
    return make_settings(db_dsn, url, tmp_path,
                         bacnet={"address": AGENT, "apdu_timeout_ms": 2000, "apdu_retries": 1},
                         discovery={"targets": [f"{BASE}-{LAST}"]},
                         polling={"default_interval_s": 2}, writes={"poll_interval_s": 1})


def wait_building_time(b: ThreadedBuilding, t: datetime) -> None:
    poll_until(lambda: b.building_time() >= t, 60, interval=0.05, what=f"building time {t}")


def test_discovery_finds_the_controllers_points_and_zones(building, db_dsn, broker, tmp_path):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    with psycopg.connect(db_dsn) as conn:
        devices = conn.execute("SELECT device_id, name, address, model_name FROM device ORDER BY device_id"
                               ).fetchall()
        points = conn.execute(
            "SELECT device_id, object_type, object_instance, object_name, description, units, commandable,"
            " auto_tags FROM point ORDER BY point_id").fetchall()
        zones = find_zones(conn, settings.site.id)
    assert [(d, n) for d, n, *_ in devices] == [
        (1001, "AHU-1"), (1002, "AHU-2"), (1003, "AHU-3"), (1004, "PLANT-1"), (1005, "MTR-1")]
    assert [a.split(":")[0] for _, _, a, _ in devices] == [f"127.0.0.{180 + k}" for k in range(5)]
    served = building.snapshot()
    assert {(d, t, i) for d, t, i, *_ in points} == set(served)  # every object, none more
    by_name = {p[3]: p for p in points}
    assert all(p[3] and p[4] and p[5] for p in points)  # named, described, with units
    sp = by_name["AHU2_ZN1-ZN-CLG-SP"]
    assert sp[1:3] == ("analog-value", 101) and sp[6] and sp[4].startswith("Zone cooling setpoint (Core_mid)")
    assert (sp[7]["equipType"], sp[7]["equipId"], sp[7]["function"]) == ("ahu", "2", "sp")
    assert auto_tags(settings.site.id, "AHU-2", 1002, "analog-value", sp[3], sp[5])["qualifier"] == "cooling"
    assert by_name["AHU2_ZN1-ZN-RH"][5] == "percent-relative-humidity"
    assert {"SITE-MTR-KW", "SITE-MTR-KWH", "SITE-HVAC-KWH", "PLANT-OA-T", "AHU2-SF-KW"} <= set(by_name)
    assert not any(p[6] for p in points if p[1] == "analog-input")
    # every zone with its four roles and the site's outdoor air temperature, for the ML
    assert len(zones) == 15 and all(re.fullmatch(r"AHU[1-3]_ZN[1-5]", z.name) for z in zones)
    flags = building.object_property(1002, "analog-input,101", "statusFlags")
    assert list(flags) == [0, 0, 0, 0]  # in alarm, fault, overridden, out of service


def test_a_setpoint_written_over_bacnet_warms_the_zone_saves_energy_and_relinquishes(
    building, db_dsn, broker, tmp_path
):
    settings = site_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    with psycopg.connect(db_dsn) as conn:
        [(sp, name, instance)] = conn.execute(
            "SELECT point_id, object_name, object_instance FROM point WHERE device_id = 1002"
            " AND object_name LIKE '%%-ZN-CLG-SP' AND description LIKE %s", (f"%({ZONE})%",)).fetchall()
    prefix = name.removesuffix("-ZN-CLG-SP")
    objid, temp_id = f"analog-value,{instance}", f"analog-input,{instance}"  # the zone's ZN-T shares it
    assert building.object_property(1002, temp_id, "objectName") == f"{prefix}-ZN-T"
    schedule = building.sample()[zone_key(ZONE, "cooling_sp_schedule")]
    assert schedule == 24.0

    with ready_agent(settings), psycopg.connect(db_dsn) as conn:
        building.set_speed(SPEED)
        write = insert_command(conn, Command(settings.site.id, sp, RAISED, priority=8, source="ui",
                                             created_by="ui:test", reason="energyplus"))
        assert wait_outcome(db_dsn, write)["status"] == "completed"
        written_at = building.building_time()
        assert [slot_value(s) for s in building.object_property(1002, objid, "priorityArray")][7] == RAISED
        assert building.object_property(1002, objid, "presentValue") == RAISED
        wait_building_time(building, written_at + timedelta(hours=2))
        building.set_speed(0)
        now = building.sample()
        zone_t = building.object_property(1002, temp_id, "presentValue")
        hvac_kwh = building.object_property(1005, "analog-input,7", "presentValue")  # SITE-HVAC-KWH
        assert building.object_property(1005, "analog-input,7", "objectName") == "SITE-HVAC-KWH"
        assert now[zone_key(ZONE, "cooling_sp")] == RAISED  # in effect in EnergyPlus, not only on the wire
        assert now[zone_key(ZONE, "cooling_sp_schedule")] == schedule

        # the same building, without the write, to the same step
        with energyplus() as base:
            base.advance_to(START)
            base.advance_to(now.time)
            was = base.sample
        assert was is not None and was.time == now.time
        assert zone_t == pytest.approx(now[zone_key(ZONE, "temp")], abs=0.01)
        assert zone_t > was[zone_key(ZONE, "temp")] + 2.0  # the zone floats up towards 27 °C
        assert now[zone_key(ZONE, "cooling_load_kw")] < was[zone_key(ZONE, "cooling_load_kw")]
        assert hvac_kwh == pytest.approx(now[site_key("hvac_kwh")], abs=0.1)
        assert now[site_key("hvac_kwh")] < was[site_key("hvac_kwh")] - 1.0  # less HVAC electricity
        assert now[site_key("elec_kwh")] < was[site_key("elec_kwh")]
        assert now[zone_key("Core_top", "temp")] == pytest.approx(was[zone_key("Core_top", "temp")], abs=0.05)

        release = insert_command(conn, Command(settings.site.id, sp, None, priority=8, release=True,
                                               source="ui", created_by="ui:test"))
        outcome = wait_outcome(db_dsn, release)
        assert outcome["status"] == "completed"
        assert [slot_value(s) for s in building.object_property(1002, objid, "priorityArray")] == [None] * 16
        assert building.object_property(1002, objid, "presentValue") == schedule  # the relinquish default
        assert building.object_property(1002, objid, "relinquishDefault") == schedule
        paused = building.building_time()
        building.set_speed(SPEED)
        wait_building_time(building, paused + timedelta(minutes=30))
        building.set_speed(0)
        after = building.sample()
    assert after[zone_key(ZONE, "cooling_sp")] == after[zone_key(ZONE, "cooling_sp_schedule")] == schedule


def test_building_names_as_shipped_and_a_clear_error_for_others() -> None:
    from sim.energyplus.engine import building_names, package_data
    from sim.server import VirtualBuilding

    assert (PROTOTYPE, "office_medium") in building_names()
    assert (WEATHER, "usa_fl_tampa") in building_names("weather")
    assert package_data("model", PROTOTYPE) == package_data("model", "office_medium")
    assert package_data("weather", WEATHER).name == f"{WEATHER}.epw"
    with pytest.raises(ValueError, match=r"no building 'office_tiny'.*ASHRAE901_OfficeSmall_STD2019_Denver"):
        VirtualBuilding(building="energyplus:office_tiny", address_base=BASE)
    with pytest.raises(ValueError, match=r"ambiguous.*OfficeLarge.*OfficeMedium.*OfficeSmall"):
        package_data("model", "office")
    with pytest.raises(ValueError, match="'rc' or 'energyplus:<prototype>'"):
        VirtualBuilding(building="doe2:office", address_base=BASE)

