"""The shared setpoint policy."""

from __future__ import annotations

import pytest

from models.policy import candidates, choose


def test_candidates_respect_the_limits_and_the_step_from_the_present_setpoint() -> None:
    assert candidates(22.0, 24.0) == [22.0, 22.5, 23.0, 23.5, 24.0]
    assert candidates(22.0, 26.0, present=24.0, max_change=0.5) == [23.5, 24.0, 24.5]
    assert candidates(22.0, 23.0, present=25.0, max_change=0.5) == [23.0]  # nearest allowed
    with pytest.raises(ValueError):
        candidates(25.0, 22.0)


def test_least_energy_inside_the_band_else_closest_to_it() -> None:
    inside = choose([23.0, 24.0, 25.0], [30.0, 25.0, 20.0], [23.1, 24.0, 25.3], (22.0, 25.0))
    assert (inside.setpoint, inside.in_band) == (24.0, True)  # 25.0 is cheaper but too warm
    outside = choose([25.0, 26.0], [20.0, 15.0], [25.4, 26.1], (22.0, 25.0))
    assert (outside.setpoint, outside.in_band) == (25.0, False)  # comfort first
