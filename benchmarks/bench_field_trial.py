"""The field trial through the real path (issue 17): 14 July days of the EnergyPlus medium office in Tampa,
ML against the building's own schedule control by daily switchback, KPIs from the building's own values.

`sim.energyplus.field_trial` does the work: the building served over BACnet/IP in its own process, the real
agent (`bacpipes edge run`) on the building's clock, a fresh site database per run, a real Mosquitto. The
schedule's complement is run too (same days, same weather, arms swapped), so every day is seen under both
arms and the table pairs them. By default the two runs go side by side (A: controllers 127.0.0.230-234 on
port 47990, agent 127.0.0.235:47992; B: the same addresses on port 47991, agent 127.0.0.236:47993);
--sequential runs one after the other (half the load, twice the wall time).

Printed: the KPI table (HVAC and site electricity, peak demand, occupied discomfort, zone-hours above 60 %
RH, setpoint changes per zone per day), models.ab's HVAC savings with its 95 % interval, and per run how
faithful the run was: wall time per building day, readings over poll slots (coverage), ML writes refused
(expired: a round took longer than the interval), the worst EnergyPlus lag. A run whose coverage is well
under 1 or with expired writes was too fast for this machine: lower --speed.

    python -m benchmarks.bench_field_trial [--days 14] [--speed 300] [--hours-per-period 24]
                                           [--history-days 14] [--exploration-days 28] [--sequential]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from models.ab import complement
from sim.energyplus.field_trial import (
    RunResult,
    Trial,
    exploration_model,
    report,
    run_once,
    schedule,
)
from tests.brokers import MosquittoBroker
from tests.conftest import ADMIN_DSN

FIRST = datetime(2026, 7, 6)  # a Monday, site-local midnight
RUN_A = {"address_base": "127.0.0.230", "port": 47990, "agent_address": "127.0.0.235/8:47992",
         "agent_device_id": 3001992}
RUN_B = {"address_base": "127.0.0.230", "port": 47991, "agent_address": "127.0.0.236/8:47993",
         "agent_device_id": 3001993}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--speed", type=float, default=300.0)
    parser.add_argument("--hours-per-period", type=float, default=24.0)
    parser.add_argument("--timesteps-per-hour", type=int, default=60)
    parser.add_argument("--history-days", type=int, default=14,
                        help="the building's own history backfilled first (the MPC's outlook learns from it)")
    parser.add_argument("--exploration-days", type=int, default=28,
                        help="June days with random setpoints the model is trained on (the closed loop's 28)")
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--unpaired", action="store_true", help="run the schedule only, not its complement")
    parser.add_argument("--keep", action="store_true", help="keep the site databases (named in the output)")
    args = parser.parse_args()

    periods = round(args.days * 24 / args.hours_per_period)
    trial = Trial(first=FIRST, periods=periods, hours_per_period=args.hours_per_period, speed=args.speed,
                  timesteps_per_hour=args.timesteps_per_hour, history_days=args.history_days,
                  site_id="bench-trial", **RUN_A)
    t0 = time.monotonic()
    model = exploration_model(trial, days=args.exploration_days)
    print(f"model {model.version} ({model.metrics['family']}): {model.metrics['holdout']}, multi-step MAE"
          f" {model.metrics['multistep_mae']} ({time.monotonic() - t0:.0f} s)", flush=True)
    plan = schedule(trial)
    print("schedule:", " ".join(f"{p.start:%m-%d %H:%M} {p.arm}" for p in plan), flush=True)
    jobs = [(trial, plan, "a")]
    if not args.unpaired:
        jobs.append((replace(trial, **RUN_B), complement(plan), "b"))
    results: dict[str, RunResult] = {}
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="bench-field-trial-") as tmp:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        try:
            def one(job: tuple[Trial, list, str]) -> None:
                t, p, tag = job
                try:
                    results[tag] = run_once(t, p, model, admin_dsn=ADMIN_DSN, mqtt_url=broker.url,
                                            workdir=Path(tmp), tag=tag, keep_database=args.keep,
                                            progress=lambda line: print(line, flush=True))
                except BaseException as exc:
                    errors.append(exc)
                    raise

            t1 = time.monotonic()
            if args.sequential:
                for job in jobs:
                    one(job)
            else:
                threads = [threading.Thread(target=one, args=(job,)) for job in jobs]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
            wall = time.monotonic() - t1
        finally:
            broker.stop()
    if errors:
        raise errors[0]
    runs = [results[tag] for _, _, tag in jobs]
    out = report(trial, model, runs)
    print()
    print(f"field trial: {args.days} days from {FIRST:%Y-%m-%d} (Tampa, July), {periods} periods of "
          f"{args.hours_per_period:g} h, {args.speed:g}x, EnergyPlus {args.timesteps_per_hour} steps/h, "
          f"model {model.version}")
    print(out.table())
    for tag, r in zip("ab", runs, strict=False):
        days = (trial.end - trial.start).total_seconds() / 86400
        print(f"run {tag}: {r.wall_s:,.0f} s wall for {days:g} days + lead-in ({r.wall_s / days:.0f} s per "
              f"building day), coverage {r.coverage:.1%}, ML writes {r.ml_writes_total} completed, "
              f"{r.ml_rejected} refused, EnergyPlus lag max {r.max_lag_s:.0f} s, {r.readings:,} readings "
              f"{r.first_reading:%m-%d %H:%M} to {r.last_reading:%m-%d %H:%M} UTC"
              + (f", database {r.database}, clock {r.clock}" if r.database else ""))
    for k in sorted((k for r in runs for k in r.periods), key=lambda k: (k.period.start, k.period.arm)):
        print(f"  {k.period.start:%a %m-%d %H:%M} {k.period.arm:8} HVAC {k.hvac_kwh:7.1f} kWh  site "
              f"{k.site_kwh:7.1f} kWh  peak {k.peak_kw:6.1f} kW  discomfort {k.discomfort_kh:6.2f} K·h  "
              f"RH>60 {k.rh_zone_h:5.1f} zone-h  setpoint changes {k.setpoint_changes:4d}  ML writes "
              f"{k.ml_writes:4d}")
    print(f"wall time: {time.monotonic() - t0:,.0f} s in all, {wall:,.0f} s for the runs "
          f"({'sequential' if args.sequential else 'side by side'})")


if __name__ == "__main__":
    main()
