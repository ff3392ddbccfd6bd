"""Serve the virtual building: N BACnet/IP devices on consecutive loopback addresses.

Building time runs at ``speed`` × wall time from ``start`` (speed 0 freezes it, which makes exact
comparisons possible in tests). A periodic tick catches the physics up and copies it into the
objects, so reads are cheap and every read in the same tick sees the same building state.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import threading
import time
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bacpypes3.primitivedata import ObjectIdentifier

from sim.bbmd import make_bbmd
from sim.devices import FIRST_INSTANCE, SimDevice
from sim.objects import SimApplication
from sim.physics import Building
from sim.router import SimRouter

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
T = TypeVar("T")
BIND_TIMEOUT_S = 10.0


def device_addresses(address_base: str, devices: int) -> list[str]:
    """Consecutive addresses from the base; loopback only, because the simulator must never
    answer on a real building network where a BMS could mistake it for plant."""
    try:
        base = ipaddress.IPv4Address(address_base)
    except ValueError as err:
        raise ValueError(f"address_base {address_base!r} is not an IPv4 address") from err
    addresses = [base + k for k in range(devices)]
    outside = [str(a) for a in addresses if a not in LOOPBACK]
    if outside:
        raise ValueError(
            f"virtual devices may only use 127.0.0.0/8 addresses, not {', '.join(outside)}"
        )
    return [str(a) for a in addresses]


async def _bound(app: SimApplication) -> None:
    """Wait until the app's sockets are bound.

    bacpypes3 binds in background tasks that retry forever on OSError; a device must answer as
    soon as start() returns, and closing before the bind completes would leak a socket bound
    later (close() does not cancel those tasks).
    """
    for link_layer in app.link_layers.values():
        server = link_layer.server
        await asyncio.gather(*server._transport_tasks)
        await server._local_transport_ready.wait()


class VirtualBuilding:
    """The building's physics plus one BACnet Application per controller, in one event loop."""

    def __init__(
        self,
        devices: int = 3,
        points: int = 0,
        address_base: str = "127.0.0.10",
        seed: int = 0,
        speed: float = 1.0,
        port: int = 47808,
        start: datetime | None = None,
        tick_s: float = 1.0,
        bbmd: str | None = None,
        routed: int = 0,
        router_address: str | None = None,
    ) -> None:
        if devices < 1:
            raise ValueError("devices must be at least 1")
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.addresses = device_addresses(address_base, devices)
        self.points = points
        self.speed = speed
        self.port = port
        self.tick_s = tick_s
        self.building = Building(devices + routed, seed=seed, start=start)
        self.devices = [
            SimDevice(k, self.building, addr, port, points, self._on_write)
            for k, addr in enumerate(self.addresses)
        ]
        # Controllers behind a BACnet/IP router (sim/router.py), at `2:1`..; they follow the IP ones.
        self.router: SimRouter | None = None
        if routed:
            # default: the loopback address after the last IP device's
            router_ip = (
                device_addresses(router_address, 1) if router_address
                else device_addresses(address_base, devices + 1)
            )[-1]
            if router_ip in self.addresses:
                raise ValueError(f"router address {router_ip} is a device's address")
            self.router = SimRouter(self.building, router_ip, port, devices, routed, points, self._on_write)
            self.devices += self.router.devices
        self._wall0 = time.monotonic()
        self._time0 = self.building.time
        self._tick_task: asyncio.Task[None] | None = None
        self.bbmd_address = device_addresses(bbmd, 1)[0] if bbmd else None
        self._bbmd: Any = None

    def building_time(self) -> datetime:
        elapsed = (time.monotonic() - self._wall0) * self.speed
        return self._time0 + timedelta(seconds=elapsed)

    async def start(self) -> None:
        """Create every device's objects and bind its UDP socket."""
        ip_devices = self.devices[: len(self.addresses)]
        for dev in ip_devices:
            dev.app = SimApplication.from_object_list(dev.build())
        apps = [d.app for d in ip_devices if d.app]
        if self.bbmd_address:
            self._bbmd = make_bbmd(self.bbmd_address, self.port)
            apps.append(self._bbmd)
        try:
            waits = [_bound(app) for app in apps] + ([self.router.start()] if self.router else [])
            await asyncio.wait_for(asyncio.gather(*waits), BIND_TIMEOUT_S)
        except TimeoutError as err:
            await self.stop()
            raise OSError(
                f"could not bind UDP port {self.port} on {', '.join(self.addresses)}"
            ) from err
        self._wall0 = time.monotonic()
        self._tick_task = asyncio.create_task(self._ticker())

    async def stop(self) -> None:
        if self._tick_task:
            self._tick_task.cancel()
            self._tick_task = None
        for dev in self.devices:
            if dev.app is not None:
                dev.app.close()
                dev.app = None
        if self._bbmd is not None:
            self._bbmd.close()
            self._bbmd = None
        if self.router is not None:
            self.router.stop()

    async def stop_device(self, instance: int) -> None:
        """Close one device's Application: from now on it answers nothing, like a dead controller."""
        dev = self.device(instance)
        if dev.app is not None:
            dev.app.close()
            dev.app = None

    def device(self, instance: int) -> SimDevice:
        index = instance - FIRST_INSTANCE
        if not 0 <= index < len(self.devices):
            raise KeyError(f"no virtual device {instance}")
        return self.devices[index]

    def sync(self) -> None:
        """Catch the physics up to now, take the commanded inputs, publish the outputs."""
        self.building.advance_to(self.building_time())
        for dev in self.devices:
            dev.apply_inputs()
            if dev.app is not None:
                dev.refresh()

    def _on_write(self) -> None:
        # The old inputs were in force until this instant, so advance before applying the new.
        self.sync()

    async def _ticker(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(self.tick_s)

    def snapshot(self) -> dict[tuple[int, str, int], object]:
        out: dict[tuple[int, str, int], object] = {}
        for dev in self.devices:
            out.update(dev.snapshot())
        return out

    def served_reads(self) -> dict[int, int]:
        return {dev.instance: dev.counter.count for dev in self.devices}

    def describe(self) -> list[tuple[int, str, int]]:
        """(device instance, address, object count) per device."""
        return [(d.instance, d.address, len(d.objects)) for d in self.devices]


class ThreadedBuilding:
    """A VirtualBuilding running its own event loop in a daemon thread, for tests and demos.

    Every method marshals onto the building's loop, so callers in other threads never race the
    tick that updates the objects.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.vb = VirtualBuilding(**kwargs)
        self.building = self.vb.building
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> ThreadedBuilding:
        self._thread = threading.Thread(target=self._main, name="virtual-building", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("virtual building did not start")
        if self._error:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.vb.start())
        except BaseException as exc:  # surfaced to start()'s caller
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.vb.stop())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise RuntimeError("virtual building is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(30)

    def stop_device(self, instance: int) -> None:
        self._call(self.vb.stop_device(instance))

    def snapshot(self) -> dict[tuple[int, str, int], object]:
        return self._call(_run(self.vb.snapshot))

    def served_reads(self) -> dict[int, int]:
        return self._call(_run(self.vb.served_reads))

    def describe(self) -> list[tuple[int, str, int]]:
        return self.vb.describe()

    def object_property(self, instance: int, objid: str, prop: str) -> Any:
        """A property straight from a device's memory: what a test checks a write against."""

        def read() -> Any:
            app = self.vb.device(instance).app
            obj = app.get_object_id(ObjectIdentifier(objid)) if app else None
            if obj is None:
                raise KeyError(f"device {instance} has no object {objid}")
            return getattr(obj, prop)

        return self._call(_run(read))

    def __enter__(self) -> ThreadedBuilding:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _run(fn: Any) -> Any:
    return fn()


def run(
    devices: int = 3,
    points: int = 0,
    address_base: str = "127.0.0.10",
    seed: int = 0,
    speed: float = 1.0,
    port: int = 47808,
    bbmd: str | None = None,
    routed: int = 0,
) -> None:
    """Serve until SIGINT/SIGTERM (the ``bacpipes sim`` command)."""

    async def main() -> None:
        vb = VirtualBuilding(
            devices=devices,
            points=points,
            address_base=address_base,
            seed=seed,
            speed=speed,
            port=port,
            bbmd=bbmd,
            routed=routed,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await vb.start()
        for instance, address, count in vb.describe():
            where = address if ":" in address else f"{address}:{port}"  # `2:1`: behind the router
            print(f"device {instance} at {where} with {count} objects", flush=True)
        if vb.router:
            r = vb.router
            print(f"router at {r.address}:{port} (network {r.ip_network}) to network {r.network}", flush=True)
        if bbmd:
            print(f"BBMD at {bbmd}:{port} (register agents as foreign devices here)", flush=True)
        print(f"building time {vb.building.time:%Y-%m-%d %H:%M} at {speed:g}x", flush=True)
        try:
            await stop.wait()
        finally:
            await vb.stop()

    asyncio.run(main())
