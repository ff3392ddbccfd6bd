"""The agent's BACnet/IP client: one bacpypes3 Application plus requests that survive real devices.

Every answer is checked against its question and decoded here; whatever a device sends, callers see a
value or a `BacnetError` (an ordinary Exception: bacpypes3's own errors derive from BaseException).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from bacpypes3.apdu import (
    ErrorRejectAbortNack,
    ReadPropertyACK,
    ReadPropertyMultipleACK,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    SimpleAckPDU,
    WritePropertyRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import (
    HostNPort,
    IPMode,
    PropertyIdentifier,
    PropertyReference,
    ReadAccessSpecification,
)
from bacpypes3.constructeddata import Array
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    Atomic,
    Boolean,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    Real,
    TagClass,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

import bacpipes.bacpypes_speedup  # noqa: F401  (patches bacpypes3 on import)
from bacpipes.catalogue import PeerInfo
from bacpipes.settings import BacnetSettings

log = logging.getLogger(__name__)

# conservative encoded sizes, in bytes, of one object's RPM request and response for pv + status-flags
_RPM_HEADER = 16
_RPM_RESPONSE_PER_OBJECT = 24  # object id + pv + status flags, measured encoding: 23 bytes
_ASHRAE = get_vendor_info(0)
_NUMERIC = (Real, Double, Unsigned, Integer, Enumerated, Boolean)
_PRESENT_VALUE = PropertyIdentifier("present-value")


class BacnetError(Exception):
    """A device answered with an error/reject/abort, or its answer could not be used."""


class NoResponse(BacnetError):
    """The device did not answer in time (offline, unreachable, or its answer was undecodable)."""


class BadAnswer(BacnetError):
    """An answer that does not answer the question asked, or cannot be decoded: discarded, counted."""


_ASHRAE = get_vendor_info(0)
_NUMERIC = (Real, Double, Unsigned, Integer, Enumerated, Boolean)


def rpm_batch_size(max_apdu: int, bytes_per_object: int = _RPM_RESPONSE_PER_OBJECT) -> int:
    """Objects per ReadPropertyMultiple so the answer fits one APDU of the device.

    Even for devices that segment: bacpypes3 0.0.110 fails on segmented answers under concurrent
    load ("invalid APDU (7)", then no-response), measured with 10 devices x 1,000 points.
    """
    return max(1, (max_apdu - _RPM_HEADER) // bytes_per_object)


def make_application(settings: BacnetSettings, bbmd: str | None = None) -> Application:
    """Bind the agent's own BACnet device; as a foreign device when a BBMD is given."""
    device = DeviceObject(
        objectIdentifier=("device", settings.device_id),
        objectName=f"bacpipes-{settings.device_id}",
        vendorIdentifier=999,
        maxApduLengthAccepted=1476,
        segmentationSupported="segmented-both",
        apduTimeout=settings.apdu_timeout_ms,
        numberOfApduRetries=settings.apdu_retries,
    )
    if bbmd:
        port = NetworkPortObject(
            settings.address,
            objectIdentifier=("network-port", 1),
            objectName="NetworkPort-1",
            bacnetIPMode=IPMode.foreign,
            fdBBMDAddress=HostNPort(bbmd),
            fdSubscriptionLifetime=300,
        )
    else:
        port = NetworkPortObject(
            settings.address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
    return Application.from_object_list([device, port])


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


class InvokeIds:
    """Invoke ids of one peer: never one in flight, never one that a late or replayed answer may still use.

    bacpypes3 counts invoke ids 0-255 for the whole process, so at high request rates each device sees an
    id again within seconds; a device that replays its cached reply for a repeated id, or answers late, then
    answers the wrong question. Here each peer has its own ids, used in turn, each resting `reuse_after_s`
    after its exchange ends; when all 256 rest, requests to that peer wait (at most 256 per reuse_after_s).
    """

    def __init__(self, reuse_after_s: float) -> None:
        self.reuse_after_s = reuse_after_s
        self._next = 0
        self._busy: set[int] = set()
        self._free_at = [0.0] * 256

    async def acquire(self) -> int:
        while True:
            now = time.monotonic()
            for k in range(256):
                i = (self._next + k) % 256
                if i not in self._busy and self._free_at[i] <= now:
                    self._next = (i + 1) % 256
                    self._busy.add(i)
                    return i
            resting = [t for i, t in enumerate(self._free_at) if i not in self._busy]
            await asyncio.sleep(max(0.005, min(resting) - now) if resting else 0.05)

    def release(self, invoke_id: int) -> None:
        self._busy.discard(invoke_id)
        self._free_at[invoke_id] = time.monotonic() + self.reuse_after_s


@dataclass
class PeerCounters:
    """Per device: answers discarded because they did not match their question, or did not decode."""

    mismatched: int = 0
    undecodable: int = 0


class BacnetClient:
    """ReadProperty, ReadPropertyMultiple and WriteProperty that check every answer against its question.

    Requests are built here rather than through bacpypes3's helpers so that each carries an invoke id of
    its peer's own (`InvokeIds`) and each answer is decoded with the standard's datatypes, any decoding
    failure becoming a `BadAnswer` for that value or request, never an exception that escapes.
    """

    def __init__(self, app: Application, settings: BacnetSettings | None = None) -> None:
        settings = settings or BacnetSettings()
        self.app = app
        self.reuse_after_s = settings.invoke_id_reuse_s
        # bacpypes3 retries and times out by itself; this bound catches an answer it took but never delivered
        self.request_timeout_s = settings.apdu_timeout_ms / 1000 * (settings.apdu_retries + 1) + 0.5
        self._ids: dict[str, InvokeIds] = {}
        self.counters: dict[str, PeerCounters] = defaultdict(PeerCounters)
        self._logged: set[tuple[str, str]] = set()

    @classmethod
    def open(cls, settings: BacnetSettings, bbmd: str | None = None) -> BacnetClient:
        return cls(make_application(settings, bbmd), settings)

    def close(self) -> None:
        self.app.close()

    async def wait_registered(self, timeout: float) -> None:
        """A foreign device must be registered with its BBMD before a broadcast reaches anyone."""
        deadline = asyncio.get_running_loop().time() + timeout
        for link_layer in self.app.link_layers.values():
            while getattr(link_layer, "bbmdRegistrationStatus", 0) != 0:
                if asyncio.get_running_loop().time() > deadline:
                    raise BacnetError(
                        f"no registration with BBMD {link_layer.bbmdAddress} after {timeout:g} s"
                        f" (status {link_layer.bbmdRegistrationStatus})"
                    )
                await asyncio.sleep(0.05)

    async def who_is(self, address: str | None, low: int, high: int, timeout: float) -> list[PeerInfo]:
        destination = Address(address) if address else None
        try:
            i_ams = await self.app.who_is(low, high, destination, timeout=timeout)
        except Exception:  # an odd I-Am must not end a discovery of every other device
            log.exception("Who-Is to %s failed", address or "broadcast")
            return []
        return [
            PeerInfo(
                device_id=i_am.iAmDeviceIdentifier[1],
                address=str(i_am.pduSource),
                max_apdu=int(i_am.maxAPDULengthAccepted),
                segmentation=str(i_am.segmentationSupported),
                vendor_id=int(i_am.vendorID),
            )
            for i_am in i_ams
        ]

    # --- requests ---------------------------------------------------------------------------------

    async def request(self, address: str, apdu: Any) -> Any:
        """Send one confirmed request with an invoke id of the peer's own; the ack, or a BacnetError."""
        ids = self._ids.setdefault(address, InvokeIds(self.reuse_after_s))
        invoke_id = await ids.acquire()
        apdu.pduDestination = _address(address)
        apdu.apduInvokeID = invoke_id
        try:
            return await asyncio.wait_for(self.app.request(apdu), self.request_timeout_s)
        except TimeoutError:  # bacpypes3 times out sooner itself: it took an answer it could not decode
            raise self._undecodable(address, None, "an answer bacpypes3 could not decode") from None
        except ErrorRejectAbortNack as exc:
            text = describe_error(exc)
            raise (NoResponse if "no-response" in text else BacnetError)(text) from None
        finally:
            ids.release(invoke_id)

    async def read(
        self, address: str, objid: str | ObjectIdentifier, prop: str, index: int | None = None
    ) -> Any:
        """ReadProperty; asked once more (a new invoke id) when the answer is unusable."""
        try:
            return await self._read_once(address, objid, prop, index)
        except BadAnswer:
            return await self._read_once(address, objid, prop, index)

    async def _read_once(
        self, address: str, objid: str | ObjectIdentifier, prop: str, index: int | None
    ) -> Any:
        oid, pid = object_id(objid), property_id(prop)
        apdu = ReadPropertyRequest(objectIdentifier=oid, propertyIdentifier=pid)
        if index is not None:
            apdu.propertyArrayIndex = index
        ack = await self.request(address, apdu)
        try:
            asked = (oid, pid, index)
            answered = (ack.objectIdentifier, ack.propertyIdentifier, ack.propertyArrayIndex)
            if not isinstance(ack, ReadPropertyACK) or answered != asked:
                raise self._mismatch(address, f"asked for {_ref(*asked)}, got {_answer_name(ack)}")
            return self._decode(address, oid, pid, index, ack.propertyValue)
        except BacnetError:
            raise
        except Exception as exc:  # whatever a device sent, it is that device's error
            raise self._undecodable(address, exc) from None

    async def read_multiple(
        self, address: str, specs: Sequence[tuple[ObjectIdentifier, Sequence[str]]]
    ) -> dict[tuple[ObjectIdentifier, str], Any]:
        """One RPM whose ack must list the same objects and properties in the same order.

        A property the object lacks comes back as a `BacnetError` value, as does one whose value does not
        decode; an ack of another shape is discarded whole and the question asked once more.
        """
        try:
            return await self._read_multiple_once(address, specs)
        except BadAnswer:
            return await self._read_multiple_once(address, specs)

    async def _read_multiple_once(
        self, address: str, specs: Sequence[tuple[ObjectIdentifier, Sequence[str]]]
    ) -> dict[tuple[ObjectIdentifier, str], Any]:
        apdu = ReadPropertyMultipleRequest(
            listOfReadAccessSpecs=[
                ReadAccessSpecification(
                    objectIdentifier=oid, listOfPropertyReferences=[_property_reference(p) for p in props]
                )
                for oid, props in specs
            ]
        )
        ack = await self.request(address, apdu)
        try:
            if not isinstance(ack, ReadPropertyMultipleACK):
                raise self._mismatch(address, f"asked for a ReadPropertyMultiple, got {_answer_name(ack)}")
            results = list(ack.listOfReadAccessResults)
            asked = [(oid, [property_id(p) for p in props]) for oid, props in specs]
            elements = [list(r.listOfResults) for r in results]
            answered = [
                (r.objectIdentifier, [e.propertyIdentifier for e in es])
                for r, es in zip(results, elements, strict=True)
            ]
            if answered != asked or any(e.propertyArrayIndex is not None for es in elements for e in es):
                raise self._mismatch(address, "the ReadPropertyMultiple answer does not match the request")
            out: dict[tuple[ObjectIdentifier, str], Any] = {}
            for (oid, props), found in zip(specs, elements, strict=True):
                for prop, element in zip(props, found, strict=True):
                    out[(oid, prop)] = self._element_value(address, oid, element)
            return out
        except BacnetError:
            raise
        except Exception as exc:
            raise self._undecodable(address, exc) from None

    async def write(
        self, address: str, objid: str | ObjectIdentifier, prop: str, value: Any, priority: int | None = None
    ) -> None:
        oid, pid = object_id(objid), property_id(prop)
        datatype = _datatype(oid, pid, None)
        if datatype is None:
            raise BacnetError(f"no known datatype for {_ref(oid, pid, None)}: not written")
        if not (isinstance(value, Null) and priority is not None) and not isinstance(value, datatype):
            value = datatype(value)
        apdu = WritePropertyRequest(objectIdentifier=oid, propertyIdentifier=pid, propertyValue=value)
        if priority is not None:
            apdu.priority = priority
        ack = await self.request(address, apdu)
        if not isinstance(ack, SimpleAckPDU) or ack.apduService != apdu.apduService:
            raise self._mismatch(address, f"asked for a WriteProperty, got {_answer_name(ack)}")

    async def object_list(self, address: str, device_id: int) -> list[ObjectIdentifier]:
        """The whole list in one read, or index by index when it is too large for one APDU.

        An entry that cannot be read is left out (logged); a device that stops answering fails the list.
        """
        device = ObjectIdentifier(("device", device_id))
        try:
            return list(await self.read(address, device, "object-list"))
        except NoResponse:
            raise
        except BacnetError as exc:
            log.info("device %s: object-list in one read failed (%s); reading by index", device_id, exc)
        count = int(await self.read(address, device, "object-list", 0))
        objects: list[ObjectIdentifier] = []
        for i in range(1, count + 1):
            try:
                objects.append(await self.read(address, device, "object-list", i))
            except NoResponse:
                raise
            except BacnetError as exc:
                log.warning("device %s: object-list[%d] unreadable, skipped: %s", device_id, i, exc)
        return objects

    # --- answers ----------------------------------------------------------------------------------

    def _element_value(self, address: str, oid: ObjectIdentifier, element: Any) -> Any:
        result = element.readResult
        if result.propertyAccessError is not None:
            error = result.propertyAccessError
            return BacnetError(f"{error.errorClass}: {error.errorCode}")
        try:
            return self._decode(address, oid, element.propertyIdentifier, None, result.propertyValue)
        except BacnetError as exc:
            return exc

    def _decode(self, address: str, oid: ObjectIdentifier, pid: PropertyIdentifier, index: int | None,
                value: Any) -> Any:
        """The standard's datatype for this property; any single primitive for what the standard lacks.

        A present value of a datatype other than the standard's is accepted when it is a number (devices
        answer Double or Unsigned for Real), refused otherwise.
        """
        datatype = _datatype(oid, pid, index)
        if datatype is not None:
            try:
                return value.cast_out(datatype, null=issubclass(datatype, Atomic))
            except Exception as exc:  # ValueError, InvalidTag, AttributeError...
                if pid != _PRESENT_VALUE:
                    what = f"{_ref(oid, pid, index)} is not a {datatype.__name__}"
                    raise self._undecodable(address, exc, what) from None
        primitive = _primitive(value)
        if datatype is not None and not isinstance(primitive, _NUMERIC):
            kind = type(primitive).__name__ if primitive is not None else "a constructed value"
            raise self._undecodable(address, None, f"{_ref(oid, pid, index)} is {kind}, not a number")
        return primitive

    def _mismatch(self, address: str, what: str) -> BadAnswer:
        self.counters[address].mismatched += 1
        self._log(address, "answers that do not match their request are discarded (counted in health)")
        log.debug("device at %s: answer discarded: %s", address, what)
        return BadAnswer(f"answer discarded: {what}")

    def _undecodable(self, address: str, exc: BaseException | None, what: str | None = None) -> BadAnswer:
        self.counters[address].undecodable += 1
        text = what or f"undecodable answer ({describe_error(exc) if exc else 'unknown'})"
        self._log(address, text)
        return BadAnswer(text)

    def _log(self, address: str, text: str) -> None:
        """A warning the first time, then only in the counters: a bad device would flood the log."""
        level = logging.DEBUG if (address, text) in self._logged else logging.WARNING
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged.add((address, text))
        log.log(level, "device at %s: %s", address, text)


@functools.cache
def object_id(objid: str | ObjectIdentifier) -> ObjectIdentifier:
    """'analog-value,3', or '513,3' for a vendor's own type, parsed once (bacpypes3 parses slowly)."""
    if isinstance(objid, ObjectIdentifier):
        return objid
    kind, _, instance = objid.partition(",")
    return ObjectIdentifier((int(kind) if kind.isdigit() else kind, int(instance)))


@functools.cache
def _address(address: str) -> Address:
    return Address(address)


@functools.cache
def property_id(prop: str | PropertyIdentifier) -> PropertyIdentifier:
    return prop if isinstance(prop, PropertyIdentifier) else PropertyIdentifier(prop)


@functools.cache
def _property_reference(name: str) -> PropertyReference:
    return PropertyReference(propertyIdentifier=property_id(name))


def _datatype(oid: ObjectIdentifier, pid: PropertyIdentifier, index: int | None) -> type | None:
    """The standard's datatype of a property (an element's for an index), None for a vendor's own."""
    object_class = _ASHRAE.get_object_class(oid[0])
    datatype = object_class.get_property_type(pid) if object_class else None
    if datatype is not None and index is not None and issubclass(datatype, Array):
        return Unsigned if index == 0 else datatype._subtype
    return datatype


def _primitive(value: Any) -> Any:
    """A value that is one application-tagged primitive, whatever its type; None otherwise."""
    tags = list(getattr(value, "tagList", None) or ())
    if tags and tags[0].tag_class == TagClass.opening:  # as an RPM answer carries it, context-tagged
        tags = tags[1:-1]
    if len(tags) != 1 or tags[0].tag_class != TagClass.application:
        return None
    return tags[0].app_to_object()


def _ref(oid: ObjectIdentifier, pid: PropertyIdentifier, index: int | None) -> str:
    return f"{oid[0]},{oid[1]} {pid}" + (f"[{index}]" if index is not None else "")


def _answer_name(ack: Any) -> str:
    oid, pid = getattr(ack, "objectIdentifier", None), getattr(ack, "propertyIdentifier", None)
    what = type(ack).__name__
    if oid is not None and pid is not None:
        return f"{what} for {_ref(oid, pid, getattr(ack, 'propertyArrayIndex', None))}"
    return what


def expand_targets(targets: Iterable[str]) -> list[str | None]:
    """'127.0.0.10-127.0.0.19[:port]' -> each address; 'broadcast' -> None (a global broadcast)."""
    out: list[str | None] = []
    for target in targets:
        target = target.strip()
        if target.lower() == "broadcast":
            out.append(None)
            continue
        first, _, last = target.partition("-")
        last, _, port = (last or first).partition(":")
        first = first.partition(":")[0]
        try:
            start, end = int(IPv4Address(first.strip())), int(IPv4Address(last.strip()))
        except ValueError as exc:
            raise ValueError(
                f"bad discovery target {target!r}: not an IPv4 address or range ({exc})"
            ) from None
        if end < start or end - start > 4096:
            raise ValueError(f"bad discovery range {target!r}: end before start or over 4,096 addresses")
        suffix = f":{port}" if port else ""
        out.extend(f"{IPv4Address(n)}{suffix}" for n in range(start, end + 1))
    return out


async def gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    """Like asyncio.gather, with at most `limit` in flight (a site may have hundreds of targets)."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))
