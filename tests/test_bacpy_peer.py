"""The bac-py test peer (tests/peers/bacpy_device.py) seen from a plain bacpypes3 client.

Peers on 127.0.0.60-79:47808; the client on 127.0.0.79:47950 (another port than the devices', since
bacpypes3 loops a 127.x unicast on its own port back into itself).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import pytest
from bacpypes3.apdu import ErrorRejectAbortNack, ReadPropertyRequest, ReadRangeRequest
from bacpypes3.app import Application
from bacpypes3.basetypes import (
    DateTime,
    LogRecord,
    Range,
    RangeByPosition,
    RangeBySequenceNumber,
    RangeByTime,
)
from bacpypes3.constructeddata import ListOf
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Date, ObjectIdentifier, Real, Tag, TagClass, TagNumber, Time

from tests.bacpy_peer import BacpyPeer, bacpy_peer, peer_python

T = TypeVar("T")
CLIENT = "127.0.0.79/8:47950"  # in this file's range (127.0.0.60-79), on another port than the peers


@pytest.fixture(scope="module", autouse=True)
def _peer_venv() -> None:
    peer_python()


def client_app(apdu_timeout: int = 1500) -> Application:
    return Application.from_object_list(
        [
            DeviceObject(
                objectIdentifier=("device", 3007950),
                objectName="bacpy-peer-test-client",
                vendorIdentifier=999,
                apduTimeout=apdu_timeout,
                numberOfApduRetries=0,
            ),
            NetworkPortObject(CLIENT, objectIdentifier=("network-port", 1), objectName="NetworkPort-1"),
        ]
    )


def talk(scenario: Callable[[Application], Awaitable[T]], apdu_timeout: int = 1500) -> T:
    async def main() -> T:
        client = client_app(apdu_timeout)
        try:
            return await scenario(client)
        finally:
            client.close()

    return asyncio.run(main())


async def raw_read(
    app: Application,
    peer: BacpyPeer,
    objid: Any,
    prop: Any,
    index: int | None = None,
    invoke_id: int | None = None,
) -> Any:
    """A ReadPropertyRequest through app.request: the ACK undecoded (or the error, reject, abort)."""
    req = ReadPropertyRequest(
        objectIdentifier=ObjectIdentifier(objid),
        propertyIdentifier=prop,
        destination=Address(peer.bacnet_address),
    )
    if index is not None:
        req.propertyArrayIndex = index
    if invoke_id is not None:
        req.apduInvokeID = invoke_id
    try:
        return await app.request(req)
    except ErrorRejectAbortNack as exc:
        return exc


def tags(ack: Any) -> list[Tag]:
    """The value's tags, without the ACK's own [3] opening and closing tags."""
    return list(ack.propertyValue.tagList)[1:-1]


def reason(exc: BaseException) -> str:
    return str(getattr(exc, "errorCode", None) or getattr(exc, "apduAbortRejectReason", ""))


@pytest.fixture(scope="module")
def plain() -> Iterator[BacpyPeer]:
    with bacpy_peer(
        "127.0.0.60", 7060, max_apdu=206, segmentation="none", null_priority_array=False,
        odd_present_value=True, proprietary_objects=2,
    ) as peer:  # fmt: skip
        yield peer


# -- the device itself ------------------------------------------------------------------------


def test_who_is_gives_advertised_apdu_and_segmentation(plain: BacpyPeer) -> None:
    async def scenario(app: Application) -> Any:
        i_ams = await app.who_is(7060, 7060, Address(plain.bacnet_address))
        return [
            (i.iAmDeviceIdentifier[1], i.maxAPDULengthAccepted, str(i.segmentationSupported)) for i in i_ams
        ]

    assert talk(scenario) == [(7060, 206, "no-segmentation")]
    plain.wait_stats(lambda s: s["who_is"] >= 1)


def test_values_encode_their_identity(plain: BacpyPeer) -> None:
    async def scenario(app: Application) -> dict[str, Any]:
        a = Address(plain.bacnet_address)
        return {
            "ai3": await app.read_property(a, "analog-input,3", "presentValue"),
            "ai3_name": str(await app.read_property(a, "analog-input,3", "objectName")),
            "ai3_units": str(await app.read_property(a, "analog-input,3", "units")),
            "av2_rd": await app.read_property(a, "analog-value,2", "relinquishDefault"),
            "av2_pv": await app.read_property(a, "analog-value,2", "presentValue"),
            "av2_min": await app.read_property(a, "analog-value,2", "minPresValue"),
            "av2_max": await app.read_property(a, "analog-value,2", "maxPresValue"),
            "av2_pa": list(await app.read_property(a, "analog-value,2", "priorityArray")),
            "av100": await app.read_property(a, "analog-value,100", "presentValue"),
            "bv1": str(await app.read_property(a, "binary-value,1", "presentValue")),
            "msv1": await app.read_property(a, "multi-state-value,1", "presentValue"),
        }

    got = talk(scenario)
    assert got["ai3"] == 1003.0 and got["ai3_name"] == "VAV-3-ZN-T" and got["ai3_units"] == "degrees-celsius"
    assert got["av2_rd"] == pytest.approx(20.02) and got["av2_pv"] == pytest.approx(20.02)
    assert (got["av2_min"], got["av2_max"], len(got["av2_pa"])) == (10.0, 35.0, 16)
    assert (got["av100"], got["bv1"], got["msv1"]) == (10100.0, "active", 1)
    plain.wait_stats(lambda s: s["reads"].get("analog-input:3", 0) >= 3)


def test_writable_value_has_no_priority_array_and_setpoints_are_range_checked(plain: BacpyPeer) -> None:
    async def scenario(app: Application) -> tuple[Any, Any, Any, Any]:
        a = Address(plain.bacnet_address)
        pa = await raw_read(app, plain, "analog-value,100", "priorityArray")
        await app.write_property(a, "analog-value,100", "presentValue", Real(10100.5))
        written = await app.read_property(a, "analog-value,100", "presentValue")
        try:
            await app.write_property(a, "analog-value,1", "presentValue", Real(99.0), priority=8)
            too_high: Any = None
        except ErrorRejectAbortNack as exc:
            too_high = exc
        await app.write_property(a, "analog-value,1", "presentValue", Real(22.5), priority=8)
        return pa, written, too_high, await app.read_property(a, "analog-value,1", "presentValue")

    pa, written, too_high, pv = talk(scenario)
    assert isinstance(pa, ErrorRejectAbortNack) and reason(pa) == "unknown-property"
    assert written == 10100.5
    assert too_high is not None and reason(too_high) == "value-out-of-range"
    assert pv == 22.5


def test_odd_present_values_and_proprietary_objects(plain: BacpyPeer) -> None:
    async def scenario(app: Application) -> dict[str, Any]:
        out = {k: await raw_read(app, plain, f"analog-input,{k}", "presentValue") for k in (9001, 9002, 9003)}
        out["list"] = await app.read_property(Address(plain.bacnet_address), "device,7060", "objectList")
        out["p_pv"] = await raw_read(app, plain, (513, 2), "presentValue")
        out["p_1001"] = await raw_read(app, plain, (513, 2), 1001)
        out["p_name"] = await raw_read(app, plain, (513, 2), "objectName")
        return out

    got = talk(scenario)
    s, o, c = tags(got[9001]), tags(got[9002]), tags(got[9003])
    assert (s[0].tag_class, s[0].tag_number) == (TagClass.application, TagNumber.characterString)
    assert (o[0].tag_class, o[0].tag_number) == (TagClass.application, TagNumber.octetString)
    assert struct.unpack(">f", o[0].tag_data)[0] == 10002.0
    assert c[0].tag_class == TagClass.opening
    assert (513, 1) in [(int(t), i) for t, i in got["list"]]
    assert struct.unpack(">f", tags(got["p_pv"])[0].tag_data)[0] == 30002.0
    assert struct.unpack(">f", tags(got["p_1001"])[0].tag_data)[0] == 40002.0
    assert tags(got["p_name"])[0].tag_number == TagNumber.characterString


# -- quirks -------------------------------------------------------------------------------------


def test_no_rpm_rejects_read_property_multiple() -> None:
    with bacpy_peer("127.0.0.61", 7061, no_rpm=True) as peer:

        async def scenario(app: Application) -> tuple[Any, Any]:
            a = Address(peer.bacnet_address)
            try:
                await app.read_property_multiple(a, ["analog-input,1", ["presentValue"]])
                rpm: Any = None
            except ErrorRejectAbortNack as exc:
                rpm = exc
            return rpm, await app.read_property(a, "analog-input,1", "presentValue")

        rpm, single = talk(scenario)
        assert rpm is not None and reason(rpm) == "unrecognized-service"
        assert single == 1001.0
        assert peer.wait_stats(lambda s: s["rpm_rejected"] == 1)["services"]["read-property-multiple"] == 1


def test_replay_window_resends_the_cached_reply_for_a_reused_invoke_id() -> None:
    with bacpy_peer("127.0.0.62", 7062, replay_window_s=30) as peer:

        async def scenario(app: Application) -> list[Any]:
            first = await raw_read(app, peer, "analog-input,1", "presentValue", invoke_id=7)
            second = await raw_read(app, peer, "analog-input,2", "presentValue", invoke_id=7)
            fresh = await raw_read(app, peer, "analog-input,2", "presentValue", invoke_id=8)
            return [first, second, fresh]

        acks = talk(scenario)
        values = [(a.objectIdentifier[1], struct.unpack(">f", tags(a)[0].tag_data)[0]) for a in acks]
        assert values == [(1, 1001.0), (1, 1001.0), (2, 1002.0)]  # the second answer is stale
        stats = peer.wait_stats(lambda s: s["replays"] == 1)
        assert stats["replayed_invoke_ids"] == [7] and stats["reads"].get("analog-input:2") == 1


def test_late_answers_miss_the_client_timeout() -> None:
    with bacpy_peer("127.0.0.63", 7063, late_every=2, late_s=1.0) as peer:

        async def scenario(app: Application) -> list[Any]:
            a = Address(peer.bacnet_address)
            out: list[Any] = []
            for k in (1, 2, 3):
                try:
                    out.append(await app.read_property(a, f"analog-input,{k}", "presentValue"))
                except ErrorRejectAbortNack as exc:
                    out.append(exc)
            await asyncio.sleep(1.2)  # the late answer now arrives, for a transaction long gone
            return out

        out = talk(scenario, apdu_timeout=400)
        assert out[0] == 1001.0 and isinstance(out[1], ErrorRejectAbortNack) and out[2] == 1003.0
        stats = peer.wait_stats(lambda s: s["answers"] == 3)
        assert stats["late"] == 1 and stats["requests"] == 3


def test_null_priority_array() -> None:
    with bacpy_peer("127.0.0.64", 7064, null_priority_array=True) as peer:

        async def scenario(app: Application) -> tuple[Any, Any]:
            whole = await raw_read(app, peer, "analog-value,1", "priorityArray")
            one = await raw_read(app, peer, "analog-value,1", "priorityArray", index=8)
            return whole, one

        for ack in talk(scenario):
            t = tags(ack)
            assert len(t) == 1 and (t[0].tag_class, t[0].tag_number) == (TagClass.application, TagNumber.null)


def test_garbage_every_second_answer() -> None:
    with bacpy_peer("127.0.0.65", 7065, garbage_every=2) as peer:

        async def scenario(app: Application) -> list[Any]:
            out = []
            for k in (1, 2, 3):
                try:
                    # bacpypes3 can leave a request hanging after an undecodable answer: bound the wait
                    read = app.read_property(
                        Address(peer.bacnet_address), f"analog-input,{k}", "presentValue"
                    )
                    out.append(await asyncio.wait_for(read, 3))
                except BaseException as exc:  # bacpypes3 decode errors, or a timeout when it drops it
                    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                        raise
                    out.append(exc)
            return out

        out = talk(scenario, apdu_timeout=500)
        assert out[0] == 1001.0 and not isinstance(out[1], float) and out[2] == 1003.0
        assert peer.wait_stats(lambda s: s["garbage"] == 1)["garbage_invoke_ids"]


def test_long_object_list_without_segmentation_is_read_by_index() -> None:
    with bacpy_peer("127.0.0.66", 7066, object_count=1200, max_apdu=128, segmentation="none") as peer:

        async def scenario(app: Application) -> dict[str, Any]:
            a = Address(peer.bacnet_address)
            try:
                whole: Any = await app.read_property(a, "device,7066", "objectList")
            except ErrorRejectAbortNack as exc:
                whole = exc
            n = await app.read_property(a, "device,7066", "objectList", 0)
            picks = {k: await app.read_property(a, "device,7066", "objectList", k) for k in (1, 257, 300, n)}
            oid = picks[300]
            pv = await app.read_property(a, oid, "presentValue")
            return {"whole": whole, "n": n, "picks": picks, "pv": pv, "oid": oid}

        got = talk(scenario)
        assert isinstance(got["whole"], ErrorRejectAbortNack)
        assert reason(got["whole"]) == "segmentation-not-supported"
        assert got["n"] == 1200 and str(got["picks"][1][0]) == "device"
        oid = got["oid"]
        assert str(oid[0]) == "analog-input" and got["pv"] == 1000.0 + oid[1]


def test_trend_log_read_range() -> None:
    with bacpy_peer("127.0.0.67", 7067, trend_log_records=25, trend_log_interval_s=60) as peer:
        info = peer.stats()["trend_log"]

        async def read(app: Application, rng: Range) -> Any:
            req = ReadRangeRequest(
                objectIdentifier=ObjectIdentifier("trend-log,1"), propertyIdentifier="logBuffer", range=rng,
                destination=Address(peer.bacnet_address),
            )  # fmt: skip
            ack = await app.request(req)
            records = ack.itemData.cast_out(ListOf(LogRecord))
            return ack.itemCount, ack.firstSequenceNumber, [r.logDatum.realValue for r in records], records

        async def scenario(app: Application) -> list[Any]:
            mid = datetime.fromtimestamp(info["first_epoch"] + 9.5 * 60)
            at = DateTime(date=Date(mid.strftime("%Y-%m-%d")), time=Time(mid.strftime("%H:%M:%S")))
            return [
                await read(app, Range(byPosition=RangeByPosition(referenceIndex=1, count=10))),
                await read(
                    app, Range(bySequenceNumber=RangeBySequenceNumber(referenceSequenceNumber=20, count=10))
                ),
                await read(app, Range(byTime=RangeByTime(referenceTime=at, count=5))),
                await read(app, Range(byPosition=RangeByPosition(referenceIndex=25, count=-3))),
            ]

        pos, seq, tim, back = talk(scenario)
        assert pos[0] == 10 and pos[2] == [pytest.approx(1001 + s / 100) for s in range(1, 11)]
        assert seq[:2] == (6, 20) and seq[2][0] == pytest.approx(1001.20)
        assert tim[:2] == (5, 11) and tim[2][0] == pytest.approx(1001.11)
        assert back[0] == 3 and back[2][-1] == pytest.approx(1001.25)
        stamp = pos[3][0].timestamp
        first = datetime.fromtimestamp(info["first_epoch"])
        assert (stamp.date[0] + 1900, stamp.date[1], stamp.date[2]) == (first.year, first.month, first.day)
        assert (stamp.time[0], stamp.time[1], stamp.time[2]) == (first.hour, first.minute, first.second)


def test_cov_notifications_flow_when_changing() -> None:
    with bacpy_peer("127.0.0.68", 7068, changing=True, change_every_s=0.3) as peer:

        async def scenario(app: Application) -> list[float]:
            values: list[float] = []
            async with app.change_of_value(
                Address(peer.bacnet_address), ObjectIdentifier("analog-input,2"), 11, True, 60
            ) as scm:
                while len(values) < 3:
                    prop, value = await asyncio.wait_for(scm.get_value(), 10)
                    if str(prop) == "present-value":
                        values.append(float(value))
            return values

        values = talk(scenario)
        assert len(set(values)) >= 2 and all(int(v) - 1000 == 2 for v in values)
        peer.wait_stats(lambda s: s["cov_subscriptions"] >= 1)


def test_several_peers_at_once_and_restart() -> None:
    with bacpy_peer("127.0.0.69", 7069) as p1, bacpy_peer("127.0.0.70", 7070, analog_inputs=2) as p2:

        async def scenario(app: Application) -> list[Any]:
            return [
                await app.read_property(Address(p.bacnet_address), f"device,{p.device_id}", "objectName")
                for p in (p1, p2)
            ]

        assert [str(n) for n in talk(scenario)] == ["BACPY-PEER-7069", "BACPY-PEER-7070"]
        pid = p2.stats()["pid"]
        p2.restart(analog_inputs=3)
        assert p2.stats()["pid"] != pid and p2.stats()["requests"] == 0
        assert [str(n) for n in talk(scenario)] == ["BACPY-PEER-7069", "BACPY-PEER-7070"]


def test_a_broadcast_who_is_reaches_every_peer() -> None:
    with bacpy_peer("127.0.0.71", 7071) as p1, bacpy_peer("127.0.0.72", 7072) as p2:

        async def scenario(app: Application) -> None:
            # I-Ams come back unicast from each device; bacpypes3 only keeps those whose source
            # matches the Who-Is destination, so count the Who-Is each device saw instead
            await app.who_is(7071, 7072, Address("127.255.255.255:47808"), timeout=1)

        talk(scenario)
        for peer in (p1, p2):
            peer.wait_stats(lambda s: s["who_is"] >= 1)  # others may broadcast Who-Is too


def test_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        BacpyPeer("10.0.0.5", 1)
