"""The virtual building, over real BACnet/IP on loopback, and its physics on their own.

Devices live on 127.0.0.30.. (instances 1001..), the client on 127.0.0.100:47900: another port
than the devices', since bacpypes3 loops a 127.x unicast on its own port back into itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import pytest
from bacpypes3.apdu import ErrorRejectAbortNack, WritePropertyRequest
from bacpypes3.app import Application
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import CharacterString, Null, ObjectIdentifier

from sim.physics import AhuMode, Building
from sim.server import ThreadedBuilding, VirtualBuilding

BASE = "127.0.0.30"
START = datetime(2025, 7, 4, 9, 0)  # a Friday in the hot season
POINTS = 40
T = TypeVar("T")


@pytest.fixture(scope="module")
def building() -> Iterator[ThreadedBuilding]:
    """Four controllers (the fourth is legacy), frozen in time so reads compare exactly."""
    tb = ThreadedBuilding(devices=4, points=POINTS, address_base=BASE, seed=3, speed=0, start=START)
    tb.start()
    yield tb
    tb.stop()


def client_app() -> Application:
    return Application.from_object_list(
        [
            DeviceObject(
                objectIdentifier=("device", 3001234),
                objectName="bacpipes-sim-test-client",
                vendorIdentifier=999,
                apduTimeout=1000,
                numberOfApduRetries=0,
            ),
            NetworkPortObject(
                "127.0.0.100/8:47900",
                objectIdentifier=("network-port", 1),
                objectName="NetworkPort-1",
            ),
        ]
    )


def talk(scenario: Callable[[Application], Awaitable[T]]) -> T:
    """Run one client conversation in a fresh event loop."""

    async def main() -> T:
        client = client_app()
        try:
            return await scenario(client)
        finally:
            client.close()

    return asyncio.run(main())


def addr(k: int, port: int = 47808) -> Address:
    return Address(f"127.0.0.{30 + k}" + ("" if port == 47808 else f":{port}"))


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "errorCode", None) or getattr(exc, "apduAbortRejectReason", ""))


# -- discovery and objects -------------------------------------------------------------------


def test_who_is_finds_every_device_with_its_apdu_limits(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> list[tuple[int, int, str]]:
        found = []
        for k in range(4):
            i_ams = await client.who_is(1001 + k, 1001 + k, addr(k))
            assert len(i_ams) == 1
            i_am = i_ams[0]
            found.append(
                (i_am.iAmDeviceIdentifier[1], i_am.maxAPDULengthAccepted,
                 str(i_am.segmentationSupported))
            )  # fmt: skip
        return found

    assert talk(scenario) == [
        (1001, 1476, "segmented-both"),
        (1002, 1476, "segmented-both"),
        (1003, 1476, "segmented-both"),
        (1004, 480, "no-segmentation"),  # every fourth controller is a legacy one
    ]


def test_objects_have_names_units_and_priority_arrays(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> dict[str, Any]:
        a = addr(0)
        return {
            "vendor": await client.read_property(a, "device,1001", "vendorName"),
            "objects": len(await client.read_property(a, "device,1001", "objectList")),
            "ai_name": await client.read_property(a, "analog-input,1", "objectName"),
            "ai_units": await client.read_property(a, "analog-input,1", "units"),
            "ai_flags": list(await client.read_property(a, "analog-input,1", "statusFlags")),
            "oat": await client.read_property(a, "analog-input,101", "objectName"),
            "sp_name": await client.read_property(a, "analog-value,1", "objectName"),
            "sp_pa": await client.read_property(a, "analog-value,1", "priorityArray"),
            "sp_rd": await client.read_property(a, "analog-value,1", "relinquishDefault"),
            "sp_min": await client.read_property(a, "analog-value,1", "minPresValue"),
            "sp_max": await client.read_property(a, "analog-value,1", "maxPresValue"),
            "mode": await client.read_property(a, "multi-state-value,1", "stateText"),
            "pad": await client.read_property(a, "analog-input,1001", "objectName"),
        }

    got = talk(scenario)
    assert got["vendor"] == "BacPipes Virtual Building"
    assert got["objects"] == POINTS  # padded up to the requested total
    assert got["ai_name"] == "AHU1-ZN-T"
    assert str(got["ai_units"]) == "degrees-celsius"
    assert got["ai_flags"] == [0, 0, 0, 0]
    assert got["oat"] == "PLANT-OA-T"
    assert got["sp_name"] == "AHU1-ZN-CLG-SP"
    assert len(got["sp_pa"]) == 16 and all(pv.null is not None for pv in got["sp_pa"])
    assert (got["sp_rd"], got["sp_min"], got["sp_max"]) == (24.0, 16.0, 30.0)
    assert list(got["mode"]) == ["Off", "Cool", "Heat", "Auto"]
    assert got["pad"] == "AHU1-VAV001-DMPR"


def test_plant_points_live_on_the_first_device_only(building: ThreadedBuilding) -> None:
    async def scenario(client: Application) -> str:
        try:
            await client.read_property(addr(1), "analog-input,101", "presentValue")
        except ErrorRejectAbortNack as exc:
            return error_code(exc)
        return "answered"

    assert talk(scenario) == "unknown-object"


# -- commanding --------------------------------------------------------------------------------


def test_priority_write_then_release_falls_back_to_relinquish_default(
    building: ThreadedBuilding,
) -> None:
    zone = building.building.zones[1]

    async def scenario(client: Application) -> dict[str, Any]:
        a, sp = addr(1), "analog-value,1"
        await client.write_property(a, sp, "presentValue", 19.5, priority=8)
        written = {
            "pv": await client.read_property(a, sp, "presentValue"),
            "slot8": (await client.read_property(a, sp, "priorityArray", 8)).real,
            "ccp": (await client.read_property(a, sp, "currentCommandPriority")).unsigned,
            "physics": zone.inputs.cooling_setpoint,
        }
        await client.write_property(a, sp, "presentValue", Null(()), priority=8)
        released = {
            "pv": await client.read_property(a, sp, "presentValue"),
            "slot8_null": (await client.read_property(a, sp, "priorityArray", 8)).null
            is not None,
            "physics": zone.inputs.cooling_setpoint,
        }
        return {"written": written, "released": released}

    got = talk(scenario)
    assert got["written"] == {"pv": 19.5, "slot8": 19.5, "ccp": 8, "physics": 19.5}
    assert got["released"] == {"pv": 24.0, "slot8_null": True, "physics": 24.0}


def test_commanded_mode_and_valve_reach_the_physics(building: ThreadedBuilding) -> None:
    zone = building.building.zones[2]

    async def scenario(client: Application) -> tuple[Any, ...]:
        a = addr(2)
        await client.write_property(a, "multi-state-value,1", "presentValue", 2, priority=8)
        await client.write_property(a, "analog-output,1", "presentValue", 80.0, priority=8)
        during = (zone.inputs.mode, zone.inputs.valve_override)
        await client.write_property(a, "multi-state-value,1", "presentValue", Null(()), priority=8)
        await client.write_property(a, "analog-output,1", "presentValue", Null(()), priority=8)
        return during, (zone.inputs.mode, zone.inputs.valve_override)

    during, after = talk(scenario)
    assert during == (AhuMode.COOL, 80.0)
    assert after == (AhuMode.AUTO, None)  # released: the PI loop drives the valve again


def test_writes_a_controller_would_refuse_are_refused(building: ThreadedBuilding) -> None:
    async def attempt(coro: Awaitable[Any]) -> str:
        try:
            await coro
        except ErrorRejectAbortNack as exc:
            return error_code(exc)
        return "accepted"

    async def scenario(client: Application) -> dict[str, Any]:
        a = addr(1)
        wrong_type = WritePropertyRequest(
            objectIdentifier=ObjectIdentifier("analog-value,1"),
            propertyIdentifier="presentValue",
            propertyValue=AnyValue(CharacterString("cold")),
            priority=8,
            destination=a,
        )
        return {
            "ai": await attempt(client.write_property(a, "analog-input,1", "presentValue", 5.0)),
            "ai_p8": await attempt(
                client.write_property(a, "analog-input,1", "presentValue", 5.0, priority=8)
            ),
            "too_high": await attempt(
                client.write_property(a, "analog-value,1", "presentValue", 35.0, priority=8)
            ),
            "too_low": await attempt(
                client.write_property(a, "analog-value,1", "presentValue", 10.0, priority=8)
            ),
            "valve": await attempt(
                client.write_property(a, "analog-output,1", "presentValue", 120.0, priority=8)
            ),
            "state": await attempt(
                client.write_property(a, "multi-state-value,1", "presentValue", 7, priority=8)
            ),
            "name": await attempt(
                client.write_property(a, "analog-value,1", "objectName", "X", priority=None)
            ),
            "wrong_type": await attempt(client.request(wrong_type)),
            "after": await client.read_property(a, "analog-value,1", "presentValue"),
        }

    got = talk(scenario)
    assert got == {
        "ai": "write-access-denied",
        "ai_p8": "write-access-denied",
        "too_high": "value-out-of-range",
        "too_low": "value-out-of-range",
        "valve": "value-out-of-range",
        "state": "value-out-of-range",
        "name": "write-access-denied",
        "wrong_type": "invalid-data-type",
        "after": 24.0,  # nothing refused changed anything
    }


# -- what was served ---------------------------------------------------------------------------


def test_present_value_reads_are_counted_per_device(building: ThreadedBuilding) -> None:
    before = building.served_reads()

    async def scenario(client: Application) -> None:
        a = addr(2)
        await client.read_property(a, "analog-input,1", "presentValue")
        await client.read_property(a, "analog-input,1", "objectName")  # not a presentValue
        await client.read_property_multiple(
            a,
            ["analog-input,2", ["presentValue", "units"], "analog-value,1", ["presentValue"],
             "binary-input,1", ["presentValue"]],
        )  # fmt: skip

    talk(scenario)
    after = building.served_reads()
    assert after[1003] - before[1003] == 4
    assert {k: after[k] - before[k] for k in after if k != 1003} == {1001: 0, 1002: 0, 1004: 0}


def test_speed_zero_freezes_values_and_reads_match_the_snapshot(
    building: ThreadedBuilding,
) -> None:
    first = building.snapshot()
    time.sleep(1.3)  # longer than a tick
    second = building.snapshot()
    assert first == second
    assert len(first) == 4 * (POINTS - 2 - 3)  # every object but device, network port, 3 trend logs

    async def scenario(client: Application) -> list[Any]:
        return [
            await client.read_property(addr(0), "analog-input,1", "presentValue"),
            await client.read_property(addr(0), "analog-input,108", "presentValue"),
            await client.read_property(addr(3), "analog-input,1001", "presentValue"),
            await client.read_property(addr(3), "binary-input,1", "presentValue"),
        ]

    zn_t, kwh, damper, fan = talk(scenario)
    assert zn_t == second[(1001, "analog-input", 1)]
    assert kwh == second[(1001, "analog-input", 108)]
    assert damper == second[(1004, "analog-input", 1001)]
    assert int(fan) == second[(1004, "binary-input", 1)]


def test_legacy_device_cannot_segment_a_large_answer(building: ThreadedBuilding) -> None:
    request = []
    for inst in range(1001, 1001 + POINTS - 20):
        request += [f"analog-input,{inst}", ["objectName", "description", "units"]]

    async def scenario(client: Application) -> tuple[int, str]:
        modern = await client.read_property_multiple(addr(0), list(request))
        try:
            await client.read_property_multiple(addr(3), list(request))
        except ErrorRejectAbortNack as exc:
            return len(modern), error_code(exc)
        return len(modern), "answered"

    n_modern, legacy = talk(scenario)
    assert n_modern == 3 * (POINTS - 20)
    assert legacy == "segmentation-not-supported"


def test_stopped_device_stops_answering() -> None:
    port = 47811  # its own building, so the shared one keeps all its devices
    tb = ThreadedBuilding(devices=2, address_base=BASE, port=port, seed=5, speed=0, start=START)
    tb.start()
    try:
        tb.stop_device(1002)

        async def scenario(client: Application) -> tuple[Any, str]:
            alive = await client.read_property(addr(0, port), "analog-input,1", "objectName")
            try:
                await client.read_property(addr(1, port), "analog-input,1", "objectName")
            except ErrorRejectAbortNack as exc:
                return alive, type(exc).__name__
            return alive, "answered"

        alive, dead = talk(scenario)
        assert alive == "AHU1-ZN-T"
        assert dead != "answered"
    finally:
        tb.stop()


def test_only_loopback_addresses_are_served() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        VirtualBuilding(devices=2, address_base="192.168.1.10")
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        VirtualBuilding(devices=3, address_base="127.255.255.254")  # runs off the end of /8


def test_ten_devices_of_a_thousand_points_start_quickly() -> None:
    async def scenario() -> tuple[float, int]:
        vb = VirtualBuilding(
            devices=10, points=1000, address_base=BASE, port=47812, seed=1, speed=0, start=START
        )
        t0 = time.perf_counter()
        await vb.start()
        elapsed = time.perf_counter() - t0
        await vb.stop()
        return elapsed, sum(count for _, _, count in vb.describe())

    elapsed, total = asyncio.run(scenario())
    assert total == 10_000
    assert elapsed < 8.0


# -- physics -------------------------------------------------------------------------------------


def trajectory(seed: int, hours: int = 6) -> list[tuple[float, ...]]:
    b = Building(3, seed=seed, start=START)
    out = []
    for _ in range(hours * 2):
        b.advance(1800)
        out.append(
            (b.weather.temp_c, b.plant.site_kwh, *(z.temp_c for z in b.zones),
             *(z.valve_pct for z in b.zones))
        )  # fmt: skip
    return out


def test_same_seed_same_trajectory() -> None:
    assert trajectory(11) == trajectory(11)
    assert trajectory(11) != trajectory(12)


def test_advance_steps_in_fixed_building_time() -> None:
    one, many = Building(2, seed=4, start=START), Building(2, seed=4, start=START)
    one.advance(3600)
    for _ in range(97):  # the same hour, reached in uneven wall-clock-like chunks
        many.advance(37.1)
    many.advance_to(one.time)
    assert many.time == one.time
    assert many.zones[0].temp_c == one.zones[0].temp_c
    assert many.plant.site_kwh == one.plant.site_kwh


def run_with_setpoint(setpoint: float, hours: int = 8) -> Building:
    b = Building(2, seed=7, start=START)
    b.advance(2 * 3600)  # settle at the default 24 °C first
    kwh0 = b.plant.site_kwh
    for z in b.zones:
        z.inputs.cooling_setpoint = setpoint
    b.advance(hours * 3600)
    b.plant.site_kwh -= kwh0  # energy used since the change
    return b


def test_lower_cooling_setpoint_costs_energy_and_cools_the_zone() -> None:
    warm, cool = run_with_setpoint(26.0), run_with_setpoint(21.0)
    for w, c in zip(warm.zones, cool.zones, strict=True):
        assert c.temp_c < w.temp_c - 3.0
        assert abs(c.temp_c - 21.0) < 0.5  # the PI loop holds the new setpoint
    assert cool.plant.site_kwh > warm.plant.site_kwh * 1.05


def test_mode_off_stops_the_fan_and_the_zone_warms() -> None:
    b = Building(1, seed=2, start=START)
    b.advance(3600)
    t0 = b.zones[0].temp_c
    b.zones[0].inputs.mode = AhuMode.OFF
    b.advance(2 * 3600)
    z = b.zones[0]
    assert not z.fan_on and z.fan_kw == 0.0 and z.cooling_kw == 0.0
    assert z.temp_c > t0 + 1.0


def test_building_time_runs_at_speed() -> None:
    fast = VirtualBuilding(devices=1, address_base=BASE, speed=3600, start=START)
    frozen = VirtualBuilding(devices=1, address_base=BASE, speed=0, start=START)
    time.sleep(0.2)
    assert (fast.building_time() - fast.building.time).total_seconds() > 600  # ~0.2 s x 3600
    assert frozen.building_time() == frozen.building.time
