"""`sim.backfill`: simulated history written straight into PostgreSQL, as if polled and ingested.

No BACnet here: the virtual controllers' objects are built, never served (binding a socket fails the test).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from bacpipes.settings import Settings, load_settings
from edge.polling import plain_value
from sim.backfill import (
    VENDOR_NAME,
    VirtualSite,
    backfill,
    default_end,
    timeline,
)
from tests.conftest import fresh_database

SITE = "sim-site"
END = datetime(2025, 7, 3, tzinfo=UTC)  # history: Tue 1 and Wed 2 July 2025
DAYS, INTERVAL, DEVICES = 2, 900.0, 2
STEPS = DAYS * 86400 // int(INTERVAL)  # 192
POINTS = 23 + 15  # device 1001 carries the plant and the meter; 1002 its AHU only


@pytest.fixture(autouse=True)
def no_sockets_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backfill needs no network but PostgreSQL (libpq connects without Python's socket)."""

    def refuse(self: socket.socket, *args: object) -> None:
        raise AssertionError(f"a socket was bound: {args}")

    monkeypatch.setattr(socket.socket, "bind", refuse)


@pytest.fixture
def other_dsn() -> Iterator[str]:
    """A second fresh database, like `db_dsn`, for comparing two runs."""
    with fresh_database() as dsn:
        yield dsn


def settings_for(dsn: str, timezone: str = "UTC") -> Settings:
    return load_settings(None, database={"dsn": dsn}, site={"id": SITE, "timezone": timezone})


def run(dsn: str, **kwargs: object) -> object:
    args = {"days": DAYS, "seed": 5, "devices": DEVICES, "interval_s": INTERVAL, "end": END, **kwargs}
    return backfill(settings_for(dsn), **args)  # type: ignore[arg-type]


def raw_hourly(conn: psycopg.Connection) -> dict[tuple[int, datetime], tuple[float, int, float, float]]:
    rows = conn.execute(
        "SELECT point_id, date_trunc('hour', time, 'UTC'), sum(value), count(*), min(value), max(value)"
        " FROM sensor_readings WHERE site_id = %s GROUP BY 1, 2",
        (SITE,),
    ).fetchall()
    return {(p, h): (s, c, lo, hi) for p, h, s, c, lo, hi in rows}


def rollup(conn: psycopg.Connection) -> dict[tuple[int, datetime], tuple[float, int, float, float]]:
    rows = conn.execute(
        "SELECT point_id, hour, sum, count, min, max FROM readings_hourly WHERE site_id = %s", (SITE,)
    ).fetchall()
    return {(p, h): (s, c, lo, hi) for p, h, s, c, lo, hi in rows}


def assert_rollup_matches_raw(conn: psycopg.Connection) -> None:
    raw, hourly = raw_hourly(conn), rollup(conn)
    assert hourly.keys() == raw.keys()
    for key, (s, c, lo, hi) in raw.items():
        hs, hc, hlo, hhi = hourly[key]
        assert (hc, hlo, hhi) == (c, lo, hi), key
        assert hs == pytest.approx(s, rel=1e-12, abs=1e-9), key


def values_of(conn: psycopg.Connection, object_name: str) -> list[float]:
    rows = conn.execute(
        "SELECT r.value FROM sensor_readings r JOIN point p USING (site_id, point_id)"
        " WHERE r.site_id = %s AND p.object_name = %s ORDER BY r.time",
        (SITE, object_name),
    ).fetchall()
    return [v for (v,) in rows]


def test_backfill_writes_a_site_as_if_polled_and_ingested(db_dsn: str) -> None:
    report = run(db_dsn)
    assert (report.rows, report.skipped, report.points, report.devices) == (POINTS * STEPS, 0, POINTS, 2)
    assert report.first == datetime(2025, 7, 1, tzinfo=UTC)
    assert report.last == END - timedelta(seconds=INTERVAL)
    assert report.partitions_created == ["sensor_readings_20250701", "sensor_readings_20250702"]
    assert "simulated readings" in report.summary() and "\n" not in report.summary()

    with psycopg.connect(db_dsn) as conn:
        # the catalog, through discovery's path: names, topics and tags like a discovered site
        devices = conn.execute(
            "SELECT device_id, address, name, vendor_name, max_apdu, segmentation FROM device ORDER BY 1"
        ).fetchall()
        assert devices == [
            (1001, "127.0.0.10", "AHU-1", VENDOR_NAME, 1476, "segmented-both"),
            (1002, "127.0.0.11", "AHU-2", VENDOR_NAME, 1476, "segmented-both"),
        ]
        points = conn.execute(
            "SELECT count(*), count(topic), count(haystack_name), count(*) FILTER (WHERE commandable),"
            " count(*) FILTER (WHERE auto_tags ->> 'equipType' = 'ahu') FROM point WHERE site_id = %s",
            (SITE,),
        ).fetchone()
        assert points == (POINTS, POINTS, POINTS, 2 * 5, POINTS)

        # every reading on the grid, each day in its own partition, nothing in DEFAULT
        assert conn.execute("SELECT count(*) FROM sensor_readings_default").fetchone() == (0,)
        per_partition = conn.execute(
            "SELECT tableoid::regclass::text, min(time), max(time), count(*), count(DISTINCT time),"
            " count(DISTINCT point_id), bool_and(quality = 'good')"
            " FROM sensor_readings GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert per_partition == [
            ("sensor_readings_20250701", datetime(2025, 7, 1, tzinfo=UTC),
             datetime(2025, 7, 1, 23, 45, tzinfo=UTC), POINTS * 96, 96, POINTS, True),
            ("sensor_readings_20250702", datetime(2025, 7, 2, tzinfo=UTC),
             datetime(2025, 7, 2, 23, 45, tzinfo=UTC), POINTS * 96, 96, POINTS, True),
        ]  # fmt: skip

        # plausible physics
        for zone in ("AHU1-ZN-T", "AHU2-ZN-T"):
            temps = values_of(conn, zone)
            assert len(temps) == STEPS and all(15.0 < t < 35.0 for t in temps)
        outdoor = values_of(conn, "PLANT-OA-T")
        assert len(outdoor) == STEPS and all(15.0 < t < 40.0 for t in outdoor)
        assert max(outdoor) - min(outdoor) > 2.0  # a diurnal swing, not a constant
        assert set(values_of(conn, "AHU1-SF-S")) <= {0.0, 1.0}
        assert set(values_of(conn, "AHU1-MODE")) == {4.0}  # Auto
        kwh = values_of(conn, "SITE-MTR-KWH")
        assert kwh == sorted(kwh) and kwh[-1] > kwh[0]  # an energy meter only counts up

        # readings_hourly and point_state as the ingester leaves them
        assert_rollup_matches_raw(conn)
        assert len(rollup(conn)) == POINTS * DAYS * 24
        latest = conn.execute(
            "SELECT DISTINCT ON (point_id) point_id, value, time, quality FROM sensor_readings"
            " WHERE site_id = %s ORDER BY point_id, time DESC",
            (SITE,),
        ).fetchall()
        state = conn.execute(
            "SELECT point_id, value, time, quality FROM point_state WHERE site_id = %s ORDER BY point_id",
            (SITE,),
        ).fetchall()
        assert state == latest and len(state) == POINTS
        assert {t for _, _, t, _ in state} == {report.last}

        # marked simulated
        source = conn.execute(
            "SELECT simulated, seed, first_reading, last_reading, description FROM data_source"
            " WHERE site_id = %s",
            (SITE,),
        ).fetchone()
        assert source[:4] == (True, 5, report.first, report.last)
        assert "sim backfill" in source[4]


def test_same_seed_and_end_give_the_same_history(db_dsn: str, other_dsn: str) -> None:
    run(db_dsn)
    run(other_dsn)
    run(other_dsn, seed=6, end=END + timedelta(days=30))  # another site's worth, later: must not matter
    query = (
        "SELECT sum(value), count(*), sum(value * extract(epoch FROM time)) FROM sensor_readings"
        " WHERE site_id = %s AND time < %s"
    )
    with psycopg.connect(db_dsn) as a, psycopg.connect(other_dsn) as b:
        one = a.execute(query, (SITE, END)).fetchone()
        two = b.execute(query, (SITE, END)).fetchone()
    assert one == two and one[1] == POINTS * STEPS


def test_another_seed_gives_another_history(db_dsn: str, other_dsn: str) -> None:
    run(db_dsn, seed=1)
    run(other_dsn, seed=2)
    with psycopg.connect(db_dsn) as a, psycopg.connect(other_dsn) as b:
        assert values_of(a, "AHU1-ZN-T") != values_of(b, "AHU1-ZN-T")


def test_a_rerun_adds_nothing_and_an_overlapping_run_only_the_gap(db_dsn: str) -> None:
    first = run(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        hourly_before = rollup(conn)
        state_before = conn.execute("SELECT * FROM point_state ORDER BY point_id").fetchall()

    again = run(db_dsn)
    assert (again.rows, again.skipped) == (0, first.rows)
    assert "already present" in again.summary()
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone() == (first.rows,)
        assert rollup(conn) == hourly_before
        assert conn.execute("SELECT * FROM point_state ORDER BY point_id").fetchall() == state_before
        assert conn.execute("SELECT count(*) FROM point").fetchone() == (POINTS,)

    # one day later: the overlapping day is kept as it was, only the new day is added and rolled up
    later = run(db_dsn, end=END + timedelta(days=1))
    assert (later.rows, later.skipped) == (POINTS * 96, POINTS * 96)
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone() == (first.rows + later.rows,)
        assert conn.execute("SELECT count(*) FROM sensor_readings_default").fetchone() == (0,)
        assert_rollup_matches_raw(conn)
        assert conn.execute(
            "SELECT min(time), max(time) FROM point_state WHERE site_id = %s", (SITE,)
        ).fetchone() == (later.last, later.last)
        assert conn.execute(
            "SELECT first_reading, last_reading FROM data_source WHERE site_id = %s", (SITE,)
        ).fetchone() == (first.first, later.last)


def test_a_real_buildings_site_is_refused(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device (site_id, device_id, address, name, vendor_name)"
            " VALUES (%s, 12, '10.0.0.12', 'AHU-12', 'Acme Controls')",
            (SITE,),
        )
    with pytest.raises(ValueError, match="not virtual"):
        run(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM device")
        conn.execute("INSERT INTO data_source (site_id, simulated) VALUES (%s, false)", (SITE,))
    with pytest.raises(ValueError, match="real building"):
        run(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM point").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sensor_readings").fetchone() == (0,)
        assert conn.execute("SELECT simulated FROM data_source").fetchall() == [(False,)]


def test_bad_arguments_are_refused_before_anything_is_written(db_dsn: str) -> None:
    for kwargs, message in (({"days": 0}, "days"), ({"seed": -1}, "seed"), ({"devices": 0}, "devices"),
                            ({"interval_s": 0.5}, "interval")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            run(db_dsn, **kwargs)
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM data_source").fetchone() == (0,)


def test_the_building_runs_on_the_sites_local_clock(db_dsn: str) -> None:
    """Macau is UTC+8: the sun peaks near 04:00 UTC and the casino is busiest around 13:00 UTC."""
    settings = load_settings(None, database={"dsn": db_dsn}, site={"id": SITE, "timezone": "Asia/Macau"})
    report = backfill(settings, days=1, seed=5, devices=1, interval_s=INTERVAL, end=END)
    assert report.rows == 23 * 96
    with psycopg.connect(db_dsn) as conn:
        peak = conn.execute(
            "SELECT extract(hour FROM r.time AT TIME ZONE 'UTC') FROM sensor_readings r"
            " JOIN point p USING (site_id, point_id) WHERE p.object_name = %s ORDER BY r.value DESC LIMIT 1",
            ("PLANT-SOLAR",),
        ).fetchone()[0]
        dark = conn.execute(
            "SELECT max(r.value) FROM sensor_readings r JOIN point p USING (site_id, point_id)"
            " WHERE p.object_name = 'PLANT-SOLAR'"
            " AND extract(hour FROM r.time AT TIME ZONE 'UTC') BETWEEN 13 AND 19"
        ).fetchone()[0]
    assert 2 <= peak <= 6
    assert dark == 0.0  # 21:00-03:59 in Macau


def test_sampled_values_equal_what_the_devices_serve() -> None:
    """The fast sampler against the objects themselves, read as the poller publishes them."""
    site = VirtualSite(devices=3, seed=9, start=datetime(2025, 7, 4, 6, 0))
    site.building.plant.site_kwh = 523_456.789  # a meter past 2**17 kWh: float32 is coarser than 0.01
    for hours in (0, 3, 9, 15):
        site.building.advance(hours * 3600)
        for dev in site.devices:
            dev.refresh()
        served = {
            (dev.instance, str(obj.objectIdentifier[0]), int(obj.objectIdentifier[1])):
                plain_value(obj.presentValue)
            for dev in site.devices for obj in dev.objects[2:]
            if str(obj.objectIdentifier[0]) != "trend-log"  # history, no present value
        }  # fmt: skip
        sampled = site.as_published(np.array([site.sample()]))[0]
        assert list(served) == site.keys
        assert list(served.values()) == sampled.tolist()


def test_the_timeline_sits_on_the_pollers_grid() -> None:
    line = timeline(datetime(2025, 7, 3, 0, 0, 7, tzinfo=UTC), days=1, interval_s=30)
    assert line.first == datetime(2025, 7, 2, 0, 0, 30, tzinfo=UTC)  # first slot at or after end - 1 day
    assert line.at(line.steps - 1) == datetime(2025, 7, 3, 0, 0, 0, tzinfo=UTC)  # last slot before end
    assert line.steps == 2880
    assert [(d.isoformat(), k0, k1) for d, k0, k1 in line.days()] == [
        ("2025-07-02", 0, 2879), ("2025-07-03", 2879, 2880)
    ]
    now = datetime(2025, 7, 3, 10, 7, 44, 5, tzinfo=UTC)
    assert default_end(900, now) == datetime(2025, 7, 3, 10, 0, tzinfo=UTC)
    assert default_end(30, now) == datetime(2025, 7, 3, 10, 7, 30, tzinfo=UTC)
