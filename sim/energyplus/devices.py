"""The EnergyPlus building's controllers as BACnet objects (``describe`` says which, this makes them).

``EPlusDevice`` has the shape ``sim.server.VirtualBuilding`` expects of a controller (as
``sim.devices.SimDevice``): ``build`` makes the bacpypes3 objects inside the event loop, ``refresh``
copies the building's latest sample into them, ``snapshot`` lists their present values. The objects are
``sim.objects``' classes, so writes are validated like the RC building's (range, writability, priority).

Values flow one way per object:
- a measurement (analog input) takes the sample's value at each refresh;
- a zone setpoint (commandable analog value) takes its relinquish default from the thermostat's own
  schedule at each refresh; its present value is bacpypes3's (the highest priority slot, else that
  default). ``commands`` turns the objects into the engine's overrides: a commanded setpoint is an
  override, a relinquished one (every slot empty) is None, which hands the zone back to its schedule.

Status flags are bacpypes3's, computed from event state, reliability and out-of-service: every point is
normal and reliable while the simulation runs; once its run period is over the values no longer move,
and ``refresh`` says so with the fault flag (reliability ``unreliable-other``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bacpypes3.basetypes import Reliability
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import Real

from sim.devices import VENDOR_ID, VENDOR_NAME, f32
from sim.energyplus.engine import EnergyPlusBuilding, Sample, Which
from sim.energyplus.points import DeviceSpec, PointSpec
from sim.objects import ReadCounter, SimAnalogInput, SimAnalogValue, publish

Override = tuple[str, Which]  # (EnergyPlus zone, "cooling" | "heating")
# the controllers' identity and rounding, as served here and recorded by sim.energyplus.backfill
MAX_APDU = 1476
SEGMENTATION = "segmentedBoth"
_MODELS = {"AHU": "VB-EP-AHU", "PLANT": "VB-EP-PLANT", "MTR": "VB-EP-MTR"}
_DIGITS = {"kilowattHours": 1}  # a meter's register; everything else to 0.01


def model_name(spec: DeviceSpec) -> str:
    """The controller's model name, by its family (``AHU-2`` -> ``VB-EP-AHU``)."""
    return _MODELS.get(spec.name.split("-", 1)[0], "VB-EP")


def location(building: EnergyPlusBuilding) -> str:
    """The controllers' location: which prototype and weather they run."""
    return f"{building.model_path.stem}, weather {building.weather_path.stem}"


def digits(units: str | None) -> int:
    """The decimals a controller rounds a value in these units to."""
    return _DIGITS.get(units or "", 2)


class ScheduledSetpoint(SimAnalogValue):
    """A zone setpoint whose relinquish default is the thermostat schedule's: only the priority array
    (presentValue at a priority) is the network's to write."""

    _writable = frozenset({"presentValue"})


class EPlusDevice:
    """One controller of the EnergyPlus building: its objects and their mapping onto the samples."""

    def __init__(self, spec: DeviceSpec, building: EnergyPlusBuilding, address: str, port: int,
                 on_write: Callable[[], None]) -> None:
        self.spec = spec
        self.instance = spec.instance
        self.building = building
        self.address = address
        self.port = port
        self.counter = ReadCounter()
        self.app: Any = None  # the SimApplication, set by the server
        self.objects: list[Any] = []
        self.trend_logs: list[Any] = []  # none: the building has no history before the run
        self._on_write = on_write
        self._points: list[tuple[Any, PointSpec]] = []
        self._faulted = False

    def build(self, sample: Sample) -> list[Any]:
        """Create the objects (inside the event loop: bacpypes3 schedules on init), valued from sample."""
        device = DeviceObject(
            objectIdentifier=("device", self.instance),
            objectName=self.spec.name,
            description=self.spec.description,
            location=location(self.building),
            vendorName=VENDOR_NAME,
            vendorIdentifier=VENDOR_ID,
            modelName=model_name(self.spec),
            firmwareRevision="25.2",  # the EnergyPlus engine's version behind it
            applicationSoftwareVersion="bacpipes-sim energyplus",
            maxApduLengthAccepted=MAX_APDU,
            segmentationSupported=SEGMENTATION,
        )
        link = f"{self.address}/8" + ("" if self.port == 47808 else f":{self.port}")
        port = NetworkPortObject(link, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
        self.objects = [device, port]
        for spec in self.spec.points:
            obj = self._make(spec, sample)
            obj._counter = self.counter
            obj._on_write = self._on_write
            self.objects.append(obj)
            self._points.append((obj, spec))
        return self.objects

    def _make(self, spec: PointSpec, sample: Sample) -> Any:
        common = dict(
            objectIdentifier=(spec.object_type, spec.instance),
            objectName=spec.name,
            description=spec.description,
            units=spec.units,
            covIncrement=spec.cov_increment,
            eventState="normal",
            reliability="noFaultDetected",
            outOfService=False,
        )
        value = _value(spec, sample, spec.key)
        if not spec.commandable:
            return SimAnalogInput(presentValue=value, **common)
        default = _value(spec, sample, spec.default_key or spec.key)
        return ScheduledSetpoint(presentValue=default, relinquishDefault=default, minPresValue=spec.min_value,
                              maxPresValue=spec.max_value, **common)

    # -- building <-> objects ---------------------------------------------------------------------

    def refresh(self, sample: Sample, finished: bool = False) -> None:
        """Measurements and relinquish defaults take the sample's values."""
        for obj, spec in self._points:
            if spec.commandable:
                default = _value(spec, sample, spec.default_key or spec.key)
                if obj.relinquishDefault != default:
                    obj.relinquishDefault = default
                    obj.recalculating()  # a relinquished setpoint follows its schedule at once
            else:
                value = _value(spec, sample, spec.key)
                if obj.presentValue != value:
                    publish(obj, "presentValue", Real(value))
        if finished != self._faulted:
            self._faulted = finished
            reliability = Reliability.unreliableOther if finished else Reliability.noFaultDetected
            for obj, _ in self._points:
                obj.reliability = reliability

    def commands(self) -> dict[Override, float | None]:
        """What the controller asks of the building: each setpoint's commanded value, or None."""
        out: dict[Override, float | None] = {}
        for obj, spec in self._points:
            if spec.write is not None:
                commanded = obj.currentCommandPriority.unsigned is not None
                out[spec.write] = float(obj.presentValue) if commanded else None
        return out

    def apply_inputs(self) -> None:
        """Nothing to do here: the server collects ``commands`` before each step (see sim/server.py)."""

    def snapshot(self) -> dict[tuple[int, str, int], object]:
        """Present values keyed by (device instance, object type, object instance)."""
        return {(self.instance, spec.object_type, spec.instance): float(obj.presentValue)
                for obj, spec in self._points}


def _value(spec: PointSpec, sample: Sample, key: str) -> float:
    return f32(sample.values.get(key, 0.0), digits(spec.units))
