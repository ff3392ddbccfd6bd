"""The agent's BACnet/IP client: one bacpypes3 Application plus reads that survive real devices.

bacpypes3 errors (ErrorPDU, RejectPDU, AbortPDU) derive from BaseException, so every request here
converts them into `BacnetError`, an ordinary Exception that callers can handle.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorType, HostNPort, IPMode, PropertyIdentifier, PropertyReference
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

import bacpipes.bacpypes_speedup  # noqa: F401  (patches bacpypes3 on import)
from bacpipes.settings import BacnetSettings

# conservative encoded sizes, in bytes, of one object's RPM request and response for pv + status-flags
_RPM_HEADER = 16
_RPM_RESPONSE_PER_OBJECT = 24  # object id + pv + status flags, measured encoding: 23 bytes


class BacnetError(Exception):
    """A device answered with an error/reject/abort, or did not answer at all."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What an I-Am tells us about a device: where it is and how big a request it takes."""

    device_id: int
    address: str
    max_apdu: int
    segmentation: str
    vendor_id: int


def rpm_batch_size(max_apdu: int, bytes_per_object: int = _RPM_RESPONSE_PER_OBJECT) -> int:
    """Objects per ReadPropertyMultiple so the answer fits one APDU of the device.

    Even for devices that segment: bacpypes3 0.0.110 fails on segmented answers under concurrent
    load ("invalid APDU (7)", then no-response), measured with 10 devices x 1,000 points.
    """
    return max(1, (max_apdu - _RPM_HEADER) // bytes_per_object)


@functools.cache
def _property_reference(name: str) -> PropertyReference:
    """Built once per name: bacpypes3 would otherwise parse the string in every request."""
    return PropertyReference(propertyIdentifier=PropertyIdentifier(name))


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


class BacnetClient:
    """Requests with BACnet errors turned into `BacnetError`."""

    def __init__(self, app: Application) -> None:
        self.app = app

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
        i_ams = await self.app.who_is(low, high, destination, timeout=timeout)
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

    async def read(self, address: str, objid: str | ObjectIdentifier, prop: str, index=None) -> Any:
        try:
            return await self.app.read_property(Address(address), objid, prop, index)
        except ErrorRejectAbortNack as exc:
            raise BacnetError(describe_error(exc)) from None

    async def read_multiple(
        self, address: str, specs: Sequence[tuple[ObjectIdentifier, Sequence[str]]]
    ) -> dict[tuple[ObjectIdentifier, str], Any]:
        """One RPM; a property the object lacks comes back as a `BacnetError` value, not a raise."""
        parameter_list: list[Any] = []
        for objid, props in specs:
            parameter_list.extend((objid, [_property_reference(p) for p in props]))
        try:
            results = await self.app.read_property_multiple(Address(address), parameter_list)
        except ErrorRejectAbortNack as exc:
            raise BacnetError(describe_error(exc)) from None
        if isinstance(results, BaseException) or results is None:
            raise BacnetError(describe_error(results) if results else "no answer")
        out: dict[tuple[ObjectIdentifier, str], Any] = {}
        for objid, prop, _index, value in results:
            if isinstance(value, ErrorType):
                value = BacnetError(f"{value.errorClass}: {value.errorCode}")
            out[(objid, str(prop).replace("_", "-"))] = value
        return out

    async def write(
        self, address: str, objid: str, prop: str, value: Any, priority: int | None = None
    ) -> None:
        try:
            await self.app.write_property(Address(address), objid, prop, value, None, priority)
        except ErrorRejectAbortNack as exc:
            raise BacnetError(describe_error(exc)) from None


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
