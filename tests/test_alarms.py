"""Alarms operators can work, on a real database: raised by a platform rule (central.alerts) and by points
out of band (bacpipes.alarms, the edge agent's periodic evaluation), acknowledged with a comment and
shelved for a time (audited in alarm_actions, append-only), back when the shelving is over, cleared into
the history; viewers cannot act, in the database or on the page. One browser test: an operator
acknowledges one alarm with a comment and shelves another.

The site's points are stored as discovery stores them (tags, topic) and their latest state as the agent
and the ingester write it (point_state), at the times each test chooses."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from playwright.sync_api import expect
from streamlit.testing.v1 import AppTest

from bacpipes.alarms import (
    LIMITS,
    ZONE_BAND,
    AlarmRules,
    BandWatch,
    acknowledge,
    shelve,
    unshelve,
    watch,
    zone_bands,
)
from bacpipes.cli.servers import free_port
from bacpipes.errors import UserError
from bacpipes.replication import heartbeat
from bacpipes.settings import load_settings
from bacpipes.tagging import auto_tags, describe
from bacpipes.users import add_user
from central.alerts import run_alerts
from streamlit_app import health  # also loads the `models` package before a page's folder is on sys.path
from tests.browser import chromium, logged_in, serve_ui, settled
from tests.conftest import fresh_database
from tests.test_alerts import WebhookSink
from tests.test_app import page

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
SITE = "alarm-site"
RULES = AlarmRules(deadband_k=0.3, delay_s=600)


# --- a site, as discovery and the agent leave it ------------------------------------------------------

def add_device(conn: psycopg.Connection, device_id: int, name: str, address: str) -> None:
    conn.execute("INSERT INTO device (site_id, device_id, address, name) VALUES (%s, %s, %s, %s)",
                 (SITE, device_id, address, name))


def add_point(conn: psycopg.Connection, device_id: int, device: str, object_type: str, instance: int,
              name: str, units: str = "degrees-celsius", **columns: object) -> int:
    tags = auto_tags(SITE, device, device_id, object_type, name, units)
    haystack, dis, topic = describe(tags, device_name=device, device_id=device_id, object_type=object_type,
                                    object_instance=instance, object_name=name, description=None)
    extra = "".join(f", {c}" for c in columns)
    return conn.execute(
        f"INSERT INTO point (site_id, device_id, object_type, object_instance, object_name, units, auto_tags,"
        f" haystack_name, dis, topic{extra}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
        f"{', %s' * len(columns)}) RETURNING point_id",
        (SITE, device_id, object_type, instance, name, units, psycopg.types.json.Jsonb(tags), haystack, dis,
         topic, *columns.values())).fetchone()[0]


def seed_site(conn: psycopg.Connection) -> SimpleNamespace:
    """AHU-1 with a zone named as the virtual buildings name them and a supply air sensor with limits;
    AHU-2 (a second controller) with a zone paired by its tags only, and a fan."""
    add_device(conn, 1001, "AHU-1", "127.0.1.20")
    add_device(conn, 1002, "AHU-2", "127.0.1.21")
    ids = SimpleNamespace(
        temp=add_point(conn, 1001, "AHU-1", "analog-input", 101, "AHU1_ZN1-ZN-T"),
        cooling=add_point(conn, 1001, "AHU-1", "analog-value", 101, "AHU1_ZN1-ZN-CLG-SP",
                          device_min_value=16.0, device_max_value=32.0),
        heating=add_point(conn, 1001, "AHU-1", "analog-value", 102, "AHU1_ZN1-ZN-HTG-SP"),
        supply=add_point(conn, 1001, "AHU-1", "analog-input", 2, "AHU1-SA-T", min_value=10.0, max_value=20.0),
        temp2=add_point(conn, 1002, "AHU-2", "analog-input", 1, "SPACE TEMP ZONE"),
        cooling2=add_point(conn, 1002, "AHU-2", "analog-value", 1, "ZONE CLG SP"),
        fan2=add_point(conn, 1002, "AHU-2", "analog-input", 5, "AHU2-SF-KW", "kilowatts"),
    )
    tag_as_zone_air(conn, ids.temp2)
    return ids


def tag_as_zone_air(conn: psycopg.Connection, point_id: int) -> None:
    """An operator's tag (Devices & points): the point measures the zone's air."""
    conn.execute("UPDATE point SET user_tags = %s WHERE point_id = %s",
                 (psycopg.types.json.Jsonb({"subject": "zone-air"}), point_id))


def reading(conn: psycopg.Connection, point_id: int, value: float, at: datetime) -> None:
    """The latest reading as the ingester stores it, and a good poll as the agent records it."""
    conn.execute(
        "INSERT INTO point_state AS s (site_id, point_id, value, quality, time, last_poll)"
        " VALUES (%s, %s, %s, 'good', %s, %s) ON CONFLICT (site_id, point_id) DO UPDATE"
        " SET value = EXCLUDED.value, quality = 'good', time = EXCLUDED.time, last_poll = EXCLUDED.last_poll",
        (SITE, point_id, value, at, at))


def failed_poll(conn: psycopg.Connection, point_id: int, at: datetime, error: str) -> None:
    """A poll that got no answer, as the agent records it: the point bad, the error and its time."""
    conn.execute(
        "INSERT INTO point_state AS s (site_id, point_id, quality, last_poll, error_count, last_error,"
        " last_error_at) VALUES (%s, %s, 'bad', %s, 1, %s, %s) ON CONFLICT (site_id, point_id) DO UPDATE"
        " SET quality = 'bad', last_poll = EXCLUDED.last_poll, error_count = s.error_count + 1,"
        " last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at",
        (SITE, point_id, at, error, at))


def open_alarms(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT source, point_id, equipment, message FROM alerts WHERE resolved_at IS NULL"
                        " ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def seeded_site() -> Iterator[SimpleNamespace]:
    with fresh_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        yield SimpleNamespace(conn=conn, dsn=dsn, ids=seed_site(conn))


@pytest.fixture
def site(seeded_site: SimpleNamespace) -> SimpleNamespace:
    """The seeded site as discovery left it: no state, no alarm, no heartbeat (one database per module)."""
    conn = seeded_site.conn
    for table in ("alarm_actions", "alerts", "point_state", "site_heartbeat"):
        conn.execute(f"DELETE FROM {table}")
    conn.execute("DELETE FROM point WHERE NOT point_id = ANY(%s)", (list(vars(seeded_site.ids).values()),))
    return seeded_site


# --- raising and clearing -----------------------------------------------------------------------------

def test_zones_are_paired_by_their_names_and_by_their_tags(site) -> None:
    ids = site.ids
    bands = {b.zone: b for b in zone_bands(site.conn, SITE)}
    assert set(bands) == {"AHU1_ZN1", "ahu_2"}
    assert (bands["AHU1_ZN1"].temp, bands["AHU1_ZN1"].cooling, bands["AHU1_ZN1"].heating) == (
        ids.temp, ids.cooling, ids.heating)
    assert (bands["ahu_2"].temp, bands["ahu_2"].cooling, bands["ahu_2"].heating) == (
        ids.temp2, ids.cooling2, None)
    # a second zone-air temperature on AHU-2 makes its pairing ambiguous: no zone is guessed
    tag_as_zone_air(site.conn, add_point(site.conn, 1002, "AHU-2", "analog-input", 2, "ZONE 2 TEMP"))
    assert [b.zone for b in zone_bands(site.conn, SITE)] == ["AHU1_ZN1"]


def test_a_zone_out_of_band_alarms_after_the_delay_and_clears_back_in_band(site) -> None:
    conn, ids, watcher = site.conn, site.ids, BandWatch(SITE, RULES)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    reading(conn, ids.cooling, 24.0, t0)
    reading(conn, ids.heating, 20.0, t0)
    for minutes, temp in ((0, 24.5), (5, 24.6)):  # 0.5 K above its cooling setpoint: out, not yet long enough
        reading(conn, ids.temp, temp, t0 + timedelta(minutes=minutes))
        assert watcher.check(conn).raised == [] and open_alarms(conn) == []
    reading(conn, ids.temp, 24.6, t0 + timedelta(minutes=10))
    raised = watcher.check(conn).raised
    assert [(a.source, a.severity) for a in raised] == [(ZONE_BAND, "warning")]
    [(source, point, equipment, message)] = open_alarms(conn)
    assert (source, point, equipment) == (ZONE_BAND, ids.temp, "ahu_1")
    assert message == "AHU1_ZN1 at 24.6 °C, 0.6 K above its cooling setpoint 24.0 °C for 10 min"
    assert watcher.check(conn).raised == []  # still out: the same alarm, not a second one
    reading(conn, ids.temp, 24.2, t0 + timedelta(minutes=11))  # inside the hysteresis: not back yet
    assert watcher.check(conn).resolved == [] and len(open_alarms(conn)) == 1
    reading(conn, ids.temp, 23.9, t0 + timedelta(minutes=12))
    assert [a.source for a in watcher.check(conn).resolved] == [ZONE_BAND] and open_alarms(conn) == []

    # one sample out, then back: never an alarm; a zone too cold alarms against its heating setpoint
    reading(conn, ids.temp, 26.0, t0 + timedelta(minutes=13))
    watcher.check(conn)
    reading(conn, ids.temp, 23.0, t0 + timedelta(minutes=30))
    watcher.check(conn)
    reading(conn, ids.temp, 19.0, t0 + timedelta(minutes=31))
    watcher.check(conn)
    reading(conn, ids.temp, 19.2, t0 + timedelta(minutes=41))
    watcher.check(conn)
    assert [m for *_, m in open_alarms(conn)] == [
        "AHU1_ZN1 at 19.2 °C, 0.8 K below its heating setpoint 20.0 °C for 10 min"]
    count = conn.execute("SELECT count(*) FROM alerts WHERE source = %s", (ZONE_BAND,)).fetchone()[0]
    assert count == 2  # the one cleared is in the history, with when it cleared


def test_a_value_outside_its_limits_alarms_and_a_stale_value_changes_nothing(site) -> None:
    conn, ids, watcher = site.conn, site.ids, BandWatch(SITE, RULES)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    reading(conn, ids.supply, 8.0, t0)
    watcher.check(conn)
    watcher.check(conn)  # no new reading: the same sample judged twice is still one sample
    assert open_alarms(conn) == []
    reading(conn, ids.supply, 7.5, t0 + timedelta(minutes=10))
    watcher.check(conn)
    message = "AHU1-SA-T reads 7.5 °C, below its limit 10 °C for 10 min"
    assert open_alarms(conn) == [(LIMITS, ids.supply, "ahu_1", message)]
    reading(conn, ids.supply, 14.0, t0 + timedelta(minutes=11))
    watcher.check(conn)
    assert open_alarms(conn) == []


def test_the_agent_loop_raises_and_clears_until_stopped(site) -> None:
    """`watch`, as the edge agent runs it: rounds every interval_s until stopped (no delay here, so each
    round's outcome is the one reading's: the delay's rule is the tests' above); a raised alarm goes to the
    site's webhook (`bacpipes.alerts.deliver`, as central's rules' alerts do)."""
    hook = WebhookSink()
    settings = load_settings(None, site={"id": SITE}, database={"dsn": site.dsn},
                             alerts={"webhook_url": hook.url})
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    reading(site.conn, site.ids.supply, 25.0, t0)

    async def until(condition) -> None:  # type: ignore[no-untyped-def]
        while not condition():
            await asyncio.sleep(0.05)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watch(settings, stop, AlarmRules(delay_s=0, interval_s=0.05)))
        await until(lambda: open_alarms(site.conn))
        reading(site.conn, site.ids.supply, 15.0, t0 + timedelta(minutes=1))
        await until(lambda: not open_alarms(site.conn))
        stop.set()
        await asyncio.wait_for(task, 5)

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    finally:
        hook.close()
    history = site.conn.execute("SELECT source, resolved_at IS NOT NULL FROM alerts").fetchall()
    assert history == [(LIMITS, True)]
    [sent] = hook.bodies
    assert sent["source"] == LIMITS and sent["site_id"] == SITE and "AHU1-SA-T reads 25" in sent["text"]


# --- what operators do --------------------------------------------------------------------------------

def test_a_rule_alarm_is_acknowledged_shelved_comes_back_and_every_action_is_audited(site, tmp_path) -> None:
    conn = site.conn
    settings = load_settings(None, site={"id": SITE}, database={"dsn": site.dsn},
                             alerts={"state_path": str(tmp_path / "alerts-state.json"), "disk_free_min": 0.0})
    run = run_alerts(settings)  # no agent heartbeat while the site has published points: agent_offline
    [alarm] = [a for a in run.raised if a.source == "alerts:agent_offline"]
    with pytest.raises(UserError, match="Say why"):
        acknowledge(conn, alarm.id, "ui:olivia", "  ")
    acknowledge(conn, alarm.id, "ui:olivia", "agent box rebooting, on it")
    with pytest.raises(UserError, match="already acknowledged by ui:olivia"):
        acknowledge(conn, alarm.id, "ui:oscar", "me too")
    with pytest.raises(UserError, match="at most 7 days"):
        shelve(conn, alarm.id, "ui:olivia", "long", timedelta(days=30))
    until = shelve(conn, alarm.id, "ui:olivia", "known, maintenance window", timedelta(seconds=1))
    assert until > datetime.now(UTC)
    def active() -> list[int]:
        return health.active_alarms(conn, [SITE])["id"].tolist()

    assert alarm.id not in active() and health.shelved_alarms(conn, [SITE])["id"].tolist() == [alarm.id]
    while datetime.now(UTC) < until:
        time.sleep(0.1)
    assert alarm.id in active()  # back by itself once the time is over
    shelve(conn, alarm.id, "ui:olivia", "again", timedelta(hours=1))
    unshelve(conn, alarm.id, "ui:olivia", "needs eyes now")
    assert alarm.id in active()
    with pytest.raises(UserError, match="not shelved"):
        unshelve(conn, alarm.id, "ui:olivia", "twice")

    trail = conn.execute("SELECT action, by_user, comment, until IS NOT NULL, at IS NOT NULL"
                         " FROM alarm_actions WHERE alert_id = %s ORDER BY id", (alarm.id,)).fetchall()
    assert trail == [("acknowledge", "ui:olivia", "agent box rebooting, on it", False, True),
                     ("shelve", "ui:olivia", "known, maintenance window", True, True),
                     ("shelve", "ui:olivia", "again", True, True),
                     ("unshelve", "ui:olivia", "needs eyes now", False, True)]
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        conn.execute("UPDATE alarm_actions SET comment = 'rewritten'")
    state = conn.execute("SELECT acked_by, ack_comment, shelved_until FROM alarm_state WHERE id = %s",
                         (alarm.id,)).fetchone()
    assert state == ("ui:olivia", "agent box rebooting, on it", None)

    # the rule clears it once the agent reports: in the history, acknowledged, resolved
    heartbeat(conn, SITE, {"heartbeat_s": 10})
    assert [a.id for a in run_alerts(settings).resolved] == [alarm.id]
    with pytest.raises(UserError, match="cleared already"):
        shelve(conn, alarm.id, "ui:olivia", "late", timedelta(hours=1))


def test_viewers_cannot_act_in_the_database(site) -> None:
    alarm = site.conn.execute("INSERT INTO alerts (site_id, source, severity, message) VALUES (%s, 'test',"
                              " 'warning', 'x') RETURNING id", (SITE,)).fetchone()[0]
    with psycopg.connect(site.dsn) as conn:
        conn.execute("SET ROLE bacpipes_app_viewer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            acknowledge(conn, alarm, "ui:victor", "I should not")
    with psycopg.connect(site.dsn, autocommit=True) as conn:
        conn.execute("SET ROLE bacpipes_app_operator")
        acknowledge(conn, alarm, "ui:olivia", "operators may")


# --- the page -----------------------------------------------------------------------------------------

def write_config(path: Path, dsn: str) -> Path:
    path.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n')
    return path


@pytest.fixture(scope="module")
def alarmed(seeded_site: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The module's site with three active alarms (a critical rule alarm, two zone alarms), an operator and
    a viewer, for the page tests that follow the database tests."""
    conn, ids = seeded_site.conn, seeded_site.ids
    for table in ("alarm_actions", "alerts"):
        conn.execute(f"DELETE FROM {table}")
    add_user(conn, "olivia", "operator-pass", "operator")
    add_user(conn, "victor", "viewer-pass", "viewer")
    conn.execute("INSERT INTO alerts (site_id, source, severity, message, raised_at) VALUES (%s,"
                 " 'alerts:agent_offline', 'critical', 'edge agent silent for 95 s', now() - interval '1 h')",
                 (SITE,))
    for pid, equipment, message in ((ids.temp, "ahu_1", "AHU1_ZN1 too warm"),
                                    (ids.temp2, "ahu_2", "ahu_2 too warm")):
        conn.execute("INSERT INTO alerts (site_id, source, severity, message, point_id, equipment)"
                     " VALUES (%s, %s, 'warning', %s, %s, %s)", (SITE, ZONE_BAND, message, pid, equipment))
    config = write_config(tmp_path_factory.mktemp("alarms") / "site.toml", seeded_site.dsn)
    return SimpleNamespace(dsn=seeded_site.dsn, config=config, conn=conn)


def test_the_console_lists_by_priority_and_viewers_only_see(alarmed, monkeypatch) -> None:
    viewer = page("alarms", alarmed, monkeypatch, "victor")
    active = viewer.dataframe[0].value
    assert active["severity"].tolist() == ["critical", "warning", "warning"]  # priority, then newest first
    assert active["message"].tolist()[1:] == ["ahu_2 too warm", "AHU1_ZN1 too warm"]
    assert active["point"].iloc[1] and active["equipment"].fillna("").tolist() == ["", "ahu_2", "ahu_1"]
    metrics = {m.label: m.value for m in viewer.metric}
    assert metrics == {"Active": "3", "Not acknowledged": "3", "Shelved": "0"}
    assert any("Log in as an operator" in i.value for i in viewer.info)
    assert not viewer.get("form") and not [b for b in viewer.button if b.label == "Acknowledge"]


def test_an_operator_acknowledges_on_the_page_with_a_comment(alarmed, monkeypatch) -> None:
    at = page("alarms", alarmed, monkeypatch, "olivia")
    critical = int(at.dataframe[0].value["id"].iloc[0])
    at.selectbox[0].set_value(critical)
    at.text_input[0].set_value("")
    next(b for b in at.button if b.label == "Acknowledge").click().run()
    assert any("Say why" in e.value for e in at.error)
    at.selectbox[0].set_value(critical)
    at.text_input[0].set_value("rebooting the agent box")
    next(b for b in at.button if b.label == "Acknowledge").click().run()
    assert not at.exception
    assert any(f"Alarm #{critical} acknowledged" in s.value for s in at.success)
    assert at.dataframe[0].value.loc[0, "acked_by"] == "ui:olivia"
    assert {m.label: m.value for m in at.metric}["Not acknowledged"] == "2"
    trail = at.dataframe[-1].value
    assert trail[["alert_id", "action", "by_user", "comment"]].values.tolist() == [
        [critical, "acknowledge", "ui:olivia", "rebooting the agent box"]]



def test_a_database_that_is_away_is_a_message_on_the_console(tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path / "down.toml", f"postgresql://postgres@127.0.0.1:{free_port()}/bacpipes")
    monkeypatch.setenv("BACPIPES_CONFIG", str(config))
    at = AppTest.from_file(str(APP / "views" / "alarms.py"), default_timeout=60)
    at.session_state["user"] = "victor"
    at.run()
    assert not at.exception and any("database is not answering" in e.value for e in at.error)


@pytest.fixture(scope="module")
def served(alarmed: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_ui(alarmed.config, tmp_path_factory.mktemp("alarms-ui") / "ui.log") as url:
        yield url


def test_an_operator_acknowledges_one_alarm_and_shelves_another_in_the_browser(alarmed, served) -> None:
    with chromium() as browser:
        page = logged_in(browser, served, "olivia", "operator-pass")
        page.get_by_role("link", name="Alarms").click()
        expect(page.get_by_role("heading", name="Alarms")).to_be_visible(timeout=20_000)

        def act(alarm: str, comment: str, button: str) -> None:
            settled(page)  # the last action's redraw done: it closed this list under the click on a busy CI
            page.get_by_label("Alarm", exact=True).click()
            page.get_by_role("option", name=re.compile(re.escape(alarm))).click()
            page.get_by_label("Comment", exact=True).fill(comment)
            page.get_by_role("button", name=button).click()

        act("AHU1_ZN1 too warm", "tenant complained, checking the VAV box", "Acknowledge")
        expect(page.get_by_text("acknowledged.")).to_be_visible(timeout=20_000)
        act("ahu_2 too warm", "sensor being replaced this morning", "Shelve")
        expect(page.get_by_text("it comes back by itself then")).to_be_visible(timeout=20_000)
        expect(page.get_by_text("Shelved alarm")).to_be_visible()  # the put-back form of the shelved list
        page.screenshot(path=alarmed.config.parent / "alarms.png", full_page=True)

    actions = alarmed.conn.execute(
        "SELECT a.message, x.action, x.by_user, x.comment, x.until - x.at FROM alarm_actions x"
        " JOIN alerts a ON a.id = x.alert_id WHERE a.source = %s ORDER BY x.id", (ZONE_BAND,)).fetchall()
    assert actions == [
        ("AHU1_ZN1 too warm", "acknowledge", "ui:olivia", "tenant complained, checking the VAV box", None),
        ("ahu_2 too warm", "shelve", "ui:olivia", "sensor being replaced this morning", timedelta(hours=1))]
