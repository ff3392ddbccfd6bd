"""Change-of-value acquisition end to end: the virtual building's COV over real BACnet/UDP, a real broker,
a real database. Asserts on rows in sensor_readings and point_state, and on the devices' own tables."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from bacpipes.points import update_points
from bacpipes.settings import BacnetSettings, Settings
from edge.bacnet import BacnetClient, make_application
from edge.polling import plain_value
from sim.server import ThreadedBuilding, _run
from tests.conftest import make_settings
from tests.edge_harness import discover_site, running_agent

# alone (pyproject): COV subscriptions renewed within their lifetimes, 500 ms timeouts
pytestmark = pytest.mark.alone

BASE = "127.0.0.46"
TARGETS = ["127.0.0.46-127.0.0.47"]
AGENT = "127.0.0.100/8:47941"  # not 47808: bacpypes3 would loop unicasts to itself (DESIGN.md)
TESTER = "127.0.0.100/8:47942"  # the test's own client, writing to the devices like a BMS would
COV_TYPES = ("analog-value", "binary-value", "multi-state-value", "analog-output")
WAIT_S = 20.0


@contextmanager
def building(devices: int = 2, seed: int = 7) -> Iterator[ThreadedBuilding]:
    b = ThreadedBuilding(devices=devices, address_base=BASE, seed=seed, speed=0.0)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def cov_settings(db_dsn: str, url: str, tmp_path: Path, **cov: Any) -> Settings:
    return make_settings(
        db_dsn,
        url,
        tmp_path,
        discovery={"targets": TARGETS},
        polling={"default_interval_s": 1.0},
        bacnet={"address": AGENT},
        cov={"check_interval_s": 3600.0, **cov},  # no check poll in a test's time: what arrives came by COV
    )


def use_cov(settings: Settings, device: int, confirmed: str = "default") -> dict[int, tuple[str, int]]:
    """Switch a device's commandable points to COV, as an operator would; returns {point id: object}."""
    for object_type in COV_TYPES:
        update_points(
            settings, device=device, object_type=object_type, acquisition="cov", cov_confirmed=confirmed
        )
    return cov_points_of(settings, device)


def cov_points_of(settings: Settings, device: int) -> dict[int, tuple[str, int]]:
    with psycopg.connect(settings.database.dsn) as conn:
        rows = conn.execute(
            "SELECT point_id, object_type, object_instance FROM point WHERE device_id = %s"
            " AND acquisition = 'cov'",
            (device,),
        ).fetchall()
    return {pid: (otype, inst) for pid, otype, inst in rows}


def write(address: str, objid: str, value: Any) -> None:
    async def main() -> None:
        client = BacnetClient.open(BacnetSettings(address=TESTER, apdu_timeout_ms=1000))
        try:
            await client.write(address, objid, "present-value", value, 8)
        finally:
            client.close()

    asyncio.run(main())


def rows(db_dsn: str, point_ids: list[int]) -> dict[int, list[float]]:
    """The readings of these points since the test began, oldest first (not history from trend logs)."""
    with psycopg.connect(db_dsn) as conn:
        found = conn.execute(
            "SELECT point_id, value FROM sensor_readings WHERE point_id = ANY(%s) AND time >= %s"
            " ORDER BY time",
            (point_ids, _started),
        ).fetchall()
    out: dict[int, list[float]] = {pid: [] for pid in point_ids}
    for pid, value in found:
        out[pid].append(value)
    return out


_started = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _since_now() -> None:
    global _started
    _started = datetime.now(UTC)


def every_point_has_rows(db_dsn: str, point_ids: list[int]) -> dict[int, list[float]] | None:
    found = rows(db_dsn, point_ids)
    return found if all(found.values()) else None


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def sim_subscriptions(b: ThreadedBuilding, instance: int) -> dict[tuple[str, int], list[tuple[bool, int]]]:
    """The device's own subscription table: (confirmed, lifetime) per subscriber, per object."""

    def read() -> dict[tuple[str, int], list[tuple[bool, int]]]:
        app = b.vb.device(instance).app
        return {
            (str(oid[0]), int(oid[1])): [(bool(c.confirmed), int(c.lifetime)) for c in d.cov_subscriptions]
            for oid, d in (app._cov_detections.items() if app else [])
        }

    return b._call(_run(read))


def refuse_cov(b: ThreadedBuilding, instance: int) -> None:
    """Make a device answer SubscribeCOV as one without the service does: Reject(unrecognized-service)."""

    def patch() -> None:
        # bacpypes3 rejects a confirmed request it has no do_ method for
        b.vb.device(instance).app.do_SubscribeCOVRequest = None

    b._call(_run(patch))


def test_the_virtual_building_serves_cov_for_every_object_type():
    """Each object type notifies on subscription and on a change; a multi-state value still takes writes."""
    objects = ["analog-value,1", "analog-output,1", "binary-value,1", "multi-state-value,1", "analog-input,1"]

    async def main(out: dict[str, list[Any]]) -> None:
        app = make_application(BacnetSettings(address=TESTER, apdu_timeout_ms=1000))
        try:
            async def listen(objid: str, confirmed: bool) -> None:
                scm = app.change_of_value(Address(BASE), ObjectIdentifier(objid), None, confirmed, 60)
                async with scm:
                    while True:
                        prop, value = await scm.get_value()
                        if str(prop) == "present-value":
                            out[objid].append(plain_value(value))

            tasks = [asyncio.create_task(listen(o, k % 2 == 0)) for k, o in enumerate(objects)]
            await asyncio.sleep(1.0)
            client = BacnetClient(app)
            await client.write(BASE, "analog-value,1", "present-value", 22.5, 8)
            await client.write(BASE, "analog-output,1", "present-value", 40.0, 8)
            await client.write(BASE, "binary-value,1", "present-value", "active", 8)
            await client.write(BASE, "multi-state-value,1", "present-value", 2, 8)
            await asyncio.sleep(1.0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            app.close()

    out: dict[str, list[Any]] = {o: [] for o in objects}
    with building(devices=1) as b:
        asyncio.run(main(out))
        served = b.snapshot()
    assert out["analog-value,1"][-1] == 22.5 and len(out["analog-value,1"]) >= 2
    assert out["analog-output,1"][-1] == 40.0
    assert out["binary-value,1"][-1] == 1
    assert out["multi-state-value,1"][-1] == 2 == served[(1001, "multi-state-value", 1)]
    assert out["analog-input,1"] == [pytest.approx(served[(1001, "analog-input", 1)])]  # frozen: no change


def test_readings_arrive_by_cov_confirmed_and_not_and_poll_points_are_unaffected(db_dsn, broker, tmp_path):
    settings = cov_settings(db_dsn, broker.url, tmp_path)
    with building() as b:
        discover_site(settings)
        use_cov(settings, 1001)
        update_points(settings, device=1001, object_type="analog-value", cov_confirmed="on")
        discover_site(settings)  # rediscovery keeps the operator's choice
        cov_points = cov_points_of(settings, 1001)
        served = b.snapshot()
        ids = list(cov_points)
        with running_agent(settings, discover_first=False) as agent:
            first = wait_until(lambda: every_point_has_rows(db_dsn, ids), "initial values")
            write(BASE, "analog-value,1", 22.5)
            write(BASE, "multi-state-value,1", 2)
            setpoint = next(p for p, o in cov_points.items() if o == ("analog-value", 1))
            mode = next(p for p, o in cov_points.items() if o == ("multi-state-value", 1))
            wait_until(lambda: 22.5 in rows(db_dsn, [setpoint])[setpoint], "the written setpoint by COV")
            wait_until(lambda: 2.0 in rows(db_dsn, [mode])[mode], "the written mode by COV")
            table = sim_subscriptions(b, 1001)
            stats = agent.covs[1001].health()
            with psycopg.connect(db_dsn) as conn:
                polled = conn.execute(
                    "SELECT point_id FROM point WHERE acquisition = 'poll'"
                    " AND object_type IN ('analog-input', 'binary-input')"
                ).fetchall()
            poll_points = [r[0] for r in polled]
            # the poll points, on both devices, are polled every second as before
            wait_until(lambda: all(len(v) >= 3 for v in rows(db_dsn, poll_points).values()), "polls")
        with psycopg.connect(db_dsn) as conn:
            on_1001 = conn.execute(
                "SELECT count(*) FROM point WHERE acquisition = 'poll' AND device_id = 1001"
            ).fetchone()[0]
            kept = conn.execute("SELECT count(*) FROM point WHERE acquisition = 'cov'").fetchone()[0]
    # the first value of each COV point is the simulator's (the notification sent on subscribing)
    for pid, (otype, inst) in cov_points.items():
        assert first[pid][0] == pytest.approx(float(served[(1001, otype, inst)])), (otype, inst)
    assert kept == len(cov_points) > 0
    # the device holds one subscription per COV point, confirmed where the point asks for it
    assert set(table) == set(cov_points.values())
    for (otype, _inst), subs in table.items():
        assert subs == [(otype == "analog-value", 300)], otype
    assert stats["active"] == len(cov_points) and stats["refused"] == 0
    assert on_1001 > 0  # the device with COV points has poll points too


def test_a_subscription_is_renewed_before_its_lifetime_ends(db_dsn, broker, tmp_path):
    settings = cov_settings(db_dsn, broker.url, tmp_path, lifetime_s=3, renew_fraction=0.5)
    with building(devices=1) as b:
        discover_site(settings)
        cov_points = use_cov(settings, 1001)
        setpoint = next(p for p, o in cov_points.items() if o == ("analog-value", 1))
        with running_agent(settings, discover_first=False) as agent:
            wait_until(lambda: rows(db_dsn, [setpoint])[setpoint], "the first notification")
            wait_until(lambda: agent.covs[1001].stats.renewed >= 3 * len(cov_points), "three renewals")
            # past two lifetimes of the first subscription: only a renewed one still notifies
            write(BASE, "analog-value,1", 23.5)
            wait_until(lambda: 23.5 in rows(db_dsn, [setpoint])[setpoint], "a notification after renewals")
            table = sim_subscriptions(b, 1001)
    assert table[("analog-value", 1)] == [(False, 3)]  # renewed in place, never a second subscription


def test_a_restarted_device_is_subscribed_again(db_dsn, broker, tmp_path):
    settings = cov_settings(db_dsn, broker.url, tmp_path)  # lifetime 300 s: renewal does not do it here
    with building(devices=1) as b:
        discover_site(settings)
        cov_points = use_cov(settings, 1001)
        setpoint = next(p for p, o in cov_points.items() if o == ("analog-value", 1))
        with running_agent(settings, discover_first=False) as agent:
            wait_until(lambda: rows(db_dsn, [setpoint])[setpoint], "the first notification")
            cov = agent.covs[1001]
            b.stop()  # the controller goes down; its poll points time out
            wait_until(lambda: cov.device_down, "the agent to notice the silence")
            with building(devices=1, seed=8) as again:  # back, with no memory of any subscription
                assert sim_subscriptions(again, 1001) == {}
                wait_until(lambda: cov.stats.resubscribed >= len(cov_points), "re-subscription")
                write(BASE, "analog-value,1", 21.5)
                wait_until(lambda: 21.5 in rows(db_dsn, [setpoint])[setpoint], "readings by COV again")
                table = sim_subscriptions(again, 1001)
    assert set(table) == set(cov_points.values())


def test_a_device_refusing_cov_is_polled_and_says_why(db_dsn, broker, tmp_path):
    settings = cov_settings(db_dsn, broker.url, tmp_path)
    with building() as b:
        discover_site(settings)
        refused = use_cov(settings, 1002)
        accepted = use_cov(settings, 1001)
        refuse_cov(b, 1002)
        with running_agent(settings, discover_first=False) as agent:
            # polled at their own 1 s interval again: several readings, which COV alone would not give
            wait_until(lambda: all(len(v) >= 3 for v in rows(db_dsn, list(refused)).values()), "polling")
            write(BASE, "analog-value,1", 22.5)
            setpoint = next(p for p, o in accepted.items() if o == ("analog-value", 1))
            wait_until(lambda: 22.5 in rows(db_dsn, [setpoint])[setpoint], "COV on the other device")
            # a poll timing out under load marks 1001's subscriptions lost until its next answer renews them
            wait_until(lambda: agent.covs[1001].health()["active"] == len(accepted), "1001's subscriptions")
            health = {d: c.health() for d, c in agent.covs.items()}
        with psycopg.connect(db_dsn) as conn:
            errors = dict(
                conn.execute(
                    "SELECT point_id, last_error FROM point_state WHERE point_id = ANY(%s)", (list(refused),)
                ).fetchall()
            )
    assert set(errors) == set(refused)
    for error in errors.values():
        assert "COV refused" in error and "unrecognized-service" in error and "polled every 1 s" in error
    assert health[1002]["refused"] == len(refused) and health[1002]["active"] == 0
    assert health[1001]["active"] == len(accepted) and health[1001]["refused"] == 0
