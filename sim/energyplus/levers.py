"""Levers at the air handler, measured on the same building, weather and days as the closed loop.

Why this exists (issue 17, "if the physics cannot give it, show why with numbers and what would"): zone
cooling setpoints alone save at most ~6.5 % of HVAC electricity on EnergyPlus's medium office in Tampa's
July within the 22-25 °C band (`sim.energyplus.closed_loop`), because the DX coils mostly treat outdoor
air. So we measure what the air handlers could give, each as an edit of the prototype's IDF applied
before the run (`EnergyPlusBuilding(edit=...)`), judged by the closed loop's own KPI code
(`closed_loop.run`, imported, not copied):

- **shipped**: the prototype as is (ASHRAE 90.1-2019 medium office): 12.8 °C supply air all July (its
  ``SetpointManager:OutdoorAirReset`` gives 12.8 °C above 21.1 °C outdoors), outdoor air by
  ``Controller:MechanicalVentilation`` with demand control already "Yes" but a per-person rate of 1e-8
  m³/s: the whole ventilation rate is per floor area (0.000432 m³/s·m², i.e. ASHRAE 62.1's office rates
  at the design density of 18.6 m²/person), so it does not follow occupancy.
- **dcv**: demand-controlled ventilation: the same controllers' ``DesignSpecification:OutdoorAir`` split
  into 62.1's office rates, 2.5 L/s per person (counted by the People schedule) + 0.3 L/s·m². At design
  occupancy this is the shipped rate (0.000435 m³/s·m²); below it, less outdoor air.
- **sat-reset**: supply-air temperature reset: ``SetpointManager:Warmest`` per air loop (12.8-18 °C,
  the warmest zone's terminal at full flow meets its load) instead of the outdoor-air reset.
- **dcv+sat**: both; **dcv+sat+25**: both, and every zone's occupied cooling setpoint at 25.0 °C (the
  band's top; `closed_loop.fixed`).

Not measured, with why: fan static-pressure reset: the prototype's fan part-load curve (0.0408, 0.088,
-0.0729, 0.9437) is already the one 90.1 models for a VSD *with* static-pressure reset (90.1-2019 requires
it for DDC VAV), so there is no reset left to add; the table's fan share bounds it anyway.

Conventions are the closed loop's (occupied hours, band 22-25 °C, humid > 60 % RH, peak = highest
15-minute mean of Electricity:Facility). The air-side observations (outdoor air, supply temperature,
fan and DX power) are sampled at each 15-minute decision instant, not integrated.

What it finds (`python -m benchmarks.bench_levers`, 14 days from 2025-07-07, 12 steps/h; HVAC saved vs
shipped's 12,139 kWh): dcv 3.3 % (comfort and humidity unchanged); sat-reset -8.2 % (fans double at 16 °C
supply air, DX unchanged, no summer reheat to save, 79 -> 1,121 humid zone-hours); dcv+sat -5.7 %;
dcv+sat+25 1.5 %. What would reach further: the prototype is Denver's (its economizer's differential
dry-bulb limit opens to 100 % outdoor air on Tampa's saturated mornings and evenings); an enthalpy limit
("econ") saves 2.6 % with fewer humid hours, dcv+econ 6.1 % with comfort and humidity better than shipped,
dcv+econ+25 13.0 % with peak 150 vs 170 kW but discomfort 0.61 vs 0.30 K·h/zone (worst zone 9.2 vs 3.8):
the 13 % with comfort no worse is not reached by these levers at fixed settings.
"""

from __future__ import annotations

import argparse
import json
import time as wallclock
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import polars as pl

from sim.energyplus import closed_loop
from sim.energyplus.closed_loop import Controller, Kpis, LoopRun, Moment, fixed, schedule
from sim.energyplus.engine import EnergyPlusBuilding, loop_key, zone_key
from sim.energyplus.idf import Idf, IdfObject

# ASHRAE 62.1-2019 Table 6.2.2.1, office space: Rp and Ra
RP_M3S_PER_PERSON = 0.0025  # 5 cfm/person
RA_M3S_PER_M2 = 0.0003  # 0.06 cfm/ft²
SAT_LOW_C = 12.8  # the prototype's design supply temperature
SAT_HIGH_C = 18.0
START = date(2025, 7, 7)
DAYS = 14
TIMESTEPS = 12
BAND = (22.0, 25.0)


# -- the IDF edits ------------------------------------------------------------------------------------

def _dsoa_names(idf: Idf) -> list[str]:
    """The DesignSpecification:OutdoorAir objects the mechanical-ventilation controllers use (not the
    zone sizing ones: the equipment stays sized as shipped)."""
    names = []
    for mv in idf.of("Controller:MechanicalVentilation"):
        names += [mv.fields[k] for k in range(6, len(mv.fields), 3) if mv.fields[k]]
    return names


def edit_dcv(idf: Idf, per_person: float = RP_M3S_PER_PERSON, per_area: float = RA_M3S_PER_M2) -> None:
    """Outdoor air by occupancy: 62.1's per-person + per-area rates, demand control on."""
    if not idf.of("Controller:MechanicalVentilation"):
        raise ValueError("the building has no Controller:MechanicalVentilation to make demand-controlled")
    for mv in idf.of("Controller:MechanicalVentilation"):
        mv.fields[2] = "Yes"
    for name in _dsoa_names(idf):
        dsoa = idf.get("DesignSpecification:OutdoorAir", name)
        if dsoa is None:
            raise ValueError(f"no DesignSpecification:OutdoorAir {name!r}")
        dsoa.fields[1:4] = ["Sum", f"{per_person}", f"{per_area}"]


def edit_sat_reset(idf: Idf, low: float = SAT_LOW_C, high: float = SAT_HIGH_C) -> None:
    """Each air loop's supply-air setpoint by its warmest zone (SetpointManager:Warmest) instead of the
    outdoor-air reset; the mixed-air managers follow the supply outlet's setpoint as before."""
    loops = {o.fields[9].lower(): o.name for o in idf.of("AirLoopHVAC") if len(o.fields) > 9}
    keep, replaced = [], []
    for obj in idf.objects:
        if obj.kind.lower() == "setpointmanager:outdoorairreset" and obj.fields[-1].lower() in loops:
            replaced.append(obj.fields[-1])
            continue
        keep.append(obj)
    if not replaced:
        raise ValueError("no SetpointManager:OutdoorAirReset on an air loop's supply outlet to replace")
    for node in replaced:
        loop = loops[node.lower()]
        keep.append(IdfObject("SetpointManager:Warmest", [
            f"{loop} SAT Warmest", "Temperature", loop, f"{low}", f"{high}", "MaximumTemperature", node]))
    idf.objects = keep


def edit_economizer(idf: Idf, control: str = "DifferentialEnthalpy") -> None:
    """The economizer's high limit by enthalpy, not dry bulb: in a humid climate air a little cooler than
    the return is much wetter (90.1 does not allow a differential dry-bulb limit in climate zones 1A-4A;
    the prototype is the Denver one, 5B, where it is allowed)."""
    if not idf.of("Controller:OutdoorAir"):
        raise ValueError("the building has no Controller:OutdoorAir")
    for oa in idf.of("Controller:OutdoorAir"):
        oa.fields[7] = control


def edits_of(idf: Idf) -> dict[str, list]:
    """What a prepared IDF holds of the levers: the ventilation controllers' rates and each supply
    outlet's setpoint manager, to check the run used the variant's edit."""
    rates = []
    for name in _dsoa_names(idf):
        dsoa = idf.get("DesignSpecification:OutdoorAir", name)
        if dsoa is not None:
            rates.append((name, float(dsoa.fields[2] or 0), float(dsoa.fields[3] or 0)))
    outlets = {o.fields[9].lower() for o in idf.of("AirLoopHVAC") if len(o.fields) > 9}
    managers = [(o.kind, o.name) for o in idf.objects if o.kind.lower().startswith("setpointmanager:")
                and o.fields[-1].lower() in outlets]
    dcv = [mv.fields[2] for mv in idf.of("Controller:MechanicalVentilation")]
    economizers = [oa.fields[7] for oa in idf.of("Controller:OutdoorAir")]
    return {"dcv": dcv, "oa_rates": rates, "sat_managers": managers, "economizers": economizers}


# -- the variants -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    dcv: bool = False
    sat_reset: bool = False
    cooling_c: float | None = None  # occupied cooling setpoint; None: the building's schedule (24.0 °C)
    economizer: bool = False  # enthalpy high limit instead of differential dry bulb
    occupancy_seen: float = 1.0  # DCV's people count as this share of the People schedule's (sensitivity)

    def edit(self, idf: Idf) -> None:
        if self.dcv:
            edit_dcv(idf, per_person=RP_M3S_PER_PERSON * self.occupancy_seen)
        if self.economizer:
            edit_economizer(idf)
        if self.sat_reset:
            edit_sat_reset(idf)

    def controller(self) -> Controller:
        return schedule() if self.cooling_c is None else fixed(self.cooling_c)


VARIANTS = (
    Variant("shipped"),
    Variant("dcv", dcv=True),
    Variant("sat-reset", sat_reset=True),
    Variant("dcv+sat", dcv=True, sat_reset=True),
    Variant("dcv+sat+25", dcv=True, sat_reset=True, cooling_c=25.0),
)
# What would reach further, measured the same way: the economizer's humid-climate high limit, with DCV and
# 25 °C; and DCV if the office were half as full as its design schedule says (the ventilation's people
# count halved; the people's heat, lights and plug loads kept as scheduled).
MORE = (
    Variant("econ", economizer=True),
    Variant("dcv+econ", dcv=True, economizer=True),
    Variant("dcv+econ+24.5", dcv=True, economizer=True, cooling_c=24.5),
    Variant("dcv+econ+25", dcv=True, economizer=True, cooling_c=25.0),
    Variant("dcv50+econ+25", dcv=True, economizer=True, cooling_c=25.0, occupancy_seen=0.5),
    Variant("fixed-25", cooling_c=25.0),
)

# What a BACnet site would have to expose, writable (commandable AV at the ML priority) and read, for the
# ML to drive each lever, and the EnergyPlus actuator a simulated point would map to.
POINTS = {
    "dcv": ("per AHU: outdoor-air minimum flow setpoint (AV, L/s; or the OA damper minimum position, %), "
            "writable; per zone: CO2 or a people count (AI) to respect 62.1's Rp*Pz + Ra*Az, and the "
            "AHU's measured OA flow (AI). EnergyPlus: actuator 'Outdoor Air Controller' / "
            "'Air Mass Flow Rate'"),
    "sat-reset": ("per AHU: discharge (supply) air temperature setpoint (AV, °C), writable, with the reset's "
                  "bounds; read: supply air temperature (have: AHU-n-SA-T), VAV damper positions or "
                  "airflow per zone (the critical zone), zone RH (the reset's humidity limit). "
                  "EnergyPlus: actuator 'System Node Setpoint' / 'Temperature Setpoint' on the supply "
                  "outlet"),
    "econ": ("per AHU: economizer enable (BV) or its high-limit setpoint (AV, kJ/kg or °C), writable; read: "
             "outdoor T and RH (have: PLANT-OA-T, -RH), return-air T and RH. EnergyPlus: actuator 'Outdoor "
             "Air Controller' / 'Air Mass Flow Rate' (hold the minimum)"),
    "setpoint": "per zone: occupied cooling setpoint (AV), writable: exposed today (…-ZN-CLG-SP)",
    "static-pressure": ("per AHU: duct static pressure setpoint (AV, Pa), writable, and VAV damper "
                        "positions: not measured here (the prototype's fan curve already assumes a reset)"),
}


# -- running a variant --------------------------------------------------------------------------------

def extra_variables(loops: list[str], outlets: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Per air loop: its outdoor-air mass flow and its supply outlet's setpoint."""
    out = {}
    for loop in loops:
        out[loop_key(loop, "oa_kg_s")] = ("Air System Outdoor Air Mass Flow Rate", loop)
        out[loop_key(loop, "sat_setpoint")] = ("System Node Setpoint Temperature", outlets[loop])
        out[loop_key(loop, "supply_kg_s")] = ("System Node Mass Flow Rate", outlets[loop])
    return out


def _variant_building(edit: Callable[[Idf], None], extra: dict[str, tuple[str, str]],
                      built: list[EnergyPlusBuilding]) -> Callable[..., EnergyPlusBuilding]:
    """The factory `closed_loop.run` builds its building with: the variant's IDF edit and the air-side
    readings; each building made is kept in `built` (its IDF is what the run used)."""

    def factory(**kwargs: object) -> EnergyPlusBuilding:
        b = EnergyPlusBuilding(**kwargs, edit=edit, extra_variables=extra)  # type: ignore[arg-type]
        built.append(b)
        return b

    return factory


def _observing(control: Controller, loops: list[str], rows: list[dict]) -> Controller:
    """The controller, plus one row of air-side readings per decision instant."""

    def observe(m: Moment) -> dict[str, float | None]:
        s = m.sample
        occupied = [z for z in m.zones if m.occupied(z)]
        row: dict = {"time": m.time, "occupied": bool(occupied),
                     "hvac_on": any(m.hvac_on(z) for z in m.zones),
                     "occupancy": (sum(s[zone_key(z, "occupancy_pct")] for z in m.zones) / len(m.zones)),
                     "oa_temp": s["site/oa_temp"]}
        for loop in loops:
            for q in ("oa_kg_s", "supply_kg_s", "sat_setpoint", "supply_temp", "fan_kw", "cooling_kw",
                      "reheat_kw"):
                row[f"{loop}/{q}"] = s.values.get(loop_key(loop, q), 0.0)
        row["oa_kg_s"] = sum(row[f"{loop}/oa_kg_s"] for loop in loops)
        row["fan_kw"] = sum(row[f"{loop}/fan_kw"] for loop in loops)
        row["dx_kw"] = sum(row[f"{loop}/cooling_kw"] for loop in loops)
        row["reheat_kw"] = sum(row[f"{loop}/reheat_kw"] for loop in loops)
        row["supply_kg_s"] = sum(row[f"{loop}/supply_kg_s"] for loop in loops)
        row["sat"] = sum(row[f"{loop}/supply_temp"] for loop in loops) / len(loops)
        rows.append(row)
        return control(m)

    return observe


@dataclass
class LeverRun:
    variant: Variant
    kpis: Kpis
    air: pl.DataFrame = field(repr=False)  # one row per 15-minute decision instant (see _observing)
    used: dict = field(default_factory=dict)  # edits_of(the IDF the run was given)
    loop: LoopRun | None = field(default=None, repr=False)

    def occupied_mean(self, column: str) -> float:
        air = self.air.filter(pl.col("occupied"))
        return float(air[column].mean()) if not air.is_empty() else float("nan")


def run_variant(variant: Variant, start: date = START, days: int = DAYS, timesteps_per_hour: int = TIMESTEPS,
                band: tuple[float, float] = BAND) -> LeverRun:
    """One variant over the days, judged by `closed_loop.run`."""
    probe = EnergyPlusBuilding(start=start, days=1, timesteps_per_hour=timesteps_per_hour)  # not started
    loops = [a.name for a in probe.layout.air_loops]
    outlets = {a.name: a.supply_outlet_node for a in probe.layout.air_loops}
    rows: list[dict] = []
    built: list[EnergyPlusBuilding] = []
    factory = _variant_building(variant.edit, extra_variables(loops, outlets), built)
    loop = closed_loop.run(_observing(variant.controller(), loops, rows), start, days, timesteps_per_hour,
                           band, building=factory)
    return LeverRun(variant, loop.kpis, pl.DataFrame(rows), edits_of(built[0].idf), loop)


# -- the table ----------------------------------------------------------------------------------------

def meets_target(run: LeverRun, base: LeverRun, target: float = 0.13) -> str:
    """The issue's target against the building's own control: >= 13 % HVAC electricity saved, discomfort
    (mean and worst zone) and humid zone-hours no worse, peak demand no higher; '' or what misses."""
    k, b = run.kpis, base.kpis
    misses = []
    if 1 - k.hvac_kwh / b.hvac_kwh < target:
        misses.append("saving")
    if k.discomfort_kh_per_zone > b.discomfort_kh_per_zone + 1e-9 or (
            k.discomfort_kh_worst_zone > b.discomfort_kh_worst_zone + 1e-9):
        misses.append("comfort")
    if k.humid_zone_hours > b.humid_zone_hours + 1e-9:
        misses.append("humid")
    if k.peak_kw > b.peak_kw + 1e-9:
        misses.append("peak")
    return "meets" if not misses else "no: " + ",".join(misses)


def table(runs: list[LeverRun]) -> str:
    base = runs[0].kpis
    head = (f"{'variant':<13} {'HVAC kWh':>9} {'saved':>6} {'bldg kWh':>9} {'saved':>6} {'peak kW':>8} "
            f"{'K·h/zone':>8} {'worst':>6} {'RH>60 zh':>8} {'OA kg/s':>7} {'SAT °C':>6} {'fan kW':>6} "
            f"{'DX kW':>6} {'reheat':>6} {'SA kg/s':>7}  target")
    lines = [head]
    for r in runs:
        k = r.kpis  # runs[0] is the baseline (shipped)
        lines.append(
            f"{r.variant.name:<13} {k.hvac_kwh:>9,.0f} {1 - k.hvac_kwh / base.hvac_kwh:>6.1%} "
            f"{k.elec_kwh:>9,.0f} {1 - k.elec_kwh / base.elec_kwh:>6.1%} {k.peak_kw:>8.1f} "
            f"{k.discomfort_kh_per_zone:>8.2f} {k.discomfort_kh_worst_zone:>6.2f} {k.humid_zone_hours:>8.1f} "
            f"{r.occupied_mean('oa_kg_s'):>7.2f} {r.occupied_mean('sat'):>6.2f} "
            f"{r.occupied_mean('fan_kw'):>6.1f} {r.occupied_mean('dx_kw'):>6.1f} "
            f"{r.occupied_mean('reheat_kw'):>6.1f} {r.occupied_mean('supply_kg_s'):>7.2f}  "
            f"{meets_target(r, runs[0]) if r is not runs[0] else 'baseline'}")
    lines.append("OA, SAT (mean of the 3 AHUs), fan, DX, reheat (kW electric) and supply air: means over the "
                 "occupied 15-minute instants")
    return "\n".join(lines)


def points() -> str:
    return "\n".join(f"- {lever}: {what}" for lever, what in POINTS.items())


def main(variants: Sequence[Variant] = VARIANTS, about: str | None = None) -> None:
    """The table for `variants` (`--variants` chooses among every one); the first is the baseline."""
    parser = argparse.ArgumentParser(description=(about or __doc__).splitlines()[0])
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--start", type=date.fromisoformat, default=START)
    parser.add_argument("--timesteps", type=int, default=TIMESTEPS)
    parser.add_argument("--variants", nargs="*", default=[v.name for v in variants],
                        help=f"of: {', '.join(v.name for v in VARIANTS + MORE)}")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    t0 = wallclock.perf_counter()
    runs = []
    for v in VARIANTS + MORE:
        if v.name in args.variants:
            runs.append(run_variant(v, args.start, args.days, args.timesteps))
            print(f"{v.name}: {runs[-1].kpis.wall_s:.0f} s", flush=True)
    print(table(runs))
    print(points())
    print(f"wall {wallclock.perf_counter() - t0:.0f} s")
    if args.json:
        rows = [{"variant": asdict(r.variant), "kpis": asdict(r.kpis), "used": r.used,
                 "target": meets_target(r, runs[0]),
                 "occupied_means": {c: r.occupied_mean(c) for c in ("oa_kg_s", "sat", "fan_kw", "dx_kw")}}
                for r in runs]
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
