"""Points as operators know them: state texts read from the devices over BACnet, unit symbols, and the Live
and Commands pages that show them (Streamlit AppTest against a real discovered database).

Discovery runs once for the module against the virtual building (real UDP on 127.0.1.30-33): four
controllers, the fourth a legacy one without state texts, as many old controllers are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from bacpypes3.basetypes import EngineeringUnits
from psycopg.types.json import Jsonb
from streamlit.testing.v1 import AppTest

from bacpipes.commands import Command, insert_command
from bacpipes.partitions import create_partition
from bacpipes.units import _SYMBOLS, reading_text, states, symbol
from bacpipes.users import add_user
from sim.server import ThreadedBuilding
from tests.conftest import fresh_database, make_settings
from tests.edge_harness import discover_site
from tests.test_app import button, page

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
BASE = "127.0.1.30"
AGENT = "127.0.1.39/8:47939"
SITE = "context-site"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A site discovered over BACnet, with a present value for every point and an operator and a viewer."""
    tmp = tmp_path_factory.mktemp("context")
    with fresh_database() as dsn:
        settings = make_settings(dsn, "mqtt://127.0.0.1:1", tmp, site={"id": SITE, "timezone": "Asia/Macau"},
                                 bacnet={"address": AGENT, "apdu_timeout_ms": 3000, "apdu_retries": 1},
                                 discovery={"targets": ["127.0.1.30-127.0.1.33"]})
        with ThreadedBuilding(devices=4, address_base=BASE, seed=5, speed=0) as building:
            discover_site(settings)
            snapshot = building.snapshot()
        config = tmp / "site.toml"
        config.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                          '[ui]\nwrite_wait_s = 0.2\n')
        with psycopg.connect(dsn) as conn:
            ids = {(d, t, i): p for p, d, t, i in conn.execute(
                "SELECT point_id, device_id, object_type, object_instance FROM point").fetchall()}
            now = datetime.now(UTC)
            for key, value in snapshot.items():
                if key in ids:
                    conn.execute("INSERT INTO point_state (site_id, point_id, time, value, quality)"
                                 " VALUES (%s, %s, %s, %s, 'good')", (SITE, ids[key], now, float(value)))
            add_user(conn, "olivia", "operator-pass", "operator")
            add_user(conn, "victor", "viewer-pass", "viewer")
            readings(conn, [ids[(1001, "analog-input", 1)], ids[(1001, "analog-input", 5)]], now)
        yield SimpleNamespace(dsn=dsn, config=config, ids=ids, snapshot=snapshot, now=now)


def readings(conn: psycopg.Connection, points: list[int], now: datetime) -> None:
    """Three hours of a zone temperature (about 24) and a fan power (about 3), every 10 minutes, on the
    hour marks (so the chart's times can be checked to the minute)."""
    for day in {(now - timedelta(hours=4)).date(), now.date()}:
        create_partition(conn, day)
    last = now.replace(minute=0, second=0, microsecond=0)
    for step in range(19):
        at = last - timedelta(minutes=10 * step)
        for point_id, value in zip(points, (24.0 + step / 10, 3.0 - step / 20), strict=True):
            conn.execute("INSERT INTO sensor_readings (time, site_id, point_id, value, quality)"
                         " VALUES (%s, %s, %s, %s, 'good')", (at, SITE, point_id, value))


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


# --- discovery ------------------------------------------------------------------------------------------

def test_discovery_reads_state_texts_and_relinquish_defaults_over_bacnet(site) -> None:
    found = {(d, t, i): rest for d, t, i, *rest in rows(
        site.dsn, "SELECT device_id, object_type, object_instance, state_text, inactive_text, active_text,"
                  " relinquish_default FROM point")}
    assert found[(1001, "multi-state-value", 1)] == [["Off", "Cool", "Heat", "Auto"], None, None, 4.0]
    assert found[(1001, "binary-input", 1)] == [None, "Off", "On", None]  # not commandable: no default
    assert found[(1002, "binary-value", 1)] == [None, "Schedule", "Occupied", 0.0]
    assert found[(1001, "analog-value", 1)] == [None, None, None, 24.0]  # the cooling setpoint's default
    assert found[(1001, "analog-input", 1)] == [None, None, None, None]
    # the legacy controller has no state texts: its points are discovered all the same, without them
    legacy = {k: v for k, v in found.items() if k[0] == 1004}
    assert {k for k in site.snapshot if k[0] == 1004} == set(legacy)
    assert legacy[(1004, "multi-state-value", 1)] == [None, None, None, 4.0]
    assert legacy[(1004, "binary-value", 1)] == [None, None, None, 0.0]


# --- units and state text -------------------------------------------------------------------------------

def test_every_unit_in_the_table_is_a_bacnet_unit_and_both_spellings_read_as_symbols() -> None:
    for name in _SYMBOLS:
        assert symbol(str(EngineeringUnits(name.replace("decibels-a", "decibelsA")))) == _SYMBOLS[name]
    assert [symbol(u) for u in ("degrees-celsius", "degreesCelsius", "kilowatts", "percent", "pascals",
                                "percentRelativeHumidity", "no-units", None)] == [
        "°C", "°C", "kW", "%", "Pa", "%RH", "", ""]
    assert symbol("footPoundsPerSecond") == "foot pounds per second"  # unknown: in words, never blank
    assert reading_text(23.456, "degrees-celsius") == "23.46 °C"
    assert reading_text(2, None, "multi-state-value", ["Off", "Cool"]) == "Cool"
    assert reading_text(7, None, "multi-state-value", ["Off", "Cool"]) == "state 7"
    assert reading_text(1, None, "binary-value", None, "Schedule", "Occupied") == "Occupied"
    assert reading_text(0, None, "binary-input") == "inactive"  # the standard's word without texts
    assert reading_text(None, "kilowatts") == ""
    assert states("analog-value", None, None, None) is None


# --- Live -----------------------------------------------------------------------------------------------

def test_live_shows_state_text_and_unit_symbols_first(site, monkeypatch) -> None:
    at = page("live", site, monkeypatch, "victor")
    table = at.dataframe[0].value.set_index("object_name")
    mode_states = ["Off", "Cool", "Heat", "Auto"]
    mode = int(site.snapshot[(1001, "multi-state-value", 1)])
    assert table.at["AHU1-MODE", "reading"] == mode_states[mode - 1]
    fan = site.snapshot[(1001, "binary-input", 1)]
    assert table.at["AHU1-SF-S", "reading"] == ("On" if float(fan) else "Off")
    assert table.at["AHU1-OCC-OVRD", "reading"] == "Schedule"  # the override starts inactive
    assert table.at["AHU4-OCC-OVRD", "reading"] == "inactive"  # legacy: the standard's word, not 0.00
    assert table.at["AHU4-MODE", "reading"] == "state 4"
    zone = site.snapshot[(1001, "analog-input", 1)]
    assert table.at["AHU1-ZN-T", "reading"] == f"{zone:,.2f} °C"
    assert table.at["AHU1-SF-KW", "reading"].endswith(" kW")
    assert table.at["AHU1-ZN-RH", "reading"].endswith(" %RH")
    assert not table["reading"].str.contains("degrees|kilowatts|percent").any()
    # what operators read first comes first
    assert list(at.dataframe[0].proto.column_order)[:4] == ["name", "reading", "status", "age_s"]


# --- Commands -------------------------------------------------------------------------------------------

def point(site: SimpleNamespace, device: int, object_type: str, instance: int) -> int:
    return site.ids[(device, object_type, instance)]


def completed(dsn: str, point_id: int, value: float, array: list[float | None], *, by: str = "ui:olivia",
              source: str = "ui") -> None:
    """A command the device carried out, with the priority array it read back afterwards."""
    with psycopg.connect(dsn) as conn:
        command = insert_command(conn, Command(SITE, point_id, value, priority=8, source=source,
                                               created_by=by, reason="test"))
        conn.execute("INSERT INTO command_events (command_id, site_id, status, value_read, priority_array)"
                     " VALUES (%s, %s, 'completed', %s, %s)", (command, SITE, value, Jsonb(array)))


def test_the_write_form_offers_a_multi_state_points_states_by_name(site, monkeypatch) -> None:
    mode = point(site, 1001, "multi-state-value", 1)
    at = page("commands", site, monkeypatch, "olivia")
    at.selectbox(key="write_point").set_value(mode).run()
    states_box = at.selectbox(key=f"write_value_{mode}")
    assert list(states_box.proto.options) == ["Off", "Cool", "Heat", "Auto"]
    present = int(site.snapshot[(1001, "multi-state-value", 1)])
    assert states_box.value == present  # starts at the present state
    assert not [n for n in at.number_input if n.label == "Value"]  # no float field for a state point
    assert any("relinquish default: **Auto**" in m.value for m in at.markdown)
    states_box.set_value(2)
    button(at, "Review").click().run()
    assert any("Confirm: write **Cool** (2)" in w.value for w in at.warning)
    button(at, "Confirm").click().run()
    assert rows(site.dsn, "SELECT value, created_by FROM write_commands WHERE point_id = %s", mode) == [
        (2.0, "ui:olivia")]


def test_the_write_form_shows_unit_limits_default_and_the_last_priority_array(site, monkeypatch) -> None:
    setpoint = point(site, 1002, "analog-value", 1)
    with psycopg.connect(site.dsn) as conn:
        conn.execute("UPDATE point SET ml_min_value = 21, ml_max_value = 26 WHERE point_id = %s", (setpoint,))
    at = page("commands", site, monkeypatch, "olivia")
    at.selectbox(key="write_point").set_value(setpoint).run()
    facts = " ".join(m.value for m in at.markdown)
    assert "unit: **°C**" in facts and "write limits: 16 to 30 °C" in facts
    assert "ML limits: 21 to 26 °C" in facts and "relinquish default: **24.00 °C**" in facts
    value = at.number_input(key=f"write_value_{setpoint}")
    assert (value.proto.min, value.proto.max) == (16.0, 30.0)  # the device's limits bound the field
    assert any("not read yet" in c.value for c in at.caption)

    array: list[float | None] = [None] * 16
    array[7], array[15] = 22.5, 23.0
    completed(site.dsn, setpoint, 22.5, array)
    at.run()
    held = at.dataframe[0].value
    assert held.to_dict("list") == {"priority": [8, 16], "value": ["22.50 °C", "23.00 °C"]}
    assert any("Priority array as the device read it back" in c.value for c in at.caption)


def test_the_audit_trail_filters_by_point_user_source_and_dates(site, monkeypatch) -> None:
    setpoint, valve = point(site, 1003, "analog-value", 1), point(site, 1003, "analog-value", 2)
    completed(site.dsn, setpoint, 23.0, [None] * 16, by="ui:olivia", source="ui")
    completed(site.dsn, valve, 19.0, [None] * 16, by="cli:ops", source="cli")
    with psycopg.connect(site.dsn) as conn:  # a week old, from central
        conn.execute("INSERT INTO write_commands (id, site_id, point_id, command_type, value, priority,"
                     " created_by, source, created_at) VALUES (gen_random_uuid(), %s, %s, 'write_value', 22,"
                     " 8, 'central:carla', 'central', now() - interval '7 days')", (SITE, setpoint))
        # a writable point a device gave no name (a third-party controller): listed by its id, no crash
        conn.execute("UPDATE point SET object_name = NULL, dis = NULL WHERE point_id = %s", (valve,))
    at = page("commands", site, monkeypatch, "olivia")

    def trail() -> object:
        return at.dataframe[-1].value

    assert f"point {valve}" in at.multiselect(key="audit_points").options
    assert trail()["id"].map(type).eq(str).all()  # readable ids, not byte maps
    at.multiselect(key="audit_users").set_value(["cli:ops"]).run()
    assert set(trail()["created_by"]) == {"cli:ops"} and set(trail()["point_id"]) == {valve}
    at.multiselect(key="audit_users").set_value([]).run()
    at.multiselect(key="audit_sources").set_value(["central"]).run()
    assert trail()["created_by"].tolist() == ["central:carla"]
    at.multiselect(key="audit_sources").set_value([]).run()
    at.multiselect(key="audit_points").set_value([setpoint]).run()
    assert set(trail()["point_id"]) == {setpoint} and len(trail()) == 2
    today = datetime.now(UTC).astimezone(ZoneInfo("Asia/Macau")).date()
    at.date_input(key="audit_dates").set_value((today - timedelta(days=1), today)).run()
    assert trail()["created_by"].tolist() == ["ui:olivia"]  # the week-old one is outside the days
    at.date_input(key="audit_dates").set_value((today - timedelta(days=8), today - timedelta(days=6))).run()
    assert trail()["created_by"].tolist() == ["central:carla"]


def test_authority_changes_need_a_reason_and_a_confirmation(site, monkeypatch) -> None:
    at = page("commands", site, monkeypatch, "olivia")
    button(at, "Grant remote").click().run()
    assert any("Say why" in e.value for e in at.error)
    at.text_input(key="authority_reason").set_value("central runs the chiller trial")
    button(at, "Grant remote").click().run()
    assert any("Confirm: let central and ML write" in w.value for w in at.warning)
    assert rows(site.dsn, "SELECT count(*) FROM control_authority")[0][0] == 0
    button(at, "Confirm the change").click().run()
    assert rows(site.dsn, "SELECT mode, granted_by, reason FROM control_authority") == [
        ("remote", "ui:olivia", "central runs the chiller trial")]
    assert any("**remote**" in m.value for m in at.markdown)  # the new state, drawn at once
    assert any("Remote control granted until" in s.value for s in at.success)
    at.text_input(key="authority_reason").set_value("trial over")
    button(at, "Revoke remote").click().run()
    button(at, "Keep as it is").click().run()
    assert rows(site.dsn, "SELECT count(*) FROM control_authority")[0][0] == 1  # cancelled: unchanged
    assert any("**remote**" in m.value for m in at.markdown)


# --- Trends ---------------------------------------------------------------------------------------------

def chart(at: AppTest) -> tuple[dict, pd.DataFrame]:
    """The Vega-Lite spec the page sent and the data behind it (Arrow, as the browser receives it)."""
    element = at.get("vega_lite_chart")[0].proto
    data = pa.ipc.open_stream(element.datasets[0].data.data).read_all().to_pandas()
    return json.loads(element.spec), data


def test_a_trend_link_gives_one_axis_per_unit_in_the_sites_time(site, monkeypatch) -> None:
    zone, fan = point(site, 1001, "analog-input", 1), point(site, 1001, "analog-input", 5)
    monkeypatch.setenv("BACPIPES_CONFIG", str(site.config))
    at = AppTest.from_file(str(APP / "views" / "trends.py"), default_timeout=60)
    at.session_state["user"] = "victor"
    at.query_params.update({"points": f"{zone},{fan},999999", "range": "6h"})
    at.run()
    assert not at.exception
    assert at.multiselect(key="trend_points").value == [zone, fan]  # the unknown point is left out
    assert at.radio(key="trend_range").value == "Last 6 hours"
    assert any("not at this site" in w.value for w in at.warning)
    spec, data = chart(at)
    axes = {panel["encoding"]["y"]["title"] for panel in spec["vconcat"]}
    assert axes == {"°C", "kW"}
    x = spec["vconcat"][-1]["encoding"]["x"]
    assert x["title"] == "time (Asia/Macau)" and x["scale"]["type"] == "utc"
    legend = spec["vconcat"][0]["encoding"]["color"]["legend"]
    assert legend["labelLimit"] == 0  # names never cut
    # the newest reading, on the hour in UTC, is drawn at the site's wall-clock hour (Macau is UTC+8)
    newest = site.now.replace(minute=0, second=0, microsecond=0)
    drawn = pd.to_datetime(data["time"], utc=True).max()
    assert drawn == pd.Timestamp((newest + timedelta(hours=8)).replace(tzinfo=UTC))
    assert f"{(newest + timedelta(hours=8)):%Y-%m-%d %H:%M} CST" in set(data["at"])

    at.radio(key="trend_range").set_value("Last 24 hours").run()
    assert dict(at.query_params) == {"points": f"{zone},{fan}", "range": "24h"}  # the URL follows

    fixed = AppTest.from_file(str(APP / "views" / "trends.py"), default_timeout=60)
    fixed.session_state["user"] = "victor"
    fixed.query_params.update({"points": str(zone), "from": "2026-11-01", "to": "2026-11-03"})
    fixed.run()
    assert fixed.radio(key="trend_range").value == "Custom"
    assert fixed.date_input(key="trend_dates").value == (date(2026, 11, 1), date(2026, 11, 3))
    assert any("2026-11-01 00:00 to 2026-11-04 00:00 (Asia/Macau)" in c.value for c in fixed.caption)


def test_saved_trend_sets_are_each_users_own(site, monkeypatch) -> None:
    zone, fan = point(site, 1002, "analog-input", 1), point(site, 1002, "analog-input", 5)
    at = page("trends", site, monkeypatch, "victor")  # a viewer keeps trend sets too
    at.multiselect(key="trend_points").set_value([zone, fan]).run()
    at.radio(key="trend_range").set_value("Last 7 days").run()
    at.text_input(key="trend_set_name").set_value("AHU2 comfort and power").run()
    at.button(key="trend_set_save").click().run()
    assert rows(site.dsn, "SELECT username, name, point_ids, span FROM app_trend_sets") == [
        ("victor", "AHU2 comfort and power", [zone, fan], "Last 7 days")]
    at.multiselect(key="trend_points").set_value([zone]).run()
    at.radio(key="trend_range").set_value("Last 6 hours").run()
    at.button(key="trend_set_load").click().run()
    assert at.multiselect(key="trend_points").value == [zone, fan]
    assert at.radio(key="trend_range").value == "Last 7 days"

    other = page("trends", site, monkeypatch, "olivia")
    assert not [s for s in other.selectbox if s.key == "trend_set_pick"]  # victor's sets are his
    at.button(key="trend_set_delete").click().run()
    assert rows(site.dsn, "SELECT count(*) FROM app_trend_sets")[0][0] == 0
