"""The edge agent against devices of another BACnet stack (bac-py) with real controllers' quirks.

Every value a bac-py peer serves says which object it came from (tests/peers/bacpy_device.py), so a
reading stored under the wrong point shows: `misattributed` counts them over the whole database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bacpipes.commands import Command, insert_command
from bacpipes.settings import BacnetSettings, Settings
from edge.bacnet import BacnetClient
from edge.writes import slot_value
from tests.bacpy_peer import BacpyPeer, misattributed
from tests.conftest import make_settings
from tests.edge_harness import discover_site, running_agent, wait_outcome

# alone (pyproject): late answers and replays within windows of a second
pytestmark = pytest.mark.alone

AGENT = "127.0.0.100/8:47920"
READER = "127.0.0.101/8:47921"  # a second client, to look at a device while the agent runs


def readings_per_point(dsn: str, device: int) -> dict[tuple[str, int], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.object_type, p.object_instance, count(r.value) FROM point p"
            " LEFT JOIN sensor_readings r USING (site_id, point_id)"
            " WHERE p.device_id = %s GROUP BY 1, 2",
            (device,),
        ).fetchall()
    return {(t, i): n for t, i, n in rows}


def settings_for(
    db_dsn: str, broker_url: str, tmp_path: Path, targets: list[str], interval_s: float = 1, **bacnet: Any
) -> Settings:
    return make_settings(
        db_dsn, broker_url, tmp_path,
        bacnet={"address": AGENT, **bacnet},
        discovery={"targets": targets, "timeout_s": 1.5},
        polling={"default_interval_s": interval_s, "max_backoff_s": 2},
        writes={"poll_interval_s": 1},
    )  # fmt: skip


def wait_readings(dsn: str, device: int, at_least: int, timeout: float = 60) -> dict[tuple[str, int], int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = readings_per_point(dsn, device)
        if counts and min(counts.values()) >= at_least:
            return counts
        assert time.monotonic() < deadline, f"readings per point of device {device}: {counts}"
        time.sleep(0.5)


@pytest.fixture
def peers() -> Iterator[list[BacpyPeer]]:
    """Start peers with `peers.append(BacpyPeer(...).start())`; all are stopped at the end."""
    started: list[BacpyPeer] = []
    with ExitStack() as stack:
        stack.callback(lambda: [p.close() for p in started])
        yield started


def test_replayed_and_late_answers_are_never_stored_under_another_point(db_dsn, broker, tmp_path, peers):
    """Without RPM every value is its own request, and this device replays its cached answer to an invoke
    id it has seen within a minute, or answers late. Ids coming back quickly (a process-wide counter
    does at 256 requests), the device replays constantly: no replay is stored under another point. With
    the default rest of an id longer than the device's replay window, it never gets the chance."""
    peer = BacpyPeer("127.0.0.21", 7021, no_rpm=True, analog_inputs=30, analog_values=0, binary_values=0,
                     multi_state_values=0, writable_value=False)
    peers.append(peer.start())
    settings = settings_for(db_dsn, broker.url, tmp_path, ["127.0.0.21"], invoke_id_reuse_s=0.05)
    discover_site(settings)

    peer.restart(replay_window_s=60)
    with running_agent(settings, discover_first=False) as agent:
        stats = peer.wait_stats(lambda s: s.get("replays", 0) >= 200, timeout=90)
        discarded = agent.client.counters["127.0.0.21"].mismatched
    # a replay to the same question passes (stale, but the right point's); every other one is discarded
    assert discarded >= 20
    assert misattributed(db_dsn) == []

    peer.restart(replay_window_s=4, late_every=40, late_s=0.8)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("TRUNCATE sensor_readings")
    settings = settings_for(db_dsn, broker.url, tmp_path, ["127.0.0.21"], apdu_retries=1)
    with running_agent(settings, discover_first=False) as agent:
        counts = wait_readings(db_dsn, 7021, at_least=10)
    stats = peer.stats()
    assert stats["replays"] == 0, "no invoke id came back to the device within its replay window"
    assert stats["late"] > 0, "late answers came, and were not taken for later requests' answers"
    assert len(counts) == 30 and sum(counts.values()) >= 300
    assert misattributed(db_dsn) == []


def test_odd_devices_are_their_own_problem(db_dsn, broker, tmp_path, peers):
    """A null priority array, present values of the wrong datatype, a vendor's own object type, and a
    device answering garbage: discovery records every device it can, polling goes on for all of them."""
    healthy = BacpyPeer("127.0.0.22", 7022).start()
    odd = BacpyPeer("127.0.0.23", 7023, null_priority_array=True, odd_present_value=True,
                    proprietary_objects=2).start()
    garbage = BacpyPeer("127.0.0.24", 7024, garbage_every=4, analog_values=0).start()
    peers.extend([healthy, odd, garbage])
    settings = settings_for(db_dsn, broker.url, tmp_path, ["127.0.0.22-127.0.0.24"])
    with running_agent(settings) as agent:
        counts = wait_readings(db_dsn, 7022, at_least=5)
        wait_readings(db_dsn, 7024, at_least=2)
        health = agent.health()
    # the agent stopped cleanly above (running_agent re-raises anything that ended it)

    with psycopg.connect(db_dsn) as conn:
        devices = {r[0] for r in conn.execute("SELECT device_id FROM device")}
        points = {
            (t, i): (commandable, topic)
            for t, i, commandable, topic in conn.execute(
                "SELECT object_type, object_instance, commandable, topic FROM point WHERE device_id = 7023"
            )
        }
        errors = dict(conn.execute(
            "SELECT p.object_instance, s.last_error FROM point p JOIN point_state s USING (site_id, point_id)"
            " WHERE p.device_id = 7023 AND p.object_instance > 9000"
        ).fetchall())  # fmt: skip
    assert devices == {7022, 7023, 7024}
    assert all(n >= 5 for n in counts.values())
    # a vendor's own type keeps its number, is polled, and gets a topic of its own
    assert points[("513", 1)][1].endswith("/proprietary513_1/presentValue")
    odd_counts = readings_per_point(db_dsn, 7023)
    assert odd_counts[("513", 1)] >= 1 and odd_counts[("513", 2)] >= 1
    # a bare Null is not a priority array: not commandable
    assert points[("analog-value", 1)][0] is False
    # a text, bytes or a structure where a number belongs: the point's error, nothing stored
    assert set(errors) == {9001, 9002, 9003}
    assert all(e and "not a number" in e for e in errors.values()), errors
    assert all(odd_counts[("analog-input", n)] == 0 for n in (9001, 9002, 9003))
    assert health["device_errors"]["7024"]["undecodable"] + health["device_errors"]["7024"]["mismatched"] > 0
    assert misattributed(db_dsn) == []


def test_an_object_list_of_1200_without_segmentation(db_dsn, broker, tmp_path, peers):
    """Too long for one answer and no segmentation: read by index, past 256 and to the end."""
    peer = BacpyPeer("127.0.0.25", 7025, object_count=1200, segmentation="none", max_apdu=206,
                     analog_values=0).start()
    peers.append(peer)
    # every 5 s: the first poll comes at the next multiple of the interval (slots are aligned to the clock),
    # so a 30 s interval idled 15 s on average before it
    settings = settings_for(db_dsn, broker.url, tmp_path, ["127.0.0.25"], 5, invoke_id_reuse_s=0.2)
    discover_site(settings)
    with psycopg.connect(db_dsn) as conn:
        n, top = conn.execute(
            "SELECT count(*), max(object_instance) FROM point WHERE device_id = 7025"
        ).fetchone()
    assert n == 1200 - 1 and top > 1000  # every object but the device itself
    with running_agent(settings, discover_first=False):
        wait_readings(db_dsn, 7025, at_least=1, timeout=90)  # RPM batches sized to 206-byte answers
    assert misattributed(db_dsn) == []


def read_slot(address: str, objid: str, priority: int) -> float | None:
    async def main() -> Any:
        client = BacnetClient.open(BacnetSettings(address=READER, apdu_timeout_ms=1000, apdu_retries=0))
        try:
            return await client.read(address, objid, "priority-array", priority)
        finally:
            client.close()

    return slot_value(asyncio.run(main()))


def test_device_limits_refuse_before_the_device_is_touched(db_dsn, broker, tmp_path, peers):
    """minPresValue/maxPresValue become the write limits of a point the operator has not limited; a
    writable point without a priority array is written and read back."""
    peers.append(BacpyPeer("127.0.0.26", 7026).start())
    settings = settings_for(db_dsn, broker.url, tmp_path, ["127.0.0.26"])
    site = settings.site.id
    with running_agent(settings), psycopg.connect(db_dsn) as conn:
        wait_readings(db_dsn, 7026, at_least=1)
        ids = dict(conn.execute(
            "SELECT object_instance, point_id FROM point"
            " WHERE device_id = 7026 AND object_type = 'analog-value'"
        ).fetchall())  # fmt: skip
        limits = conn.execute(
            "SELECT device_min_value, device_max_value, resolution FROM point WHERE point_id = %s", (ids[1],)
        ).fetchone()
        assert limits == (10.0, 35.0, pytest.approx(0.01))

        def run(point: int, value: float) -> dict[str, Any]:
            command = Command(site, point, value, priority=8, source="cli", created_by="test")
            return wait_outcome(db_dsn, insert_command(conn, command), timeout=20)

        refused = run(ids[1], 40.0)
        assert refused["status"] == "rejected"
        assert "above the point's maximum 35" in refused["error_message"]
        assert read_slot("127.0.0.26", "analog-value,1", 8) is None  # never sent
        done = run(ids[1], 31.5)
        assert done["status"] == "completed" and done["value_read"] == 31.5
        assert read_slot("127.0.0.26", "analog-value,1", 8) == 31.5

        conn.execute("UPDATE point SET max_value = 50 WHERE point_id = %s", (ids[1],))  # the operator's wins
        conn.commit()
        # the device's own limit still holds: it refuses, and the refusal is the command's outcome
        beyond = run(ids[1], 40.0)
        assert beyond["status"] == "failed" and "value-out-of-range" in beyond["error_message"]

        trim = run(ids[100], 12.5)  # writable, no priority array
        assert trim["status"] == "completed", trim
        assert trim["value_read"] == 12.5 and trim["priority_array"] is None
