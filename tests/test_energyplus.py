"""The EnergyPlus engine: a DOE prototype (medium office) in Tampa's July, stepped from Python.

These run the real EnergyPlus (pyenergyplus-lbnl) in-process. At 10-minute steps a run is sized,
warmed up and ready in ~5 s; the three runs the module needs (base, base again, override) share
module-scoped fixtures. The 1-minute figures are `python -m sim.energyplus.bench`'s job.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from itertools import pairwise

import pytest

from bacpipes.tagging import auto_tags
from bacpipes.zones import OUTDOOR_SUFFIX, SITE_POWER_SUFFIX, SUFFIXES
from sim.energyplus import EnergyPlusBuilding, Sample, describe, package_data
from sim.energyplus.engine import loop_key, site_key, zone_key
from sim.energyplus.idf import Idf, layout, prepare

DAY = date(2025, 7, 15)  # a Tuesday: the office is occupied
STEPS_PER_HOUR = 6
ZONE = "Perimeter_mid_ZN_1"  # south-facing middle floor, served by PACU_VAV_mid
LOOP = "PACU_VAV_mid"
OVERRIDE_AT = datetime(2025, 7, 15, 9, 0)
HOURS = 6


def _run(raise_by: float | None) -> tuple[list[Sample], Sample, Sample]:
    """(samples of the HOURS after OVERRIDE_AT, the sample after releasing, the one after that)."""
    with EnergyPlusBuilding("office_medium", "tampa", DAY, days=1, timesteps_per_hour=STEPS_PER_HOUR) as b:
        assert b.advance_to(OVERRIDE_AT) == 9 * STEPS_PER_HOUR - 1  # the first step came with start()
        if raise_by is not None:
            b.override(ZONE, "cooling", b.sample[zone_key(ZONE, "cooling_sp")] + raise_by)
        samples = b.run(HOURS * STEPS_PER_HOUR, keep_every=1)
        b.override(ZONE, "cooling", None)
        after = [b.step(), b.step()]
        workdir = b._workdir
        assert workdir is not None and workdir.exists()
    assert not workdir.exists(), "EnergyPlus's output folder outlives the run"
    assert after[0] is not None and after[1] is not None
    return samples, after[0], after[1]


@pytest.fixture(scope="module")
def base() -> tuple[list[Sample], Sample, Sample]:
    return _run(None)


@pytest.fixture(scope="module")
def raised() -> tuple[list[Sample], Sample, Sample]:
    return _run(3.0)


def _mean(samples: list[Sample], key: str) -> float:
    return sum(s[key] for s in samples) / len(samples)


def test_the_engine_advances_in_building_time(base: tuple[list[Sample], Sample, Sample]) -> None:
    samples, *_ = base
    step = timedelta(minutes=60 // STEPS_PER_HOUR)
    assert samples[0].time == OVERRIDE_AT + step
    assert all(b.time - a.time == step for a, b in pairwise(samples))
    assert len(samples) == HOURS * STEPS_PER_HOUR
    # a July weekday in Tampa: hot outside, the office occupied, cooled to its schedule, drawing power
    assert _mean(samples, site_key("oa_temp")) > 28
    assert _mean(samples, zone_key(ZONE, "occupancy_pct")) > 50
    assert abs(_mean(samples, zone_key(ZONE, "temp")) - 24.0) < 0.5
    assert _mean(samples, zone_key(ZONE, "cooling_sp")) == pytest.approx(24.0)
    assert _mean(samples, loop_key(LOOP, "cooling_kw")) > 5
    assert _mean(samples, site_key("elec_kw")) > _mean(samples, site_key("hvac_kw")) > 10
    kwh = [s[site_key("elec_kwh")] for s in samples]
    assert all(b > a for a, b in pairwise(kwh))


def test_raising_a_cooling_setpoint_warms_the_zone_and_saves_energy(
    base: tuple[list[Sample], Sample, Sample], raised: tuple[list[Sample], Sample, Sample]
) -> None:
    was, now = base[0], raised[0]
    # applied from the next step on, and held
    assert {s[zone_key(ZONE, "cooling_sp")] for s in now} == {27.0}
    assert {s[zone_key(ZONE, "cooling_sp_schedule")] for s in now} == {24.0}
    assert _mean(now, zone_key(ZONE, "temp")) > _mean(was, zone_key(ZONE, "temp")) + 2.0
    assert _mean(now, zone_key(ZONE, "cooling_load_kw")) < 0.7 * _mean(was, zone_key(ZONE, "cooling_load_kw"))
    assert _mean(now, loop_key(LOOP, "cooling_kw")) < _mean(was, loop_key(LOOP, "cooling_kw"))
    assert _mean(now, loop_key(LOOP, "fan_kw")) < _mean(was, loop_key(LOOP, "fan_kw"))
    assert _mean(now, site_key("hvac_kw")) < _mean(was, site_key("hvac_kw"))
    assert now[-1][site_key("elec_kwh")] < was[-1][site_key("elec_kwh")]
    # the other floors did not notice
    assert _mean(now, zone_key("Core_top", "temp")) == pytest.approx(_mean(was, zone_key("Core_top", "temp")),
                                                                     abs=0.05)


def test_releasing_returns_the_schedule_setpoint(raised: tuple[list[Sample], Sample, Sample]) -> None:
    _, first, second = raised
    for s in (first, second):
        assert s[zone_key(ZONE, "cooling_sp")] == s[zone_key(ZONE, "cooling_sp_schedule")] == 24.0


def test_same_inputs_give_identical_outputs(base: tuple[list[Sample], Sample, Sample]) -> None:
    again = _run(None)
    assert [s.time for s in again[0]] == [s.time for s in base[0]]
    assert [s.values for s in again[0]] == [s.values for s in base[0]]  # exactly, every value
    assert again[1].values == base[1].values


def test_heating_is_held_below_a_low_cooling_override() -> None:
    """A cooling setpoint under the heating schedule's must not make the thermostat fight itself."""
    with EnergyPlusBuilding("office_medium", "tampa", DAY, days=1, timesteps_per_hour=4) as b:
        b.advance_to(datetime(2025, 7, 15, 10, 0))
        b.override(ZONE, "cooling", 20.0)  # the schedule heats to 21 °C in occupied hours
        s = b.step()
        assert s is not None
        assert s[zone_key(ZONE, "cooling_sp")] == 20.0
        assert s[zone_key(ZONE, "heating_sp")] == 19.0
        b.override(ZONE, "cooling", None)
        b.step()
        s = b.step()
        assert s is not None and s[zone_key(ZONE, "heating_sp")] == s[zone_key(ZONE, "heating_sp_schedule")]
        with pytest.raises(ValueError):
            b.override(ZONE, "cooling", float("nan"))
        with pytest.raises(KeyError):
            b.override("Attic", "cooling", 24.0)


def test_the_medium_office_layout() -> None:
    lay = layout(Idf.read(package_data("model", "office_medium")))
    assert [a.name for a in lay.air_loops] == ["PACU_VAV_bot", "PACU_VAV_mid", "PACU_VAV_top"]
    assert all(len(a.zones) == 5 for a in lay.air_loops)
    assert sorted(z for a in lay.air_loops for z in a.zones) == sorted(lay.zones)
    assert len(lay.zones) == 15  # the three plenums have no thermostat
    mid = lay.air_loops[1]
    assert ("Fan:VariableVolume", "PACU_VAV_mid Fan") in mid.components
    assert ("Coil:Cooling:DX:TwoSpeed", "PACU_VAV_mid_CoolC DXCoil") in mid.components
    assert ("Coil:Heating:Electric", f"{ZONE} VAV Box Reheat Coil") in mid.zone_components[ZONE]
    assert lay.thermostat_schedules[ZONE] == ("HTGSETP_SCH_YES_OPTIMUM", "CLGSETP_SCH_YES_OPTIMUM")


def test_prepare_sets_the_timestep_and_run_period() -> None:
    idf = prepare(Idf.read(package_data("model", "office_medium")), date(2025, 7, 1), date(2025, 7, 3), 60)
    assert [o.fields for o in idf.of("Timestep")] == [["60"]]
    [period] = idf.of("RunPeriod")
    assert period.fields[1:7] == ["7", "1", "2025", "7", "3", "2025"]
    assert idf.of("ConvergenceLimits")[0].fields[0] == "1"
    assert idf.of("Sizing:Parameters")[0].fields[2] == "90"  # 1.5 h, as the prototype's 6 × 15 min
    assert not idf.of("Output:Table:SummaryReports")
    with pytest.raises(ValueError):
        prepare(idf, date(2025, 7, 1), date(2025, 7, 3), 7)


def test_points_are_named_for_discovery_and_the_zone_finder() -> None:
    with EnergyPlusBuilding("office_medium", "tampa", DAY, days=1, timesteps_per_hour=4) as b:
        devices = describe(b)
        values = b.sample
        third_mid_zone = b.layout.air_loops[1].zones[2]
    assert values is not None
    assert [d.name for d in devices] == ["AHU-1", "AHU-2", "AHU-3", "PLANT-1", "MTR-1"]
    assert [d.instance for d in devices] == [1001, 1002, 1003, 1004, 1005]
    names = [p.name for d in devices for p in d.points]
    assert len(names) == len(set(names))
    for d in devices:
        ids = [(p.object_type, p.instance) for p in d.points]
        assert len(ids) == len(set(ids)), d.name
        assert all(p.key in values.values for p in d.points)
    # the zone finder (bacpipes.zones.find_zones): prefix before the first "-", every role per zone
    by_zone: dict[str, set[str]] = {}
    for name in names:
        prefix, _, suffix = name.partition("-")
        by_zone.setdefault(prefix, set()).add(suffix)
    zones = [z for z, suffixes in by_zone.items() if set(SUFFIXES.values()) <= suffixes]
    assert len(zones) == 15 and all(re.fullmatch(r"AHU[1-3]_ZN[1-5]", z) for z in zones)
    assert len([n for n in names if n.endswith(f"-{OUTDOOR_SUFFIX}")]) == 1
    assert len([n for n in names if n.endswith(f"-{SITE_POWER_SUFFIX}")]) == 1
    # discovery's tagging
    ahu2 = devices[1]
    sp = next(p for p in ahu2.points if p.name == "AHU2_ZN3-ZN-CLG-SP")
    assert sp.commandable and sp.write == (third_mid_zone, "cooling")
    assert sp.key == zone_key(third_mid_zone, "cooling_sp")
    assert sp.default_key == zone_key(third_mid_zone, "cooling_sp_schedule")
    tags = auto_tags("s", ahu2.name, ahu2.instance, sp.object_type, sp.name, "degrees-celsius")
    assert (tags["equipType"], tags["equipId"]) == ("ahu", "2")
    assert (tags["subject"], tags["qualifier"], tags["function"]) == ("zone-air", "cooling", "sp")
    assert sp.min_value is not None and sp.max_value is not None and sp.min_value < 24 < sp.max_value
    assert not any(p.commandable for d in devices for p in d.points if p.object_type == "analog-input")
