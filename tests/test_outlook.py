"""The MPC's outlook (`models.outlook`), learnt from frames as the edge reads them: occupancy by time of
week (a zone that empties while the building is in use stays occupied), HVAC electricity per kW of zone
cooling from the site's meter, the outdoor temperature ahead from the latest day, and no outlook at all
from too little history. Pure: synthetic frames, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import pytest

from models.mpc import MpcConfig, ZoneState, decide
from models.outlook import NotEnoughHistory, Outlook
from tests.test_mpc import state, toy

EVERY = 900.0
START = datetime(2025, 7, 7)  # a Monday
H = 8


def occupancy(zone: str, t: datetime) -> float:
    if t.weekday() == 6:
        return 0.05  # Sundays: the cleaners' trickle, not occupied
    working = t.weekday() < 5 and 8 <= t.hour < 18
    if zone == "MEET" and 12 <= t.hour < 13:
        return 0.0  # a meeting room empty over lunch, the building in use
    return 0.9 if working else 0.0


def outdoor(t: datetime) -> float:
    return 28.0 + 4.0 * np.sin(2 * np.pi * (t.hour - 9) / 24) + 0.1 * (t - START).days


def frames(days: float = 8, zones: tuple[str, ...] = ("OPEN", "MEET"), tz: str | None = None,
           ) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    times = [START + timedelta(seconds=EVERY * k) for k in range(int(days * 86400 / EVERY))]
    out = {}
    for i, zone in enumerate(zones):
        load = [10.0 + 30.0 * occupancy(zone, t) + i + (k % 5) for k, t in enumerate(times)]
        out[zone] = pl.DataFrame({"time": times, "zone_temp": 24.0, "cooling_setpoint": 24.0,
                                  "energy_kw": load, "occupancy": [occupancy(zone, t) for t in times],
                                  "outdoor_temp": [outdoor(t) for t in times]})
    total = pl.concat([f.select("time", "energy_kw") for f in out.values()]).group_by("time").agg(
        pl.col("energy_kw").sum()).sort("time")
    site = total.with_columns(pl.Series("outdoor_temp", [outdoor(t) for t in total["time"]])).select(
        "time", (3.0 + pl.col("energy_kw") * (0.2 + 0.01 * pl.col("outdoor_temp"))).alias("hvac_kw"))
    if tz is not None:  # as the edge reads them: aware, in the site's zone
        out = {z: f.with_columns(pl.col("time").dt.replace_time_zone(tz)) for z, f in out.items()}
        site = site.with_columns(pl.col("time").dt.replace_time_zone(tz))
    return out, site


@pytest.fixture(scope="module")
def learnt() -> Outlook:
    zones, site = frames()
    return Outlook.learn(zones, site, every_s=EVERY)


def test_occupancy_is_learnt_by_time_of_week(learnt: Outlook) -> None:
    monday = START + timedelta(days=7)
    assert learnt.occupancy_ahead("OPEN", monday.replace(hour=9), 1)[0] == pytest.approx(0.9)
    assert learnt.occupancy_ahead("OPEN", monday.replace(hour=2), 1)[0] == 0.0
    # occupied: above the 5 % trickle; the meeting room at lunch because the building is in use
    assert learnt.occupied("OPEN", monday.replace(hour=7, minute=30), 4) == (False, True, True, True)
    assert learnt.occupancy_ahead("MEET", monday.replace(hour=12), 1)[0] == 0.0
    assert learnt.occupied("MEET", monday.replace(hour=12), 2) == (True, True)
    sunday = START + timedelta(days=6, hours=11)
    assert learnt.occupancy_ahead("OPEN", sunday, 1)[0] == pytest.approx(0.05)
    assert not any(learnt.occupied("OPEN", sunday, H))
    assert learnt.days == pytest.approx(8 - EVERY / 86400)


def test_electricity_per_kw_of_cooling_is_fitted_on_the_hvac_meter(learnt: Outlook) -> None:
    assert learnt.elec_per_kw == pytest.approx((0.2, 0.01), abs=1e-6)
    assert learnt.weights(np.array([25.0, 35.0])) == pytest.approx([0.45, 0.55])
    zones, _ = frames()
    assert Outlook.learn(zones).elec_per_kw is None  # no meter: every step weighs 1
    assert (Outlook.learn(zones).weights(np.array([25.0, 35.0])) == 1.0).all()


def test_the_forecast_has_the_policys_shapes_and_reads_the_latest_day(learnt: Outlook) -> None:
    at = START + timedelta(days=7, hours=10)  # just after the history: yesterday (Sunday) is in it
    forecast, occupied, price = learnt.ahead("OPEN", at, H, outdoor_now=outdoor(at) + 1.5)
    assert forecast.shape == (H, 2) and len(occupied) == H and price.shape == (H,)
    yesterday = [outdoor(at - timedelta(days=1) + timedelta(seconds=EVERY * (k + 1))) for k in range(H)]
    offset = outdoor(at) + 1.5 - outdoor(at - timedelta(days=1))
    assert forecast[:, 0] == pytest.approx(np.array(yesterday) + offset)
    assert forecast[:, 1] == pytest.approx([0.9] * H) and all(occupied)
    # a day later (the outlook is learnt at most once a day): the day before yesterday, shifted
    later = at + timedelta(days=1)
    back = [outdoor(later - timedelta(days=2) + timedelta(seconds=EVERY * (k + 1))) for k in range(H)]
    assert learnt.outdoor_ahead(later, H, 30.0) == pytest.approx(
        np.array(back) + 30.0 - outdoor(later - timedelta(days=2)))
    # far beyond the history: the present held
    assert (learnt.outdoor_ahead(at + timedelta(days=30), H, 31.0) == 31.0).all()
    # what models.mpc takes, per zone
    plans = decide(toy, [ZoneState(*_fields(state()), forecast=forecast, occupied=occupied)], (22.0, 25.0),
                   MpcConfig(horizon_steps=H), price.tolist())
    assert len(plans) == 1 and 22.0 <= plans[0].setpoint <= 26.0


def _fields(z: ZoneState) -> tuple:
    return z.features, z.energy_now, z.present, z.low, z.high, z.max_step


def test_aware_frames_are_read_in_the_sites_time_zone() -> None:
    zones, site = frames(tz="America/New_York")
    local = Outlook.learn(zones, site, every_s=EVERY, timezone="America/New_York")
    nine_local = datetime(2025, 7, 14, 9, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    assert local.occupancy_ahead("OPEN", nine_local, 1)[0] == pytest.approx(0.9)
    assert local.occupancy_ahead("OPEN", nine_local.replace(hour=9), 1)[0] == 0.0  # 05 h local


def test_too_little_history_gives_no_outlook() -> None:
    zones, site = frames(days=0.5)
    with pytest.raises(NotEnoughHistory, match=r"11\.8 h of history, an outlook needs 24 h"):
        Outlook.learn(zones, site, every_s=EVERY)
    assert Outlook.learn(zones, site, every_s=EVERY, min_days=0.25).days == pytest.approx(0.49, abs=0.01)
    empty = {z: f.with_columns(pl.lit(None, pl.Float64).alias("occupancy")) for z, f in zones.items()}
    with pytest.raises(NotEnoughHistory, match="no zone has occupancy"):
        Outlook.learn(empty)
    # a week not yet seen: the same slot of day over the days seen (here Monday only, at 0.5 days)
    short = Outlook.learn(zones, site, every_s=EVERY, min_days=0.25)
    assert short.occupancy_ahead("OPEN", START + timedelta(days=2, hours=9), 1)[0] == pytest.approx(0.9)
