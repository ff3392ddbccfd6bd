"""Polling against the library a user would pick instead: BacPipes' poller vs BAC0, same devices, same run.

The virtual building (frozen, speed 0) runs in this process; each reader runs in a process of its own, so
its CPU is its own: the agent's real DevicePoller code (this venv), then BAC0 (`benchmarks/bac0_reader.py`
under `.venv-bac0`, built here on first use: BAC0 pulls BACpypes3 unpinned, so it never enters the project's
venv). Both read every point's present value + status flags with ReadPropertyMultiple, the same objects in
the same batches per device (sized from the device's max APDU), devices concurrently, for the same rounds
after one warm-up round. Reported: points/s (wall, median round), CPU seconds of the reader per 1,000
points, the building's CPU while each read, and every present value checked against the building's snapshot.
    python -m benchmarks.bench_bac0 [--devices 4] [--points 1000] [--rounds 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-bac0"
BAC0_SPEC = "bac0==2026.7.25"
STAMP = VENV / "installed.txt"
BASE = "127.0.0.180"  # devices 127.0.0.180..; no test or benchmark uses 127.0.0.180-127.0.0.191
AGENT = "127.0.0.190/8:47910"  # both readers on ports other than the devices' 47808 (DESIGN.md pitfalls)
BAC0_AGENT = "127.0.0.191/8:47911"
MAX_DEVICES = 10


def bac0_python() -> Path:
    """The python of `.venv-bac0`, created with BAC0 installed the first time (a stamp says it is done)."""
    python = VENV / "bin" / "python"
    if python.exists() and STAMP.exists() and STAMP.read_text().splitlines()[:1] == [BAC0_SPEC]:
        return python
    base = shutil.which("python3.11") or sys.executable
    print(f"building {VENV.name}: {base} -m venv, pip install {BAC0_SPEC} ...", flush=True)
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", BAC0_SPEC], check=True
    )
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    STAMP.write_text(f"{BAC0_SPEC}\n{freeze.stdout}")
    return python


# --- the project's reader (a subprocess running this module with --reader) --------------------------------


async def bacpipes_read(args: argparse.Namespace) -> dict:
    from zoneinfo import ZoneInfo

    from bacpipes.settings import BacnetSettings, load_settings
    from edge.bacnet import BacnetClient
    from edge.catalog import PollDevice, PollPoint
    from edge.discovery import _SKIP_TYPES, find_peers
    from edge.polling import DevicePoller

    last = BASE.rsplit(".", 1)[0] + f".{int(BASE.rsplit('.', 1)[1]) + args.devices - 1}"
    settings = load_settings(
        None,
        discovery={"targets": [f"{BASE}-{last}"], "timeout_s": 1.0},
        bacnet=BacnetSettings(address=AGENT, apdu_timeout_ms=3000, apdu_retries=1).model_dump(),
    )
    client = BacnetClient.open(settings.bacnet)
    try:
        peers = sorted(await find_peers(client, settings), key=lambda p: p.device_id)
        if len(peers) != args.devices:
            raise SystemExit(f"found {len(peers)} of {args.devices} devices")
        pollers, plan = [], []
        for peer in peers:
            listed = await client.object_list(peer.address, peer.device_id)
            objects = [o for o in listed if str(o[0]) not in _SKIP_TYPES]
            points = [
                PollPoint(i, peer.device_id, str(o[0]), int(o[1]), None, None, None, "t", 30.0, 1)
                for i, o in enumerate(objects)
            ]
            device = PollDevice(peer.device_id, peer.address, peer.max_apdu, peer.segmentation)
            poller = DevicePoller(client, device, points, lambda _o: None, ZoneInfo("UTC"))
            pollers.append(poller)
            plan.append({
                "address": peer.address,
                "device_id": peer.device_id,
                "batch": poller.batch_size,
                "objects": [[p.object_type, p.object_instance] for p in points],
            })
        Path(args.plan).write_text(json.dumps({"devices": plan}))
        total = sum(len(p.points) for p in pollers)
        rounds: list[dict] = []
        values: dict[str, float | int | None] = {}
        for r in range(args.rounds + 1):  # round 0 warms up, as for BAC0
            start, cpu0, sim0 = time.perf_counter(), time.process_time(), _cpu(args.sim_pid)
            outcomes = await asyncio.gather(*(p._read_points(list(p.points.values())) for p in pollers))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            sim = _cpu(args.sim_pid) - sim0
            values = {}
            for poller, (batch, _dead) in zip(pollers, outcomes, strict=True):
                for o in batch:
                    p = poller.points[o.point_id]
                    key = f"{poller.device.address} {p.object_type}:{p.object_instance}"
                    values[key] = o.reading.value if o.reading else None
            ok = sum(1 for v in values.values() if v is not None)
            flags = sum(1 for _b, _d in outcomes for o in _b if o.reading and o.reading.quality == "good")
            if r:
                rounds.append({"wall": wall, "cpu": cpu, "sim_cpu": sim, "ok": ok, "flags": flags})
        from importlib.metadata import version

        return {
            "reader": f"BacPipes DevicePoller (bacpypes3 {version('bacpypes3')})",
            "points": total,
            "rounds": rounds,
            "values": values,
        }
    finally:
        client.close()


def _cpu(pid: int) -> float:
    from benchmarks.common import cpu_seconds

    return cpu_seconds(pid)


# --- the run -----------------------------------------------------------------------------------------------


def run_reader(argv: list[str], what: str) -> dict:
    result = Path(argv[argv.index("--result") + 1])
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not result.exists():
        output = proc.stdout[-2000:] + proc.stderr[-4000:]
        raise SystemExit(f"{what} reader failed ({proc.returncode}):\n{output}")
    return json.loads(result.read_text())


def check(values: dict, snapshot: dict[tuple[int, str, int], object], plan: list[dict]) -> tuple[int, int]:
    """Present values equal to the building's (a REAL to float32 precision): (equal, compared)."""
    device_of = {d["address"]: d["device_id"] for d in plan}
    equal = 0
    for key, value in values.items():
        address, ref = key.split(" ")
        kind, inst = ref.split(":")
        expected = snapshot.get((device_of[address], kind, int(inst)))
        if value is not None and expected is not None:
            equal += math.isclose(float(value), float(expected), rel_tol=1e-6, abs_tol=1e-6)
    return equal, len(snapshot)


def summary(result: dict) -> dict:
    rounds, total = result["rounds"], result["points"]
    return {
        "pps": statistics.median(total / r["wall"] for r in rounds),
        "best": max(total / r["wall"] for r in rounds),
        "cpu_per_k": statistics.median(r["cpu"] / total * 1000 for r in rounds),
        "core": statistics.median(r["cpu"] / r["wall"] for r in rounds),
        "sim": statistics.median(r["sim_cpu"] / r["wall"] for r in rounds),
        "ok": min(r["ok"] for r in rounds),
        "flags": min(r["flags"] for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--points", type=int, default=1000, help="points per device")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per reader, after a warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="reader pairs, alternated: A B A B")
    parser.add_argument("--reader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--sim-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        Path(args.result).write_text(json.dumps(asyncio.run(bacpipes_read(args))))
        return
    if not 1 <= args.devices <= MAX_DEVICES:
        raise SystemExit(f"--devices must be 1..{MAX_DEVICES} (the address range is {BASE}..)")

    from sim.server import ThreadedBuilding

    bac0 = bac0_python()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadedBuilding(
        devices=args.devices, points=args.points, address_base=BASE, seed=1, speed=0
    ) as building:
        plan_file = Path(tmp) / "plan.json"
        common = ["--rounds", str(args.rounds), "--sim-pid", str(os.getpid())]
        ours_argv = [sys.executable, "-m", "benchmarks.bench_bac0", "--reader",
                     "--devices", str(args.devices), "--plan", str(plan_file), *common]
        bac0_argv = [str(bac0), str(REPO / "benchmarks" / "bac0_reader.py"), str(plan_file),
                     "--address", BAC0_AGENT, *common]
        results: dict[str, list[dict]] = {"bacpipes": [], "bac0": []}
        for k in range(args.repeats):
            ours = Path(tmp) / f"ours{k}.json"
            results["bacpipes"].append(run_reader([*ours_argv, "--result", str(ours)], "BacPipes"))
            theirs = Path(tmp) / f"bac0_{k}.json"
            results["bac0"].append(run_reader([*bac0_argv, "--result", str(theirs)], "BAC0"))
        snapshot = building.snapshot()
        plan = json.loads(plan_file.read_text())["devices"]
    total = results["bacpipes"][0]["points"]
    batches = sorted({d["batch"] for d in plan})
    print(f"{args.devices} devices, {total} points (present value + status flags), RPM batches of "
          f"{'/'.join(map(str, batches))} objects, {args.rounds} rounds x {args.repeats} repeats per reader")
    rows = {}
    print(f"{'reader':<52} {'points/s':>9} {'best':>9} {'CPU s/1k pts':>13} {'reader CPU':>11} "
          f"{'sim CPU':>8} {'values = sim':>13} {'flags ok':>8}")
    for name, runs in results.items():
        merged = {**runs[0], "rounds": [r for run in runs for r in run["rounds"]]}
        s = rows[name] = summary(merged)
        equal, compared = check(runs[-1]["values"], snapshot, plan)
        s["equal"] = equal
        print(f"{runs[0]['reader']:<52} {s['pps']:>9,.0f} {s['best']:>9,.0f} {s['cpu_per_k']:>13.3f} "
              f"{s['core']:>10.0%} {s['sim']:>8.0%} {equal:>6}/{compared:<6} {s['flags']:>8}")
    ours, theirs = rows["bacpipes"], rows["bac0"]
    print(f"ratio BAC0/BacPipes: points/s {theirs['pps'] / ours['pps']:.2f}x, "
          f"CPU per 1,000 points {theirs['cpu_per_k'] / ours['cpu_per_k']:.2f}x")
    elapsed = time.perf_counter() - started
    print(f"(medians over rounds; reader CPU and sim CPU are shares of one core; {elapsed:.0f} s in all)")


if __name__ == "__main__":
    main()
