"""Overview leads with the building, on a real database: healthy (and only then a green "healthy"); a zone
0.5 K above its cooling setpoint; a device whose every point fails its polls; equipment in alarm; and an
agent gone silent, whose last figures are shown with their age and never as current.

The site is test_alarms' (two controllers, a zone paired by names, one by tags); the latest state is
written as the agent and the ingester write it, at the times each scene needs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from bacpipes.alarms import ZONE_BAND
from bacpipes.users import add_user
from tests.conftest import fresh_database
from tests.test_alarms import SITE, failed_poll, reading, seed_site, write_config

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
HEALTH = {"heartbeat_s": 10, "readings": 900, "reads_failed": 100, "readings_per_s": 33.3,
          "publisher": {"pending": 7}}


@pytest.fixture(scope="module")
def building(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    with fresh_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        ids = seed_site(conn)
        add_user(conn, "victor", "viewer-pass", "viewer")
        yield SimpleNamespace(conn=conn, ids=ids, config=write_config(
            tmp_path_factory.mktemp("overview") / "site.toml", dsn))


def scene(building: SimpleNamespace, *, zone: float = 23.0, heard_s_ago: float = 0.0,
          failing_device: int | None = None) -> None:
    """Every point read `heard_s_ago` seconds ago (with the agent's heartbeat), the zone at `zone` against
    24.0 / 20.0 °C; `failing_device`'s points failing their polls since then."""
    conn, ids = building.conn, building.ids
    for table in ("alarm_actions", "alerts", "point_state", "site_heartbeat"):
        conn.execute(f"DELETE FROM {table}")
    at = datetime.now(UTC) - timedelta(seconds=heard_s_ago)
    values = {ids.temp: zone, ids.cooling: 24.0, ids.heating: 20.0, ids.supply: 14.0, ids.temp2: 23.5,
              ids.cooling2: 24.0, ids.fan2: 3.2}
    for point, value in values.items():
        reading(conn, point, value, at - timedelta(seconds=5) if failing_device else at)
    if failing_device:
        for (point,) in conn.execute("SELECT point_id FROM point WHERE device_id = %s", (failing_device,)):
            failed_poll(conn, point, at, "no response from 127.0.1.21")
    conn.execute("INSERT INTO site_heartbeat (site_id, at, wal_lsn, agent) VALUES (%s, %s, '0/0', %s)",
                 (SITE, at, psycopg.types.json.Jsonb(HEALTH)))


def overview(building: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("BACPIPES_CONFIG", str(building.config))
    at = AppTest.from_file(str(APP / "views" / "overview.py"), default_timeout=60)
    at.session_state["user"] = "victor"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def table(at: AppTest, column: str):  # type: ignore[no-untyped-def]
    """The first table on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_a_healthy_building_says_so(building, monkeypatch) -> None:
    scene(building)
    at = overview(building, monkeypatch)
    shown = metrics(at)
    assert (shown["Zones out of band"], shown["Devices offline or failing"], shown["Stale points"]) == (
        "0 / 2", "0 / 2", "0 / 7")
    assert shown["Agents online"] == "1 / 1" and shown["Readings published"] == "33.3 /s"
    assert any("The building is healthy" in s.value for s in at.success)
    assert any("All 2 zones in band" in c.value for c in at.caption) and not at.error


def test_a_zone_half_a_kelvin_above_its_cooling_setpoint_is_out_of_band(building, monkeypatch) -> None:
    scene(building, zone=24.5)
    building.conn.execute("INSERT INTO alerts (site_id, source, severity, message, point_id, equipment)"
                          " VALUES (%s, %s, 'warning', 'AHU1_ZN1 too warm', %s, 'ahu_1')",
                          (SITE, ZONE_BAND, building.ids.temp))
    at = overview(building, monkeypatch)
    assert metrics(at)["Zones out of band"] == "1 / 2" and metrics(at)["Active alarms"] == "1"
    zones = table(at, "off_by")
    assert zones[["zone", "status", "temperature", "cooling_sp"]].values.tolist() == [
        ["AHU1_ZN1", "too warm", 24.5, 24.0]]
    assert zones["off_by"].iloc[0] == pytest.approx(0.5)
    in_alarm = table(at, "worst")
    assert in_alarm[["equipment", "alarms", "unacknowledged", "worst"]].values.tolist() == [
        ["ahu_1", 1, 1, "warning"]]
    assert any("equip=ahu_1" in m.value for m in at.markdown)  # a link to its Equipment page
    assert not at.success


def test_a_device_whose_points_all_fail_is_offline_with_its_last_good_read(building, monkeypatch) -> None:
    scene(building, failing_device=1002)
    at = overview(building, monkeypatch)
    assert metrics(at)["Devices offline or failing"] == "1 / 2"
    devices = table(at, "last_read")
    assert devices[["device_id", "name", "status", "failing"]].values.tolist() == [
        [1002, "AHU-2", "offline", 3]]
    assert devices["last_error"].iloc[0] == "no response from 127.0.1.21"
    assert devices["last_read_age_s"].iloc[0] >= 5  # its last good read, from before the failures
    assert metrics(at)["Bad points"] == "3" and not at.success


def test_a_silent_agent_shows_its_last_figures_as_stale_never_as_current(building, monkeypatch) -> None:
    scene(building, heard_s_ago=600)
    at = overview(building, monkeypatch)
    assert any("edge agent is silent: last heard 10 min ago" in e.value for e in at.error)
    shown = metrics(at)
    assert shown["Agents online"] == "0 / 1"
    assert shown["Readings published"] == "unknown" and shown["Spooled, not yet on the broker"] == "unknown"
    assert shown["Stale points"] == "7 / 7"
    assert any("last figures, 10 min old (not current): 33.3 readings/s, 90% reads ok, 7 spooled" in c.value
               for c in at.caption)
    agents = table(at, "read_success")
    assert agents.loc[0, "agent"] == "offline"
    assert agents[["read_success", "readings_per_s", "spool_depth"]].isna().all(axis=None)  # no bar, no rate
    zones = table(at, "off_by")
    assert set(zones["status"]) == {"stale"}  # a stale zone is not "in band"
    assert not at.success  # no green anywhere: not "healthy", not "no open alerts"
