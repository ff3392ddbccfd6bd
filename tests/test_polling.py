"""The poller against the virtual building's legacy controller (480-byte APDU, no segmentation)."""

from __future__ import annotations

import asyncio
import math
from zoneinfo import ZoneInfo

from bacpipes.settings import BacnetSettings
from edge.bacnet import BacnetClient
from edge.catalog import PollDevice, PollPoint
from edge.polling import DevicePoller, next_slot, quality_from_flags
from sim.server import ThreadedBuilding

LEGACY = 1004  # every 4th virtual device is a legacy controller


def test_next_slot_is_clock_aligned():
    assert next_slot(30, 1_000_000_000.0) == 1_000_000_020.0  # epoch 1e9 is :40 past a minute
    assert next_slot(30, 1_000_000_020.0) == 1_000_000_050.0  # strictly after
    assert next_slot(60, 1_000_000_001.5) % 60 == 0


def test_quality_from_status_flags():
    assert quality_from_flags([0, 0, 0, 0]) == "good"
    assert quality_from_flags([1, 0, 0, 0]) == "good"  # in alarm: the value itself is sound
    assert quality_from_flags([0, 1, 0, 0]) == "bad"
    assert quality_from_flags([0, 0, 1, 0]) == "uncertain"
    assert quality_from_flags([0, 0, 0, 1]) == "uncertain"


def test_oversized_rpm_falls_back_and_shrinks_until_it_fits():
    with ThreadedBuilding(devices=4, points=120, address_base="127.0.0.90", seed=3, speed=0) as b:
        served = b.snapshot()
        polls, poller = asyncio.run(_poll_legacy_four_times())
    fallbacks = [f for _o, f in polls]
    assert fallbacks[0] >= 1 and fallbacks[-1] == fallbacks[-2]  # refused at first, then fits
    assert poller.use_rpm and poller.batch_size < len(poller.points)
    polls = [o for o, _f in polls]
    for outcomes in polls:  # every poll read every point, whatever the batch size did
        assert [o.error for o in outcomes if o.error] == []
        assert len(outcomes) == len(poller.points)
    values = {poller.points[o.point_id].object_instance: o.reading.value for o in polls[-1]}
    first = next(p for p in poller.points.values() if p.object_type == "analog-input")
    expected = float(served[(LEGACY, "analog-input", first.object_instance)])
    assert math.isclose(values[first.object_instance], expected, rel_tol=1e-6)


async def _poll_legacy_four_times():
    # a port of its own on 127.0.0.100: other files' clients run at the same time (xdist)
    client = BacnetClient.open(BacnetSettings(address="127.0.0.100/8:47944", apdu_timeout_ms=1000,
                                              apdu_retries=0))
    try:
        peer = (await client.who_is("127.0.0.93", LEGACY, LEGACY, 1.0))[0]
        listed = await client.object_list(peer.address, peer.device_id)
        objects = [o for o in listed if str(o[0]) == "analog-input"]
        plan = [
            PollPoint(i, LEGACY, "analog-input", int(o[1]), None, None, None, "t", 30.0, 1)
            for i, o in enumerate(objects)
        ]
        device = PollDevice(LEGACY, peer.address, peer.max_apdu, peer.segmentation)
        poller = DevicePoller(client, device, plan, lambda _o: None, ZoneInfo("UTC"))
        poller.batch_size = len(plan)  # as if the device had claimed a large APDU
        polls = []
        for _ in range(4):
            outcomes, dead = await poller._read_points(plan)
            assert not dead
            polls.append((outcomes, poller.stats.rpm_fallbacks))
        return polls, poller
    finally:
        client.close()
