"""The EnergyPlus building polled by the agent (issue 16): how fast can building time run?

The medium office (Tampa, July, from Monday 08:00) at 1-minute steps is served over BACnet/IP on
127.0.0.200-204:47981 by sim/server.py's ThreadedBuilding, in a process of its own (its EnergyPlus thread
and its bacpypes3 server), paused between runs. For each --speed in the series, the whole agent (polling,
MQTT through a real broker, ingest into PostgreSQL; 127.0.0.215:47980, bacnet settings as shipped) polls
every point every minute of building time, i.e. every 60/speed wall seconds, while the building runs
--minutes of building time. Reported per speed, for that window only:
  (each speed runs --minutes of building time, or 5 wall seconds if that is longer)
  - building seconds simulated per wall second (achieved, and as a share of the speed asked), and the
    engine's lag behind building time (max and at the end; one step, 60 s, or less means it keeps up);
  - poll rounds and point reads made, against the clock slots of the window;
  - slots missed, counted in the pollers themselves: each time a point's next due time skips a slot
    (edge/polling.py skips a missed slot rather than catching up), and lateness p50 / p99;
  - CPU (share of one core) of the EnergyPlus thread, of the building's event loop, of the agent's event loop,
    and of the agent's whole process (with its publisher and ingester threads);
  - the ratio of the achieved rate to EnergyPlus alone stepping the same building one step per order,
    measured in this run (sim/energyplus/bench.py's step-by-step figure) while the served one is paused.
The answer: the largest speed of the series at which no slot was missed. No wall-clock thresholds.

    python -m benchmarks.bench_energyplus [--minutes 20] [--speeds 15,30,...] [--invoke-id-reuse-s 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import edge.agent
from benchmarks.common import cpu_seconds
from edge.polling import DevicePoller
from tests.brokers import MosquittoBroker
from tests.conftest import fresh_database, make_settings
from tests.edge_harness import AgentThread, discover_site

BASE, LAST, PORT = "127.0.0.200", "127.0.0.204", 47981
AGENT = "127.0.0.215/8:47980"
MODEL, WEATHER = "office_medium", "tampa"
START = datetime(2025, 7, 14, 8, 0)  # a Monday morning: the office fills up, Tampa is hot
STEP_S = 60.0
SPEEDS = (15, 30, 60, 120, 240, 480, 960, 1920)
BASELINE_STEPS = 480  # 8 building hours, one order per step


# -- the building, in its own process ------------------------------------------------------------------


def _thread_cpu(native_id: int | None) -> float:
    """utime + stime of one thread of this process (s)."""
    if native_id is None:
        return 0.0
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watch(vb: Any, steps0: int, done: threading.Event, lags: list, stepped: list) -> None:
    """Every 5 ms: the engine's lag behind building time, and when a step was first seen done."""
    eng = vb.energyplus
    while not done.wait(0.005):
        lags.append(vb.lag_s())
        if eng.steps != (stepped[-1][1] if stepped else steps0):
            stepped.append((time.perf_counter(), eng.steps))


def _serve(conn: Any) -> None:
    """Serve the building paused; on ("run", speed) let it run until ("pause",), then report the window."""
    from sim.server import ThreadedBuilding

    tb = ThreadedBuilding(
        building=f"energyplus:{MODEL}",
        weather=WEATHER,
        timesteps_per_hour=60,
        speed=0,
        start=START,
        days=3,
        address_base=BASE,
        port=PORT,
    )
    t0 = time.perf_counter()
    tb.start()
    vb, eng = tb.vb, tb.vb.energyplus
    conn.send(("ready", time.perf_counter() - t0, tb.describe()))
    threads = lambda: (_thread_cpu(eng._thread.native_id), _thread_cpu(tb._thread.native_id))  # noqa: E731
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        speed = msg[1]
        tb.set_speed(speed)
        # a paused building's ticker sleeps up to tick_s (1 s) and set_speed does not wake it: the window
        # starts once the engine has caught up with the new speed (lag within one step), up to 2 s
        caught = time.monotonic() + 2.0
        while vb.lag_s() > eng.step_s and time.monotonic() < caught:
            time.sleep(0.005)
        wall0, time0, steps0, cpu0 = time.perf_counter(), eng.time, eng.steps, threads()
        lags: list[float] = []
        stepped: list[tuple[float, int]] = []  # (when a step was first seen done, steps so far)
        done = threading.Event()

        sampler = threading.Thread(target=_watch, args=(vb, steps0, done, lags, stepped), daemon=True)
        sampler.start()
        conn.send(("running",))
        conn.recv()  # ("pause",)
        wall1, time1, steps1, cpu1, lag_end = time.perf_counter(), eng.time, eng.steps, threads(), vb.lag_s()
        done.set()
        sampler.join()
        tb.set_speed(0)  # waits for the engine to catch up: not counted
        wall = wall1 - wall0
        # the rate between the first and the last step seen done: a step ends a minute of building time, so
        # the window's own ends would put up to a step's error on a short run
        (ta, na), (tb_, nb) = (
            (stepped[0], stepped[-1]) if len(stepped) > 1 else ((wall0, steps0), (wall1, steps1))
        )
        conn.send(
            {
                "wall_s": wall,
                "rate": (nb - na) * eng.step_s / (tb_ - ta),
                "simulated_s": (time1 - time0).total_seconds(),
                "steps": steps1 - steps0,
                "lag_max_s": max(lags, default=lag_end),
                "lag_end_s": lag_end,
                "engine_cpu": (cpu1[0] - cpu0[0]) / wall,
                "server_cpu": (cpu1[1] - cpu0[1]) / wall,
            }
        )
    tb.stop()
    conn.send(("stopped",))


# -- the agent's pollers, counting the slots they skip ------------------------------------------------


class SlotCountingPoller(DevicePoller):
    """The agent's DevicePoller, unchanged, plus two counters: poll rounds, and slots skipped (a point's
    next due time moved past more than one slot: polling.py skips missed slots, it does not catch up)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds = 0
        self.slots_missed = 0
        self.durations: list[float] = []  # of each poll round (its reads, one device)

    async def poll_due(self) -> None:
        before = dict(self.due)
        self.rounds += 1
        t0 = time.perf_counter()
        try:
            await super().poll_due()
        finally:
            self.durations.append(time.perf_counter() - t0)
            for pid, t in before.items():
                after = self.due[pid]
                if after != t:
                    self.slots_missed += max(0, round((after - t) / self.points[pid].interval_s) - 1)


def _counters(pollers: list[SlotCountingPoller]) -> dict[str, Any]:
    return {
        "rounds": sum(p.rounds for p in pollers),
        "missed": sum(p.slots_missed for p in pollers),
        "reads": sum(p.stats.reads_ok + p.stats.reads_failed for p in pollers),
        "requests": sum(p.stats.requests for p in pollers),
        "failed": sum(p.stats.reads_failed for p in pollers),
        "lateness": [len(p.stats.lateness_s) for p in pollers],
        "durations": [len(p.durations) for p in pollers],
    }


def _agent_cpu(agent: AgentThread) -> tuple[float, float]:
    """(agent's event-loop thread, whole process) CPU seconds."""
    with open(f"/proc/self/task/{agent._thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    loop = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return loop, cpu_seconds(os.getpid())


MIN_WINDOW_S = 5.0  # at high speeds a window of --minutes would last well under a second


def window_s(speed: float, minutes: float) -> float:
    """Wall seconds a speed runs: --minutes of building time, but at least MIN_WINDOW_S."""
    return max(minutes * 60 / speed, MIN_WINDOW_S)


def run_speed(conn: Any, settings_for: Any, speed: float, minutes: float) -> dict[str, Any]:
    interval = STEP_S / speed
    agent = AgentThread(settings_for(interval), discover_first=False).start()
    try:
        deadline = time.monotonic() + 30
        while not agent.agent.pollers or sum(p.rounds for p in agent.agent.pollers) < 2 * len(
            agent.agent.pollers
        ):
            if not agent._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start polling: {agent.error!r}")
            time.sleep(0.05)
        time.sleep(max(1.0, 2 * interval))  # the publisher and ingester settle, on the paused building
        pollers: list[SlotCountingPoller] = agent.agent.pollers  # type: ignore[assignment]
        conn.send(("run", speed))
        conn.recv()
        c0, cpu0, w0 = _counters(pollers), _agent_cpu(agent), time.perf_counter()
        time.sleep(window_s(speed, minutes))
        c1, cpu1, w1 = _counters(pollers), _agent_cpu(agent), time.perf_counter()
        conn.send(("pause",))
        building = conn.recv()
        late = [
            x
            for p, a, b in zip(pollers, c0["lateness"], c1["lateness"], strict=True)
            for x in list(p.stats.lateness_s)[a:b]
        ]
        took = [
            x
            for p, a, b in zip(pollers, c0["durations"], c1["durations"], strict=True)
            for x in p.durations[a:b]
        ]
        wall = w1 - w0
        points = sum(len(p.points) for p in pollers)
        return {
            **building,
            "speed": speed,
            "interval_s": interval,
            "points": points,
            "slots": points * wall / interval,
            **{k: c1[k] - c0[k] for k in ("rounds", "missed", "reads", "requests", "failed")},
            "p50": float(np.percentile(late, 50)) if late else float("nan"),
            "p99": float(np.percentile(late, 99)) if late else float("nan"),
            "took_p50": float(np.percentile(took, 50)) if took else float("nan"),
            "took_p99": float(np.percentile(took, 99)) if took else float("nan"),
            "agent_loop_cpu": (cpu1[0] - cpu0[0]) / wall,
            "agent_cpu": (cpu1[1] - cpu0[1]) / wall,
        }
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20, help="building minutes per speed")
    parser.add_argument("--speeds", default=",".join(map(str, SPEEDS)))
    parser.add_argument(
        "--invoke-id-reuse-s",
        type=float,
        default=None,
        help="the agent's bacnet.invoke_id_reuse_s (default: as shipped)",
    )
    args = parser.parse_args()
    speeds = [float(s) for s in args.speeds.split(",")]

    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child_conn,), name="energyplus-building", daemon=True)
    server.start()
    # EnergyPlus alone, sized and warmed up here while the served one is in the other process
    from sim.energyplus.bench import step_by_step
    from sim.energyplus.engine import EnergyPlusBuilding

    t0 = time.perf_counter()
    alone = EnergyPlusBuilding(MODEL, WEATHER, START.date(), days=3, timesteps_per_hour=60).start()
    alone.advance_to(START)
    alone_start = time.perf_counter() - t0
    _, served_start, devices = conn.recv()
    base = step_by_step(alone, BASELINE_STEPS)  # the served building is paused: this has a core to itself
    alone.close()
    print(
        f"{MODEL}, {WEATHER}, 1-minute steps from {START:%Y-%m-%d %H:%M}: start (sizing + warmup) "
        f"{served_start:.0f} s served, {alone_start:.0f} s alone"
    )
    print(f"served as {', '.join(f'{i} ({n} objects)' for i, _a, n in devices)} on {BASE}-{LAST}:{PORT}")
    print(
        f"baseline, EnergyPlus alone one step per order: {base:,.0f} building s per wall s "
        f"({1e3 * STEP_S / base:.2f} ms/step)"
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp, fresh_database() as dsn:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        try:
            bacnet = {"address": AGENT, "apdu_timeout_ms": 3000, "apdu_retries": 1}
            if args.invoke_id_reuse_s is not None:
                bacnet["invoke_id_reuse_s"] = args.invoke_id_reuse_s

            def settings_for(interval: float) -> Any:
                return make_settings(
                    dsn,
                    broker.url,
                    Path(tmp),
                    bacnet=bacnet,
                    discovery={"targets": [f"{BASE}-{LAST}:{PORT}"], "timeout_s": 2.0},
                    polling={"default_interval_s": interval},
                )

            discover_site(settings_for(60.0))
            edge.agent.DevicePoller = SlotCountingPoller  # the agent builds its pollers from this name
            print(
                f"{'speed':>6} {'interval':>9} {'building s/s':>12} {'of asked':>8} {'vs alone':>8} "
                f"{'lag max/end':>12} {'polls':>6} {'reads':>7} {'of slots':>8} {'missed':>6} "
                f"{'late p50':>8} {'p99':>7} {'round p50':>9} {'p99':>7}  "
                "CPU: E+ / sim loop / agent loop / agent"
            )
            for speed in speeds:
                r = run_speed(conn, settings_for, speed, args.minutes)
                rows.append(r)
                rate = r["rate"]
                print(
                    f"{speed:>6g} {r['interval_s']:>8.3f}s {rate:>12,.0f} {rate / speed:>8.0%} "
                    f"{rate / base:>8.2%} {r['lag_max_s']:>6.0f}/{r['lag_end_s']:<5.0f} {r['rounds']:>6} "
                    f"{r['reads']:>7} {r['reads'] / r['slots']:>8.1%} {r['missed']:>6} "
                    f"{r['p50'] * 1e3:>6.1f}ms {r['p99'] * 1e3:>5.0f}ms "
                    f"{r['took_p50'] * 1e3:>7.1f}ms {r['took_p99'] * 1e3:>5.0f}ms  "
                    f"{r['engine_cpu']:.0%} / {r['server_cpu']:.0%} / {r['agent_loop_cpu']:.0%} / "
                    f"{r['agent_cpu']:.0%}" + (f"  ({r['failed']} failed reads)" if r["failed"] else ""),
                    flush=True,
                )
        finally:
            edge.agent.DevicePoller = DevicePoller
            broker.stop()
            conn.send(("stop",))
            conn.recv()
            server.join(30)
    ok = [
        r
        for r in sorted(rows, key=lambda r: r["speed"])
        if all(q["missed"] == 0 and q["failed"] == 0 for q in rows if q["speed"] <= r["speed"])
    ]
    if ok:
        r = ok[-1]
        best, rate = r["speed"], r["rate"]
        print(
            f"largest speed with no missed slot: {best:g}x ({rate:,.0f} building s per wall s achieved, "
            f"{rate / base:.1%} of EnergyPlus alone, {base / rate:.0f}x headroom in the engine)"
        )
    else:
        print("every speed missed slots")


if __name__ == "__main__":
    main()
