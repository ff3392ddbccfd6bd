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

from sim.energyplus.levers import MORE, VARIANTS, main

if __name__ == "__main__":
    main(VARIANTS + MORE, __doc__)
