"""The EnergyPlus building's BACnet points, named the way an integrator would name them.

One controller per air handler (with its VAV zones), one for the plant, one for the main meters.
Names follow the virtual building's convention (``sim/devices.py``) so the edge's tagging
(``bacpipes.tagging``: device ``AHU-1`` -> equip ahu 1; tokens ZN, SA, CLG, HTG, SP, OCC, OA, SITE)
and the ML's zone finder (``bacpipes.zones``: ``<prefix>-ZN-T``, ``-ZN-CLG-SP``, ``-CLG-KW``,
``-OCC-PCT`` per zone, one ``…-OA-T``, one ``…-MTR-KW``) work unchanged:

- a zone's prefix is ``AHU<n>_ZN<j>`` (zone j of air handler n, in the model's order): the zone finder
  takes the text before the first ``-`` as the zone, so the prefix must not contain one, and the
  ``_`` still splits tokens for tagging;
- a zone's ``-CLG-KW`` is the sensible cooling its air system delivers (thermal), like the RC model's
  coil load; electricity is metered where a BMS meters it: per AHU (fan, DX cooling, heating, reheat)
  and for the site;
- a setpoint is a commandable analog value whose relinquish default follows the thermostat's own
  schedule (setback at night, optimum start), as the RC model's valve follows its PI loop.

Only quantities the model really has become points (an AHU with a gas furnace has no heating
electricity point), so a point always reads a simulated value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.energyplus.engine import EnergyPlusBuilding, Which, loop_key, plant_key, site_key, zone_key

FIRST_INSTANCE = 1001
SETPOINT_LIMITS = {"cooling": (16.0, 32.0), "heating": (10.0, 26.0)}  # what a controller accepts, °C
_PLANT_CODES = (("chiller:", "CH"), ("boiler:", "BLR"), ("coolingtower:", "CT"), ("waterheater:", "WH"),
                ("pump:", "PMP"), ("district", "DIST"))


@dataclass(frozen=True)
class PointSpec:
    """One BACnet object: what it is called and where its value comes from in a ``Sample``."""

    object_type: str  # "analog-input" (read-only) or "analog-value" (commandable setpoint)
    instance: int
    name: str
    description: str
    units: str  # BACnet EngineeringUnits, as sim/devices.py spells them
    key: str  # Sample key of the present value (for a setpoint: the value in effect)
    cov_increment: float = 0.1
    default_key: str | None = None  # commandable: Sample key the relinquish default follows
    write: tuple[str, Which] | None = None  # commandable: (EnergyPlus zone, which setpoint)
    min_value: float | None = None
    max_value: float | None = None

    @property
    def commandable(self) -> bool:
        return self.write is not None


@dataclass(frozen=True)
class DeviceSpec:
    instance: int
    name: str
    description: str
    points: list[PointSpec] = field(default_factory=list)


def _ai(instance: int, name: str, description: str, units: str, key: str, cov: float = 0.1) -> PointSpec:
    return PointSpec("analog-input", instance, name, description, units, key, cov)


def zone_prefix(air_handler: int, zone: int) -> str:
    """``AHU1_ZN3``: 1-based air handler and zone numbers (see the module docstring)."""
    return f"AHU{air_handler}_ZN{zone}"


def describe(building: EnergyPlusBuilding) -> list[DeviceSpec]:
    """Every controller and its points, for a started building (its first sample says what exists)."""
    if building.sample is None:
        raise RuntimeError("start the building first: its first sample says which quantities exist")
    have = set(building.sample.values)
    devices: list[DeviceSpec] = []
    for k, loop in enumerate(building.layout.air_loops):
        n = k + 1
        ahu = f"AHU{n}"
        pts = [
            _ai(1, f"{ahu}-SF-KW", "Supply fan electrical power", "kilowatts", loop_key(loop.name, "fan_kw")),
            _ai(2, f"{ahu}-SA-T", "Supply air temperature", "degreesCelsius",
                loop_key(loop.name, "supply_temp")),
            _ai(3, f"{ahu}-CLG-ELEC-KW", "Cooling (DX compressor) electrical power", "kilowatts",
                loop_key(loop.name, "cooling_kw"), 1.0),
            _ai(4, f"{ahu}-HTG-ELEC-KW", "Heating coil electrical power", "kilowatts",
                loop_key(loop.name, "heating_kw"), 1.0),
            _ai(5, f"{ahu}-HTG-GAS-KW", "Heating coil gas input power", "kilowatts",
                loop_key(loop.name, "heating_gas_kw"), 1.0),
            _ai(6, f"{ahu}-RHT-KW", "VAV reheat electrical power, all zones of this AHU", "kilowatts",
                loop_key(loop.name, "reheat_kw"), 1.0),
        ]
        for j, zone in enumerate(loop.zones, start=1):
            p, base, zk = zone_prefix(n, j), 100 * j, (lambda q, z=zone: zone_key(z, q))
            where = f" ({zone})"
            pts += [
                _ai(base + 1, f"{p}-ZN-T", "Zone air temperature" + where, "degreesCelsius", zk("temp")),
                _ai(base + 2, f"{p}-ZN-RH", "Zone relative humidity" + where, "percentRelativeHumidity",
                    zk("rh"), 1.0),
                _ai(base + 3, f"{p}-CLG-KW", "Zone sensible cooling delivered (thermal)" + where, "kilowatts",
                    zk("cooling_load_kw"), 0.5),
                _ai(base + 4, f"{p}-HTG-KW", "Zone sensible heating delivered (thermal)" + where, "kilowatts",
                    zk("heating_load_kw"), 0.5),
                _ai(base + 5, f"{p}-RHT-KW", "VAV box reheat electrical power" + where, "kilowatts",
                    zk("reheat_kw"), 0.5),
                _ai(base + 6, f"{p}-OCC-PCT", "Occupancy, people as % of design" + where, "percent",
                    zk("occupancy_pct"), 1.0),
            ]
            for m, which in ((1, "cooling"), (2, "heating")):
                low, high = SETPOINT_LIMITS[which]
                tag = "CLG" if which == "cooling" else "HTG"
                pts.append(PointSpec(
                    "analog-value", base + m, f"{p}-ZN-{tag}-SP",
                    f"Zone {which} setpoint{where}; relinquish default follows the schedule",
                    "degreesCelsius", zk(f"{which}_sp"), 0.1, default_key=zk(f"{which}_sp_schedule"),
                    write=(zone, which), min_value=low, max_value=high,  # type: ignore[arg-type]
                ))
        devices.append(DeviceSpec(
            FIRST_INSTANCE + k, f"AHU-{n}",
            f"Air handling unit {n} controller: {loop.name}, {len(loop.zones)} VAV zones",
            [pt for pt in pts if pt.key in have and (pt.default_key is None or pt.default_key in have)],
        ))

    plant = [
        _ai(1, "PLANT-OA-T", "Outdoor air temperature", "degreesCelsius", site_key("oa_temp")),
        _ai(2, "PLANT-OA-RH", "Outdoor relative humidity", "percentRelativeHumidity", site_key("oa_rh"), 1.0),
    ]
    counts: dict[str, int] = {}
    for kind, name in building.layout.plant:
        code = next((c for prefix, c in _PLANT_CODES if kind.lower().startswith(prefix)), None)
        if code is None or plant_key(name) not in have:
            continue
        counts[code] = counts.get(code, 0) + 1
        plant.append(_ai(100 + sum(counts.values()), f"{code}{counts[code]}-KW",
                         f"{kind} input power ({name})", "kilowatts", plant_key(name), 0.5))
    devices.append(DeviceSpec(FIRST_INSTANCE + len(devices), "PLANT-1", "Plant controller: outdoor air, "
                              "central plant and service hot water", plant))

    meters = [
        _ai(1, "SITE-MTR-KW", "Site electrical demand (Electricity:Facility)", "kilowatts",
            site_key("elec_kw"), 1.0),
        _ai(2, "SITE-MTR-KWH", "Site electrical energy since the run began", "kilowattHours",
            site_key("elec_kwh"), 1.0),
        _ai(3, "SITE-HVAC-KW", "HVAC electrical demand (Electricity:HVAC)", "kilowatts",
            site_key("hvac_kw"), 1.0),
        _ai(4, "SITE-LTG-KW", "Interior lighting electrical demand", "kilowatts", site_key("lights_kw"), 1.0),
        _ai(5, "SITE-EQP-KW", "Interior equipment (plug) electrical demand", "kilowatts",
            site_key("equipment_kw"), 1.0),
        _ai(6, "SITE-GAS-KW", "Site natural gas input power (NaturalGas:Facility)", "kilowatts",
            site_key("gas_kw"), 1.0),
        _ai(7, "SITE-HVAC-KWH", "HVAC electrical energy since the run began", "kilowattHours",
            site_key("hvac_kwh"), 1.0),
        _ai(8, "SITE-GAS-KWH", "Site natural gas energy since the run began", "kilowattHours",
            site_key("gas_kwh"), 1.0),
    ]
    devices.append(DeviceSpec(FIRST_INSTANCE + len(devices), "MTR-1", "Main meters: electricity and gas",
                              [pt for pt in meters if pt.key in have]))
    return devices
