"""One BACnet/IP device served by bac-py (not bacpypes3), with switchable real-controller quirks.

Run under Python >= 3.13 with bac-py 1.5.7 (see tests/bacpy_peer.py, which builds that venv); it imports
nothing from the repository::

    python bacpy_device.py --address 127.0.0.61 --port 47808 --device-id 7061 \
        --config '{"analog_inputs": 4, "no_rpm": true}' --stats /tmp/peer61.json

It prints ``READY`` on stdout once bound and runs until SIGTERM/SIGINT.

Identity rule (every value says which object it came from, so a reading stored under the wrong point
shows):

- analog-input n:                  presentValue 1000 + n (with ``changing``: 1000 + n + 0.5 * (k % 2), k the
                                   step, so floor(value) - 1000 == n always); units degrees-Celsius,
                                   name ``VAV-n-ZN-T``, covIncrement 0.25. Padding inputs added by
                                   ``object_count`` follow the same rule (name ``PAD-n-AI``).
- analog-value n (commandable):    relinquishDefault 20 + n / 100 (n <= 99), min/maxPresValue 10..35,
                                   resolution 0.01, covIncrement 0.5, name ``VAV-n-ZN-SP``.
- analog-value 100 (writable, NOT commandable, no priority array): presentValue 10100.0,
                                   name ``AHU-1-SAT-TRIM``.
- binary-value n:                  active if n is odd, else inactive; name ``AHU-n-EN``.
- multi-state-value n:             ((n - 1) % 3) + 1 of 3 states; name ``AHU-n-MODE``.
- proprietary (type 513) n:        presentValue 30000 + n (Real), property 1001 = 40000 + n (Real),
                                   name ``VENDOR-n-KWH``.
- odd analog-inputs 9001..9003:    identity 1000 + n, but presentValue answered as a CharacterString
                                   (9001, text of the number), OctetString (9002, the 4-byte IEEE Real),
                                   or a constructed value (9003, [0]{Real}).
- trend-log 1:                     logs analog-input 1: sequence s (1..K) has value 1001 + (s % 100) / 100
                                   and timestamp end - (K - s) * interval (device local time).

Config keys (JSON object, all optional): see DEFAULTS below. On the wire:

- no_rpm: ReadPropertyMultiple (and WPM) get Reject unrecognized-service; absent from services-supported.
- replay_window_s: the last answer sent to (client address, invoke id) is kept; a new confirmed request with
  the same pair within the window gets those bytes resent verbatim and is not processed. Outside the window
  (or with 0) every request is processed (bac-py's own 6 s duplicate detection is bypassed).
- late_every/late_s: every Nth confirmed request received (counting retries and replays) is processed only
  late_s seconds later; the answer then goes out with its original invoke id.
- garbage_every: every Nth fresh answer (simple/complex ack, error, reject, abort; not segments, not replays)
  is cut: header kept, body halved (a 3-byte answer loses its service choice).
- null_priority_array: priority-array of commandable objects (whole or indexed) is a bare Null (0x00).
- max_apdu/segmentation: the I-Am and the device object advertise them; a request's max-APDU is clamped to
  ours, and without transmit segmentation an answer that does not fit is Abort segmentation-not-supported.
- Who-Is is answered by a unicast I-Am to the asker; broadcasts to 127.255.255.255:<port> are heard too.
- Optional properties an object lacks (priority-array of a non-commandable value) are unknown-property.

Counters (``--stats`` JSON, rewritten every 0.25 s when changed): requests, answers, replays, late, garbage,
rpm_rejected, who_is, cov_subscriptions, change_step, services {name: n}, reads {"analog-input:1": n},
garbage_invoke_ids / replayed_invoke_ids / late_invoke_ids (last 50), objects, pid, trend_log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from typing import Any, ClassVar

from bac_py import BACnetApplication, DefaultServerHandlers, DeviceConfig, DeviceObject
from bac_py.encoding.primitives import (
    encode_application_date,
    encode_application_octet_string,
    encode_application_real,
    encode_application_time,
    encode_context_bit_string,
    encode_context_tagged,
    encode_real,
)
from bac_py.encoding.tags import encode_closing_tag, encode_opening_tag
from bac_py.objects.analog import AnalogInputObject, AnalogValueObject
from bac_py.objects.base import (
    BACnetObject,
    PropertyAccess,
    PropertyDefinition,
    standard_properties,
    status_properties,
)
from bac_py.objects.binary import BinaryValueObject
from bac_py.objects.multistate import MultiStateValueObject
from bac_py.objects.trendlog import TrendLogObject
from bac_py.services.errors import BACnetError
from bac_py.services.read_range import (
    RangeByPosition,
    RangeBySequenceNumber,
    RangeByTime,
    ReadRangeACK,
    ReadRangeRequest,
    ResultFlags,
)
from bac_py.services.who_is import IAmRequest, WhoIsRequest
from bac_py.types.constructed import BACnetDeviceObjectPropertyReference, StatusFlags
from bac_py.types.enums import (
    BinaryPV,
    ConfirmedServiceChoice,
    EngineeringUnits,
    ErrorClass,
    ErrorCode,
    LoggingType,
    ObjectType,
    PropertyIdentifier,
    Segmentation,
    UnconfirmedServiceChoice,
)
from bac_py.types.primitives import BitString, ObjectIdentifier

DEFAULTS: dict[str, Any] = {
    "analog_inputs": 4,  # AI 1..n
    "analog_values": 2,  # commandable AV 1..n
    "writable_value": True,  # AV 100, writable but not commandable
    "binary_values": 1,
    "multi_state_values": 1,
    "max_apdu": 1476,  # 50, 128, 206, 480, 1024 or 1476; advertised (I-Am, device object) and enforced
    "segmentation": "both",  # both | transmit | receive | none; answers too long and not segmentable abort
    "object_count": 0,  # pad the object list with analog inputs up to this many entries (device included)
    "no_rpm": False,  # ReadPropertyMultiple -> Reject unrecognized-service (and not in services-supported)
    "replay_window_s": 0.0,  # resend the cached reply for a reused (client, invoke id) within this window
    "late_every": 0,  # every Nth confirmed request is processed only after late_s
    "late_s": 0.0,
    "garbage_every": 0,  # every Nth answer is truncated (malformed)
    "null_priority_array": False,  # priority-array of commandable objects answers a bare Null
    # true: add AIs 9001-9003; or {"analog-input:2": "string" | "octets" | "constructed", ...}
    "odd_present_value": False,
    "proprietary_objects": 0,  # objects of type 513 with a Real presentValue and property 1001
    "trend_log_records": 0,  # K > 0 adds trend-log 1 with K records of analog-input 1
    "trend_log_interval_s": 60,
    "changing": False,  # analog inputs step by 0.5 every change_every_s (COV notifications flow)
    "change_every_s": 1.0,
    "vendor_id": 555,
    "vendor_name": "bac-py peer",
}

PROPRIETARY_TYPE = 513
PROPRIETARY_PROPERTY = 1001
ODD_KINDS = ("string", "octets", "constructed")
APDU_CODES = {50: 0, 128: 1, 206: 2, 480: 3, 1024: 4, 1476: 5}
SEGMENTATION = {
    "both": Segmentation.BOTH,
    "transmit": Segmentation.TRANSMIT,
    "receive": Segmentation.RECEIVE,
    "none": Segmentation.NONE,
}
RESPONSE_TYPES = {2, 3, 5, 6, 7}  # simple-ack, complex-ack, error, reject, abort


def _type_name(object_type: int) -> str:
    if int(object_type) == PROPRIETARY_TYPE:
        return str(PROPRIETARY_TYPE)
    return ObjectType(object_type).name.lower().replace("_", "-")


def _oid_key(oid: ObjectIdentifier) -> str:
    return f"{_type_name(oid.object_type)}:{oid.instance_number}"


class ProprietaryObject(BACnetObject):
    """A vendor-proprietary object type (513) with a Real presentValue and a proprietary property."""

    OBJECT_TYPE: ClassVar[ObjectType] = ObjectType(PROPRIETARY_TYPE)
    PROPERTY_DEFINITIONS: ClassVar[dict[PropertyIdentifier, PropertyDefinition]] = {
        **standard_properties(),
        **status_properties(include_out_of_service=False),
        PropertyIdentifier.PRESENT_VALUE: PropertyDefinition(
            PropertyIdentifier.PRESENT_VALUE, float, PropertyAccess.READ_ONLY, required=True, default=0.0
        ),
        PropertyIdentifier(PROPRIETARY_PROPERTY): PropertyDefinition(
            PropertyIdentifier(PROPRIETARY_PROPERTY), float, PropertyAccess.READ_ONLY, required=False
        ),
    }

    def __init__(self, instance_number: int, **props: Any) -> None:
        super().__init__(instance_number, **props)
        self._init_status_flags()


def _bits(positions: set[int]) -> BitString:
    size = max(positions) // 8 + 1
    buf = bytearray(size)
    for bit in positions:
        buf[bit // 8] |= 1 << (7 - bit % 8)
    return BitString(bytes(buf), size * 8 - (max(positions) + 1))


def _local_date_time(epoch: float) -> tuple[Any, Any]:
    from bac_py.types.primitives import BACnetDate, BACnetTime

    t = dt.datetime.fromtimestamp(epoch)
    return (
        BACnetDate(t.year, t.month, t.day, t.isoweekday()),
        BACnetTime(t.hour, t.minute, t.second, t.microsecond // 10000),
    )


class Peer:
    """The device: objects, quirks and counters."""

    def __init__(self, address: str, port: int, device_id: int, cfg: dict[str, Any], stats_path: str) -> None:
        unknown = set(cfg) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"unknown config keys: {sorted(unknown)}")
        self.cfg = {**DEFAULTS, **cfg}
        if self.cfg["max_apdu"] not in APDU_CODES:
            raise SystemExit(f"max_apdu must be one of {sorted(APDU_CODES)}")
        self.address, self.port, self.device_id = address, port, device_id
        self.stats_path = stats_path
        self.segmentation = SEGMENTATION[self.cfg["segmentation"]]
        self.counters: dict[str, Any] = {
            "pid": os.getpid(),
            "device_id": device_id,
            "address": f"{address}:{port}",
            "requests": 0,  # confirmed requests received (including replayed and late ones)
            "answers": 0,  # fresh answers sent (replays not included)
            "replays": 0,
            "late": 0,
            "garbage": 0,
            "rpm_rejected": 0,
            "who_is": 0,
            "cov_subscriptions": 0,
            "change_step": 0,
            "services": {},  # confirmed service name -> count
            "reads": {},  # "analog-input:1" -> ReadProperty/RPM/ReadRange property reads of that object
            "garbage_invoke_ids": [],
            "replayed_invoke_ids": [],
            "late_invoke_ids": [],
        }
        self._dirty = True
        self._reply_cache: dict[tuple[Any, int], tuple[float, bytes]] = {}
        self.odd: dict[str, str] = {}
        self.trend: list[tuple[int, float, float]] = []  # (sequence, epoch, value)
        self.app: PeerApp | None = None

    # -- counters -------------------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        self.counters[name] += by
        self._dirty = True

    def bump_in(self, table: str, key: str) -> None:
        d = self.counters[table]
        d[key] = d.get(key, 0) + 1
        self._dirty = True

    def note(self, table: str, value: Any) -> None:
        lst = self.counters[table]
        lst.append(value)
        del lst[:-50]
        self._dirty = True

    def write_stats(self) -> None:
        if not self.stats_path or not self._dirty:
            return
        self._dirty = False
        tmp = f"{self.stats_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.counters, f, sort_keys=True)
        os.replace(tmp, self.stats_path)

    # -- objects --------------------------------------------------------------------------------

    def build(self, app: BACnetApplication) -> DeviceObject:
        c = self.cfg
        db = app.object_db
        device = DeviceObject(
            self.device_id,
            object_name=f"BACPY-PEER-{self.device_id}",
            vendor_name=c["vendor_name"],
            vendor_identifier=c["vendor_id"],
            model_name="bac-py quirk peer",
            firmware_revision="1.5.7",
            application_software_version="bacpy_device 1",
            protocol_version=1,
            protocol_revision=22,
            max_apdu_length_accepted=c["max_apdu"],
            segmentation_supported=self.segmentation,
            max_segments_accepted=64 if self.segmentation != Segmentation.NONE else 1,
            apdu_timeout=3000,
            number_of_apdu_retries=1,
            apdu_segment_timeout=1000,
            description="independent BACnet stack for BacPipes tests",
        )
        db.add(device)
        for n in range(1, c["analog_inputs"] + 1):
            db.add(self._ai(n, f"VAV-{n}-ZN-T", f"Zone temperature, VAV box {n}"))
        for n in range(1, c["analog_values"] + 1):
            db.add(
                AnalogValueObject(
                    n,
                    commandable=True,
                    object_name=f"VAV-{n}-ZN-SP",
                    description=f"Zone setpoint, VAV box {n}",
                    units=EngineeringUnits.DEGREES_CELSIUS,
                    relinquish_default=20.0 + n / 100,
                    min_pres_value=10.0,
                    max_pres_value=35.0,
                    resolution=0.01,
                    cov_increment=0.5,
                )
            )
            obj = db.get(ObjectIdentifier(ObjectType.ANALOG_VALUE, n))
            assert obj is not None
            obj._properties[PropertyIdentifier.PRESENT_VALUE] = 20.0 + n / 100
        if c["writable_value"]:
            db.add(
                AnalogValueObject(
                    100,
                    object_name="AHU-1-SAT-TRIM",
                    description="Writable, not commandable (no priority array)",
                    units=EngineeringUnits.DELTA_DEGREES_KELVIN,
                    present_value=10100.0,
                )
            )
        for n in range(1, c["binary_values"] + 1):
            db.add(
                BinaryValueObject(
                    n,
                    object_name=f"AHU-{n}-EN",
                    description=f"AHU {n} enable",
                    present_value=BinaryPV.ACTIVE if n % 2 else BinaryPV.INACTIVE,
                )
            )
        for n in range(1, c["multi_state_values"] + 1):
            db.add(
                MultiStateValueObject(
                    n,
                    number_of_states=3,
                    object_name=f"AHU-{n}-MODE",
                    description=f"AHU {n} mode",
                    present_value=(n - 1) % 3 + 1,
                    state_text=["Off", "Heat", "Cool"],
                )
            )
        for n in range(1, c["proprietary_objects"] + 1):
            db.add(
                ProprietaryObject(
                    n,
                    object_name=f"VENDOR-{n}-KWH",
                    description=f"Vendor meter {n}",
                    present_value=30000.0 + n,
                )
            )
            obj = db.get(ObjectIdentifier(ObjectType(PROPRIETARY_TYPE), n))
            assert obj is not None
            obj._properties[PropertyIdentifier(PROPRIETARY_PROPERTY)] = 40000.0 + n
        odd = c["odd_present_value"]
        if odd is True:
            for i, kind in enumerate(ODD_KINDS, start=1):
                n = 9000 + i
                db.add(self._ai(n, f"ODD-{n}-AI", f"presentValue answered as {kind}"))
                self.odd[f"analog-input:{n}"] = kind
        elif isinstance(odd, dict):
            for key, kind in odd.items():
                if kind not in ODD_KINDS:
                    raise SystemExit(f"odd_present_value kind must be one of {ODD_KINDS}")
                self.odd[key] = kind
        k = c["trend_log_records"]
        if k:
            interval = int(c["trend_log_interval_s"])
            end = int(time.time()) // interval * interval
            self.trend = [(s, end - (k - s) * interval, 1001 + (s % 100) / 100) for s in range(1, k + 1)]
            db.add(
                TrendLogObject(
                    1,
                    object_name="TL-VAV-1-ZN-T",
                    description="Trend of analog-input 1",
                    log_enable=True,
                    buffer_size=k,
                    record_count=k,
                    total_record_count=k,
                    logging_type=LoggingType.POLLED,
                    log_interval=interval * 100,
                    log_device_object_property=BACnetDeviceObjectPropertyReference(
                        ObjectIdentifier(ObjectType.ANALOG_INPUT, 1), PropertyIdentifier.PRESENT_VALUE
                    ),
                )
            )
            self.counters["trend_log"] = {
                "records": k,
                "interval_s": interval,
                "first_epoch": self.trend[0][1],
                "last_epoch": self.trend[-1][1],
            }
        n = c["analog_inputs"]
        while len(db) < c["object_count"]:
            n += 1
            if ObjectIdentifier(ObjectType.ANALOG_INPUT, n) in db:
                continue
            db.add(self._ai(n, f"PAD-{n}-AI", f"Padding input {n}"))
        self.counters["objects"] = len(db)
        return device

    @staticmethod
    def _ai(n: int, name: str, description: str) -> AnalogInputObject:
        return AnalogInputObject(
            n,
            object_name=name,
            description=description,
            units=EngineeringUnits.DEGREES_CELSIUS,
            present_value=1000.0 + n,
            cov_increment=0.25,
            resolution=0.01,
        )

    # -- changing values ------------------------------------------------------------------------

    async def change_loop(self) -> None:
        assert self.app is not None
        db = self.app.object_db
        k = 0
        while True:
            await asyncio.sleep(float(self.cfg["change_every_s"]))
            k += 1
            for n in range(1, self.cfg["analog_inputs"] + 1):
                obj = db.get(ObjectIdentifier(ObjectType.ANALOG_INPUT, n))
                if obj is None:
                    continue
                obj._properties[PropertyIdentifier.PRESENT_VALUE] = 1000.0 + n + 0.5 * (k % 2)
                cov = self.app.cov_manager
                if cov is not None:
                    cov.check_and_notify(obj, PropertyIdentifier.PRESENT_VALUE)
            self.counters["change_step"] = k
            self._dirty = True

    async def stats_loop(self) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(0.25)


class PeerApp(BACnetApplication):
    """bac-py's application with a hook on the confirmed-request path and on every answer sent."""

    def __init__(self, config: DeviceConfig, peer: Peer) -> None:
        super().__init__(config)
        self.peer = peer
        self._raw_send: Any = None
        self._bcast: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        await super().start()
        if self._event_engine is not None:  # intrinsic reporting is not needed, and costs CPU per object
            await self._event_engine.stop()
            self._event_engine = None
        network = self._network
        assert network is not None
        self._raw_send = network.send
        network.send = self._send  # type: ignore[method-assign]
        await self._bind_broadcast()

    async def _bind_broadcast(self) -> None:
        """Also hear broadcasts (a socket on one 127.x address does not), as bacpypes3 devices do."""
        transport = self._transport
        bcast = self.config.broadcast_address
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((bcast, self.config.port))
        except OSError as exc:
            sock.close()
            print(f"bacpy_device: no broadcast socket on {bcast}: {exc}", file=sys.stderr)
            return

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                transport._on_datagram_received(data, addr)  # type: ignore[union-attr]

        loop = asyncio.get_running_loop()
        self._bcast, _ = await loop.create_datagram_endpoint(Proto, sock=sock)

    async def stop(self) -> None:
        if self._bcast is not None:
            self._bcast.close()
            self._bcast = None
        await super().stop()

    def _send(self, apdu: bytes, destination: Any, **kw: Any) -> None:
        peer = self.peer
        if apdu and apdu[0] >> 4 in RESPONSE_TYPES and len(apdu) >= 2:
            segmented = apdu[0] >> 4 == 3 and bool(apdu[0] & 0x08)
            if not segmented:
                peer.bump("answers")
                every = peer.cfg["garbage_every"]
                if every and peer.counters["answers"] % every == 0:
                    apdu = _mangle(apdu)
                    peer.bump("garbage")
                    peer.note("garbage_invoke_ids", apdu[1])
                if peer.cfg["replay_window_s"]:
                    peer._reply_cache[(destination, apdu[1])] = (time.monotonic(), apdu)
        self._raw_send(apdu, destination, **kw)

    def _on_apdu_received(self, data: bytes, source: Any) -> None:
        peer = self.peer
        if len(data) < 4 or data[0] >> 4 != 0:  # not a confirmed request
            super()._on_apdu_received(data, source)
            return
        invoke_id = data[2]
        peer.bump("requests")
        segmented = bool(data[0] & 0x08)
        service = data[5] if segmented and len(data) > 5 else data[3]
        with contextlib.suppress(ValueError):
            peer.bump_in("services", ConfirmedServiceChoice(service).name.lower().replace("_", "-"))
        if peer.cfg["no_rpm"] and service == ConfirmedServiceChoice.READ_PROPERTY_MULTIPLE:
            peer.bump("rpm_rejected")
        key = (source, invoke_id)
        window = float(peer.cfg["replay_window_s"])
        cached = peer._reply_cache.get(key)
        if window and cached is not None and time.monotonic() - cached[0] < window:
            peer.bump("replays")
            peer.note("replayed_invoke_ids", invoke_id)
            self._raw_send(cached[1], source, expecting_reply=False)
            return
        peer._reply_cache.pop(key, None)
        # bac-py's own duplicate detection (6 s) would also replay: keep it out of the way, the replay
        # window above is the only one.
        tsm = self._server_tsm
        if tsm is not None and not segmented:
            old = tsm._transactions.get(key)
            if old is not None and old.cached_response is not None:
                if old.timeout_handle is not None:
                    old.timeout_handle.cancel()
                del tsm._transactions[key]
        data = self._clamp(data)
        every = int(peer.cfg["late_every"])
        if every and peer.counters["requests"] % every == 0:
            peer.bump("late")
            peer.note("late_invoke_ids", invoke_id)
            loop = asyncio.get_running_loop()
            loop.call_later(float(peer.cfg["late_s"]), super()._on_apdu_received, data, source)
            return
        super()._on_apdu_received(data, source)

    def _clamp(self, data: bytes) -> bytes:
        """Answer within our own max APDU, and never segmented unless we can transmit segments."""
        b = bytearray(data)
        ours = APDU_CODES[self.peer.cfg["max_apdu"]]
        if (b[1] & 0x0F) > ours:
            b[1] = (b[1] & 0xF0) | ours
        if self.peer.segmentation in (Segmentation.NONE, Segmentation.RECEIVE):
            b[0] &= ~0x02
        return bytes(b)


def _mangle(apdu: bytes) -> bytes:
    """A malformed answer: the header kept, the body cut in half (mid-tag), so decoding fails."""
    if len(apdu) <= 3:
        return apdu[:2]
    body = apdu[3:]
    return apdu[:3] + body[: max(1, len(body) // 2)]


class PeerHandlers(DefaultServerHandlers):
    """bac-py's standard handlers, with the quirks that sit in property reads."""

    def __init__(self, app: PeerApp, device: DeviceObject) -> None:
        super().__init__(app, app.object_db, device)
        self.peer = app.peer

    def register(self) -> None:
        super().register()
        registry = self._app.service_registry
        if self.peer.cfg["no_rpm"]:
            registry._confirmed.pop(ConfirmedServiceChoice.READ_PROPERTY_MULTIPLE, None)
            registry._confirmed.pop(ConfirmedServiceChoice.WRITE_PROPERTY_MULTIPLE, None)
        registry.register_confirmed(ConfirmedServiceChoice.SUBSCRIBE_COV, self.handle_subscribe_cov_counted)
        bits = set(registry._confirmed) | {32 + s for s in registry._unconfirmed}
        self._device._properties[PropertyIdentifier.PROTOCOL_SERVICES_SUPPORTED] = _bits(bits)

    async def handle_subscribe_cov_counted(self, service_choice: int, data: bytes, source: Any) -> Any:
        result = await self.handle_subscribe_cov(service_choice, data, source)
        self.peer.bump("cov_subscriptions")
        return result

    def _read_object_property(self, obj: BACnetObject, prop_id: Any, array_index: int | None = None) -> Any:
        key = _oid_key(obj.object_identifier)
        self.peer.bump_in("reads", key)
        if (
            prop_id == PropertyIdentifier.PRIORITY_ARRAY
            and self.peer.cfg["null_priority_array"]
            and obj._priority_array is not None
        ):
            return None  # encodes as a bare application-tagged Null
        if prop_id == PropertyIdentifier.PRESENT_VALUE and key in self.peer.odd:
            value = float(obj._properties.get(PropertyIdentifier.PRESENT_VALUE) or 0.0)
            kind = self.peer.odd[key]
            if kind == "string":
                return f"{value:g}"
            if kind == "octets":
                return encode_application_octet_string(struct.pack(">f", value))
            return encode_opening_tag(0) + encode_application_real(value) + encode_closing_tag(0)
        if _absent(obj, prop_id):  # bac-py would answer Null for an optional property the object lacks
            raise BACnetError(ErrorClass.PROPERTY, ErrorCode.UNKNOWN_PROPERTY)
        if (
            prop_id == PropertyIdentifier.LOG_BUFFER
            and obj.object_identifier.object_type == ObjectType.TREND_LOG
        ):
            raise BACnetError(ErrorClass.PROPERTY, ErrorCode.READ_ACCESS_DENIED)
        return super()._read_object_property(obj, prop_id, array_index)

    async def handle_who_is(self, service_choice: int, data: bytes, source: Any) -> None:
        """Answer with an I-Am unicast to the asker (as bacpypes3 and many controllers do)."""
        request = WhoIsRequest.decode(data)
        instance = self._device.object_identifier.instance_number
        limits = (request.low_limit, request.high_limit)
        if None not in limits and not limits[0] <= instance <= limits[1]:  # type: ignore[operator]
            return
        self.peer.bump("who_is")
        iam = IAmRequest(
            object_identifier=ObjectIdentifier(ObjectType.DEVICE, instance),
            max_apdu_length=self.peer.cfg["max_apdu"],
            segmentation_supported=self.peer.segmentation,
            vendor_id=self.peer.cfg["vendor_id"],
        )
        self._app.unconfirmed_request(
            destination=source, service_choice=UnconfirmedServiceChoice.I_AM, service_data=iam.encode()
        )

    async def handle_read_range(self, service_choice: int, data: bytes, source: Any) -> bytes:
        request = ReadRangeRequest.decode(data)
        oid = request.object_identifier
        if not (
            oid.object_type == ObjectType.TREND_LOG
            and oid.instance_number == 1
            and request.property_identifier == PropertyIdentifier.LOG_BUFFER
            and self.peer.trend
        ):
            return await super().handle_read_range(service_choice, data, source)
        self.peer.bump_in("reads", _oid_key(oid))
        recs = self.peer.trend
        total = len(recs)
        rng = request.range
        if rng is None:
            lo, hi = 0, total
        elif isinstance(rng, RangeByPosition | RangeBySequenceNumber):
            ref = rng.reference_index if isinstance(rng, RangeByPosition) else rng.reference_sequence_number
            # sequence numbers are 1..K, so they coincide with positions here
            if ref < 1 or ref > total:
                lo = hi = 0
            elif rng.count >= 0:
                lo, hi = ref - 1, min(total, ref - 1 + rng.count)
            else:
                lo, hi = max(0, ref + rng.count), ref
        elif isinstance(rng, RangeByTime):
            d, t = rng.reference_date, rng.reference_time
            ref_epoch = dt.datetime(
                d.year, d.month, d.day, t.hour, t.minute, t.second, (t.hundredth % 100) * 10000
            ).timestamp()
            if rng.count >= 0:
                newer = [i for i, r in enumerate(recs) if r[1] > ref_epoch]
                lo = newer[0] if newer else total
                hi = min(total, lo + rng.count)
            else:
                older = [i for i, r in enumerate(recs) if r[1] < ref_epoch]
                hi = older[-1] + 1 if older else 0
                lo = max(0, hi + rng.count)
        else:
            lo, hi = 0, total
        items = recs[lo:hi]
        item_data = b"".join(_log_record(epoch, value) for _, epoch, value in items)
        ack = ReadRangeACK(
            object_identifier=oid,
            property_identifier=request.property_identifier,
            result_flags=ResultFlags(
                first_item=bool(items) and lo == 0,
                last_item=bool(items) and hi == total,
                more_items=bool(items) and (lo > 0 or hi < total),
            ),
            item_count=len(items),
            item_data=item_data,
            property_array_index=request.property_array_index,
            first_sequence_number=items[0][0] if items and not isinstance(rng, RangeByPosition) else None,
        )
        return ack.encode()


_COMPUTED = {
    PropertyIdentifier.PROPERTY_LIST,
    PropertyIdentifier.STATUS_FLAGS,
    PropertyIdentifier.OBJECT_LIST,
}
_COMMANDABLE = {
    PropertyIdentifier.PRIORITY_ARRAY,
    PropertyIdentifier.RELINQUISH_DEFAULT,
    PropertyIdentifier.CURRENT_COMMAND_PRIORITY,
    PropertyIdentifier.VALUE_SOURCE,
    PropertyIdentifier.VALUE_SOURCE_ARRAY,
    PropertyIdentifier.LAST_COMMAND_TIME,
    PropertyIdentifier.COMMAND_TIME_ARRAY,
}


def _absent(obj: BACnetObject, prop_id: Any) -> bool:
    """An optional property this object does not have (commandable ones on a non-commandable object)."""
    if prop_id in _COMMANDABLE:
        return obj._priority_array is None
    definition = obj.PROPERTY_DEFINITIONS.get(prop_id)
    if definition is None or definition.required or prop_id in _COMPUTED:
        return False
    return obj._properties.get(prop_id) is None


def _log_record(epoch: float, value: float) -> bytes:
    """A standard BACnetLogRecord: timestamp [0] DateTime, logDatum [1] {real-value [2]}, statusFlags [2]."""
    d, t = _local_date_time(epoch)
    return b"".join(
        [
            encode_opening_tag(0),
            encode_application_date(d),
            encode_application_time(t),
            encode_closing_tag(0),
            encode_opening_tag(1),
            encode_context_tagged(2, encode_real(value)),
            encode_closing_tag(1),
            encode_context_bit_string(2, StatusFlags().to_bit_string()),
        ]
    )


async def serve(args: argparse.Namespace) -> None:
    cfg = json.loads(args.config) if args.config else {}
    peer = Peer(args.address, args.port, args.device_id, cfg, args.stats)
    config = DeviceConfig(
        instance_number=args.device_id,
        name=f"BACPY-PEER-{args.device_id}",
        vendor_name=peer.cfg["vendor_name"],
        vendor_id=peer.cfg["vendor_id"],
        interface=args.address,
        port=args.port,
        max_apdu_length=peer.cfg["max_apdu"],
        max_segments=None if peer.segmentation != Segmentation.NONE else 1,
        broadcast_address=args.broadcast,
        apdu_timeout=3000,
        apdu_retries=1,
    )
    app = PeerApp(config, peer)
    peer.app = app
    device = peer.build(app)
    PeerHandlers(app, device).register()
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(peer.stats_loop())]
    if peer.cfg["changing"]:
        tasks.append(asyncio.create_task(peer.change_loop()))
    peer.write_stats()
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await app.stop()
        peer._dirty = True
        peer.write_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=47808)
    parser.add_argument("--device-id", type=int, required=True)
    parser.add_argument("--config", default="{}", help="JSON object of quirks and counts")
    parser.add_argument("--stats", default="", help="file to write the counters to (JSON)")
    parser.add_argument("--broadcast", default="127.255.255.255")
    parser.add_argument("--log-level", default="WARNING", help="bac-py logging level, to stderr")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(name)s %(message)s")
    if not args.address.startswith("127."):
        raise SystemExit("loopback (127.0.0.0/8) addresses only")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
