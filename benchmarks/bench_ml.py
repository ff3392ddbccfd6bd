"""Edge inference time per decision round: the whole site's zones, MPC against the one-step policy.

A model is trained on a short exploration run of the EnergyPlus medium office (Tampa, June, random
setpoints; `sim.energyplus.closed_loop`) for each --families entry, exported to ONNX (parity-checked) and
loaded with onnxruntime limited to one thread (intra- and inter-op), as on a small edge box. The 15 zones'
inputs are the exploration's last instant. Timed, per round, --rounds rounds after 5 warm-up rounds:

- one-step: `models.policy.best_setpoint` once per zone (one ONNX call each, candidates within the step);
- mpc, site batch: `models.mpc.decide` for all zones at once (one ONNX call per horizon step);
- mpc, per zone: `models.mpc.decide` once per zone, as `edge.inference._decide` calls it;
- mpc, edge: the same with the outlook (`models.outlook`, learnt from the exploration) as the edge passes
  it: each zone's forecast, occupied steps and price computed in the round (not its once-a-day learning).

The MPC's grid and margin: `--step`/`--margin` (default the settings' defaults, `MlSettings`).

Printed: median and 95th percentile wall time per round, and the number of trajectories per zone. The
feature building from the database (`zone_frame`, `build_features`) is not in these figures: it is the
same for both policies. Figures depend on the machine and its load (other processes share its cores).

    python -m benchmarks.bench_ml [--rounds 200] [--families poly2-ridge,random-forest] [--step 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl

from bacpipes.settings import MlSettings
from models.features import FEATURES, build_features
from models.mpc import MpcConfig, ZoneState, decide, session_predictor, trajectories
from models.outlook import Outlook
from models.policy import best_setpoint, candidates
from models.setpoint import export, train
from sim.energyplus.closed_loop import EVERY_S, TZ, explorer, run

LIMITS, BAND, STEP = (22.0, 26.0), (22.0, 25.0), 1.0


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), float(np.quantile(times, 0.95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--explore-days", type=int, default=7)
    parser.add_argument("--families", default="poly2-ridge,linear-arx,random-forest")
    parser.add_argument("--step", type=float, default=MlSettings().candidate_step_c)
    parser.add_argument("--margin", type=float, default=MlSettings().mpc_margin_c)
    args = parser.parse_args()
    explored = run(explorer(*LIMITS, seed=0), date(2025, 6, 2), args.explore_days)
    frames = [build_features(f, TZ) for f in explored.frames.values()]
    rows = [f.select(FEATURES).to_numpy()[-1] for f in frames]
    energy = [float(f["energy_kw"][-1]) for f in explored.frames.values()]
    present = [float(f["cooling_setpoint"][-1]) for f in explored.frames.values()]
    zones = [ZoneState(r, e, min(max(p, LIMITS[0]), LIMITS[1]), *LIMITS, STEP)
             for r, e, p in zip(rows, energy, present, strict=True)]
    config = MpcConfig(step_c=args.step, margin_c=args.margin)
    outlook = Outlook.learn(explored.frames, explored.site, every_s=EVERY_S, timezone=TZ)
    at = explored.frames[next(iter(explored.frames))]["time"][-1]
    names = list(explored.frames)
    paths = len(trajectories(24.0, *LIMITS, STEP, config))
    print(f"{len(zones)} zones; MPC (grid {config.step_c:g} K, margin {config.margin_c:g} K): {paths}"
          f" trajectories per zone over {config.horizon_steps} steps "
          f"({config.horizon_steps * config.every_s / 3600:g} h); one-step: up to "
          f"{len(candidates(*LIMITS, present=24.0, max_change=STEP))} candidates per zone")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export(train(pl.concat(frames), family=family), path, version="bench")
            session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
        predict = session_predictor(session)
        singles = [pl.DataFrame([r], schema=list(FEATURES), orient="row") for r in rows]

        def one_step(singles: list[pl.DataFrame] = singles, session: ort.InferenceSession = session) -> None:
            for frame, zone in zip(singles, zones, strict=True):
                opts = candidates(*LIMITS, present=zone.present, max_change=STEP)
                best_setpoint(session, frame, opts, BAND)

        def batch(predict: Callable = predict) -> None:
            decide(predict, zones, BAND, config)

        def per_zone(predict: Callable = predict) -> None:
            for zone in zones:
                decide(predict, [zone], BAND, config)

        def edge(predict: Callable = predict) -> None:
            for name, zone in zip(names, zones, strict=True):
                forecast, occupied, price = outlook.ahead(name, at, config.horizon_steps,
                                                          float(zone.features[FEATURES.index("outdoor_temp")]))
                with_outlook = ZoneState(zone.features, zone.energy_now, zone.present, zone.low, zone.high,
                                         zone.max_step, forecast, occupied)
                decide(predict, [with_outlook], BAND, config, price.tolist())

        for name, fn in (("one-step", one_step), ("mpc, site batch", batch), ("mpc, per zone", per_zone),
                         ("mpc, edge", edge)):
            median, p95 = timed(fn, args.rounds)
            print(f"{family:<14} {name:<16} median {1e3 * median:7.1f} ms  p95 {1e3 * p95:7.1f} ms per round "
                  f"of {len(zones)} zones")


if __name__ == "__main__":
    main()
