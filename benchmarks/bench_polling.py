"""Polling throughput: ReadPropertyMultiple vs one ReadProperty per point, same run, same devices.

10 devices x 1,000 points from the virtual building (its own process). Both modes run the agent's real
DevicePoller code; only `use_rpm` differs. Target: RPM >= 3x ReadProperty.
    python -m benchmarks.bench_polling [--devices 10] [--points 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from zoneinfo import ZoneInfo

from bacpipes.settings import BacnetSettings
from benchmarks.common import cpu_seconds, sim_process
from edge.bacnet import BacnetClient
from edge.catalog import PollDevice, PollPoint
from edge.discovery import _SKIP_TYPES, find_peers
from edge.polling import DevicePoller

BASE = "127.0.0.50"


async def measure(devices: int, points: int, rounds: int, sim_pid: int) -> None:
    from bacpipes.settings import load_settings

    settings = load_settings(
        None,
        discovery={"targets": [f"{BASE}-127.0.0.{49 + devices}"], "timeout_s": 1.0},
        # ids rest 0 s here: this measures the client, not the cap a resting id puts on each device's
        # request rate (256 per invoke_id_reuse_s; README, "Third-party devices")
        bacnet=BacnetSettings(apdu_timeout_ms=3000, apdu_retries=1, invoke_id_reuse_s=0).model_dump(),
    )
    client = BacnetClient.open(settings.bacnet)
    try:
        peers = await find_peers(client, settings)
        pollers = []
        for peer in peers:
            listed = await client.object_list(peer.address, peer.device_id)
            objects = [o for o in listed if str(o[0]) not in _SKIP_TYPES]
            plan = [
                PollPoint(i, peer.device_id, str(o[0]), int(o[1]), None, None, None, "t", 30.0, 1)
                for i, o in enumerate(objects)
            ]
            device = PollDevice(peer.device_id, peer.address, peer.max_apdu, peer.segmentation)
            pollers.append(DevicePoller(client, device, plan, lambda _o: None, ZoneInfo("UTC")))
        total = sum(len(p.points) for p in pollers)
        print(f"{len(pollers)} devices, {total} points")
        results: dict[str, list[float]] = {"rpm": [], "rp": []}
        cpu: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for mode in ("rpm", "rp"):  # interleaved, so machine noise hits both alike
                for p in pollers:
                    p.use_rpm = mode == "rpm"
                start, cpu0, sim0 = time.perf_counter(), cpu_seconds(os.getpid()), cpu_seconds(sim_pid)
                outcomes = await asyncio.gather(*(p._read_points(list(p.points.values())) for p in pollers))
                elapsed = time.perf_counter() - start
                cpu[mode] = (
                    (cpu_seconds(os.getpid()) - cpu0) / elapsed,
                    (cpu_seconds(sim_pid) - sim0) / elapsed,
                )
                ok = sum(1 for batch, _dead in outcomes for o in batch if o.reading)
                if ok != total:
                    errors = {o.error for batch, _dead in outcomes for o in batch if o.error}
                    raise SystemExit(f"{mode}: only {ok}/{total} read: {sorted(errors)[:5]}")
                results[mode].append(total / elapsed)
        rpm, rp = max(results["rpm"]), max(results["rp"])
        print(
            f"ReadPropertyMultiple: {rpm:,.0f} points/s   ReadProperty: {rp:,.0f} points/s   "
            f"ratio RPM/RP = {rpm / rp:.1f}x (target >= 3x)"
        )
        for mode, (agent, sim) in cpu.items():
            print(f"  {mode}: agent CPU {agent:.0%} of a core, simulator CPU {sim:.0%} (last round)")
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with sim_process(args.devices, args.points, BASE) as sim:
        asyncio.run(measure(args.devices, args.points, args.rounds, sim.pid))


if __name__ == "__main__":
    main()
