"""BACnet object classes that answer like a real controller, not like a blank bacpypes3 object.

bacpypes3's local objects accept any write (even to an analog input's presentValue) and count
nothing. The classes here add what the pipeline's tests need from a device: writes refused with
the error codes a controller returns, range limits, and a tally of presentValue reads served.
Everything else (priority arrays, relinquish default, encoding) is bacpypes3's own behaviour.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any, ClassVar

from bacpypes3.apdu import ReadRangeRequest, WritePropertyRequest, decode_max_apdu_length_accepted
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.errors import ExecutionError, InvalidTag, PropertyError
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryInputObject, BinaryValueObject
from bacpypes3.local.cmd import Commandable
from bacpypes3.local.cov import GenericCriteria
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.primitivedata import Null

import bacpipes.bacpypes_speedup  # noqa: F401  (patches bacpypes3 on import)

PRESENT_VALUE = PropertyIdentifier("presentValue")


class ReadCounter:
    """presentValue reads one device has served, via ReadProperty or ReadPropertyMultiple."""

    def __init__(self) -> None:
        self.count = 0


class SimObject:
    """Mixin: read accounting and controller-style write validation for a local object.

    Both ReadProperty and every element of a ReadPropertyMultiple go through ``read_property``,
    so counting here sees exactly what the device put on the wire.
    """

    _counter: ReadCounter | None = None
    _on_write: Callable[[], None] | None = None
    _writable: ClassVar[frozenset[str]] = frozenset()

    async def read_property(self, attr: int | str, index: int | None = None) -> Any:
        value = await super().read_property(attr, index)  # type: ignore[misc]
        if self._counter is not None and attr in ("presentValue", PRESENT_VALUE):
            self._counter.count += 1
        return value

    async def write_property(
        self,
        attr: int | str,
        value: Any,
        index: int | None = None,
        priority: int | None = None,
    ) -> None:
        name = attr if isinstance(attr, str) else PropertyIdentifier(attr).attr
        if name not in self._writable:
            raise PropertyError("writeAccessDenied")
        if priority is not None and not 1 <= priority <= 16:
            raise PropertyError("valueOutOfRange")
        if isinstance(value, Null):
            # Null only relinquishes a commanded presentValue; it is no value for anything else.
            if name != "presentValue" or not isinstance(self, Commandable):
                raise PropertyError("invalidDataType")
        else:
            self._check_range(value)
        await super().write_property(attr, value, index, priority)  # type: ignore[misc]
        if self._on_write is not None:
            self._on_write()

    def _check_range(self, value: Any) -> None:
        """Raise valueOutOfRange for a value the controller would not accept."""


class _AnalogLimits(SimObject):
    def _check_range(self, value: Any) -> None:
        low = getattr(self, "minPresValue", None)
        high = getattr(self, "maxPresValue", None)
        v = float(value)
        if math.isnan(v) or (low is not None and v < low) or (high is not None and v > high):
            raise PropertyError("valueOutOfRange")


class SimAnalogInput(SimObject, AnalogInputObject):
    """Read-only measurement."""


class SimAnalogOutput(_AnalogLimits, AnalogOutputObject):
    """Commandable output; the control program drives its relinquish default, so that is not
    writable from the network."""

    _writable = frozenset({"presentValue"})


class SimAnalogValue(_AnalogLimits, AnalogValueObjectCmd):
    """Commandable setpoint with min/max present value limits."""

    _writable = frozenset({"presentValue", "relinquishDefault"})


class SimBinaryInput(SimObject, BinaryInputObject):
    """Read-only status."""


class SimBinaryValue(SimObject, Commandable, BinaryValueObject):
    """Commandable binary value built on the *local* BinaryValueObject.

    bacpypes3's own BinaryValueObjectCmd derives from the non-local class, so it lacks the
    dynamic propertyList and statusFlags the other local objects have.
    """

    _writable = frozenset({"presentValue", "relinquishDefault"})


class SimMultiStateValue(SimObject, Commandable, MultiStateValueObject):
    """Commandable multi-state value (bacpypes3 ships no commandable variant).

    COV: bacpypes3 0.0.110 gives multi-state objects the COV-increment criteria, but they have no
    covIncrement, so a SubscribeCOV failed half-bound and every later write to the object failed
    with operational-problem. BACnet (13.1.3) reports any change of a multi-state value.
    """

    _writable = frozenset({"presentValue", "relinquishDefault"})
    _cov_criteria = GenericCriteria

    def _check_range(self, value: Any) -> None:
        if not 1 <= int(value) <= int(self.numberOfStates):
            raise PropertyError("valueOutOfRange")


class SimApplication(Application):
    """An Application that answers a wrongly typed WriteProperty like a controller does.

    bacpypes3 decodes the value before any object sees it and, on a tag mismatch, sends a
    Reject (invalid-tag); controllers answer Error(property, invalid-data-type), which is what
    clients and the edge's command executor expect.
    """

    async def do_WritePropertyRequest(self, apdu: WritePropertyRequest) -> None:
        try:
            await super().do_WritePropertyRequest(apdu)
        except InvalidTag as err:
            raise PropertyError("invalidDataType") from err

    async def do_ReadRangeRequest(self, apdu: ReadRangeRequest) -> None:
        """Serve a trend log's buffer (bacpypes3 has no ReadRange server): see sim/trendlog.py."""
        from sim.trendlog import SimTrendLog, garbage_ack, read_range_ack

        log = self.get_object_id(apdu.objectIdentifier)
        if log is None:
            raise ExecutionError(errorClass="object", errorCode="unknownObject")
        if not isinstance(log, SimTrendLog):
            raise ExecutionError(errorClass="services", errorCode="propertyIsNotAList")
        if log.fault == "error":
            raise ExecutionError(errorClass="device", errorCode="operationalProblem")
        if log.fault == "garbage":
            await self.response(garbage_ack(apdu))
            return
        own = int(self.device_object.maxApduLengthAccepted) if self.device_object else 480
        theirs = decode_max_apdu_length_accepted(apdu.apduMaxResp)
        await self.response(read_range_ack(log, apdu, min(own, theirs)))


def clone(prototype: SimObject, **values: Any) -> Any:
    """A new object shaped like ``prototype`` with its own identity and values.

    Constructing a bacpypes3 object costs ~1.5 ms (inspect.getattr_static over every unset
    property, on every class of a deep MRO); 10 devices x 1,000 points would take 15 s to start.
    A shallow copy of a prototype, then setting the few properties that differ, costs ~0.15 ms.
    The values bacpypes3 stores are immutable primitives, so sharing them is safe; the property
    monitor table must not be shared, or COV subscribers of one object would fire for another.
    """
    obj = copy.copy(prototype)
    obj._property_monitors = defaultdict(list)
    for name, value in values.items():
        setattr(obj, name, value)
    return obj


def publish(obj: Any, name: str, value: Any) -> None:
    """Set a value the physics computed, cheaply when nobody watches it.

    bacpypes3's ``__setattr__`` costs ~50 µs; with 10,000 points per tick that stalls the loop.
    An object with COV subscribers (property monitors) still takes the full path so they are
    notified; the others get the already-typed value stored directly.
    """
    if obj._property_monitors.get(name):
        setattr(obj, name, value)
    else:
        obj.__dict__[name] = value
