"""Read, adjust and write an EnergyPlus IDF, and find its HVAC layout (air loops, their zones and parts).

Why our own small parser instead of eppy/opyplus: the prototypes are plain IDF (objects end with ``;``,
fields are separated by ``,``, ``!`` starts a comment, no field holds either separator), we only need
to swap a handful of objects (timestep, run period, output controls) and to follow names from an air
loop to its coils, fans and zones. That is ~150 lines, with no dependency and no IDD to load.

Names in EnergyPlus are case-insensitive; lookups here fold case, the original spelling is kept.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

# EnergyPlus accepts these numbers of zone timesteps per hour (the divisors of 60 it allows).
VALID_TIMESTEPS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)

FACILITY_METER = "BacPipes Facility Electricity"

# Outputs a stepped co-simulation never reads: tables, drawings, the dictionary, reports. Dropping them
# (and switching the output files off) keeps the temp folder small and the run a little faster.
_DROPPED = (
    "output:table:", "outputcontrol:table:style", "output:surfaces:", "output:constructions",
    "output:variabledictionary", "output:sqlite", "output:meter", "output:variable",
    "output:environmentalimpactfactors", "outputcontrol:files", "outputcontrol:reportingtolerances",
    "output:jsonoutput", "output:diagnostics",
)
# Components that hold other components, found through (object type, name) field pairs.
_CHILD_TYPE = re.compile(r"^(coil|fan|coilsystem|airloophvac:unitary|heatexchanger|humidifier|"
                         r"airterminal|zonehvac|evaporativecooler)", re.IGNORECASE)


@dataclass
class IdfObject:
    """One object: its class (as spelled in the file) and its fields (name first)."""

    kind: str
    fields: list[str]

    @property
    def name(self) -> str:
        return self.fields[0] if self.fields else ""


@dataclass
class Idf:
    objects: list[IdfObject]

    @classmethod
    def read(cls, path: str | Path) -> Idf:
        return cls.parse(Path(path).read_text(encoding="latin-1"))

    @classmethod
    def parse(cls, text: str) -> Idf:
        body = "\n".join(line.split("!", 1)[0] for line in text.splitlines())
        objects = []
        for chunk in body.split(";"):
            parts = [p.strip() for p in chunk.split(",")]
            if parts and parts[0]:
                objects.append(IdfObject(parts[0], parts[1:]))
        return cls(objects)

    def text(self) -> str:
        out = []
        for obj in self.objects:
            out.append(",\n    ".join([obj.kind, *obj.fields]) + ";\n")
        return "\n".join(out)

    def of(self, kind: str) -> list[IdfObject]:
        k = kind.lower()
        return [o for o in self.objects if o.kind.lower() == k]

    def remove(self, kind: str) -> None:
        k = kind.lower()
        self.objects = [o for o in self.objects if o.kind.lower() != k]

    def get(self, kind: str, name: str) -> IdfObject | None:
        k, n = kind.lower(), name.lower()
        return next((o for o in self.objects if o.kind.lower() == k and o.name.lower() == n), None)


# --- preparing a prototype for a stepped run -------------------------------------------------------


def prepare(idf: Idf, start: date, end: date, timesteps_per_hour: int) -> Idf:
    """The same building, set up for stepping: one run period [start, end], N zone timesteps per hour,
    output files off.

    The run period carries the calendar year, so weekdays (and the schedules that follow them) are the
    real ones of that year. Sizing stays on (the prototypes autosize their equipment); the sizing
    averaging window is kept at the prototype's span of building time, so a finer timestep does not
    size the equipment differently.
    """
    if timesteps_per_hour not in VALID_TIMESTEPS:
        raise ValueError(f"timesteps per hour must be one of {VALID_TIMESTEPS}, got {timesteps_per_hour}")
    if end < start:
        raise ValueError(f"run period ends ({end}) before it starts ({start})")
    old_steps = int(float(idf.of("Timestep")[0].fields[0])) if idf.of("Timestep") else 4
    out = Idf([o for o in idf.objects if not o.kind.lower().startswith(_DROPPED)])
    out.remove("Timestep")
    out.remove("RunPeriod")
    out.objects.append(IdfObject("Timestep", [str(timesteps_per_hour)]))
    out.objects.append(IdfObject("RunPeriod", [
        "BacPipes", str(start.month), str(start.day), str(start.year), str(end.month), str(end.day),
        str(end.year), "", "No", "No", "No", "Yes", "Yes",
    ]))
    for conv in out.of("ConvergenceLimits"):
        # the minimum HVAC step may not exceed the zone step (the prototypes say 15 min)
        if conv.fields and conv.fields[0]:
            conv.fields[0] = str(min(int(float(conv.fields[0])), 60 // timesteps_per_hour))
    for sizing in out.of("Sizing:Parameters"):
        if len(sizing.fields) > 2 and sizing.fields[2]:
            window_h = int(float(sizing.fields[2])) / old_steps
            sizing.fields[2] = str(max(1, round(window_h * timesteps_per_hour)))
    # EnergyPlus's getMeterHandle cannot return meter 0, which is Electricity:Facility
    # (NatLabRockies/EnergyPlus#11522): a custom meter of it gives the same energy under a usable handle.
    out.objects.append(IdfObject("Meter:Custom", [FACILITY_METER, "Electricity", "", "Electricity:Facility"]))
    # Every output file off except the error file, which explains a failed run.
    out.objects.append(IdfObject("OutputControl:Files", [
        "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No",
        "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No", "No",
    ]))
    return out


# --- the HVAC layout ---------------------------------------------------------------------------------


@dataclass
class AirLoop:
    """An air handler: its supply-side fans and coils, the zones it serves and their terminals' coils."""

    name: str
    supply_outlet_node: str
    zones: list[str] = field(default_factory=list)
    components: list[tuple[str, str]] = field(default_factory=list)  # (type, name) on the supply side
    zone_components: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # terminals' parts

    def of_kind(self, prefix: str) -> list[tuple[str, str]]:
        p = prefix.lower()
        return [(k, n) for k, n in self.components if k.lower().startswith(p)]


@dataclass
class Layout:
    """What a prototype has: conditioned zones (with a thermostat), air loops, plant equipment, people."""

    zones: list[str]
    air_loops: list[AirLoop]
    plant: list[tuple[str, str]]  # (type, name): chillers, boilers, towers, water heaters, pumps
    people: dict[str, list[str]]  # zone -> People object names (their design level gives the peak)
    thermostat_schedules: dict[str, tuple[str, str]]  # zone -> (heating, cooling) setpoint schedule


_PLANT_KINDS = ("chiller:", "boiler:", "coolingtower:", "waterheater:", "pump:", "districtcooling",
                "districtheating")


def layout(idf: Idf) -> Layout:
    """Follow names from each AirLoopHVAC to its parts and zones (see the module docstring)."""
    by_name: dict[str, list[IdfObject]] = defaultdict(list)
    for obj in idf.objects:
        by_name[obj.name.lower()].append(obj)
    zone_lists = {o.name.lower(): o.fields[1:] for o in idf.of("ZoneList")}

    def zones_of(name: str) -> list[str]:
        return list(zone_lists.get(name.lower(), [name]))

    # Conditioned zones: those under a thermostat, in the file's order of zones.
    controlled: dict[str, tuple[str, str]] = {}
    for tstat in idf.of("ZoneControl:Thermostat"):
        schedules = ("", "")
        for k in range(3, len(tstat.fields) - 1, 2):  # (type, name) pairs after the control type schedule
            if tstat.fields[k].lower() == "thermostatsetpoint:dualsetpoint":
                dual = idf.get("ThermostatSetpoint:DualSetpoint", tstat.fields[k + 1])
                if dual is not None:
                    schedules = (dual.fields[1], dual.fields[2])
        for zone in zones_of(tstat.fields[1]):
            controlled[zone.lower()] = schedules
    zones = [z.name for z in idf.of("Zone") if z.name.lower() in controlled]

    def children(obj: IdfObject, seen: set[int]) -> list[tuple[str, str]]:
        """(type, name) of obj's parts, recursively, found as (type, name) pairs in its fields."""
        found = []
        for k in range(len(obj.fields) - 1):
            kind, name = obj.fields[k], obj.fields[k + 1]
            if not _CHILD_TYPE.match(kind):
                continue
            for child in by_name.get(name.lower(), []):
                if child.kind.lower() == kind.lower() and id(child) not in seen:
                    seen.add(id(child))
                    found.append((child.kind, child.name))
                    found += children(child, seen)
        return found

    # zone equipment: terminal -> distribution unit -> equipment list -> zone
    zone_of_list = {o.fields[1].lower(): o.name for o in idf.of("ZoneHVAC:EquipmentConnections")}
    zone_of_adu: dict[str, str] = {}
    for eq in idf.of("ZoneHVAC:EquipmentList"):
        zone = zone_of_list.get(eq.name.lower())
        if zone:
            for f in eq.fields:
                zone_of_adu[f.lower()] = zone
    terminal_zone: dict[str, tuple[str, IdfObject]] = {}  # inlet-node candidate -> (zone, terminal)
    for adu in idf.of("ZoneHVAC:AirDistributionUnit"):
        zone = zone_of_adu.get(adu.name.lower())
        term = idf.get(adu.fields[2], adu.fields[3]) if len(adu.fields) > 3 else None
        if zone and term is not None:
            for f in term.fields:
                terminal_zone.setdefault(f.lower(), (zone, term))

    loops = []
    for loop in idf.of("AirLoopHVAC"):
        f = loop.fields
        air = AirLoop(loop.name, supply_outlet_node=f[9] if len(f) > 9 else "")
        seen: set[int] = set()
        branch_list = idf.get("BranchList", f[4])
        for branch_name in branch_list.fields[1:] if branch_list else []:
            branch = idf.get("Branch", branch_name)
            if branch is None:
                continue
            for k in range(2, len(branch.fields) - 1, 4):
                comp = idf.get(branch.fields[k], branch.fields[k + 1])
                if comp is None:
                    continue
                air.components.append((comp.kind, comp.name))
                air.components += children(comp, seen)
                if comp.kind.lower() == "airloophvac:outdoorairsystem" and len(comp.fields) > 2:
                    equipment = idf.get("AirLoopHVAC:OutdoorAirSystem:EquipmentList", comp.fields[2])
                    if equipment is not None:
                        air.components += children(equipment, seen)
        # demand side: supply path -> splitters/plenums -> their outlet nodes -> terminals -> zones
        inlets = {n.lower() for n in f[8:9]}
        for path in idf.of("AirLoopHVAC:SupplyPath"):
            if len(path.fields) < 2 or path.fields[1].lower() not in inlets:
                continue
            for k in range(2, len(path.fields) - 1, 2):
                part = idf.get(path.fields[k], path.fields[k + 1])
                for node in part.fields[2:] if part else []:
                    hit = terminal_zone.get(node.lower())
                    if hit and hit[0] not in air.zones and hit[0].lower() in controlled:
                        zone, term = hit
                        air.zones.append(zone)
                        air.zone_components[zone] = [(term.kind, term.name), *children(term, seen)]
        loops.append(air)

    people: dict[str, list[str]] = defaultdict(list)
    for p in idf.of("People"):
        for zone in zones_of(p.fields[1]):
            people[zone.lower()].append(p.name)
    plant = [(o.kind, o.name) for o in idf.objects if o.kind.lower().startswith(_PLANT_KINDS)]
    return Layout(
        zones=zones,
        air_loops=loops,
        plant=plant,
        people={z: people.get(z.lower(), []) for z in zones},
        thermostat_schedules={z: controlled[z.lower()] for z in zones},
    )
