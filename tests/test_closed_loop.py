"""The closed-loop harness: identical weather and occupancy for both runs, the model trained only on an
exploration run, and the building's own control as the reference."""

from __future__ import annotations

from datetime import datetime

from flows.ml import closed_loop_flow
from sim.closed_loop import closed_loop, run


def test_same_seed_same_building_and_baseline_control_is_comfortable() -> None:
    hold = lambda b, frames: [24.0] * len(b.zones)  # noqa: E731  (the building's own schedule)
    first, frames = run(2, seed=5, start=datetime(2026, 7, 1), days=1, every_s=900, controller=hold,
                        band=(22.0, 25.0))
    second, _ = run(2, seed=5, start=datetime(2026, 7, 1), days=1, every_s=900, controller=hold,
                    band=(22.0, 25.0))
    assert first == second and first.energy_kwh > 0 and first.peak_kw > 0
    assert first.moisture_kwh > 0  # a humid July: the coils dehumidify
    assert first.discomfort_kh < 0.5  # a 24 °C setpoint keeps the zones in 22–25 °C
    assert [f.height for f in frames] == [96, 96]


def test_closed_loop_reports_both_runs_on_the_same_days() -> None:
    report = closed_loop(days=1, zones=1)
    assert report.baseline.energy_kwh > 0 and report.ml.energy_kwh > 0
    assert report.ml != report.baseline  # the model did act
    assert "kWh" in report.summary() and "K·h" in report.summary() and "moisture" in report.summary()


def test_closed_loop_flow(prefect) -> None:
    result = closed_loop_flow(days=1, zones=1)
    assert set(result) == {"savings", "baseline", "ml", "summary"}
    assert result["baseline"]["energy_kwh"] > 0
