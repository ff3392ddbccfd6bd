"""The agent's clock: the wall clock, or, for simulation and evaluation only, a scaled clock.

A site runs on the wall clock. A closed-loop evaluation cannot: 14 building days must run in hours, so the
simulated building (sim/server.py) runs building time at ``speed`` x wall time, and the agent must read the
same clock, or its readings, slots, ML decisions and command expiries would be stamped in another time than
the building's. ``ScaledClock`` is that shared clock: ``origin + (wall - wall0) x speed``, where wall is
``time.time()`` (epoch seconds, the same in every process, so a building served in one process and an agent
in another agree when given the same origin, wall0 and speed). Its ``wall_s`` turns a wait of clock seconds
into wall seconds, so an interval of 900 s is 900 s of building time.

Only what stamps or paces the building's data uses it (the poller's slots and stamps, the executor's expiry
check, the inference loop's interval and ``now``); everything about the machine itself (health, heartbeats,
reconnects, database timestamps) stays on the wall clock. Settings: ``[clock]`` (`bacpipes.settings`).
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol


class Clock(Protocol):
    speed: float

    def time(self) -> float:
        """Seconds since the epoch, as ``time.time()``."""
        ...

    def now(self, tz: tzinfo | None = None) -> datetime:
        """As ``datetime.now(tz)``."""
        ...

    def wall_s(self, seconds: float) -> float:
        """Wall seconds that `seconds` of this clock take."""
        ...


class WallClock:
    """The real clock: every method is exactly the standard library's."""

    speed = 1.0

    def time(self) -> float:
        return time.time()

    def now(self, tz: tzinfo | None = None) -> datetime:
        return datetime.now(tz)

    def wall_s(self, seconds: float) -> float:
        return seconds

    def __repr__(self) -> str:
        return "WallClock()"


class ScaledClock:
    """``origin + (time.time() - wall0) * speed``. A naive origin gives naive times (a simulator's local
    building clock); an aware one gives aware times, and ``time()`` is then epoch seconds of that instant.
    Speed 0 stops the clock (a paused simulator); it cannot then be waited on."""

    def __init__(self, origin: datetime, speed: float = 1.0, wall0: float | None = None) -> None:
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"clock speed must be a finite number >= 0, not {speed!r}")
        self.origin = origin
        self.speed = float(speed)
        self.wall0 = time.time() if wall0 is None else float(wall0)

    def elapsed_s(self) -> float:
        """Clock seconds since origin."""
        return (time.time() - self.wall0) * self.speed

    def time(self) -> float:
        if self.origin.tzinfo is None:
            raise ValueError("a clock with a naive origin has no epoch time: give it an aware origin")
        return self.origin.timestamp() + self.elapsed_s()

    def now(self, tz: tzinfo | None = None) -> datetime:
        if self.origin.tzinfo is None:
            if tz is not None:
                raise ValueError("a clock with a naive origin gives naive times only")
            return self.origin + timedelta(seconds=self.elapsed_s())
        return datetime.fromtimestamp(self.time(), tz)

    def wall_s(self, seconds: float) -> float:
        return seconds / self.speed if self.speed > 0 else math.inf

    def rescaled(self, speed: float) -> ScaledClock:
        """The same clock from now on at another speed (it reads the same time at this instant)."""
        wall = time.time()
        return ScaledClock(self.origin + timedelta(seconds=(wall - self.wall0) * self.speed), speed, wall)

    def anchor(self) -> dict[str, Any]:
        """What another process needs to read the same clock (see `clock_from`)."""
        return {"origin": self.origin, "speed": self.speed, "wall_start": self.wall0}

    def __repr__(self) -> str:
        return f"ScaledClock({self.origin.isoformat()}, speed={self.speed:g}, wall0={self.wall0:.3f})"


WALL = WallClock()


async def sleep(clock: Clock, seconds: float) -> None:
    """Wait `seconds` of this clock."""
    await asyncio.sleep(clock.wall_s(seconds))


def clock_from(settings: Any) -> Clock:
    """The clock ``[clock]`` asks for: the wall clock unless an origin or another speed is set.

    An origin without ``wall_start`` starts now; ``speed`` without an origin runs from now at that speed.
    """
    origin, speed, wall_start = settings.origin, settings.speed, settings.wall_start
    if origin is None and speed == 1.0:
        return WALL
    if origin is None:
        return ScaledClock(datetime.now(UTC), speed)
    return ScaledClock(origin, speed, wall_start)
