"""Casino occupancy by hour of week: busy evenings and weekends, quiet early mornings, never empty.

Interpolated linearly between hourly values so loads ramp instead of stepping on the hour, which
would otherwise show up as artificial jumps in the trend data the pipeline stores.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# Fraction of peak occupancy on a weekday, hour 0..23.
WEEKDAY = (
    0.70, 0.60, 0.48, 0.36, 0.26, 0.18, 0.14, 0.14, 0.16, 0.22, 0.30, 0.38,
    0.45, 0.48, 0.50, 0.52, 0.56, 0.62, 0.72, 0.82, 0.88, 0.90, 0.86, 0.78,
)  # fmt: skip

# Below this fraction the HVAC schedule is "unoccupied" (fan only when the zone needs it).
OCCUPIED_THRESHOLD = 0.2


def _hourly(weekday: int, hour: int) -> float:
    value = WEEKDAY[hour]
    if weekday in (5, 6):  # Saturday, Sunday: busier all day
        value = value * 1.15 + 0.05
    late_weekend_night = (weekday in (4, 5) and hour >= 20) or (weekday in (5, 6) and hour < 4)
    if late_weekend_night:
        value += 0.08
    return min(1.0, value)


def occupancy_fraction(t: datetime) -> float:
    """0..1 share of the floor's peak headcount present at building time t."""
    base = t.replace(minute=0, second=0, microsecond=0)
    nxt = base + timedelta(hours=1)
    frac = (t - base).total_seconds() / 3600.0
    a = _hourly(base.weekday(), base.hour)
    b = _hourly(nxt.weekday(), nxt.hour)
    return a + (b - a) * frac
