"""Storage lifecycle against a real PostgreSQL: daily partitions, retention by DROP, load_readings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import polars as pl
import psycopg
import pytest

from bacpipes.partitions import (
    adopt_default_rows,
    apply_retention,
    create_partition,
    ensure_partitions,
    list_partitions,
)
from bacpipes.readings import load_readings, parse_every
from bacpipes.settings import load_settings

NOW = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
SITE = "test-site"


def counts_by_partition(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT tableoid::regclass::text, count(*) FROM sensor_readings GROUP BY 1")
    return dict(rows.fetchall())


def insert_hours(conn: psycopg.Connection, first: datetime, last: datetime, points: int = 2) -> int:
    """One reading per point per hour in [first, last]; returns rows inserted."""
    cur = conn.execute(
        "INSERT INTO sensor_readings (time, site_id, point_id, value) "
        "SELECT t, %s, p, p * 1000 + extract(hour FROM t AT TIME ZONE 'UTC') "
        "FROM generate_series(%s::timestamptz, %s::timestamptz, '1 hour') t, generate_series(1, %s) p",
        (SITE, first, last, points),
    )
    return cur.rowcount


def forbid_deletes(conn: psycopg.Connection) -> None:
    """Any DELETE reaching a partition now fails, so a passing run proves retention never deletes."""
    conn.execute(
        "CREATE FUNCTION no_delete() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'DELETE on %', TG_TABLE_NAME; END $$"
    )
    conn.execute(
        "CREATE TRIGGER no_delete BEFORE DELETE ON sensor_readings FOR EACH ROW EXECUTE FUNCTION no_delete()"
    )


def test_retention_drops_exactly_the_expired_partitions(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        first = date(2026, 11, 12)
        for offset in range(15):  # 12 .. 26 November
            create_partition(conn, first + timedelta(days=offset))
        insert_hours(conn, datetime(2026, 11, 12, tzinfo=UTC), datetime(2026, 11, 26, 10, tzinfo=UTC))
        before = counts_by_partition(conn)
        forbid_deletes(conn)

        report = apply_retention(conn, days=7, now=NOW)

        # cutoff 19 Nov 10:30: days ending at or before it go, the day straddling it stays whole
        expired = [f"sensor_readings_202611{d}" for d in range(12, 19)]
        assert sorted(report.dropped) == expired
        assert all(report.dropped[name] == 48 for name in expired)
        assert report.created == [f"sensor_readings_202611{d}" for d in (27, 28, 29)]
        assert report.kept == [f"sensor_readings_202611{d}" for d in range(19, 30)]
        after = counts_by_partition(conn)
        assert after == {name: n for name, n in before.items() if name not in expired}
        names = {p.name for p in list_partitions(conn)}
        assert names == {*report.kept, "sensor_readings_default"}

        again = apply_retention(conn, days=7, now=NOW)  # idempotent
        assert (again.dropped, again.created) == ({}, [])


def test_retention_of_one_day_and_refusal_below(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for bad in (0, -3, 1.5, True):
            with pytest.raises(ValueError, match="retention must be"):
                apply_retention(conn, days=bad, now=NOW)  # type: ignore[arg-type]
        assert [p.name for p in list_partitions(conn)] == ["sensor_readings_default"]  # nothing done

        ensure_partitions(conn, days_ahead=0, now=NOW - timedelta(days=2))
        ensure_partitions(conn, days_ahead=0, now=NOW - timedelta(days=1))
        report = apply_retention(conn, days=1, now=NOW)
        assert list(report.dropped) == ["sensor_readings_20261124"]
        assert "sensor_readings_20261125" in report.kept  # ends after the cutoff (25 Nov 10:30)


def test_reading_without_partition_lands_in_default_and_moves_later(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        first, last = datetime(2026, 11, 26, tzinfo=UTC), datetime(2026, 11, 28, 23, tzinfo=UTC)
        inserted = insert_hours(conn, first, last)
        assert counts_by_partition(conn) == {"sensor_readings_default": inserted}
        rows_before = conn.execute("SELECT * FROM sensor_readings ORDER BY 1, 3").fetchall()

        created = ensure_partitions(conn, days_ahead=1, now=NOW)

        assert created == ["sensor_readings_20261126", "sensor_readings_20261127"]
        assert counts_by_partition(conn) == {
            "sensor_readings_20261126": 48,
            "sensor_readings_20261127": 48,
            "sensor_readings_default": 48,  # 28 Nov: no partition asked for yet
        }
        assert conn.execute("SELECT * FROM sensor_readings ORDER BY 1, 3").fetchall() == rows_before
        # the moved day is a real partition again: new rows for it route there, not to DEFAULT
        conn.execute("INSERT INTO sensor_readings VALUES ('2026-11-26 12:00:30+00', %s, 1, 1.0)", (SITE,))
        assert counts_by_partition(conn)["sensor_readings_20261126"] == 49

        created, moved = adopt_default_rows(conn)
        assert (created, moved) == (["sensor_readings_20261128"], 48)
        assert "sensor_readings_default" not in counts_by_partition(conn)


def test_expired_rows_in_default_leave_by_drop(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        old = insert_hours(conn, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 23, tzinfo=UTC))
        recent = insert_hours(conn, datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 25, 5, tzinfo=UTC))
        report = apply_retention(conn, days=7, now=NOW)
        assert report.moved_from_default == old + recent
        assert report.dropped == {"sensor_readings_20261101": old}
        assert counts_by_partition(conn) == {"sensor_readings_20261125": recent}


# --- load_readings ----------------------------------------------------------------------------------

POINTS = [  # point_id, object_name, haystack_name, dis, units
    (1, "ZN-T", "ahu_1_zone_air_temp_sensor", "AHU-1 Zone Air Temp", "degrees-celsius"),
    (2, "SA-FLOW", "ahu_1_discharge_air_flow_sensor", "AHU-1 Discharge Air Flow", "liters-per-second"),
    (3, "ZN-T", "ahu_2_zone_air_temp_sensor", "AHU-2 Zone Air Temp", "degrees-celsius"),
]
START = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)


@pytest.fixture
def history(db_dsn: str) -> str:
    """Three points, a reading every 5 min for 3 h (value = point*100 + minutes), and the hourly rollup."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1001, '127.0.0.10')",
                     (SITE,))
        conn.cursor().executemany(
            "INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, object_name,"
            " haystack_name, dis, units) VALUES (%s, %s, 1001, 'analog-input', %s, %s, %s, %s, %s)",
            [(SITE, pid, pid, name, hs, dis, units) for pid, name, hs, dis, units in POINTS],
        )
        # another site's point with the same id must never leak in
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('other', 1, 'x')")
        conn.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance,"
                     " object_name) VALUES ('other', 1, 1, 'analog-input', 1, 'ZN-T')")
        conn.execute(
            "INSERT INTO sensor_readings (time, site_id, point_id, value, quality) "
            "SELECT %s::timestamptz + m * interval '1 minute', s, p, p * 100 + m,"
            " CASE WHEN m = 5 THEN 'uncertain' ELSE 'good' END "
            "FROM generate_series(0, 175, 5) m, generate_series(1, 3) p, (VALUES (%s), ('other')) v(s)",
            (START, SITE),
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS readings_hourly (site_id text NOT NULL, point_id bigint NOT NULL,"
            " hour timestamptz NOT NULL, sum double precision NOT NULL, count bigint NOT NULL,"
            " min double precision NOT NULL, max double precision NOT NULL,"
            " PRIMARY KEY (site_id, point_id, hour))"
        )
        conn.execute(
            "INSERT INTO readings_hourly (site_id, point_id, hour, sum, count, min, max) "
            "SELECT site_id, point_id, date_trunc('hour', time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',"
            " sum(value), count(*), min(value), max(value) FROM sensor_readings GROUP BY 1, 2, 3"
        )
    return db_dsn


def load(dsn: str, *args: object, **kwargs: object) -> pl.DataFrame:
    settings = load_settings(None, site={"id": SITE, "timezone": "Asia/Macau"})
    return load_readings(*args, settings=settings, dsn=dsn, **kwargs)  # type: ignore[arg-type,return-value]


def test_load_raw_readings_with_names_and_units(history: str) -> None:
    df = load(history, ["ahu_1_discharge_air_flow_sensor", 1], START, START + timedelta(hours=1))
    assert df.columns == ["time", "point_id", "name", "haystack_name", "dis", "units", "value", "quality"]
    assert df.height == 24  # 12 readings in the hour for each of 2 points
    flow = df.filter(pl.col("point_id") == 2)
    assert flow["name"].unique().to_list() == ["SA-FLOW"]
    assert flow["units"].unique().to_list() == ["liters-per-second"]
    assert flow["dis"][0] == "AHU-1 Discharge Air Flow"
    assert flow["value"].to_list() == [200.0 + m for m in range(0, 60, 5)]
    assert flow["quality"][1] == "uncertain"
    assert str(df.schema["time"]) == "Datetime(time_unit='us', time_zone='Asia/Macau')"
    assert flow["time"][0] == START  # the same instant, shown in site time
    assert flow["time"][0].hour == 8


def test_object_name_matches_every_point_carrying_it(history: str) -> None:
    df = load(history, ["ZN-T"], START, START + timedelta(minutes=10))
    assert sorted(set(df["point_id"])) == [1, 3]
    with pytest.raises(ValueError, match="unknown points"):
        load(history, ["ZN-T", "no-such-point", 99])


def test_load_naive_times_are_site_local(history: str) -> None:
    # 08:00-08:30 in Macau is 00:00-00:30 UTC
    df = load(history, [1], datetime(2026, 11, 26, 8), "2026-11-26T08:30")
    assert df.height == 6
    assert df["value"].to_list() == [100.0 + m for m in range(0, 30, 5)]


def test_load_fifteen_minute_bins_from_raw(history: str) -> None:
    df = load(history, [3], START, START + timedelta(hours=1), every="15min")
    assert df.columns == ["time", "point_id", "name", "haystack_name", "dis", "units", "value",
                          "min", "max", "count"]
    assert df.height == 4
    first = df.row(0, named=True)
    assert (first["value"], first["min"], first["max"], first["count"]) == (305.0, 300.0, 310.0, 3)
    assert df["time"].to_list() == [START + timedelta(minutes=15 * i) for i in range(4)]


def test_load_hourly_and_multi_hour_from_rollup(history: str) -> None:
    df = load(history, ["ahu_1_zone_air_temp_sensor"], START, START + timedelta(hours=3), every="1h")
    assert df["value"].to_list() == [127.5, 187.5, 247.5]
    assert df["count"].to_list() == [12, 12, 12]
    assert df["min"].to_list() == [100.0, 160.0, 220.0]
    assert df["max"].to_list() == [155.0, 215.0, 275.0]
    two = load(history, [1], START, START + timedelta(hours=3), every="2h")
    # bins at local (Macau) midnight + 2 h multiples: 08:00 local = 00:00 UTC starts a bin
    assert two["count"].to_list() == [24, 12]
    assert two["value"].to_list() == [157.5, 247.5]


def test_load_as_pandas_and_empty(history: str) -> None:
    pdf = load(history, [2], START, START + timedelta(minutes=30), as_pandas=True)
    assert isinstance(pdf, pd.DataFrame)
    assert len(pdf) == 6
    assert pdf["units"].iloc[0] == "liters-per-second"
    empty = load(history, [2], "2020-01-01", "2020-01-02", every="15min")
    assert empty.height == 0
    assert "units" in empty.columns


def test_parse_every() -> None:
    assert parse_every("15min") == timedelta(minutes=15)
    assert parse_every("2 hours") == timedelta(hours=2)
    assert parse_every("1d") == timedelta(days=1)
    for bad in ("fast", "0s", "5 fortnights"):
        with pytest.raises(ValueError):
            parse_every(bad)
