"""Air-handler levers on the EnergyPlus medium office (issue 17: "if the physics cannot give it, show why
with numbers and what would"): the prototype as shipped, then each lever as an IDF edit before the run,
on the closed loop's building, weather and days (Tampa TMY3, 14 July days from 2025-07-07, 5-minute steps),
judged by the closed loop's KPI code (`sim.energyplus.closed_loop.run`).

Printed: per variant HVAC and whole-building electricity with the saving against the shipped building,
peak demand (highest 15-minute mean), occupied discomfort outside 22-25 °C (K·h, mean zone and worst
zone), zone-hours above 60 % RH while occupied, air-side means over the occupied 15-minute instants
(outdoor air, supply temperature, fan, DX, reheat, supply air), whether the issue's target is met
(>= 13 % HVAC, comfort, humidity and peak no worse), and the BACnet points each lever needs writable.
One EnergyPlus run per variant, ~10 s each.

    python -m benchmarks.bench_levers [--days 14] [--start 2025-07-07] [--variants shipped dcv ...]
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from sim.energyplus.levers import DAYS, MORE, START, TIMESTEPS, VARIANTS, points, run_variant, table


def main() -> None:
    every = VARIANTS + MORE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--start", type=date.fromisoformat, default=START)
    parser.add_argument("--timesteps", type=int, default=TIMESTEPS)
    parser.add_argument("--variants", nargs="*", default=[v.name for v in every],
                        help=f"of: {', '.join(v.name for v in every)} (the first is the baseline)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    chosen = sorted((v for v in every if v.name in args.variants), key=lambda v: args.variants.index(v.name))
    runs = []
    for v in chosen:
        runs.append(run_variant(v, args.start, args.days, args.timesteps))
        print(f"  {v.name}: {runs[-1].kpis.wall_s:.0f} s", flush=True)
    print(f"{args.days} days from {args.start}, {args.timesteps} steps/h, Tampa TMY3; saved = against "
          f"{runs[0].variant.name}")
    print(table(runs))
    print("BACnet points each lever needs:")
    print(points())
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
