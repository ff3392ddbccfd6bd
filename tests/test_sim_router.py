"""The virtual building's BACnet/IP router and the controllers behind it, over real BACnet/UDP.

Six IP controllers on 127.0.0.80-85, the router on 127.0.0.86 (network 1) with three controllers
behind it on network 2 at MACs 1-3 (`2:1`..`2:3`, instances 1007-1009), and a BBMD on 127.0.0.89.
(Instances above 1006, so that a broadcast answered by another test's building on this machine,
which has at most four or five devices on 47808, cannot be mistaken for a routed one.)
Clients sit on 127.0.0.100 on ports other than 47808 (see DESIGN.md): a broadcast from there
reaches the devices only as a foreign device registered with the BBMD; a unicast reaches the
router directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from bacpypes3.apdu import ErrorRejectAbortNack
from bacpypes3.app import Application
from bacpypes3.basetypes import HostNPort, IPMode, PropertyIdentifier, PropertyReference
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address, RemoteStation
from bacpypes3.primitivedata import Null, ObjectIdentifier

from bacpipes.commands import Command, insert_command
from edge.writes import slot_value
from sim.physics import AhuMode
from sim.router import ROUTER_INSTANCE
from sim.server import ThreadedBuilding, VirtualBuilding
from tests.conftest import make_settings
from tests.edge_harness import running_agent, wait_outcome

BASE = "127.0.0.80"
ROUTER = "127.0.0.86"
BBMD = "127.0.0.89"
START = datetime(2025, 7, 4, 9, 0)
POINTS = 30
IP_DEVICES = {1001 + k: f"127.0.0.{80 + k}" for k in range(6)}
ROUTED = {1007: "2:1", 1008: "2:2", 1009: "2:3"}
MY_ADDRESSES = {*IP_DEVICES.values(), *ROUTED.values()}
T = TypeVar("T")


@pytest.fixture(scope="module")
def building() -> Iterator[ThreadedBuilding]:
    tb = ThreadedBuilding(
        devices=6, routed=3, points=POINTS, address_base=BASE, bbmd=BBMD, seed=5, speed=0, start=START
    )
    tb.start()
    yield tb
    tb.stop()


def client_app(port: int, foreign: bool = False) -> Application:
    extra: dict[str, Any] = {}
    if foreign:
        extra = {
            "bacnetIPMode": IPMode.foreign,
            "fdBBMDAddress": HostNPort(f"{BBMD}:47808"),
            "fdSubscriptionLifetime": 300,
        }
    return Application.from_object_list(
        [
            DeviceObject(
                objectIdentifier=("device", 3001235),
                objectName="bacpipes-router-test-client",
                vendorIdentifier=999,
                apduTimeout=2000,
                numberOfApduRetries=0,
            ),
            NetworkPortObject(
                f"127.0.0.100/8:{port}",
                objectIdentifier=("network-port", 1),
                objectName="NetworkPort-1",
                **extra,
            ),
        ]
    )


def talk(scenario: Callable[[Application], Awaitable[T]], port: int = 47951, foreign: bool = False) -> T:
    async def main() -> T:
        client = client_app(port, foreign)
        try:
            if foreign:
                for link_layer in client.link_layers.values():
                    deadline = time.monotonic() + 10
                    while link_layer.bbmdRegistrationStatus != 0:
                        assert time.monotonic() < deadline, "no registration with the BBMD"
                        await asyncio.sleep(0.05)
            return await scenario(client)
        finally:
            client.close()

    return asyncio.run(main())


async def learn_route(client: Application) -> Any:
    """Ask the router itself (a unicast, no broadcast needed) which networks it reaches."""
    answers = await client.nse.who_is_router_to_network(destination=Address(ROUTER), network=2)
    assert len(answers) == 1
    return answers[0][1]


# -- discovery ---------------------------------------------------------------------------------


def test_layout(building: ThreadedBuilding) -> None:
    assert building.describe() == [(d, a, POINTS) for d, a in {**IP_DEVICES, **ROUTED}.items()]
    assert building.vb.router is not None and building.vb.router.address == ROUTER
    assert len(building.building.zones) == 9  # every routed controller has a zone of its own


def test_global_who_is_finds_the_routed_devices(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> dict[int, tuple[str, int, str]]:
        i_ams = await client.who_is(1000, 1999, timeout=3.0)  # 1.5 s lost two devices under load
        # a broadcast on loopback also reaches any other virtual building running on this machine
        ours = [i for i in i_ams if str(i.pduSource) in MY_ADDRESSES]
        assert len(ours) == len({i.iAmDeviceIdentifier[1] for i in ours}), "one I-Am per device"
        return {
            i.iAmDeviceIdentifier[1]: (
                str(i.pduSource), i.maxAPDULengthAccepted, str(i.segmentationSupported)
            )
            for i in ours
        }

    found = talk(scenario, foreign=True)
    assert {d: a for d, (a, _m, _s) in found.items()} == {**IP_DEVICES, **ROUTED}
    # behind the router: remote stations, with MS/TP-sized APDUs
    assert {d: found[d] for d in ROUTED} == {
        1007: ("2:1", 480, "no-segmentation"),
        1008: ("2:2", 480, "no-segmentation"),
        1009: ("2:3", 480, "no-segmentation"),
    }
    assert Address("2:1") == RemoteStation(2, 1)


def test_router_answers_who_is_router_to_network(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> dict[str, Any]:
        i_am_router = await learn_route(client)
        everything = await client.nse.who_is_router_to_network(destination=Address(ROUTER))
        router_device = await client.who_is(ROUTER_INSTANCE, ROUTER_INSTANCE, Address(ROUTER), timeout=1)
        return {
            "source": str(i_am_router.pduSource),
            "networks": list(i_am_router.iartnNetworkList),
            "all": [list(npdu.iartnNetworkList) for _adapter, npdu in everything],
            "router_device": [str(i.pduSource) for i in router_device],
        }

    assert talk(scenario, port=47952) == {
        "source": ROUTER,
        "networks": [2],
        "all": [[2]],
        "router_device": [ROUTER],
    }


def test_who_is_through_the_router_remote_broadcast_and_directed(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> dict[str, Any]:
        await learn_route(client)
        remote_broadcast = await client.who_is(1000, 1999, Address("2:*"), timeout=1.5)
        directed = await client.who_is(1008, 1008, Address("2:2"), timeout=1.5)
        return {
            "remote_broadcast": sorted(
                (i.iAmDeviceIdentifier[1], str(i.pduSource)) for i in remote_broadcast
            ),
            "directed": [(i.iAmDeviceIdentifier[1], str(i.pduSource)) for i in directed],
        }

    got = talk(scenario, port=47952)
    assert got["remote_broadcast"] == sorted(ROUTED.items())
    assert got["directed"] == [(1008, "2:2")]


# -- reads and writes through the router --------------------------------------------------------


def test_reads_through_the_router_match_the_simulator(building: ThreadedBuilding) -> None:
    snapshot = building.snapshot()
    objects = [(t, i) for (d, t, i) in snapshot if d == 1009]

    async def scenario(client: Application) -> dict[str, Any]:
        await learn_route(client)
        a = Address("2:3")
        single = {
            (t, i): await client.read_property(a, f"{t},{i}", "presentValue") for t, i in objects[:5]
        }
        pv = PropertyReference(propertyIdentifier=PropertyIdentifier("presentValue"))
        many: dict[tuple[str, int], Any] = {}
        for start in range(0, len(objects), 10):  # 10 objects per RPM: fits a 480-byte APDU
            chunk = objects[start : start + 10]
            results = await client.read_property_multiple(
                a, [x for t, i in chunk for x in (ObjectIdentifier(f"{t},{i}"), [pv])]
            )
            for oid, _prop, _index, value in results:
                many[(str(oid[0]), int(oid[1]))] = value
        return {
            "single": single,
            "many": many,
            "name": await client.read_property(a, "device,1009", "objectName"),
            "object_list": len(await client.read_property(a, "device,1009", "objectList")),
        }

    got = talk(scenario, port=47952)
    expected = {(t, i): v for (d, t, i), v in snapshot.items() if d == 1009}
    assert got["single"] == {k: expected[k] for k in objects[:5]}
    assert {k: _plain(v) for k, v in got["many"].items()} == expected
    assert (got["name"], got["object_list"]) == ("AHU-9", POINTS)


def test_priority_write_through_the_router_reaches_the_physics(building: ThreadedBuilding) -> None:
    zone = building.building.zones[7]  # device 1008 at 2:2

    async def scenario(client: Application) -> dict[str, Any]:
        await learn_route(client)
        a, sp = Address("2:2"), "analog-value,1"
        await client.write_property(a, sp, "presentValue", 21.5, priority=8)
        await client.write_property(a, "multi-state-value,1", "presentValue", 2, priority=9)
        written = {
            "pv": await client.read_property(a, sp, "presentValue"),
            "slot8": (await client.read_property(a, sp, "priorityArray", 8)).real,
            "ccp": (await client.read_property(a, sp, "currentCommandPriority")).unsigned,
            "physics": (zone.inputs.cooling_setpoint, zone.inputs.mode),
        }
        try:
            await client.write_property(a, "analog-input,1", "presentValue", 5.0, priority=8)
            refused = "accepted"
        except ErrorRejectAbortNack as exc:
            refused = str(getattr(exc, "errorCode", exc))
        await client.write_property(a, sp, "presentValue", Null(()), priority=8)
        await client.write_property(a, "multi-state-value,1", "presentValue", Null(()), priority=9)
        released = {
            "pv": await client.read_property(a, sp, "presentValue"),
            "physics": (zone.inputs.cooling_setpoint, zone.inputs.mode),
        }
        return {"written": written, "refused": refused, "released": released}

    got = talk(scenario, port=47952)
    assert got["written"] == {"pv": 21.5, "slot8": 21.5, "ccp": 8, "physics": (21.5, AhuMode.COOL)}
    assert building.object_property(1008, "analog-value,1", "presentValue") == 24.0  # released now
    assert got["refused"] == "write-access-denied"
    assert got["released"] == {"pv": 24.0, "physics": (24.0, AhuMode.AUTO)}


def test_a_stopped_routed_device_answers_nothing() -> None:
    # its own port, so it can share addresses with the module's building
    tb = ThreadedBuilding(
        devices=1, routed=2, address_base="127.0.0.87", port=47813, seed=1, speed=0, start=START
    )
    with tb:
        assert tb.vb.router is not None and tb.vb.router.address == "127.0.0.88"
        tb.stop_device(1002)

        async def scenario(client: Application) -> list[tuple[int, str]]:
            router = Address("127.0.0.88:47813")
            answers = await client.nse.who_is_router_to_network(destination=router, network=2)
            assert answers
            i_ams = await client.who_is(1000, 1999, Address("2:*"), timeout=1.0)
            return sorted((i.iAmDeviceIdentifier[1], str(i.pduSource)) for i in i_ams)

        assert talk(scenario, port=47953) == [(1003, "2:2")]


def test_router_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        VirtualBuilding(devices=1, routed=1, router_address="10.0.0.1")
    with pytest.raises(ValueError, match="device's address"):
        VirtualBuilding(devices=2, routed=1, address_base="127.0.0.80", router_address="127.0.0.81")
    with pytest.raises(ValueError, match="routed devices"):
        VirtualBuilding(devices=1, routed=200)


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, float) else int(value)


# -- the edge agent end to end ------------------------------------------------------------------


def test_agent_discovers_and_polls_routed_devices(
    building: ThreadedBuilding, db_dsn: str, broker: Any, tmp_path: Path
) -> None:
    """The agent (a foreign device of the BBMD) finds the routed controllers by a global Who-Is,
    records them at their `net:mac` addresses, and polls them through the router."""
    low, high = min(ROUTED), max(ROUTED)
    settings = make_settings(
        db_dsn,
        broker.url,
        tmp_path,
        bacnet={"address": "127.0.0.100/8:47954"},
        discovery={"targets": ["broadcast"], "bbmd": f"{BBMD}:47808", "low": low, "high": high},
        polling={"default_interval_s": 1.0},
    )
    expected = {k: v for k, v in building.snapshot().items() if k[0] in ROUTED}
    routed_points = len(expected)
    target = max(ROUTED)
    with running_agent(settings, discover_first=True):
        deadline = time.monotonic() + 30
        polled = 0
        while polled < routed_points and time.monotonic() < deadline:
            time.sleep(0.5)
            with psycopg.connect(db_dsn) as conn:
                polled = conn.execute("SELECT count(DISTINCT point_id) FROM sensor_readings").fetchone()[0]
        with psycopg.connect(db_dsn) as conn:  # and written, through the executor and the router
            point = conn.execute(
                "SELECT point_id FROM point WHERE device_id = %s AND object_type = 'analog-value'"
                " AND object_instance = 1", (target,),
            ).fetchone()[0]
            command = Command(settings.site.id, point, 22.5, priority=9, source="cli", created_by="test")
            outcome = wait_outcome(db_dsn, insert_command(conn, command), timeout=20)
        assert outcome["status"] == "completed" and outcome["priority_array"][8] == 22.5, outcome
        assert slot_value(building.object_property(target, "analog-value,1", "priorityArray")[8]) == 22.5
    with psycopg.connect(db_dsn) as conn:
        devices = {d: (a, m) for d, a, m in conn.execute("SELECT device_id, address, max_apdu FROM device")}
        points = set(conn.execute("SELECT device_id, object_type, object_instance FROM point").fetchall())
        latest = conn.execute(
            "SELECT DISTINCT ON (r.point_id) p.device_id, p.object_type, p.object_instance, r.value"
            " FROM sensor_readings r JOIN point p USING (site_id, point_id)"
            " ORDER BY r.point_id, r.time DESC"
        ).fetchall()
    assert devices == {d: (a, 480) for d, a in ROUTED.items()}
    assert points == set(expected)
    got = {(d, t, i): v for d, t, i, v in latest}
    assert set(got) == set(expected), "every routed point was polled"
    assert got == {k: pytest.approx(float(v)) for k, v in expected.items()}
