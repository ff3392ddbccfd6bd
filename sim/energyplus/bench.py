"""How fast the EnergyPlus building runs: ``python -m sim.energyplus.bench [--year]``.

Prints, for the medium office in Tampa: the start-up (sizing + warmup), building seconds per wall
second at 1-minute steps stepped one by one (what a live BACnet server does), in batches (what a
backfill does), and with ``--year`` a whole year at 15-minute steps. Figures depend on the machine
and its load; the ratios between them are what the design rests on.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from sim.energyplus.engine import EnergyPlusBuilding


def stepped(model: str, weather: str, steps_per_hour: int, hours: int) -> None:
    t0 = time.perf_counter()
    b = EnergyPlusBuilding(model, weather, date(2025, 7, 14), days=3, timesteps_per_hour=steps_per_hour)
    b.start()
    t1 = time.perf_counter()
    print(f"{model} {steps_per_hour}/h: start (sizing + warmup) {t1 - t0:.1f} s")
    n = hours * steps_per_hour
    t1 = time.perf_counter()
    for _ in range(n):
        b.step()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="office_medium")
    parser.add_argument("--weather", default="tampa")
    parser.add_argument("--hours", type=int, default=8)
    parser.add_argument("--year", action="store_true", help="also a full year at 15-minute steps")
    args = parser.parse_args()
    stepped(args.model, args.weather, 60, args.hours)
    if args.year:
        year(args.model, args.weather, 4)


if __name__ == "__main__":
    main()
