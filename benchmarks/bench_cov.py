"""COV vs polling: the same points of the virtual building, the same duration, BACnet traffic on the wire.

The virtual building runs in its own process at building speed `--speed` (1 = real time: values move as a
building's do). Polling runs the agent's DevicePoller at `--interval`; COV runs the agent's CovSubscriber
(its poller checking each point every [cov] check_interval_s, as in the agent). Packets and bytes are
counted at the agent's UDP socket, both ways; readings are what reached the sink, and "changes" the
readings whose value differs from that point's previous one (what a trend actually learns).
Polling, measured in the same run, is the baseline of every ratio.
Subscribing (SubscribeCOV + ack + first notification per point) and cancelling are one-off costs, shown
apart from the steady state; renewals fall inside the steady window (lifetime 60 s by default, renewed at 48).
    python -m benchmarks.bench_cov [--devices 3] [--points 200] [--interval 5] [--seconds 120] [--speed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from bacpipes.settings import BacnetSettings, CovSettings, load_settings
from benchmarks.common import sim_process
from edge.bacnet import BacnetClient
from edge.catalog import PollDevice, PollPoint
from edge.cov import CovSubscriber, polled_as
from edge.discovery import find_peers
from edge.polling import DevicePoller, PointOutcome

BASE = "127.0.0.80"


@dataclass
class Tally:
    """Traffic at the agent's socket and what the sink received."""

    packets_out: int = 0
    packets_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    readings: int = 0
    changes: int = 0
    errors: int = 0
    last: dict[int, Any] = field(default_factory=dict)

    def sink(self, outcomes: list[PointOutcome]) -> None:
        for o in outcomes:
            if o.reading is None:
                self.errors += 1
                continue
            self.readings += 1
            value = o.reading.value
            self.changes += o.point_id in self.last and self.last[o.point_id] != value  # first: not a change
            self.last[o.point_id] = value


def count_wire(client: BacnetClient, tally_of: Callable[[], Tally]) -> None:
    """Wrap the UDP server under the agent's BACnet stack: every datagram out and in is counted."""
    for link_layer in client.app.link_layers.values():
        server = link_layer.server
        send: Callable[[Any], Awaitable[None]] = server.indication
        receive: Callable[[Any], Awaitable[None]] = server.confirmation

        async def indication(pdu: Any, send: Callable[[Any], Awaitable[None]] = send) -> None:
            t = tally_of()
            t.packets_out += 1
            t.bytes_out += len(pdu.pduData)
            await send(pdu)

        async def confirmation(pdu: Any, receive: Callable[[Any], Awaitable[None]] = receive) -> None:
            t = tally_of()
            t.packets_in += 1
            t.bytes_in += len(pdu.pduData)
            await receive(pdu)

        server.indication = indication
        server.confirmation = confirmation


VALUE_TYPES = ("analog-input", "analog-output", "analog-value", "binary-input", "binary-output",
               "binary-value", "multi-state-input", "multi-state-output", "multi-state-value")  # fmt: skip


def total(t: Tally) -> tuple[int, int]:
    return t.packets_out + t.packets_in, t.bytes_out + t.bytes_in


async def measure(args: argparse.Namespace) -> None:
    bacnet = BacnetSettings(address="127.0.0.100/8:47960", apdu_timeout_ms=3000, apdu_retries=1)
    settings = load_settings(
        None,
        discovery={"targets": [f"{BASE}-127.0.0.{79 + args.devices}"], "timeout_s": 1.0},
        bacnet=bacnet.model_dump(),
    )
    client = BacnetClient.open(settings.bacnet)
    holder = {"tally": Tally()}
    count_wire(client, lambda: holder["tally"])
    try:
        plans: list[tuple[PollDevice, list[PollPoint]]] = []
        for peer in await find_peers(client, settings):
            listed = await client.object_list(peer.address, peer.device_id)
            objects = [o for o in listed if str(o[0]) in VALUE_TYPES]
            base = peer.device_id * 100_000
            plan = [
                PollPoint(base + i, peer.device_id, str(o[0]), int(o[1]), None, None, None, "t",
                          args.interval, 1, acquisition="cov")
                for i, o in enumerate(objects)
            ]  # fmt: skip
            plans.append((PollDevice(peer.device_id, peer.address, peer.max_apdu, peer.segmentation), plan))
        points = sum(len(p) for _d, p in plans)
        print(
            f"{len(plans)} devices, {points} points, building speed {args.speed:g}x, {args.seconds:g} s each;"
            f" poll every {args.interval:g} s; COV lifetime {args.lifetime} s (renewed at 80 %),"
            f" check poll every {args.check:g} s"
        )
        cov_settings = CovSettings(check_interval_s=args.check, lifetime_s=args.lifetime)
        tz = ZoneInfo("UTC")
        steady: dict[str, Tally] = {}
        setup = teardown = Tally()
        for mode in ("poll", "cov"):
            holder["tally"] = Tally()
            stop = asyncio.Event()
            if mode == "poll":
                runners: list[Any] = [DevicePoller(client, d, p, holder["tally"].sink, tz) for d, p in plans]
                tasks = [asyncio.create_task(r.run(stop)) for r in runners]
            else:
                sink = Sink(holder)
                runners = [
                    CovSubscriber(
                        client, d, p, sink, tz, cov_settings,
                        DevicePoller(client, d, [polled_as(x, cov_settings) for x in p], sink, tz),
                    )
                    for d, p in plans
                ]  # fmt: skip
                tasks = [asyncio.create_task(r.run(stop)) for r in runners]
                while any(s.state == "new" for r in runners for s in r.subs.values()):
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the initial notifications
                setup, holder["tally"] = holder["tally"], Tally(last=dict(holder["tally"].last))
            await asyncio.sleep(args.seconds)
            steady[mode], holder["tally"] = holder["tally"], Tally()
            stop.set()
            await asyncio.gather(*tasks)  # COV: cancels its subscriptions
            await asyncio.sleep(1.0)  # late answers of this mode are not counted against the next
            if mode == "cov":
                teardown = holder["tally"]
        print(f"{'':24}{'packets':>10}{'bytes':>12}{'readings':>10}{'changes':>9}{'errors':>8}")
        rows = [("polling, steady", steady["poll"]), ("COV, steady", steady["cov"]),
                ("COV, subscribing once", setup), ("COV, cancelling once", teardown)]  # fmt: skip
        for name, t in rows:
            packets, size = total(t)
            print(f"{name:24}{packets:>10,}{size:>12,}{t.readings:>10,}{t.changes:>9,}{t.errors:>8,}")
        (pp, pb), (cp, cb) = total(steady["poll"]), total(steady["cov"])
        poll, cov = steady["poll"], steady["cov"]
        print(
            f"COV / polling over {args.seconds:g} s: packets {ratio(cp, pp)}, bytes {ratio(cb, pb)},"
            f" readings {ratio(cov.readings, poll.readings)},"
            f" value changes seen {ratio(cov.changes, poll.changes)}"
        )
        sp = total(setup)[0]
        if pp > cp:
            repaid = sp / ((pp - cp) / args.seconds)
            print(f"  subscribing costs {sp:,} packets once: repaid after {repaid:,.0f} s")
    finally:
        client.close()


class Sink:
    """Outcomes into whichever tally is current (the COV mode switches tallies between phases)."""

    def __init__(self, holder: dict[str, Tally]) -> None:
        self.holder = holder

    def __call__(self, outcomes: list[PointOutcome]) -> None:
        self.holder["tally"].sink(outcomes)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--lifetime", type=int, default=60, help="[cov] lifetime_s (short: renewals counted)")
    parser.add_argument("--speed", type=float, default=1.0, help="building time per wall second")
    parser.add_argument("--check", type=float, default=300.0, help="[cov] check_interval_s")
    args = parser.parse_args()
    started = time.time()
    with sim_process(args.devices, args.points, BASE, speed=args.speed):
        asyncio.run(measure(args))
    print(f"{time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
