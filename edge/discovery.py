"""Discovery: find devices (Who-Is/I-Am), read what they hold, and record it in `device`/`point`.

Re-running discovery adds new points and marks vanished ones missing; it never touches what an
operator set (publish flag, interval, QoS, user tags).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.primitivedata import ObjectIdentifier

from bacpipes.settings import Settings
from edge.bacnet import (
    BacnetClient,
    BacnetError,
    PeerInfo,
    expand_targets,
    gather_limited,
    rpm_batch_size,
)
from edge.catalog import DiscoveredDevice, DiscoveredPoint, record_discovery

log = logging.getLogger(__name__)

_SKIP_TYPES = {"device", "network-port"}
_VALUE_TYPES = {"analog-value", "binary-value", "multi-state-value"}
_OBJECT_PROPS = ("object-name", "description", "units", "priority-array")
# encoded size of one object's answer to _OBJECT_PROPS (names and a 16-slot priority array)
_OBJECT_ANSWER_BYTES = 160


@dataclass
class DiscoveryReport:
    devices: list[DiscoveredDevice] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    new_points: int = 0
    missing_points: int = 0

    @property
    def point_count(self) -> int:
        return sum(len(d.points) for d in self.devices)


async def find_peers(client: BacnetClient, settings: Settings) -> list[PeerInfo]:
    """Who-Is to every target (directed, broadcast, or broadcast through the BBMD)."""
    d = settings.discovery
    targets = expand_targets(d.targets)
    if d.bbmd:
        await client.wait_registered(timeout=max(5.0, d.timeout_s))
        if None not in targets:
            targets.append(None)  # a foreign device's broadcast is distributed by its BBMD
    answers = await gather_limited((client.who_is(t, d.low, d.high, d.timeout_s) for t in targets), limit=32)
    peers: dict[int, PeerInfo] = {}
    for batch in answers:
        for peer in batch:
            peers.setdefault(peer.device_id, peer)
    return sorted(peers.values(), key=lambda p: p.device_id)


async def read_object_list(client: BacnetClient, peer: PeerInfo) -> list[ObjectIdentifier]:
    """The whole list in one read, or index by index when it is too large for one APDU."""
    device = ObjectIdentifier(("device", peer.device_id))
    try:
        return list(await client.read(peer.address, device, "object-list"))
    except BacnetError as exc:
        log.info("device %s: object-list in one read failed (%s); reading by index", peer.device_id, exc)
    count = int(await client.read(peer.address, device, "object-list", 0))
    return [await client.read(peer.address, device, "object-list", i) for i in range(1, count + 1)]


async def read_device(client: BacnetClient, peer: PeerInfo) -> DiscoveredDevice:
    device_oid = ObjectIdentifier(("device", peer.device_id))
    props = await _read_props(
        client, peer, [device_oid], ("object-name", "vendor-name", "model-name", "location")
    )
    info = props.get(device_oid, {})
    device = DiscoveredDevice(
        peer=peer,
        name=_text(info.get("object-name")) or f"device_{peer.device_id}",
        vendor_name=_text(info.get("vendor-name")),
        model_name=_text(info.get("model-name")),
        location=_text(info.get("location")),
    )
    objects = [o for o in await read_object_list(client, peer) if _type_name(o) not in _SKIP_TYPES]
    details = await _read_props(client, peer, objects, _OBJECT_PROPS)
    for oid in objects:
        attrs = details.get(oid, {})
        object_type = _type_name(oid)
        commandable = not isinstance(attrs.get("priority-array"), (BacnetError, type(None)))
        device.points.append(
            DiscoveredPoint(
                object_type=object_type,
                object_instance=int(oid[1]),
                object_name=_text(attrs.get("object-name")),
                description=_text(attrs.get("description")),
                units=_text(attrs.get("units")),
                commandable=commandable,
                writable=commandable or object_type in _VALUE_TYPES,
            )
        )
    return device


async def discover(client: BacnetClient, settings: Settings) -> DiscoveryReport:
    """Find, read and record every reachable device; one dead device is an error line, not a failure."""
    report = DiscoveryReport()
    peers = await find_peers(client, settings)
    results = await gather_limited((_read_device_safely(client, p) for p in peers), limit=8)
    for peer, result in zip(peers, results, strict=True):
        if isinstance(result, DiscoveredDevice):
            report.devices.append(result)
        else:
            report.errors[peer.device_id] = result
    answered = [p.device_id for p in peers]
    counts = record_discovery(settings.database.dsn, settings.site.id, report.devices, answered)
    report.new_points, report.missing_points = counts
    return report


async def _read_device_safely(client: BacnetClient, peer: PeerInfo) -> DiscoveredDevice | str:
    try:
        return await read_device(client, peer)
    except (BacnetError, TimeoutError) as exc:
        log.warning("device %s at %s: discovery failed: %s", peer.device_id, peer.address, exc)
        return str(exc) or type(exc).__name__


async def _read_props(
    client: BacnetClient, peer: PeerInfo, objects: list[ObjectIdentifier], props: tuple[str, ...]
) -> dict[ObjectIdentifier, dict[str, Any]]:
    """RPM in APDU-sized batches; per-object ReadProperty for a device that refuses RPM."""
    out: dict[ObjectIdentifier, dict[str, Any]] = {}
    batch = rpm_batch_size(peer.max_apdu, _OBJECT_ANSWER_BYTES)
    for start in range(0, len(objects), batch):
        chunk = objects[start : start + batch]
        try:
            values = await client.read_multiple(peer.address, [(o, props) for o in chunk])
        except BacnetError:
            values = await _read_one_by_one(client, peer, chunk, props)
        for (oid, prop), value in values.items():
            out.setdefault(oid, {})[prop] = value
    return out


async def _read_one_by_one(
    client: BacnetClient, peer: PeerInfo, objects: list[ObjectIdentifier], props: tuple[str, ...]
) -> dict[tuple[ObjectIdentifier, str], Any]:
    values: dict[tuple[ObjectIdentifier, str], Any] = {}
    for oid in objects:
        for prop in props:
            try:
                values[(oid, prop)] = await client.read(peer.address, oid, prop)
            except BacnetError as exc:
                values[(oid, prop)] = exc
    return values


def _type_name(oid: ObjectIdentifier) -> str:
    return str(oid[0])


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, BacnetError):
        return None
    return str(value)
