"""Run the edge agent in a background thread with its own event loop, as a test would a service; and run
the outage tests' long waits side by side."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bacpipes.commands import TERMINAL, command_status
from bacpipes.settings import Settings
from bacpipes.waiting import poll_until
from edge.agent import EdgeAgent
from edge.bacnet import BacnetClient
from edge.discovery import DiscoveryReport, discover


class AgentThread:
    def __init__(self, settings: Settings, discover_first: bool = True) -> None:
        self.agent = EdgeAgent(settings)
        self.discover_first = discover_first
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self._ready.set()
            await self.agent.run(discover_first=self.discover_first)

        try:
            asyncio.run(run())
        except BaseException as exc:  # surfaced to the test by stop()
            self.error = exc
        finally:
            self._ready.set()

    def start(self) -> AgentThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, timeout: float = 30) -> None:
        if self.loop and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.agent.request_stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "agent did not stop"
        if self.error:
            raise self.error


@contextmanager
def running_agent(settings: Settings, discover_first: bool = True) -> Iterator[EdgeAgent]:
    thread = AgentThread(settings, discover_first).start()
    try:
        yield thread.agent
    finally:
        thread.stop()


@contextmanager
def ready_agent(settings: Settings) -> Iterator[EdgeAgent]:
    """The agent, once its executor listens and its command subscription is in place."""
    with running_agent(settings, discover_first=False) as agent:
        poll_until(lambda: (agent.executor and agent.executor.ready.is_set()
                            and agent.commands and agent.commands.subscribed.is_set()),
                   20, interval=0.05, what="the agent's executor and command subscription")
        yield agent


def discover_site(settings: Settings) -> DiscoveryReport:
    """Discovery as a test's set-up, with a patient client (2 s, one retry, as the defaults are): the
    tests' 500 ms no-retry timeout, kept for the agent whose backoff they time, has lost a whole device
    to one answer dropped under CI load."""
    patient = settings.bacnet.model_copy(update={
        "apdu_timeout_ms": max(settings.bacnet.apdu_timeout_ms, 2000),
        "apdu_retries": max(settings.bacnet.apdu_retries, 1),
    })

    async def main() -> DiscoveryReport:
        client = BacnetClient.open(patient, settings.discovery.bbmd)
        try:
            return await discover(client, settings)
        finally:
            client.close()

    return asyncio.run(main())


def wait_outcome(dsn: str, command_id: uuid.UUID, timeout: float = 10.0) -> dict[str, Any]:
    """The command's final status; TimeoutError (with the status it is stuck in) when it has none."""
    with psycopg.connect(dsn) as conn:
        def finished() -> dict[str, Any] | None:
            status = command_status(conn, command_id)
            return status if status and status["status"] in TERMINAL else None

        try:
            return poll_until(finished, timeout, interval=0.05, what=f"the outcome of command {command_id}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; its status: {command_status(conn, command_id)}") from None


# --- long waits side by side ----------------------------------------------------------------------------

Scenario = Callable[[Path], Any]
_SCENARIOS: dict[str, Scenario] = {}
_OUTCOMES: dict[str, tuple[BaseException | None, Any]] = {}


def side_by_side(test: Callable[..., None]) -> Callable[[Scenario], Scenario]:
    """Registers the scenario of `test` (one of the 30 s outage tests) to run beside the others'.

    Each outage test mostly waits: 30 s of a stopped broker or database is a requirement, and three of
    them one after the other cost the suite ~110 s. Each starts its own services (its broker, its database
    or cluster; only one uses BACnet), so they share nothing but the CPU. The first of these tests to run
    starts every registered scenario whose test is selected in this session, each in a thread, and waits
    for all of them (none goes on beside a later test); each test then asserts on its own scenario's
    outcome, or fails with its exception. A test selected alone runs its own scenario alone, and so does
    each test under pytest-xdist: a worker cannot know which of the others it will be given (another
    worker may run them at the same time), and the waits overlap across workers anyway."""

    def register(scenario: Scenario) -> Scenario:
        _SCENARIOS[f"{test.__module__}::{test.__name__}"] = scenario
        return scenario

    return register


def outcome(request: pytest.FixtureRequest) -> Any:
    """What the scenario of the requesting test returned (its exception is raised here)."""
    key = f"{request.node.module.__name__}::{request.node.name}"
    if key not in _OUTCOMES:
        selected = {f"{item.module.__name__}::{item.name}" for item in request.session.items
                    if isinstance(item, pytest.Function)}
        if hasattr(request.config, "workerinput"):  # an xdist worker: its session lists every worker's tests
            selected = {key}
        due = [k for k in _SCENARIOS if (k in selected or k == key) and k not in _OUTCOMES]
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        with ThreadPoolExecutor(len(due), thread_name_prefix="scenario") as pool:
            futures = {k: pool.submit(_SCENARIOS[k], factory.mktemp(k.rpartition("::")[2][:30]))
                       for k in due}
        for k, future in futures.items():
            exc = future.exception()
            _OUTCOMES[k] = (exc, None if exc else future.result())
    exc, value = _OUTCOMES.pop(key)
    if exc is not None:
        raise exc
    return value
