"""How fast the EnergyPlus building runs: ``python -m sim.energyplus.bench [--year] [--serve]``.

Prints, for the medium office in Tampa: the start-up (sizing + warmup), building seconds per wall
second at 1-minute steps stepped one by one (what a live BACnet server does), in batches (what a
backfill does), with ``--year`` a whole year at 15-minute steps, and with ``--serve`` the building
served over BACnet/IP on loopback (sim/server.py) at several speeds: building seconds per wall second
and how far the simulation lags behind building time. Figures depend on the machine
and its load; the ratios between them are what the design rests on.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from sim.energyplus.engine import EnergyPlusBuilding


def step_by_step(b: EnergyPlusBuilding, steps: int) -> float:
    """Building seconds per wall second of a started building advanced one step at a time, each step its own
    order, as a live BACnet server advances it (the baseline of benchmarks/bench_energyplus.py)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        b.step()
    return steps * b.step_s / (time.perf_counter() - t0)


def stepped(model: str, weather: str, steps_per_hour: int, hours: int) -> None:
    t0 = time.perf_counter()
    b = EnergyPlusBuilding(model, weather, date(2025, 7, 14), days=3, timesteps_per_hour=steps_per_hour)
    b.start()
    t1 = time.perf_counter()
    print(f"{model} {steps_per_hour}/h: start (sizing + warmup) {t1 - t0:.1f} s")
    n = hours * steps_per_hour
    t1 = time.perf_counter()
    step_by_step(b, n)
    t2 = time.perf_counter()
    print(f"  step by step: {n} steps in {t2 - t1:.1f} s = {1e3 * (t2 - t1) / n:.2f} ms/step, "
          f"{hours * 3600 / (t2 - t1):,.0f} building s per wall s")
    b.run(n)
    t3 = time.perf_counter()
    print(f"  one batch:    {n} steps in {t3 - t2:.1f} s = {1e3 * (t3 - t2) / n:.2f} ms/step, "
          f"{hours * 3600 / (t3 - t2):,.0f} building s per wall s")
    b.run(n, keep_every=1)
    t4 = time.perf_counter()
    print(f"  batch, every step read: {1e3 * (t4 - t3) / n:.2f} ms/step, "
          f"{hours * 3600 / (t4 - t3):,.0f} building s per wall s")
    b.close()


def year(model: str, weather: str, steps_per_hour: int) -> None:
    t0 = time.perf_counter()
    b = EnergyPlusBuilding(model, weather, date(2025, 1, 1), days=365, timesteps_per_hour=steps_per_hour)
    b.start()
    t1 = time.perf_counter()
    samples = b.run(365 * 24 * steps_per_hour, keep_every=1)
    t2 = time.perf_counter()
    b.close()
    print(f"{model} full year at {steps_per_hour}/h: start {t1 - t0:.1f} s, {len(samples) + 1} steps "
          f"(every one read) in {t2 - t1:.1f} s; total {t2 - t0:.1f} s, "
          f"site {samples[-1]['site/elec_kwh'] / 1000:,.0f} MWh")


def serve(model: str, weather: str, steps_per_hour: int, seconds: float, address: str) -> None:
    from datetime import datetime

    from sim.server import ThreadedBuilding

    for speed in (600.0, 3600.0, 36000.0, 1e6):
        t0 = time.perf_counter()
        with ThreadedBuilding(building=f"energyplus:{model}", weather=weather, days=30, speed=speed,
                              timesteps_per_hour=steps_per_hour, start=datetime(2025, 7, 14),
                              address_base=address) as tb:
            t1 = time.perf_counter()
            eng, vb = tb.vb.energyplus, tb.vb
            sim0, w0 = eng.time, time.perf_counter()
            time.sleep(seconds)
            sim1, w1, lag = eng.time, time.perf_counter(), vb.lag_s()
        rate = (sim1 - sim0).total_seconds() / (w1 - w0)
        print(f"served at {speed:g}x, {steps_per_hour}/h: start {t1 - t0:.1f} s, {rate:,.0f} building s per "
              f"wall s ({rate / speed:.0%} of the speed), lag {lag:,.0f} s at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="office_medium")
    parser.add_argument("--weather", default="tampa")
    parser.add_argument("--hours", type=int, default=8)
    parser.add_argument("--year", action="store_true", help="also a full year at 15-minute steps")
    parser.add_argument("--serve", action="store_true", help="only: served over BACnet/IP at several speeds")
    parser.add_argument("--address", default="127.0.0.180", help="first loopback address when serving")
    args = parser.parse_args()
    if args.serve:
        serve(args.model, args.weather, 60, 10.0, args.address)
        return
    stepped(args.model, args.weather, 60, args.hours)
    if args.year:
        year(args.model, args.weather, 4)


if __name__ == "__main__":
    main()
