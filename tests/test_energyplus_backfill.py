"""`sim.energyplus.backfill`: an EnergyPlus prototype's history in a real PostgreSQL, as if discovered,
polled and ingested (issue 16, items 3 and 5).

The medium office in Tampa: a week of July at 5-minute steps (the default), and five weeks at 15-minute
steps for the baseline. No BACnet: binding a socket fails the test.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.db import migrate
from bacpipes.settings import Settings, load_settings
from bacpipes.zones import find_zones, site_hourly
from models.baseline import fit_baseline, metrics
from sim.backfill import backfill as rc_backfill
from sim.devices import VENDOR_NAME
from sim.energyplus.backfill import (
    EnergyPlusBackfillReport,
    backfill,
    discovered_devices,
    resolve_timesteps,
    standard_time,
)
from sim.energyplus.points import DeviceSpec, PointSpec
from tests.conftest import fresh_database

SITE = "tampa-office"
ZONE = "America/New_York"
BUILDING = "energyplus:ASHRAE901_OfficeMedium_STD2019_Denver"
END = datetime(2025, 7, 8)  # local: history Tue 1 .. Mon 7 July 2025
DAYS = 7
STEPS = DAYS * 24 * 12  # one reading per 5-minute zone timestep


@pytest.fixture(autouse=True)
def no_sockets_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, *args: object) -> None:
        raise AssertionError(f"a socket was bound: {args}")

    monkeypatch.setattr(socket.socket, "bind", refuse)


def settings_for(dsn: str) -> Settings:
    return load_settings(None, database={"dsn": dsn}, site={"id": SITE, "timezone": ZONE})


@pytest.fixture(scope="module")
def week() -> Iterator[tuple[Settings, EnergyPlusBackfillReport]]:
    with fresh_database() as dsn:
        settings = settings_for(dsn)
        report = backfill(settings, DAYS, building=BUILDING, weather="tampa", end=END)
        yield settings, report


def _connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(settings.database.dsn)


def _series(conn: psycopg.Connection, name: str) -> dict[datetime, float]:
    rows = conn.execute(
        "SELECT r.time, r.value FROM sensor_readings r JOIN point p USING (site_id, point_id)"
        " WHERE r.site_id = %s AND p.object_name = %s ORDER BY r.time",
        (SITE, name),
    ).fetchall()
    return {t: v for t, v in rows}


def test_a_week_has_one_reading_per_point_and_step(week: tuple[Settings, EnergyPlusBackfillReport]) -> None:
    settings, report = week
    tz = settings.site.tz
    assert (report.timesteps_per_hour, report.interval_s) == (12, 300.0)
    assert report.rows == report.points * STEPS and report.skipped == 0
    assert report.first == END.replace(tzinfo=tz) - timedelta(days=DAYS)  # 04:00 UTC (EDT)
    assert report.last == END.replace(tzinfo=tz) - timedelta(minutes=5)
    with _connect(settings) as conn:
        counts = conn.execute(
            "SELECT point_id, count(*), min(time), max(time) FROM sensor_readings WHERE site_id = %s"
            " GROUP BY point_id",
            (SITE,),
        ).fetchall()
        assert len(counts) == report.points
        assert {(c, lo, hi) for _, c, lo, hi in counts} == {(STEPS, report.first, report.last)}
        # the rollup and point_state saw every row, as the ingester's statement does
        hourly = conn.execute("SELECT sum(count) FROM readings_hourly WHERE site_id = %s", (SITE,)).fetchone()
        assert hourly == (report.rows,)
        state = conn.execute(
            "SELECT count(*), min(time), max(time) FROM point_state WHERE site_id = %s", (SITE,)
        ).fetchone()
        assert state == (report.points, report.last, report.last)
        simulated, description, seed, first, last = conn.execute(
            "SELECT simulated, description, seed, first_reading, last_reading FROM data_source"
            " WHERE site_id = %s",
            (SITE,),
        ).fetchone()
    assert simulated and seed is None and (first, last) == (report.first, report.last)
    for part in ("EnergyPlus ASHRAE901_OfficeMedium_STD2019_Denver", "USA_FL_Tampa", "12 steps per hour"):
        assert part in description


def test_the_catalog_is_what_discovery_records(week: tuple[Settings, EnergyPlusBackfillReport]) -> None:
    settings, report = week
    with _connect(settings) as conn:
        devices = conn.execute(
            "SELECT device_id, name, vendor_name, model_name, address, max_apdu, segmentation FROM device"
            " WHERE site_id = %s ORDER BY device_id",
            (SITE,),
        ).fetchall()
        points = conn.execute(
            "SELECT object_type, object_name, units, commandable, writable, device_min_value,"
            " device_max_value, first_seen FROM point WHERE site_id = %s",
            (SITE,),
        ).fetchall()
    assert [d[:2] for d in devices] == [(1001, "AHU-1"), (1002, "AHU-2"), (1003, "AHU-3"), (1004, "PLANT-1"),
                                        (1005, "MTR-1")]
    models = ["VB-EP-AHU"] * 3 + ["VB-EP-PLANT", "VB-EP-MTR"]
    assert [d[2:4] for d in devices] == [(VENDOR_NAME, m) for m in models]
    assert [d[4] for d in devices] == [f"127.0.0.{10 + k}" for k in range(5)]
    assert len(points) == report.points
    setpoints = [p for p in points if p[3]]
    assert len(setpoints) == 30  # cooling and heating, 15 zones
    assert all(t == "analog-value" and n.endswith(("-ZN-CLG-SP", "-ZN-HTG-SP")) and u == "degreesCelsius"
               and w and lo is not None and hi is not None and lo < hi
               for t, n, u, _, w, lo, hi, _ in setpoints)
    assert all(t == "analog-input" and not w for t, _, _, c, w, *_ in points if not c)
    assert all(p[7] <= report.first for p in points)  # there for the whole history


def test_the_timestamps_are_the_sites_clock(week: tuple[Settings, EnergyPlusBackfillReport]) -> None:
    """EnergyPlus keeps standard time and shifts schedules for DST: on the site's (EDT) clock the office
    fills at 08:00 local, and the afternoon is the hottest part of the day."""
    settings, _ = week
    tz = settings.site.tz
    with _connect(settings) as conn:
        occupancy = _series(conn, "AHU2_ZN1-OCC-PCT")
        outdoor = _series(conn, "PLANT-OA-T")
        site_kw = _series(conn, "SITE-MTR-KW")
    tuesday = datetime(2025, 7, 1, tzinfo=tz)
    at = lambda h, m=0: (tuesday + timedelta(hours=h, minutes=m)).astimezone(UTC)  # noqa: E731
    assert occupancy[at(3)] == 0 and occupancy[at(10)] > 50
    assert site_kw[at(10)] > 2 * site_kw[at(3)]
    by_hour: dict[int, list[float]] = {}
    for t, v in outdoor.items():
        by_hour.setdefault(t.astimezone(tz).hour, []).append(v)
    hottest = max(by_hour, key=lambda h: sum(by_hour[h]) / len(by_hour[h]))
    coolest = min(by_hour, key=lambda h: sum(by_hour[h]) / len(by_hour[h]))
    assert 12 <= hottest <= 17 and 4 <= coolest <= 8, (hottest, coolest)
    assert standard_time(at(10), settings) == datetime(2025, 7, 1, 9, 0)  # EDT 10:00 = EST 09:00


def test_the_zone_finder_finds_every_zone(week: tuple[Settings, EnergyPlusBackfillReport]) -> None:
    settings, _ = week
    with _connect(settings) as conn:
        zones = find_zones(conn, SITE)
    assert len(zones) == 15
    assert [z.name for z in zones][:5] == [f"AHU1_ZN{j}" for j in range(1, 6)]
    assert all(z.present_setpoint is not None and 20 <= z.present_setpoint <= 30 for z in zones)


def test_a_rerun_adds_nothing(week: tuple[Settings, EnergyPlusBackfillReport]) -> None:
    settings, report = week
    again = backfill(settings, 1, building=BUILDING, weather="tampa", end=END)
    assert again.rows == 0 and again.skipped == report.points * 24 * 12
    with _connect(settings) as conn:
        n = conn.execute("SELECT count(*) FROM sensor_readings WHERE site_id = %s", (SITE,)).fetchone()
    assert n == (report.rows,)


def test_a_site_with_the_rc_building_is_refused(db_dsn: str) -> None:
    settings = settings_for(db_dsn)
    rc_backfill(settings, 1, devices=1, interval_s=900, end=datetime(2025, 7, 2, tzinfo=UTC))
    with pytest.raises(ValueError, match="another building"):
        backfill(settings, 1, building=BUILDING, weather="tampa", timesteps_per_hour=4, end=END)


def test_a_baseline_on_five_weeks(db_dsn: str) -> None:
    """TOWT has 168 hour-of-week levels per regime: a single week fits exactly (n = p = 168, so
    Guideline 14's n − p is 0 and it has no CV(RMSE)). Four weeks train it, the fifth scores it."""
    settings = settings_for(db_dsn)
    tz = settings.site.tz
    end = datetime(2025, 8, 5)
    backfill(settings, 35, building=BUILDING, weather="tampa", timesteps_per_hour=4, end=end)
    hourly = site_hourly(settings, datetime(2025, 7, 1, tzinfo=tz), end.replace(tzinfo=tz))
    assert len(hourly) == 35 * 24 and not hourly.isna().any().any()
    split = datetime(2025, 7, 29, tzinfo=tz)
    with pytest.raises(ValueError, match="more points than parameters"):
        fit_baseline(hourly[hourly.index < datetime(2025, 7, 8, tzinfo=tz)])
    model = fit_baseline(hourly[hourly.index < split])
    held_out = hourly[hourly.index >= split]
    scored = metrics(held_out["energy_kwh"], model.predict(held_out), 0)
    print(f"\nEnergyPlus medium office, Tampa July: in-sample (4 weeks) CV(RMSE) {model.metrics.cv_rmse:.1%}"
          f" NMBE {model.metrics.nmbe:.2%} R² {model.metrics.r_squared:.3f}; held-out week CV(RMSE)"
          f" {scored.cv_rmse:.1%} NMBE {scored.nmbe:.2%}")
    for m in (model.metrics, scored):
        assert math.isfinite(m.cv_rmse) and math.isfinite(m.nmbe) and m.cv_rmse > 0
    assert model.metrics.meets_guideline_14  # a sound baseline (≤ 30 %), which a real one must be too


# --- without EnergyPlus --------------------------------------------------------------------------


def test_discovered_devices_mirror_the_specs() -> None:
    spec = DeviceSpec(1001, "AHU-1", "Air handling unit 1", [
        PointSpec("analog-input", 101, "AHU1_ZN1-ZN-T", "Zone air temperature", "degreesCelsius", "t"),
        PointSpec("analog-value", 101, "AHU1_ZN1-ZN-CLG-SP", "Zone cooling setpoint", "degreesCelsius",
                  "sp", 0.1, default_key="sched", write=("Z", "cooling"), min_value=16.0, max_value=32.0),
    ])
    [dev] = discovered_devices([spec], "office, weather tampa")
    assert (dev.peer.device_id, dev.peer.address, dev.name, dev.vendor_name) == (
        1001, "127.0.0.10", "AHU-1", VENDOR_NAME)
    t, sp = dev.points
    assert (t.object_type, t.object_instance, t.commandable, t.writable) == (
        "analog-input", 101, False, False)
    assert (sp.commandable, sp.writable, sp.device_min_value, sp.device_max_value, sp.cov_increment) == (
        True, True, 16.0, 32.0, 0.1)


def test_steps_and_interval_default_from_each_other() -> None:
    assert resolve_timesteps(None, None) == (12, 300.0)
    assert resolve_timesteps(900, None) == (4, 900.0)
    assert resolve_timesteps(3600, None) == (4, 3600.0)
    assert resolve_timesteps(60, None) == (60, 60.0)
    assert resolve_timesteps(600, None) == (6, 600.0)
    assert resolve_timesteps(None, 6) == (6, 600.0)
    with pytest.raises(ValueError):
        resolve_timesteps(None, 7)
    with pytest.raises(ValueError):
        resolve_timesteps(0.5, 60)


def test_the_command_backfills_the_energyplus_building(db_dsn: str, tmp_path: Path) -> None:
    """`bacpipes sim backfill --building energyplus:<prototype> --weather <epw>` as a user types it."""
    migrate(db_dsn)
    config = tmp_path / "site.toml"
    config.write_text(f'[database]\ndsn = "{db_dsn}"\n[site]\nid = "{SITE}"\ntimezone = "{ZONE}"\n')
    command = [sys.executable, "-m", "bacpipes.cli", "sim", "backfill", "--config", str(config),
               "--days", "1", "--building", BUILDING, "--weather", "Tampa", "--steps-per-hour", "4"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "USA_FL_Tampa" in out.stdout and "4 steps/h" in out.stdout, out.stdout
    with psycopg.connect(db_dsn) as conn:
        query = "SELECT count(DISTINCT point_id), count(*) FROM sensor_readings"
        points, rows = conn.execute(query).fetchone()
    assert points == 150 and rows == 150 * 24 * 4
    wrong = subprocess.run([*command[:-6], "--building", "energyplus"], capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "energyplus:<prototype>" in wrong.stderr
