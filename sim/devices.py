"""One BACnet controller per AHU: its objects, and the wiring between them and the physics.

Device k (0-based) is instance 1001+k and controls AHU k+1 / zone k+1; device 1001 also carries
the plant and the site meter, as a plant controller would. Names follow the BMS habit of
``AHU1-ZN-T`` so the edge's tagging has something realistic to parse. Every fourth controller
is a "legacy" one (480-byte APDUs, no segmentation, no state texts) so the edge's batch sizing, and
points without state texts, are exercised.

Values move in one direction per object: measurements flow from the physics into the objects on
each tick (``refresh``); commands flow from the objects' present values into the physics inputs
(``apply_inputs``), right after each accepted write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from bacpypes3.basetypes import BinaryPV
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import CharacterString, Real

from sim.objects import (
    ReadCounter,
    SimAnalogInput,
    SimAnalogOutput,
    SimAnalogValue,
    SimApplication,
    SimBinaryInput,
    SimBinaryValue,
    SimMultiStateValue,
    clone,
    publish,
)
from sim.physics import AhuMode, Building, Zone
from sim.trendlog import SimTrendLog, log_specs, make_trend_log

FIRST_INSTANCE = 1001
VENDOR_NAME = "BacPipes Virtual Building"
VENDOR_ID = 999  # bacpypes3's placeholder; no ASHRAE-assigned id for a simulator
MODE_STATES = ("Off", "Cool", "Heat", "Auto")

Getter = Callable[[], float]


def f32(value: float, digits: int = 2) -> float:
    """A value as the wire will carry it (BACnet REAL is 32-bit), so snapshots equal reads."""
    return float(np.float32(round(value, digits)))


def is_legacy(index: int) -> bool:
    return index % 4 == 3


@dataclass(frozen=True)
class Measured:
    """A read-only analog point: where its value comes from in the physics."""

    instance: int
    suffix: str
    description: str
    units: str
    cov_increment: float
    read: Callable[[Building, Zone], float]


def zone_points() -> list[Measured]:
    return [
        Measured(1, "ZN-T", "Zone air temperature", "degreesCelsius", 0.1, lambda b, z: z.temp_c),
        Measured(2, "SA-T", "Supply air temperature", "degreesCelsius", 0.1,
                 lambda b, z: z.supply_air_c),
        Measured(3, "ZN-RH", "Zone relative humidity", "percentRelativeHumidity", 1.0,
                 lambda b, z: z.rh_pct),
        Measured(4, "ZN-CO2", "Zone CO2 concentration", "partsPerMillion", 10.0,
                 lambda b, z: z.co2_ppm),
        Measured(5, "SF-KW", "Supply fan electrical power", "kilowatts", 0.1,
                 lambda b, z: z.fan_kw),
        Measured(6, "CLG-KW", "Cooling coil load (thermal)", "kilowatts", 1.0,
                 lambda b, z: z.cooling_kw),
        Measured(7, "OCC-PCT", "Occupancy, people count as % of peak", "percent", 1.0,
                 lambda b, z: 100.0 * z.occupancy),
        Measured(8, "SF-SPD", "Supply fan speed", "percent", 1.0,
                 lambda b, z: 100.0 * z.fan_speed),
        Measured(9, "SA-FLOW", "Supply airflow", "litersPerSecond", 10.0,
                 lambda b, z: 1000.0 * z.airflow_m3s),
    ]  # fmt: skip


def plant_points() -> list[Measured]:
    return [
        Measured(101, "PLANT-OA-T", "Outdoor air temperature", "degreesCelsius", 0.1,
                 lambda b, z: b.weather.temp_c),
        Measured(102, "PLANT-OA-RH", "Outdoor relative humidity", "percentRelativeHumidity", 1.0,
                 lambda b, z: 100.0 * b.weather.rh),
        Measured(103, "PLANT-SOLAR", "Global horizontal irradiance", "wattsPerSquareMeter", 10.0,
                 lambda b, z: b.weather.solar_w_m2),
        Measured(104, "CH1-KW", "Chiller electrical power", "kilowatts", 1.0,
                 lambda b, z: b.plant.chiller_kw),
        Measured(105, "CH1-LOAD-KW", "Chilled water load (thermal)", "kilowatts", 1.0,
                 lambda b, z: b.plant.load_kw),
        Measured(106, "CH1-COP", "Chiller coefficient of performance", "noUnits", 0.1,
                 lambda b, z: b.plant.cop),
        Measured(107, "SITE-MTR-KW", "Site electrical demand", "kilowatts", 1.0,
                 lambda b, z: b.plant.site_kw),
        Measured(108, "SITE-MTR-KWH", "Site electrical energy", "kilowattHours", 1.0,
                 lambda b, z: b.plant.site_kwh),
    ]  # fmt: skip


# Padding: VAV boxes fed by the AHU, six points each, values derived from the zone's state.
VAV_POINTS = (
    ("DMPR", "damper position", "percent"),
    ("FLOW", "airflow", "litersPerSecond"),
    ("DAT", "discharge air temperature", "degreesCelsius"),
    ("ZN-T", "space temperature", "degreesCelsius"),
    ("CO2", "space CO2", "partsPerMillion"),
    ("RH", "space relative humidity", "percentRelativeHumidity"),
)
FIRST_PAD_INSTANCE = 1001


class VavBoxes:
    """Per-box constants (seeded) and the vectorised rule that turns zone state into box values."""

    def __init__(self, seed: int, device_index: int, n_boxes: int) -> None:
        rng = np.random.default_rng([seed, device_index, 7])
        self.share = rng.uniform(0.6, 1.4, n_boxes)
        self.share /= self.share.sum()
        self.offset_k = rng.normal(0.0, 0.5, n_boxes)  # box space warmer/cooler than the average
        self.duct_gain_k = rng.uniform(0.1, 0.6, n_boxes)

    def values(self, z: Zone) -> np.ndarray:
        """Rows are boxes, columns follow VAV_POINTS."""
        demand = np.clip(z.fan_speed + 0.15 * self.offset_k, 0.1, 1.0) if z.fan_on else 0.0
        damper = 100.0 * np.broadcast_to(demand, self.share.shape)
        design_ls = 1000.0 * z.params.airflow_m3s * self.share
        flow = design_ls * damper / 100.0
        dat = z.supply_air_c + self.duct_gain_k
        space = z.temp_c + self.offset_k
        co2 = z.co2_ppm * (1.0 + 0.03 * self.offset_k)
        rh = np.clip(z.rh_pct - 2.0 * self.offset_k, 0.0, 100.0)
        return np.column_stack([damper, flow, dat, space, co2, rh])


class SimDevice:
    """The objects of one controller and their mapping onto the building."""

    def __init__(
        self,
        index: int,
        building: Building,
        address: str,
        port: int,
        points: int,
        on_write: Callable[[], None],
    ) -> None:
        self.index = index
        self.instance = FIRST_INSTANCE + index
        self.building = building
        self.zone = building.zones[index]
        self.address = address
        self.port = port
        self.legacy = is_legacy(index)
        self.counter = ReadCounter()
        self.app: SimApplication | None = None
        self._on_write = on_write
        self._target_points = points
        self.objects: list[Any] = []
        self._measured: list[tuple[SimAnalogInput, Measured]] = []
        self._pad: list[SimAnalogInput] = []
        self._pad_last: np.ndarray | None = None
        self._vav: VavBoxes | None = None
        self.trend_logs: list[SimTrendLog] = []

    # -- construction -------------------------------------------------------------------------

    def build(self) -> list[Any]:
        """Create the objects (must run inside the event loop: bacpypes3 schedules on init)."""
        n = self.index + 1
        self.prefix = f"AHU{n}"
        device = DeviceObject(
            objectIdentifier=("device", self.instance),
            objectName=f"AHU-{n}",
            description=f"Air handling unit {n} controller" + (", plant" if n == 1 else ""),
            location="Macau, gaming floor " + str(n),
            vendorName=VENDOR_NAME,
            vendorIdentifier=VENDOR_ID,
            modelName="VB-AHU-L480 (legacy)" if self.legacy else "VB-AHU-1476",
            firmwareRevision="2.1" if self.legacy else "5.4",
            applicationSoftwareVersion="bacpipes-sim 0.1",
            maxApduLengthAccepted=480 if self.legacy else 1476,
            segmentationSupported="noSegmentation" if self.legacy else "segmentedBoth",
        )
        link = f"{self.address}/8" + ("" if self.port == 47808 else f":{self.port}")
        port = NetworkPortObject(
            link, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
        self.objects = [device, port]
        for spec in zone_points() + (plant_points() if self.index == 0 else []):
            self._add_measured(spec)
        self._add_commandables()
        self._add_trend_logs()
        self._pad_to(self._target_points)
        for obj in self.objects[2:]:
            obj._counter = self.counter
            obj._on_write = self._on_write
        self.refresh()
        return self.objects

    def _add_measured(self, spec: Measured) -> None:
        obj = SimAnalogInput(
            objectIdentifier=("analog-input", spec.instance),
            objectName=f"{self.prefix}-{spec.suffix}" if spec.instance < 100 else spec.suffix,
            description=spec.description,
            presentValue=0.0,
            units=spec.units,
            covIncrement=spec.cov_increment,
            eventState="normal",
            outOfService=False,
        )
        self.objects.append(obj)
        self._measured.append((obj, spec))

    def _add_commandables(self) -> None:
        p = self.prefix
        # state texts are optional in BACnet: the legacy controllers have none, as many old ones do
        def texts(inactive: str, active: str) -> dict[str, str]:
            return {} if self.legacy else {"inactiveText": inactive, "activeText": active}

        self.cooling_sp = SimAnalogValue(
            objectIdentifier=("analog-value", 1),
            objectName=f"{p}-ZN-CLG-SP",
            description="Zone cooling setpoint",
            presentValue=24.0,
            relinquishDefault=24.0,
            minPresValue=16.0,
            maxPresValue=30.0,
            units="degreesCelsius",
            covIncrement=0.1,
            eventState="normal",
            outOfService=False,
        )
        self.heating_sp = SimAnalogValue(
            objectIdentifier=("analog-value", 2),
            objectName=f"{p}-ZN-HTG-SP",
            description="Zone heating setpoint (held at least 1 K below cooling)",
            presentValue=20.0,
            relinquishDefault=20.0,
            minPresValue=12.0,
            maxPresValue=26.0,
            units="degreesCelsius",
            covIncrement=0.1,
            eventState="normal",
            outOfService=False,
        )
        self.valve = SimAnalogOutput(
            objectIdentifier=("analog-output", 1),
            objectName=f"{p}-CLG-VLV",
            description="Chilled water valve command; relinquish default follows the PI loop",
            presentValue=0.0,
            relinquishDefault=0.0,
            minPresValue=0.0,
            maxPresValue=100.0,
            units="percent",
            covIncrement=1.0,
            eventState="normal",
            outOfService=False,
        )
        self.fan_status = SimBinaryInput(
            objectIdentifier=("binary-input", 1),
            objectName=f"{p}-SF-S",
            description="Supply fan run status",
            presentValue="inactive",
            **texts("Off", "On"),
            polarity="normal",
            eventState="normal",
            outOfService=False,
        )
        self.occ_override = SimBinaryValue(
            objectIdentifier=("binary-value", 1),
            objectName=f"{p}-OCC-OVRD",
            description="Occupancy override: active forces occupied mode",
            presentValue="inactive",
            relinquishDefault="inactive",
            **texts("Schedule", "Occupied"),
            eventState="normal",
            outOfService=False,
        )
        self.mode = SimMultiStateValue(
            objectIdentifier=("multi-state-value", 1),
            objectName=f"{p}-MODE",
            description="AHU mode",
            presentValue=int(AhuMode.AUTO),
            relinquishDefault=int(AhuMode.AUTO),
            numberOfStates=len(MODE_STATES),
            **({} if self.legacy else {"stateText": list(MODE_STATES)}),
            eventState="normal",
            outOfService=False,
        )
        self.objects += [
            self.cooling_sp,
            self.heating_sp,
            self.valve,
            self.fan_status,
            self.occ_override,
            self.mode,
        ]

    def _add_trend_logs(self) -> None:
        """The history this controller kept before the agent arrived (see sim/trendlog.py)."""
        sources = {tuple(map(str, o.objectIdentifier)): o for o in self.objects[2:]}
        specs = log_specs(self.building.seed, self.index, float(self.cooling_sp.relinquishDefault),
                          float(self.heating_sp.relinquishDefault))
        for spec in specs:
            source = sources[(spec.logged[0], str(spec.logged[1]))]
            self.trend_logs.append(make_trend_log(self.instance, spec, source, self.building.time))
        self.objects += self.trend_logs

    def _pad_to(self, total: int) -> None:
        count = total - len(self.objects)
        if count <= 0:
            return
        n_boxes = -(-count // len(VAV_POINTS))
        self._vav = VavBoxes(self.building.seed, self.index, n_boxes)
        prototypes = [
            SimAnalogInput(
                objectIdentifier=("analog-input", FIRST_PAD_INSTANCE),
                objectName=f"{self.prefix}-VAV-PROTO-{suffix}",
                description=what,
                presentValue=0.0,
                units=units,
                covIncrement=0.1,
                eventState="normal",
                outOfService=False,
            )
            for suffix, what, units in VAV_POINTS
        ]
        for k in range(count):
            box, col = divmod(k, len(VAV_POINTS))
            suffix, what, _units = VAV_POINTS[col]
            obj = clone(
                prototypes[col],
                objectIdentifier=("analog-input", FIRST_PAD_INSTANCE + k),
                objectName=f"{self.prefix}-VAV{box + 1:03d}-{suffix}",
            )
            publish(obj, "description", CharacterString(f"VAV {self.index + 1}.{box + 1} {what}"))
            self._pad.append(obj)
        self.objects += self._pad

    # -- physics <-> objects ------------------------------------------------------------------

    def apply_inputs(self) -> None:
        """Commanded present values become the zone's inputs."""
        inputs = self.zone.inputs
        inputs.cooling_setpoint = float(self.cooling_sp.presentValue)
        inputs.heating_setpoint = float(self.heating_sp.presentValue)
        inputs.occupancy_override = self.occ_override.presentValue == BinaryPV.active
        inputs.mode = AhuMode(int(self.mode.presentValue))
        commanded = self.valve.currentCommandPriority.unsigned is not None
        inputs.valve_override = float(self.valve.presentValue) if commanded else None

    def refresh(self) -> None:
        """Measurements take the physics' values at the building's current time."""
        b, z = self.building, self.zone
        for obj, spec in self._measured:
            value = f32(spec.read(b, z))
            if obj.presentValue != value:
                obj.presentValue = value
        fan = BinaryPV.active if z.fan_on else BinaryPV.inactive
        if self.fan_status.presentValue != fan:
            self.fan_status.presentValue = fan
        # The PI loop is the "program" behind the valve: it owns the relinquish default.
        auto = f32(z.valve_auto_pct)
        if self.valve.relinquishDefault != auto:
            self.valve.relinquishDefault = auto
            self.valve.recalculating()
        self._refresh_pad()
        for log in self.trend_logs:
            log.log_until(self.building.time)

    def _refresh_pad(self) -> None:
        if not self._pad or self._vav is None:
            return
        values = self._vav.values(self.zone).ravel()[: len(self._pad)]
        values = np.round(values, 2).astype(np.float32).astype(np.float64)
        last = self._pad_last
        changed = range(len(values)) if last is None else np.flatnonzero(values != last)
        for k in changed:
            publish(self._pad[k], "presentValue", Real(float(values[k])))
        self._pad_last = values

    def snapshot(self) -> dict[tuple[int, str, int], object]:
        """Present values keyed by (device instance, object type, object instance)."""
        out: dict[tuple[int, str, int], object] = {}
        for obj in self.objects[2:]:
            if isinstance(obj, SimTrendLog):
                continue  # no present value: its history is read with ReadRange
            obj_type, obj_inst = obj.objectIdentifier
            value = obj.presentValue
            out[(self.instance, str(obj_type), int(obj_inst))] = (
                float(value) if isinstance(value, float) else int(value)
            )
        return out
