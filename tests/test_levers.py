"""Air-handler levers on the EnergyPlus medium office (sim.energyplus.levers): each variant's IDF edit is
the one the run used, demand-controlled ventilation brings less outdoor air when the office is not full,
and the supply-air reset raises the supply temperature at part load.

One July weekday in Tampa at 10-minute steps, three real EnergyPlus runs (~2 s each) shared by the module.
"""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from sim.energyplus.levers import (
    RA_M3S_PER_M2,
    RP_M3S_PER_PERSON,
    SAT_HIGH_C,
    SAT_LOW_C,
    VARIANTS,
    LeverRun,
    run_variant,
)

DAY = date(2025, 7, 8)  # a Tuesday
STEPS_PER_HOUR = 6


@pytest.fixture(scope="module")
def runs() -> dict[str, LeverRun]:
    wanted = ("shipped", "dcv", "sat-reset")
    return {v.name: run_variant(v, DAY, 1, STEPS_PER_HOUR) for v in VARIANTS if v.name in wanted}


def _paired(runs: dict[str, LeverRun], a: str, b: str) -> pl.DataFrame:
    """The two runs' air-side rows at the same instants, the office occupied."""
    left = runs[a].air.filter(pl.col("occupied"))
    right = runs[b].air.select(pl.all().name.suffix("_b")).rename({"time_b": "time"})
    return left.join(right, on="time")


def test_each_run_used_its_variants_edit(runs: dict[str, LeverRun]) -> None:
    shipped, dcv, sat = (runs[n].used for n in ("shipped", "dcv", "sat-reset"))
    # as shipped: demand control "Yes" but no per-person rate, supply air by the outdoor-air reset
    assert set(shipped["dcv"]) == {"Yes"}
    assert len(shipped["oa_rates"]) == 15 and all(pp < 1e-6 for _, pp, _ in shipped["oa_rates"])
    assert {k.lower() for k, _ in shipped["sat_managers"]} == {"setpointmanager:outdoorairreset"}
    # DCV: 62.1's office rates on every zone the ventilation controllers serve; supply air untouched
    assert {(pp, pa) for _, pp, pa in dcv["oa_rates"]} == {(RP_M3S_PER_PERSON, RA_M3S_PER_M2)}
    assert dcv["sat_managers"] == shipped["sat_managers"]
    # SAT reset: one warmest-zone manager per air loop, ventilation untouched
    assert sorted(k.lower() for k, _ in sat["sat_managers"]) == ["setpointmanager:warmest"] * 3
    assert sat["oa_rates"] == shipped["oa_rates"]
    assert set(shipped["economizers"]) == set(sat["economizers"]) == {"DifferentialDryBulb"}
    # and EnergyPlus ran them: the supply setpoint it reports is the shipped 12.8 °C, or the reset's
    for loop in ("PACU_VAV_bot", "PACU_VAV_mid", "PACU_VAV_top"):
        occupied = runs["shipped"].air.filter(pl.col("occupied"))[f"{loop}/sat_setpoint"]
        assert occupied.min() == pytest.approx(SAT_LOW_C, abs=0.01)
        assert occupied.max() == pytest.approx(SAT_LOW_C, abs=0.01)


def test_dcv_brings_less_outdoor_air_when_the_office_is_not_full(runs: dict[str, LeverRun]) -> None:
    both = _paired(runs, "shipped", "dcv")
    # at minimum outdoor air (the shipped economizer opens to 100 % outdoor air when it is cooler than the
    # return, as on Tampa's mornings and evenings: then ventilation is not what sets the flow)
    minimum = both.filter(pl.col("oa_kg_s") < 0.8 * pl.col("supply_kg_s"))
    part = minimum.filter(pl.col("occupancy") < 80)
    full = minimum.filter(pl.col("occupancy") >= 90)
    assert part.height >= 6 and full.height >= 6, "a weekday has part-full and full hours"
    # part full: clearly less outdoor air, at every instant
    assert (part["oa_kg_s_b"] < part["oa_kg_s"]).all()
    assert part["oa_kg_s_b"].sum() < 0.9 * part["oa_kg_s"].sum()
    # full (the schedule's 95 %): about the shipped rate, which is 62.1's at design density
    assert full["oa_kg_s_b"].sum() == pytest.approx(full["oa_kg_s"].sum(), rel=0.08)
    # and never nothing while the office is occupied and the dampers at their minimum schedule (07-22 h)
    ventilated = both.filter(pl.col("time").dt.hour().is_between(8, 20))
    assert ventilated.height > 30
    assert (ventilated["oa_kg_s_b"] > 0.2).all()


def test_the_sat_reset_raises_supply_temperature_at_part_load(runs: dict[str, LeverRun]) -> None:
    both = _paired(runs, "shipped", "sat-reset")
    loops = ("PACU_VAV_bot", "PACU_VAV_mid", "PACU_VAV_top")
    for loop in loops:
        setpoint = both[f"{loop}/sat_setpoint_b"]
        assert setpoint.min() >= SAT_LOW_C - 0.01 and setpoint.max() <= SAT_HIGH_C + 0.01
    # the morning (part load): warmer supply air than the shipped 12.8 °C, on every air loop
    morning = both.filter(pl.col("time").dt.hour().is_between(7, 9))
    for loop in loops:
        assert morning[f"{loop}/sat_setpoint_b"].mean() > SAT_LOW_C + 1.0
        assert morning[f"{loop}/supply_temp_b"].mean() > morning[f"{loop}/supply_temp"].mean() + 1.0
    # warmer supply air needs more of it to carry the same heat
    assert both["supply_kg_s_b"].sum() > both["supply_kg_s"].sum()
