"""Serve the virtual building: N BACnet/IP devices on consecutive loopback addresses.

Building time runs at ``speed`` × wall time from ``start`` (speed 0 freezes it, which makes exact
comparisons possible in tests): ``clock``, a `bacpipes.clock.ScaledClock` in the building's naive local
time, which an agent given the same anchor reads too (sim/energyplus/field_trial.py). A periodic tick
catches the physics up and copies it into the objects, so reads are cheap and every read in the same tick
sees the same building state.

Two buildings (``building=``): ``"rc"``, our fast RC model (sim/physics.py, N controllers), or
``"energyplus:<prototype>"``, a DOE prototype under EnergyPlus (sim/energyplus/: one controller per air
handler with its zones, one for the plant, one for the main meters; an EnergyPlusBuilding may also be
passed in). The EnergyPlus building:
- starts its run period at midnight of ``start``'s date (default: now, so at speed 1 the building's clock
  is the wall clock; weekdays are those of that year, the weather is the TMY3 file's for the month and
  day) and is simulated up to ``start`` before the controllers answer;
- steps every 3600 / ``timesteps_per_hour`` s of building time (default 60: every minute), each step as
  soon as building time reaches its end; steps run in a worker thread, at most CATCH_UP_STEPS per hand-
  off, so a large catch-up never holds the event loop;
- takes BACnet writes at the next step: before each batch the setpoints' commanded values (or None when
  every priority slot is empty, which returns the zone to its schedule) go to the engine's actuators;
- is deterministic: the same model, weather, start, step and writes at the same steps give the same values.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import signal
import threading
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from bacpypes3.primitivedata import ObjectIdentifier

from bacpipes.clock import ScaledClock
from bacpipes.errors import UserError
from sim.bbmd import make_bbmd
from sim.devices import FIRST_INSTANCE, SimDevice
from sim.energyplus.engine import DEFAULT_MODEL, DEFAULT_WEATHER, PREFIX
from sim.objects import SimApplication
from sim.physics import Building
from sim.router import SimRouter

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
T = TypeVar("T")
BIND_TIMEOUT_S = 10.0
RC = "rc"
DEFAULT_DAYS = 366  # the EnergyPlus run period served: a year of building time, then values stop moving
CATCH_UP_STEPS = 240  # per hand-off to the engine's thread: ~0.15 s of EnergyPlus for the medium office
MIN_TICK_S = 0.005
log = logging.getLogger(__name__)


def energyplus_building(
    building: Any, weather: str | None, start: datetime | None, timesteps_per_hour: int, days: int
) -> Any:
    """The EnergyPlusBuilding that ``building`` names (None for the RC model), not yet started."""
    if building is None or building == RC:
        return None
    if not isinstance(building, str):
        return building  # an EnergyPlusBuilding made by the caller
    if not building.startswith(PREFIX):
        raise UserError(f"building {building!r}: use {RC!r} or '{PREFIX}<prototype>', e.g. "
                        f"'{PREFIX}{DEFAULT_MODEL}'")
    from sim.energyplus.engine import EnergyPlusBuilding

    day = (start or datetime.now()).date()
    model = building.removeprefix(PREFIX) or DEFAULT_MODEL
    return EnergyPlusBuilding(model, weather or DEFAULT_WEATHER, day, days=days,
                              timesteps_per_hour=timesteps_per_hour)


def device_addresses(address_base: str, devices: int) -> list[str]:
    """Consecutive addresses from the base; loopback only, because the simulator must never
    answer on a real building network where a BMS could mistake it for plant."""
    try:
        base = ipaddress.IPv4Address(address_base)
    except ValueError as err:
        raise UserError(f"address_base {address_base!r} is not an IPv4 address") from err
    addresses = [base + k for k in range(devices)]
    outside = [str(a) for a in addresses if a not in LOOPBACK]
    if outside:
        raise UserError(
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
        building: Any = RC,
        weather: str | None = None,
        timesteps_per_hour: int = 60,
        days: int = DEFAULT_DAYS,
    ) -> None:
        if devices < 1:
            raise ValueError("devices must be at least 1")
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.points = points
        self.speed = speed
        self.port = port
        self.tick_s = tick_s
        self.bbmd_address = device_addresses(bbmd, 1)[0] if bbmd else None
        self._bbmd: Any = None
        self._tick_task: asyncio.Task[None] | None = None
        self._named = isinstance(building, str)
        self.energyplus = energyplus_building(building, weather, start, timesteps_per_hour, days)
        if self.energyplus is not None:
            self._init_energyplus(address_base, start, points, routed)
            return
        self.addresses = device_addresses(address_base, devices)
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
        self.clock = ScaledClock(self.building.time, speed)

    def _init_energyplus(self, address_base: str, start: datetime | None, points: int, routed: int) -> None:
        """The EnergyPlus building's controllers: one per air handler, the plant, the meters."""
        eng = self.energyplus
        if points or routed:
            raise UserError("points and routed are options of the RC building, not of the EnergyPlus one")
        self.building = eng
        self.addresses = device_addresses(address_base, len(eng.layout.air_loops) + 2)
        self.router = None
        self.devices = []  # built at start: which points exist depends on the first sample
        # where the served time begins: the run period begins at midnight of its first day; a building named
        # here begins today, so by default it is served from now; one passed in, from its first moment
        first = datetime.combine(eng.start_date, datetime.min.time())
        default = datetime.now() if self._named else first
        self.start_time = max(first, (start or default).replace(microsecond=0))
        if self.start_time.date() > eng.end_date:
            raise UserError(f"start {self.start_time:%Y-%m-%d %H:%M} is after the building's run period "
                            f"({eng.start_date} to {eng.end_date})")
        self.sample: Any = None
        self._sent: dict[Any, float | None] = {}  # override last handed to the engine, per (zone, which)
        self._busy: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()
        self.failed: BaseException | None = None
        self.clock = ScaledClock(self.start_time, self.speed)

    def building_time(self) -> datetime:
        return self.clock.origin + timedelta(seconds=self.clock.elapsed_s())  # naive or aware, as started

    async def start(self) -> None:
        """Create every device's objects and bind its UDP socket."""
        if self.energyplus is not None:
            await self._start_energyplus()
        ip_devices = self.devices[: len(self.addresses)]
        for dev in ip_devices:
            dev.app = SimApplication.from_object_list(dev.build() if self.energyplus is None
                                                      else dev.build(self.sample))
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
        self.clock = ScaledClock(self.clock.origin, self.speed)  # served from now
        self._tick_task = asyncio.create_task(self._ticker() if self.energyplus is None
                                              else self._energyplus_ticker())

    async def stop(self) -> None:
        if self._tick_task:
            self._tick_task.cancel()
            self._tick_task = None
        if self.energyplus is not None:
            if self._busy is not None:  # a batch in the worker thread: let it finish, then close
                await asyncio.wait([self._busy])
            await asyncio.to_thread(self.energyplus.close)
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
        """Catch the physics up to now, take the commanded inputs, publish the outputs (RC building; the
        EnergyPlus building catches up in its ticker, off the event loop)."""
        if self.energyplus is not None:
            return
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

    async def set_speed(self, speed: float) -> datetime:
        """Run building time at `speed` from now on (0 pauses it); returns the building time.

        With the EnergyPlus building, pausing returns once the simulation has caught up with that time,
        so ``sample`` and the objects are those of the last step before it, and stay so.
        """
        if speed < 0:
            raise ValueError("speed must be >= 0")
        now = self.building_time()
        self.clock, self.speed = ScaledClock(now, speed), speed
        if self.energyplus is None:
            self.sync()
            return now
        async with self._lock:
            while await self._catch_up() and speed == 0:
                pass
        return now

    # -- the EnergyPlus building -----------------------------------------------------------------

    async def _start_energyplus(self) -> None:
        """Size and warm the building up, simulate it to the start time, make its controllers."""
        from sim.energyplus.devices import EPlusDevice
        from sim.energyplus.points import describe

        eng = self.energyplus

        def boot() -> None:
            if eng.sample is None:
                eng.start()
            eng.advance_to(self.start_time)

        await asyncio.to_thread(boot)
        self.clock = ScaledClock(max(self.start_time, eng.time), self.speed)
        self.sample = eng.sample
        specs = describe(eng)
        self.devices = [EPlusDevice(spec, eng, address, self.port, self._on_write)
                        for spec, address in zip(specs, self.addresses, strict=True)]

    def _next_tick_s(self) -> float:
        """Wall seconds until the next step is due (the objects change only then), at most tick_s."""
        eng = self.energyplus
        if self.speed <= 0:
            return self.tick_s
        due = (eng.time + timedelta(seconds=eng.step_s) - self.building_time()).total_seconds() / self.speed
        return min(self.tick_s, max(MIN_TICK_S, due))

    async def _energyplus_ticker(self) -> None:
        while True:
            try:
                async with self._lock:
                    behind = await self._catch_up()
            except Exception as exc:  # the engine failed: the values stop, the points say so
                log.exception("the EnergyPlus building stopped")
                self.failed = exc
                for dev in self.devices:
                    if dev.app is not None:
                        dev.refresh(self.sample, finished=True)
                return
            await asyncio.sleep(0 if behind else self._next_tick_s())

    async def _catch_up(self) -> bool:
        """Hand the commanded setpoints to the engine, run the steps now due (at most CATCH_UP_STEPS) in a
        worker thread, publish the latest sample. True when more steps are due."""
        eng = self.energyplus
        commands: dict[Any, float | None] = {}
        for dev in self.devices:
            commands.update(dev.commands())
        for key, value in commands.items():
            if self._sent.get(key) != value:
                eng.override(*key, value)  # the engine is idle here: the worker only runs below
                self._sent[key] = value
        due = math.floor((self.building_time() - eng.time).total_seconds() / eng.step_s)
        batch = min(due, CATCH_UP_STEPS)
        if batch >= 1 and not eng.finished:
            self._busy = asyncio.get_running_loop().run_in_executor(None, eng.run, batch)
            try:
                await asyncio.shield(self._busy)  # a cancelled ticker must not orphan the batch
            finally:
                if self._busy.done():
                    self._busy = None
        self.sample = eng.sample
        for dev in self.devices:
            if dev.app is not None:
                dev.refresh(self.sample, eng.finished)
        return due > batch and not eng.finished

    def lag_s(self) -> float:
        """How far the simulation is behind building time (s); a step's length or less when it keeps up."""
        if self.energyplus is None:
            return max(0.0, (self.building_time() - self.building.time).total_seconds())
        return max(0.0, (self.building_time() - self.energyplus.time).total_seconds())

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

    def start(self, timeout: float | None = None) -> ThreadedBuilding:
        """Serve; `timeout` defaults to 60 s for the RC building and 15 min for EnergyPlus (sizing and
        warmup at 1-minute steps take ~20 s for the medium office, more for a hospital)."""
        if timeout is None:
            timeout = 60.0 if self.vb.energyplus is None else 900.0
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

    def set_speed(self, speed: float) -> datetime:
        """See VirtualBuilding.set_speed: 0 pauses (and, for EnergyPlus, waits for the engine)."""
        return self._call(self.vb.set_speed(speed), timeout=120.0)

    def clock(self) -> ScaledClock:
        """The building's clock since the last start or change of speed (its anchor is what an agent needs
        to share it: `ScaledClock.anchor`)."""
        return self._call(_run(lambda: self.vb.clock))

    def building_time(self) -> datetime:
        return self._call(_run(self.vb.building_time))

    def sample(self) -> Any:
        """The EnergyPlus building's latest sample, the one the objects show (None for the RC building)."""
        return self._call(_run(lambda: getattr(self.vb, "sample", None)))

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
    building: str = RC,
    weather: str | None = None,
    timesteps_per_hour: int = 60,
    start: datetime | None = None,
    days: int = DEFAULT_DAYS,
) -> None:
    """Serve until SIGINT/SIGTERM (the ``bacpipes sim`` command).

    ``building``: ``"rc"`` or ``"energyplus:<prototype>"`` (a file stem such as
    ``ASHRAE901_OfficeMedium_STD2019_Denver``, or an alias, ``office_medium``; see
    ``sim.energyplus.engine.building_names``), with ``weather`` (a TMY3 stem or alias, default Tampa),
    ``timesteps_per_hour`` and ``days`` (its run period). ``start``: the building time served first
    (default now); ``devices``, ``points``, ``routed`` and ``seed`` are the RC building's.
    """

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
            start=start,
            building=building,
            weather=weather,
            timesteps_per_hour=timesteps_per_hour,
            days=days,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if vb.energyplus is not None:
            print(f"sizing and warming up {vb.energyplus.model_path.stem}, then simulating to "
                  f"{vb.start_time:%Y-%m-%d %H:%M} ...", flush=True)
        await vb.start()
        for instance, address, count in vb.describe():
            where = address if ":" in address else f"{address}:{port}"  # `2:1`: behind the router
            print(f"device {instance} at {where} with {count} objects", flush=True)
        if vb.router:
            r = vb.router
            print(f"router at {r.address}:{port} (network {r.ip_network}) to network {r.network}", flush=True)
        if bbmd:
            print(f"BBMD at {bbmd}:{port} (register agents as foreign devices here)", flush=True)
        eng = vb.energyplus
        if eng is not None:
            print(f"EnergyPlus {eng.model_path.stem} with weather {eng.weather_path.stem}, "
                  f"{eng.step_s / 60:g}-minute steps, run period {eng.start_date} to {eng.end_date}",
                  flush=True)
        print(f"building time {vb.building_time():%Y-%m-%d %H:%M} at {speed:g}x", flush=True)
        try:
            await stop.wait()
        finally:
            await vb.stop()

    asyncio.run(main())
