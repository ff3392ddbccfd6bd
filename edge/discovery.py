"""Discovery: find devices (Who-Is/I-Am), read what they hold, and record it in `device`/`point`.

Re-running discovery adds new points and marks vanished ones missing; it never touches what an
operator set (publish flag, interval, QoS, user tags).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from bacpypes3.primitivedata import ObjectIdentifier

from bacpipes.catalogue import (
    SKIP_TYPES,
    DiscoveredDevice,
    DiscoveredPoint,
    PeerInfo,
    is_writable,
    record_discovery,
)
from bacpipes.settings import Settings
from bacpipes.units import BINARY_TYPES, MULTI_STATE_TYPES
from edge.bacnet import (
    BacnetClient,
    BacnetError,
    NoResponse,
    describe_error,
    expand_targets,
    gather_limited,
    rpm_batch_size,
)
from edge.trendlog import HistoryReport, import_history

log = logging.getLogger(__name__)

_ANALOG_TYPES = {"analog-input", "analog-output", "analog-value"}
_OBJECT_PROPS = ("object-name", "description", "units", "priority-array")
# what a controller says about an analog point's range and precision: default write limits, COV tuning
_ANALOG_PROPS = ("min-pres-value", "max-pres-value", "resolution", "cov-increment")
# encoded size of one object's answer to _OBJECT_PROPS + _ANALOG_PROPS (names, a 16-slot priority array)
_OBJECT_ANSWER_BYTES = 190
# what operators read a state by (all optional in the standard: a device without them still discovers)
_TEXT_PROPS = {
    "multi-state": ("state-text",),
    "binary": ("inactive-text", "active-text"),
    "relinquish": ("relinquish-default",),
}
# a state-text array of a dozen names; the two texts of a binary object; a relinquish default
_TEXT_ANSWER_BYTES = {"multi-state": 260, "binary": 60, "relinquish": 20}


@dataclass
class DiscoveryReport:
    devices: list[DiscoveredDevice] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    new_points: int = 0
    missing_points: int = 0
    history: HistoryReport | None = None

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
    listed = await client.object_list(peer.address, peer.device_id)
    device.trend_logs = sorted(int(o[1]) for o in listed if _type_name(o) == "trend-log")
    objects = [o for o in listed if _type_name(o) not in SKIP_TYPES]
    details = await _read_props(client, peer, objects, _OBJECT_PROPS)
    analog = [o for o in objects if _type_name(o) in _ANALOG_TYPES]
    for oid, limits in (await _read_props(client, peer, analog, _ANALOG_PROPS)).items():
        details.setdefault(oid, {}).update(limits)
    await _read_state_context(client, peer, objects, details)
    for oid in objects:
        attrs = details.get(oid, {})
        object_type = _type_name(oid)
        commandable = _is_priority_array(attrs.get("priority-array"))
        device.points.append(
            DiscoveredPoint(
                object_type=object_type,
                object_instance=int(oid[1]),
                object_name=_text(attrs.get("object-name")),
                description=_text(attrs.get("description")),
                units=_text(attrs.get("units")),
                commandable=commandable,
                writable=is_writable(object_type, commandable),
                device_min_value=_number(attrs.get("min-pres-value")),
                device_max_value=_number(attrs.get("max-pres-value")),
                resolution=_number(attrs.get("resolution")),
                cov_increment=_number(attrs.get("cov-increment")),
                state_text=_texts(attrs.get("state-text")),
                inactive_text=_text(attrs.get("inactive-text")),
                active_text=_text(attrs.get("active-text")),
                relinquish_default=_number(attrs.get("relinquish-default")),
            )
        )
    return device


async def _read_state_context(
    client: BacnetClient,
    peer: PeerInfo,
    objects: list[ObjectIdentifier],
    details: dict[ObjectIdentifier, dict[str, Any]],
) -> None:
    """State texts of multi-state and binary objects, and the relinquish default of commandable ones, into
    `details`: what the Live and Commands pages show instead of bare numbers. Separate requests so that the
    objects' own properties are read the same way whether or not a device has these. Optional: a device
    that fails these reads (e.g. a state-text array too long for its APDU) is discovered without them."""
    groups = {
        "multi-state": [o for o in objects if _type_name(o) in MULTI_STATE_TYPES],
        "binary": [o for o in objects if _type_name(o) in BINARY_TYPES],
        "relinquish": [o for o in objects if _is_priority_array(details.get(o, {}).get("priority-array"))],
    }
    for kind, group in groups.items():
        try:
            found = await _read_props(client, peer, group, _TEXT_PROPS[kind], _TEXT_ANSWER_BYTES[kind])
        except BacnetError as exc:
            log.warning("device %s at %s: %s not read: %s", peer.device_id, peer.address, kind, exc)
            continue
        for oid, values in found.items():
            details.setdefault(oid, {}).update(values)


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
    logs = {d.peer.device_id: d.trend_logs for d in report.devices if d.trend_logs}
    if logs and settings.discovery.import_history:  # what the controllers kept; later runs resume
        report.history = await import_history(client, settings, known_logs=logs)
    return report


async def _read_device_safely(client: BacnetClient, peer: PeerInfo) -> DiscoveredDevice | str:
    """Whatever one device sends, the others are still read and recorded."""
    try:
        return await read_device(client, peer)
    except BacnetError as exc:
        log.warning("device %s at %s: discovery failed: %s", peer.device_id, peer.address, exc)
        return str(exc)
    except Exception as exc:
        log.exception("device %s at %s: discovery failed on what it sent", peer.device_id, peer.address)
        return describe_error(exc)


async def _read_props(
    client: BacnetClient,
    peer: PeerInfo,
    objects: list[ObjectIdentifier],
    props: tuple[str, ...],
    answer_bytes: int = _OBJECT_ANSWER_BYTES,
) -> dict[ObjectIdentifier, dict[str, Any]]:
    """RPM in APDU-sized batches (`answer_bytes`: one object's answer); per-object ReadProperty for a device
    that refuses RPM."""
    out: dict[ObjectIdentifier, dict[str, Any]] = {}
    batch = rpm_batch_size(peer.max_apdu, answer_bytes)
    for start in range(0, len(objects), batch):
        chunk = objects[start : start + batch]
        try:
            values = await client.read_multiple(peer.address, [(o, props) for o in chunk])
        except NoResponse:
            raise
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
            except NoResponse:
                raise
            except BacnetError as exc:
                values[(oid, prop)] = exc
    return values


def _type_name(oid: ObjectIdentifier) -> str:
    """The standard's name, or the number of a vendor's own type ('513')."""
    return str(oid[0])


def _is_priority_array(value: Any) -> bool:
    """Commandable means a real 16-slot array: a bare Null or an error is no priority array."""
    try:
        return len(value) == 16
    except TypeError:
        return False


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, BacnetError):
        return None
    return str(value)


def _texts(value: Any) -> list[str] | None:
    """A state-text array as a list of names; None when the device has none or sent something else."""
    if value is None or isinstance(value, (BacnetError, str, bytes)):
        return None
    try:
        names = [str(v) for v in value]
    except TypeError:
        return None
    return names or None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, (BacnetError, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
