"""Receding-horizon (model-predictive) setpoint policy over the model's own multi-step predictions.

Each interval, for every zone, a set of candidate setpoint trajectories over the horizon (hold a level;
go to one level, then after 30 min or 1 h to another: that includes pre-cooling, low first then high) is
rolled out recursively through the model (`models.features.advance`): each step's predicted zone
temperature and energy become the next step's inputs. The trajectory with the least predicted energy
(or cost, with a price per step) whose predicted zone temperature stays inside the comfort band at every
step wins; if none does, the one that leaves the band least. Only its first move is applied; the next
interval decides again from fresh readings, so a wrong prediction is corrected within one interval.

Trajectories start from the present setpoint and move at most `max_step` per interval inside the ML
limits, so every first move is one the executor accepts. A small cost per kelvin of first move keeps
setpoints from chattering between candidates the model barely tells apart.

One ONNX call per horizon step for all zones and all trajectories together (batched): a 15-zone site
with ~150 trajectories each and an 8-step horizon is 8 calls of ~2,000 rows.

The energy the model predicts is what the site exposes per zone (`energy_kw`: the zone's sensible cooling,
thermal); `price` per step turns it into electricity (or cost) when the caller knows how: the EnergyPlus
closed loop passes HVAC electricity per kW of zone cooling at each step's forecast outdoor temperature.
A zone's `forecast` (outdoor temperature, occupancy) and `occupied` steps are optional; without them
the present values are held and every step is occupied (comfort binds throughout). Humidity is not
modelled (no humidity feature): the closed loop measures it instead of the policy constraining it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.features import FEATURES, TARGETS, advance, set_setpoint
from models.policy import candidates

Predict = Callable[[np.ndarray], np.ndarray]  # (n, FEATURES) -> (n, TARGETS)
ENERGY, TEMP = TARGETS.index("energy_kw_next"), TARGETS.index("zone_temp_next")


@dataclass(frozen=True, slots=True)
class MpcConfig:
    horizon_steps: int = 8  # 2 h at 15-minute intervals
    every_s: float = 900.0
    step_c: float = 0.5  # the grid of setpoint levels
    switch_steps: tuple[int, ...] = (2, 4)  # when a two-level trajectory changes level
    margin_c: float = 0.3  # aim inside the band: predictions are estimates, comfort is judged on the room
    change_cost: float = 3.0  # kW·interval per kelvin moved, now or later in the plan (anti-chatter)
    # a cooled zone settles at its cooling setpoint: judge comfort on the warmer of the prediction and the
    # setpoint, so a model that is slow to predict the warming cannot buy energy with a too-high setpoint
    settle_at_setpoint: bool = True
    # outside occupied hours (a zone's `occupied` says which steps are) only this ceiling holds: the zone
    # may float warm before the day starts, as long as it is back in the band when people are
    unoccupied_high_c: float = 28.0


@dataclass(frozen=True, slots=True)
class Plan:
    setpoint: float  # the first move, to apply now
    energy_kw: float  # predicted for the next interval
    zone_temp: float
    in_band: bool
    trajectory: tuple[float, ...]
    horizon_energy_kw: float  # sum over the horizon (per interval), the objective without price


def session_predictor(session: Any) -> Predict:
    """An ONNX session (the graph's one input is `features`) as a predict function."""

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"features": x.astype(np.float32)})[0]

    return predict


def trajectories(present: float | None, low: float, high: float, max_step: float | None,
                 config: MpcConfig) -> np.ndarray:
    """(m, horizon) candidate setpoint sequences from `present`, each move within `max_step`."""
    levels = candidates(low, high, config.step_c)
    h = config.horizon_steps
    targets = [[a] * h for a in levels]
    for k in config.switch_steps:
        if 0 < k < h:
            targets += [[a] * k + [b] * (h - k) for a in levels for b in levels if a != b]
    wanted = np.array(targets, dtype=float)
    if present is None or max_step is None:
        return np.unique(wanted, axis=0)
    out = np.empty_like(wanted)
    now = np.full(len(wanted), float(present))
    for k in range(h):
        now = now + np.clip(wanted[:, k] - now, -max_step, max_step)
        now = np.clip(now, low, high)
        out[:, k] = now
    return np.unique(np.round(out, 3), axis=0)


def rollout(predict: Predict, rows: np.ndarray, energy_now: np.ndarray, setpoints: np.ndarray,
            every_s: float, forecast: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (energy, zone temperature), each (n, H), of n feature rows under n setpoint sequences
    (n, H), every step fed the previous step's prediction. One model call per step.

    `forecast` (n, H, 2): outdoor temperature and occupancy at the end of each step (so row k - 1 is
    what the k-th model call sees); None holds the present ones."""
    x = set_setpoint(rows, setpoints[:, 0])
    n, h = setpoints.shape
    energy, temp = np.empty((n, h)), np.empty((n, h))
    for k in range(h):
        y = np.asarray(predict(x), dtype=float)
        energy[:, k], temp[:, k] = y[:, ENERGY], y[:, TEMP]
        if k + 1 < h:
            ahead = (None, None) if forecast is None else (forecast[:, k, 0], forecast[:, k, 1])
            x = advance(x, y, energy_now, setpoints[:, k + 1], every_s, *ahead)
            energy_now = y[:, ENERGY]
    return energy, temp


@dataclass(frozen=True, slots=True)
class ZoneState:
    """What the policy knows of one zone now: its latest feature row (FEATURES order), its energy reading
    at this instant, its present setpoint and the point's ML limits; optionally what it knows of the
    horizon: a forecast of outdoor temperature and occupancy, and which steps are occupied (the building's
    schedule: comfort binds only then). Without them: persistence, and every step occupied."""

    features: np.ndarray  # (FEATURES,)
    energy_now: float
    present: float | None
    low: float
    high: float
    max_step: float | None = None
    forecast: np.ndarray | None = None  # (H, 2): outdoor temperature, occupancy (0..1) at each step's end
    occupied: tuple[bool, ...] | None = None  # (H,): is each step's end in occupied hours


def decide(predict: Predict, zones: Sequence[ZoneState], band: tuple[float, float],
           config: MpcConfig = MpcConfig(), price: Sequence[float] | None = None) -> list[Plan]:
    """One plan per zone, all zones' trajectories through the model in one batch per horizon step.

    `price` (per horizon step, e.g. from a tariff) weighs each step's energy; None: energy alone."""
    if not zones:
        return []
    h = config.horizon_steps
    sets = [trajectories(z.present, z.low, z.high, z.max_step, config) for z in zones]
    counts = [len(s) for s in sets]
    setpoints = np.vstack(sets)
    rows = np.repeat(np.stack([z.features for z in zones]), counts, axis=0)
    energy_now = np.repeat([z.energy_now for z in zones], counts).astype(float)
    forecast = None
    if any(z.forecast is not None for z in zones):
        held = [np.asarray(z.forecast, dtype=float) if z.forecast is not None else np.tile(
            z.features[[FEATURES.index("outdoor_temp"), FEATURES.index("occupancy")]], (h, 1)) for z in zones]
        forecast = np.repeat(np.stack(held), counts, axis=0)
    energy, temp = rollout(predict, rows, energy_now, setpoints, config.every_s, forecast)
    weights = np.ones(h) if price is None else np.asarray(price, dtype=float)
    cost_all = (np.maximum(energy, 0.0) * weights).sum(axis=1)
    occupied = np.repeat(np.array([z.occupied if z.occupied is not None else (True,) * h for z in zones],
                                  dtype=bool), counts, axis=0)
    aim_low = np.where(occupied, band[0] + config.margin_c, -np.inf)
    aim_high = np.where(occupied, band[1] - config.margin_c, config.unoccupied_high_c)
    warm = np.where(occupied & config.settle_at_setpoint, np.maximum(temp, setpoints), temp)
    miss_all = (np.clip(warm - aim_high, 0, None) + np.clip(aim_low - temp, 0, None)).sum(axis=1)
    plans, start = [], 0
    for zone, m in zip(zones, counts, strict=True):
        part = slice(start, start + m)
        start += m
        first = setpoints[part, 0]
        # every kelvin the trajectory moves is paid for, the later moves too: charging the first move alone
        # made a plan that moves "next step" free, so the policy put every move off for ever
        moved = np.abs(first - (zone.present if zone.present is not None else first))
        moved = moved + np.abs(np.diff(setpoints[part], axis=1)).sum(axis=1)
        cost = cost_all[part] + config.change_cost * moved
        miss = miss_all[part]
        feasible = miss <= 1e-9
        # comfort first: the cheapest feasible, else the least outside the band (then the cheapest)
        order = np.lexsort((cost, np.where(feasible, 0.0, miss)))
        best = int(order[0])
        i = start - m + best
        plans.append(Plan(float(first[best]), float(energy[i, 0]), float(temp[i, 0]), bool(feasible[best]),
                          tuple(float(v) for v in setpoints[i]), float(energy[i].sum())))
    return plans
