"""The setpoint policy, shared by edge inference and the closed-loop evaluation: of the candidate
setpoints, the one with the least predicted energy whose predicted zone temperature stays in the comfort
band; if none does, the one closest to the band (comfort first, then energy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from models.features import FEATURES, with_setpoint


@dataclass(frozen=True, slots=True)
class Choice:
    setpoint: float
    energy_kw: float
    zone_temp: float
    in_band: bool


def candidates(low: float, high: float, step: float = 0.5, *, present: float | None = None,
               max_change: float | None = None) -> list[float]:
    """Setpoints from low to high inclusive (the point's ML limits), and within `max_change` of the
    present setpoint when both are given (the executor refuses a bigger ML step anyway)."""
    if not low <= high or step <= 0:
        raise ValueError(f"bad candidate range {low}..{high} step {step}")
    values = [round(float(v), 3) for v in np.arange(low, high + step / 2, step)]
    if present is None or max_change is None:
        return values
    near = [v for v in values if abs(v - present) <= max_change + 1e-9]
    return near or [min(values, key=lambda v: abs(v - present))]


def choose(setpoints: Sequence[float], energy_kw: Sequence[float], zone_temp: Sequence[float],
           band: tuple[float, float]) -> Choice:
    low, high = band
    options = [
        Choice(s, e, t, low <= t <= high) for s, e, t in zip(setpoints, energy_kw, zone_temp, strict=True)
    ]
    if not options:
        raise ValueError("no candidate setpoints")
    comfortable = [o for o in options if o.in_band]
    if comfortable:
        return min(comfortable, key=lambda o: (o.energy_kw, o.setpoint))
    return min(options, key=lambda o: (max(low - o.zone_temp, o.zone_temp - high), o.energy_kw))


def best_setpoint(session: Any, features: pl.DataFrame, options: Sequence[float],
                  band: tuple[float, float]) -> Choice:
    """Ask the ONNX model (`session`) about each candidate for the same instant (one feature row), then
    choose. The edge and the closed-loop evaluation both decide through here."""
    batch = pl.concat([with_setpoint(features, s) for s in options]).select(FEATURES)
    predicted = session.run(None, {"features": batch.to_numpy().astype(np.float32)})[0]
    return choose(options, predicted[:, 0], predicted[:, 1], band)
