"""The A/B washout and switch hour: a known carry-over biases a switchback that scores every hour and not
one that washes the first hours out; periods start at the chosen local hour through DST changes; central
scoring drops the washout hours from both arms on a real database; the ab flow scores the published
schedule."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg
import pytest

from bacpipes.settings import load_settings
from bacpipes.zones import site_hourly
from central.ab import publish_schedule, published, score
from central.baselines import store_baseline
from flows.ml import ab_periods
from models.ab import Period, complement, evaluate, score_periods, switchback
from models.baseline import fit_baseline
from sim.backfill import backfill
from sim.energyplus.ab_check import Series, paired_saving, splice
from tests.test_flows import config

NEW_YORK = ZoneInfo("America/New_York")
SAVING, DEBT_KWH, DEBT_HOURS = 0.10, 6.0, 4  # ML saves 10 %; an ML day leaves 4 h of +6 kWh to the next


def hourly_profile(start: datetime, days: int, seed: int = 0) -> pd.Series:
    """kWh per hour: an office day (on 06-20 h), a little noise, weather varying by day."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=days * 24, freq="1h")
    on = ((index.hour >= 6) & (index.hour < 20)).astype(float)
    day = np.repeat(rng.normal(1.0, 0.08, days), 24)
    return pd.Series((2 + 10 * on) * day * rng.normal(1.0, 0.01, len(index)), index=index)


def switched_run(periods: list[Period], base: pd.Series) -> pd.Series:
    """What a switchback measures: ML hours save SAVING, and the first DEBT_HOURS after an ML period
    (whatever the next arm) pay DEBT_KWH an hour more: the carry-over."""
    out = base.copy()
    for i, p in enumerate(periods):
        inside = (out.index >= p.start) & (out.index < p.end)
        if p.arm == "ml":
            out[inside] *= 1 - SAVING
        if i and periods[i - 1].arm == "ml":
            out[(out.index >= p.start) & (out.index < p.start + timedelta(hours=DEBT_HOURS))] += DEBT_KWH
    return out


def test_a_washout_removes_a_known_carry_over_bias() -> None:
    start = datetime(2025, 7, 7)
    base = hourly_profile(start, 28)
    periods = switchback(start, 28, seed=2)
    ml_always = switched_run([Period(p.start, p.end, "ml") for p in periods], base)
    results = {}
    for washout in (0.0, 3.0, 6.0):
        scored = []
        for plan in (periods, complement(periods)):
            scored += score_periods(plan, switched_run(plan, base), base, washout_h=washout)
        results[washout] = evaluate(scored)
    truth = paired_saving(periods, base, ml_always, 6.0)  # over the hours the washout scores
    assert truth == pytest.approx(SAVING, abs=1e-9)
    biased = results[0.0]
    assert biased.savings > SAVING + 0.05 and biased.ci[0] > SAVING, biased  # the bias, and it is confident
    assert results[3.0].savings > SAVING + 0.01  # too short a washout: part of the debt still lands
    fixed = results[6.0]
    assert fixed.savings == pytest.approx(SAVING, abs=0.005), fixed
    assert fixed.ci[0] - 1e-9 <= SAVING <= fixed.ci[1] + 1e-9, fixed
    # the full-run truth (every morning pays the ML day's debt) is what a washout cannot see
    assert paired_saving(periods, base, ml_always, 0.0) < SAVING


def test_a_spliced_switchback_has_no_carry_over() -> None:
    start = datetime(2025, 7, 7)
    base = hourly_profile(start, 14, seed=5)
    periods = switchback(start, 14, seed=1)
    ml = base * (1 - SAVING)
    spliced = splice(periods, base, ml)
    assert spliced[periods[0].start] == (ml if periods[0].arm == "ml" else base)[periods[0].start]
    verdict = evaluate(score_periods(periods, spliced, base))
    assert verdict.savings == pytest.approx(SAVING, abs=1e-9)


def test_scoring_drops_the_washout_from_energy_and_comfort_alike() -> None:
    start = datetime(2025, 7, 7)
    periods = switchback(start, 4, seed=0)
    index = pd.date_range(start, periods=4 * 96, freq="15min")
    energy = pd.Series(1.0, index=index)
    temps = pd.DataFrame({"z1": 23.0, "z2": 23.0}, index=index)
    early = (index - index.normalize()) < pd.Timedelta(hours=2)
    energy[early], temps.loc[early, "z1"] = 5.0, 27.0  # 2 K over the band for the first 2 h of every day
    washed = score_periods(periods, energy, pd.Series(1.0, index=index), washout_h=2, zone_temps=temps,
                           band=(22.0, 25.0), step_h=0.25)
    assert all(r.normalised_energy == pytest.approx(1.0) and r.discomfort_kh_per_zone == 0 for r in washed)
    whole = score_periods(periods, energy, pd.Series(1.0, index=index), zone_temps=temps,
                          band=(22.0, 25.0), step_h=0.25)
    assert whole[0].normalised_energy == pytest.approx((88 + 8 * 5) / 96)
    assert whole[0].discomfort_kh_per_zone == pytest.approx(2.0 * 2 / 2)  # 2 K x 2 h, over 2 zones
    assert Period(start, start + timedelta(hours=12), "ml").scored_from(20) == start + timedelta(hours=12)


def test_the_default_schedule_is_unchanged() -> None:
    start = datetime(2026, 7, 1, 5, tzinfo=UTC)
    periods = switchback(start, 6, seed=3)
    assert [p.start for p in periods] == [start + timedelta(days=i) for i in range(6)]
    assert [p.arm for p in periods] == [p.arm for p in switchback(start, 6, seed=3, switch_hour=None)]


@pytest.mark.parametrize("start", [datetime(2025, 10, 28, tzinfo=UTC), datetime(2025, 3, 5, tzinfo=UTC)])
def test_periods_start_at_the_local_switch_hour_through_dst(start: datetime) -> None:
    periods = switchback(start, 10, seed=4, switch_hour=22, tz="America/New_York")
    assert len(periods) == 10 and start <= periods[0].start < start + timedelta(days=1)
    assert all(p.start.tzinfo is UTC and p.start.astimezone(NEW_YORK).hour == 22 for p in periods)
    assert all(a.end == b.start for a, b in itertools.pairwise(periods))
    lengths = sorted({p.end - p.start for p in periods})
    assert lengths == sorted({timedelta(hours=24), timedelta(hours=23 if start.month == 3 else 25)})
    for a, b in zip(periods[::2], periods[1::2], strict=True):
        assert {a.arm, b.arm} == {"ml", "baseline"}


def test_half_days_switch_at_the_hour_and_twelve_hours_later() -> None:
    start = datetime(2025, 11, 1, 12, tzinfo=NEW_YORK)
    periods = switchback(start, 3, hours_per_period=12, switch_hour=22)
    assert [p.start.hour for p in periods] == [22, 10, 22, 10, 22, 10]
    first = periods[0].end.astimezone(UTC) - periods[0].start.astimezone(UTC)
    assert first == timedelta(hours=13)  # 2 Nov: clocks go back at 02:00 (same-zone subtraction is wall)


def test_whole_day_periods_for_a_building_that_remembers_yesterday() -> None:
    start = datetime(2025, 10, 28, tzinfo=UTC)
    periods = switchback(start, 14, hours_per_period=48, seed=1, switch_hour=22, tz=NEW_YORK)
    assert len(periods) == 7 and all(p.start.astimezone(NEW_YORK).hour == 22 for p in periods)
    assert {(p.end - p.start) for p in periods} == {timedelta(hours=48), timedelta(hours=49)}  # 2 Nov
    assert switchback(start, 14, 48)[-1].end == start + timedelta(days=14)
    with pytest.raises(ValueError, match="whole days"):
        switchback(start, 14, hours_per_period=36)


def test_a_switch_hour_that_does_not_exist_that_day_falls_an_hour_later() -> None:
    periods = switchback(datetime(2025, 3, 8, 12, tzinfo=UTC), 2, switch_hour=2, tz=NEW_YORK)
    assert [p.start.astimezone(NEW_YORK).hour for p in periods] == [3, 2]  # 9 March has no 02:00


def test_naive_starts_switch_on_their_own_wall_clock_and_bad_hours_are_refused() -> None:
    periods = switchback(datetime(2025, 7, 7), 13, switch_hour=22)
    assert periods[0].start == datetime(2025, 7, 7, 22) and periods[-1].end == datetime(2025, 7, 20, 22)
    with pytest.raises(ValueError, match=r"0\.\.23"):
        switchback(datetime(2025, 7, 7), 2, switch_hour=24)
    with pytest.raises(ValueError, match="aware start"):
        switchback(datetime(2025, 7, 7), 2, switch_hour=22, tz="UTC")


def test_ab_check_table_reads_the_synthetic_truth() -> None:
    from sim.energyplus.ab_check import Design, check, table

    start = datetime(2025, 7, 7)
    base = hourly_profile(start, 14, seed=7)
    periods = switchback(start, 14, seed=0)
    temps = pd.DataFrame({"z": 23.0}, index=base.index)
    runs = (Series(switched_run(periods, base), temps),
            Series(switched_run(complement(periods), base), temps))
    designs = [Design("midnight, no washout", periods, 0.0), Design("midnight, washout 6 h", periods, 6.0)]
    rows = check(designs, Series(base, temps), Series(base * (1 - SAVING), temps),
                 {d.label: runs for d in designs})
    assert rows[0].switched.savings > SAVING + 0.05
    assert rows[1].switched.savings == pytest.approx(SAVING, abs=0.005)
    assert all(r.spliced.savings == pytest.approx(SAVING, abs=1e-9) for r in rows)
    assert "washout 6 h" in table(rows)


# -- central, on a real database ------------------------------------------------------------------------

END = datetime(2026, 8, 20, tzinfo=UTC)


def test_central_scoring_drops_the_washout_hours_from_both_arms(db_dsn: str, tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, db_dsn))
    assert settings.ab.washout_h == 0.0 and settings.ab.switch_hour is None  # the documented defaults
    backfill(settings, days=22, seed=2, devices=2, interval_s=3600, end=END)
    fit_start, start = END - timedelta(days=22), END - timedelta(days=8)
    with psycopg.connect(db_dsn) as conn:
        store_baseline(conn, "sim-site", fit_start, start,
                       fit_baseline(site_hourly(settings, fit_start, start)))
        conn.commit()
    periods = switchback(start, 8, seed=0, switch_hour=22, tz=settings.site.tz)
    periods = [p for p in periods if p.end <= END]
    before = score(settings, periods, washout_h=6)
    with psycopg.connect(db_dsn) as conn:  # the 5 h after each switch cost double: carry-over
        for p in periods:
            conn.execute(
                "UPDATE readings_hourly SET sum = sum * 2, min = min * 2, max = max * 2"
                " WHERE point_id IN (SELECT point_id FROM point WHERE object_name LIKE '%%-MTR-KW')"
                " AND hour >= %s AND hour < %s", (p.start, p.start + timedelta(hours=5)))
    after = score(settings.model_copy(update={"ab": settings.ab.model_copy(update={"washout_h": 6})}),
                  periods)  # from the settings
    assert len(after) == len(periods) >= 6
    for b, a in zip(before, after, strict=True):
        assert a.normalised_energy == pytest.approx(b.normalised_energy, rel=1e-9)
        assert a.discomfort_kh_per_zone == pytest.approx(b.discomfort_kh_per_zone)
    unwashed = score(settings, periods)  # the default: no washout
    assert all(u.normalised_energy > b.normalised_energy * 1.05
               for u, b in zip(unwashed, before, strict=True))


def test_the_ab_flow_scores_the_schedule_the_edge_followed(db_dsn: str, tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, db_dsn))
    start = END - timedelta(days=8)
    recomputed = switchback(start, 8, seed=0)  # what the flow scored before: blind to the published plan
    assert ab_periods.fn(settings, start, 8, 0, None) == recomputed  # nothing published: the fallback
    plan = switchback(start, 8, seed=5, switch_hour=22, tz=settings.site.tz)
    with psycopg.connect(db_dsn) as conn:
        publish_schedule(conn, "sim-site", plan)
        publish_schedule(conn, "other-site", switchback(start, 8, seed=9))  # not this site's
        assert published(conn, "sim-site", start, start + timedelta(days=9)) == plan
    inside = [p for p in plan if p.end <= END]  # the last period is not over at the window's end
    assert len(inside) == 7 and ab_periods.fn(settings, start, 8, 0, None) == inside
