"""The setpoint policy, shared by edge inference and the closed-loop evaluation: of the candidate
setpoints, the one with the least predicted energy whose predicted zone temperature stays in the comfort
band; if none does, the one closest to the band (comfort first, then energy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
