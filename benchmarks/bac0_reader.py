"""BAC0's side of benchmarks/bench_bac0.py: read a plan's points with BAC0, report speed, CPU and values.

Runs under `.venv-bac0` (BAC0 and the BACpypes3 it pulls), never the project's venv, and imports nothing from
this repository. The plan (JSON, written by the project's own reader in the same run) lists each device's
address, its objects and the objects per ReadPropertyMultiple that fit the device's APDU.

Each batch is one `bacnet.readMultiple("<addr> <type>:<inst> presentValue statusFlags ...")`: BAC0's
documented RPM call, the one its own `device.read_multiple` polling issues per batch. Devices are read
concurrently (one task each), batches of a device one after another, as the project's poller does.
BAC0's logging is silenced, yet its debug notes still walk the stack (`inspect.stack()`) on each call: that
CPU is counted, as a user of BAC0 pays it (a third of its CPU in cProfile, 4 x 1,000 points).
    .venv-bac0/bin/python benchmarks/bac0_reader.py PLAN.json --result OUT.json --rounds 3 --address IP/8:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from importlib.metadata import version

import BAC0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plain(value):
    """A value as a JSON number: Real -> float, Enumerated/Unsigned/Boolean -> int."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return None


async def read_device(bacnet, device: dict, requests: list[str]) -> tuple[dict, int]:
    """Every batch of one device: its present values by "type:instance", and how many flags were ok."""
    values: dict[str, float | int | None] = {}
    flags = 0
    objects = device["objects"]
    batch = device["batch"]
    for k, request in enumerate(requests):
        answer = await bacnet.readMultiple(request)
        chunk = objects[k * batch : (k + 1) * batch]
        if len(answer) != 2 * len(chunk):
            raise SystemExit(f"{device['address']}: {len(answer)} values for {len(chunk)} objects")
        for (kind, inst), pv, sf in zip(chunk, answer[0::2], answer[1::2], strict=True):
            values[f"{kind}:{inst}"] = plain(pv)
            # status flags [in-alarm, fault, overridden, out-of-service]: "ok" = none but in-alarm set
            flags += isinstance(sf, list) and len(sf) == 4 and not any(sf[1:])
    return values, flags


async def measure(args: argparse.Namespace) -> dict:
    with open(args.plan) as f:
        plan = json.load(f)["devices"]
    requests = {
        d["address"]: [
            d["address"] + "".join(
                f" {kind}:{inst} presentValue statusFlags"
                for kind, inst in d["objects"][i : i + d["batch"]]
            )
            for i in range(0, len(d["objects"]), d["batch"])
        ]
        for d in plan
    }
    total = sum(len(d["objects"]) for d in plan)
    BAC0.log_level("silence")
    rounds: list[dict] = []
    async with BAC0.start(ip=args.address, ping=False) as bacnet:
        for r in range(args.rounds + 1):  # round 0 warms up (BAC0 asks each device Who-Is once)
            start, cpu0 = time.perf_counter(), time.process_time()
            sim0 = cpu_seconds(args.sim_pid) if args.sim_pid else 0.0
            outcomes = await asyncio.gather(*(read_device(bacnet, d, requests[d["address"]]) for d in plan))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            sim = (cpu_seconds(args.sim_pid) - sim0) if args.sim_pid else 0.0
            values = {
                f"{d['address']} {key}": v
                for d, (vals, _) in zip(plan, outcomes, strict=True)
                for key, v in vals.items()
            }
            ok = sum(1 for v in values.values() if v is not None)
            flags = sum(f for _, f in outcomes)
            if r:
                rounds.append({"wall": wall, "cpu": cpu, "sim_cpu": sim, "ok": ok, "flags": flags})
    return {
        "reader": f"BAC0 {version('BAC0')} (bacpypes3 {version('bacpypes3')})",
        "points": total,
        "rounds": rounds,
        "values": values,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plan")
    parser.add_argument("--result", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--address", default="127.0.0.191/8:47911")
    parser.add_argument("--sim-pid", type=int, default=0)
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    with open(args.result, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
