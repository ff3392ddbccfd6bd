"""One way to wait for something with a deadline, so every wait in the code base fails the same way: with
what it waited for and for how long."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    check: Callable[[], T], timeout: float, *, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call `check` until it returns something truthy, and return that; TimeoutError after `timeout` seconds.

    `check` is called at least once, even with a timeout of 0.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
