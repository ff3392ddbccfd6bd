"""A/B by switchback: schedule balance, discomfort, savings intervals that recover a known effect, and
the flow rolling a worse model back on simulated history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from bacpipes.settings import load_settings
from central.registry import deploy, register
from flows.ml import ab_flow, ab_plan_flow, baseline_flow
from models.ab import PeriodResult, discomfort_kh, evaluate, switchback
from sim.backfill import backfill
from tests.test_flows import config
from tests.test_inference import onnx_model  # noqa: F401  (a trained model)

START = datetime(2026, 7, 1, tzinfo=UTC)


def periods_with_effect(
    effect: float, days: int = 28, noise: float = 0.04, seed: int = 1
) -> list[PeriodResult]:
    rng = np.random.default_rng(seed)
    return [
        PeriodResult(p, (1 - effect if p.arm == "ml" else 1.0) * rng.normal(1.0, noise), 0.1)
        for p in switchback(START, days, seed=seed)
    ]


def test_switchback_pairs_are_balanced_and_alternate_by_period() -> None:
    periods = switchback(START, 14, hours_per_period=12, seed=4)
    assert len(periods) == 28 and periods[0].start == START and periods[-1].end == START + timedelta(days=14)
    for a, b in zip(periods[::2], periods[1::2], strict=True):
        assert {a.arm, b.arm} == {"ml", "baseline"}
    with pytest.raises(ValueError):
        switchback(START, 7, hours_per_period=6)


def test_discomfort_is_kelvin_hours_outside_the_band() -> None:
    temps = pd.DataFrame({"z1": [21.0, 23.0, 26.5], "z2": [24.0, 25.0, 25.5]})
    assert discomfort_kh(temps, (22.0, 25.0), 1.0) == pytest.approx(1.0 + 1.5 + 0.5)


@pytest.mark.parametrize("effect", [0.10, 0.0, -0.05])
def test_the_interval_recovers_a_known_effect(effect: float) -> None:
    verdict = evaluate(periods_with_effect(effect))
    assert verdict.ci[0] <= effect <= verdict.ci[1], verdict
    assert abs(verdict.savings - effect) < 0.03
    assert verdict.rollback == (effect < -0.02)
    if verdict.rollback:
        assert "more energy" in verdict.reason


def test_too_few_periods_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 2 periods"):
        evaluate(periods_with_effect(0.1, days=2))


def test_ab_flow_rolls_back_a_model_that_uses_more_energy(prefect, onnx_model: bytes,  # noqa: F811
                                                          db_dsn: str, tmp_path: Path) -> None:
    conf = config(tmp_path, db_dsn)
    end = datetime(2026, 8, 20, tzinfo=UTC)
    settings = load_settings(conf)
    backfill(settings, days=43, seed=2, devices=2, interval_s=3600, end=end)
    baseline_flow(conf, days=35, end=end - timedelta(days=8))
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(onnx_model)
    with psycopg.connect(db_dsn) as conn:
        for version in ("1", "2"):
            register(conn, "setpoint", version, model_file, "test")
            deploy(conn, "sim-site", "setpoint", version, "active", "test")
        start = end - timedelta(days=8)
        for p in switchback(start, 8, seed=0):  # the ML days used 20 % more energy: a degraded model
            if p.arm == "ml":
                conn.execute(
                    "UPDATE readings_hourly SET sum = sum * 1.2, min = min * 1.2, max = max * 1.2"
                    " WHERE point_id IN (SELECT point_id FROM point WHERE object_name LIKE '%%-MTR-KW')"
                    " AND hour >= %s AND hour < %s", (p.start, p.end))
    result = ab_flow(conf, start=start, days=8, seed=0)
    assert result["rollback"] and result["rolled_back_to"] == "1"
    assert result["savings"] == pytest.approx(-0.2, abs=0.05)
    with psycopg.connect(db_dsn) as conn:
        newest = conn.execute("SELECT version, mode, reason FROM model_deployments"
                              " ORDER BY created_at DESC LIMIT 1").fetchone()
        alert = conn.execute("SELECT severity, message FROM alerts WHERE source = 'ab'").fetchone()
    assert newest[:2] == ("1", "active") and "rollback from 2" in newest[2]
    assert alert[0] == "critical" and "rolled back to 1" in alert[1]


def test_ab_plan_flow_publishes_the_schedule_once(prefect, db_dsn: str, tmp_path: Path) -> None:
    conf = config(tmp_path, db_dsn)
    assert ab_plan_flow(conf, start=START, days=4, hours_per_period=12, seed=3) == 8
    assert ab_plan_flow(conf, start=START, days=4, hours_per_period=12, seed=3) == 0  # nothing new
    with psycopg.connect(db_dsn) as conn:
        arms = [a for (a,) in conn.execute("SELECT arm FROM ab_schedule ORDER BY period_start")]
    assert arms == [p.arm for p in switchback(START, 4, 12, 3)] and arms.count("ml") == 4
