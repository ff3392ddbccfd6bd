"""Central sees what the site sees (issue 18, item 1), on throwaway site and central clusters linked as
`bacpipes site link` links them (TLS 1.3, client certificates):

- a reading the site stores is central's current value (point_state, kept from the applied readings),
  the newest of a transaction of many, never an older late one;
- commands made at the site (app, ML) reach central once, with their outcome; a command made on central
  reaches its site once and never comes back; a relink and a resync copy nothing twice and stop on no
  duplicate key;
- central's app shows them: Live with the site's values (not stale), Commands with every command.

The site's executor is stood in for by its own event statements (edge.executor._EVENT): what is under test
is the replication of its rows, and tests/test_replication.py runs a real one on a real building."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from playwright.sync_api import expect
from streamlit.testing.v1 import AppTest

from bacpipes.commands import Command, insert_command
from bacpipes.db import connect
from bacpipes.replication import central_status, link, resync
from bacpipes.users import add_user
from edge.executor import _EVENT
from tests.browser import chromium, logged_in, serve_ui
from tests.replication_harness import (
    Deployment,
    certificate_dir,
    insert_readings,
    linked,
    totals,
    wait_synced,
    wait_until,
)

SITE = "site-a"
APP = Path(__file__).resolve().parent.parent / "streamlit_app"


@pytest.fixture(scope="module")
def deployment() -> Iterator[SimpleNamespace]:
    with certificate_dir() as directory:
        d = Deployment(directory, (SITE,))
        try:
            with connect(d.sites[SITE].database.dsn) as conn:  # named, as discovery names every point
                conn.execute("UPDATE point SET object_name = 'AV' || object_instance")
                conn.commit()
            linked(d, SITE)
            yield SimpleNamespace(d=d, site=d.sites[SITE].database.dsn, central=d.central.database.dsn)
        finally:
            d.close()


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def state(dsn: str) -> dict[int, tuple]:
    """point -> (value, quality, time, last_poll) as point_state holds it."""
    return {r[0]: r[1:] for r in rows(dsn, "SELECT point_id, value, quality, time, last_poll FROM point_state"
                                           " WHERE site_id = %s", SITE)}


def newest_readings(dsn: str) -> dict[int, tuple]:
    return {r[0]: (*r[1:], None) for r in rows(
        dsn, "SELECT DISTINCT ON (point_id) point_id, value, quality, time FROM sensor_readings"
             " WHERE site_id = %s ORDER BY point_id, time DESC", SITE)}


def reading(dsn: str, point: int, at: datetime, value: float) -> None:
    with connect(dsn) as conn:
        conn.execute("INSERT INTO sensor_readings (time, site_id, point_id, value) VALUES (%s, %s, %s, %s)",
                     (at, SITE, point, value))
        conn.commit()


def caught_up(v: SimpleNamespace) -> None:
    wait_until(lambda: totals(v.central, SITE) == totals(v.site, SITE), 30, "central to hold every reading")


def executed(dsn: str, command_id: uuid.UUID, value: float) -> None:
    """The trail the site's executor leaves for a command it ran (its own statement)."""
    with connect(dsn) as conn:
        for status in ("accepted", "executing", "completed"):
            conn.execute(_EVENT, (command_id, SITE, status, "edge-test", None,
                                  value if status == "completed" else None, None))
        conn.commit()


def commands(dsn: str, command_id: uuid.UUID) -> list[tuple]:
    return rows(dsn, "SELECT status, arrived, value_read FROM write_command_status WHERE id = %s", command_id)


def made_at_site(v: SimpleNamespace, source: str, point: int, value: float) -> uuid.UUID:
    with connect(v.site) as conn:
        return insert_command(conn, Command(SITE, point, value, source=source, created_by=f"{source}:test",
                                            reason="made at the site"))


def on_central(v: SimpleNamespace, command_id: uuid.UUID, status: str = "completed") -> None:
    wait_until(lambda: [r[0] for r in commands(v.central, command_id)] == [status], 30,
               f"command {command_id} {status} on central")


def test_readings_applied_on_central_are_its_current_values(deployment: SimpleNamespace) -> None:
    v = deployment
    now = datetime.now(UTC).replace(microsecond=0)
    insert_readings(v.site, SITE, now - timedelta(seconds=40), 300)  # one transaction, 3 readings a point
    caught_up(v)
    assert len(state(v.central)) == 100
    assert state(v.central) == newest_readings(v.site)  # the newest of each point's three, no poll times

    reading(v.site, 1, now, 99.0)  # newer: the current value
    reading(v.site, 2, now - timedelta(hours=1), -5.0)  # a late one, older than point 2's state: not
    caught_up(v)
    after = state(v.central)
    assert after[1] == (99.0, "good", now, None)
    assert after[2] == newest_readings(v.site)[2] and after[2][0] != -5.0
    assert state(v.site) == {}  # the site's own point_state is its ingester's: nothing wrote it here


def test_commands_made_at_the_site_reach_central_once_with_their_outcome(deployment: SimpleNamespace) -> None:
    v = deployment
    ui, ml = made_at_site(v, "ui", 5, 21.0), made_at_site(v, "ml", 6, 22.5)
    executed(v.site, ui, 21.0)
    executed(v.site, ml, 22.5)
    on_central(v, ui)
    on_central(v, ml)
    assert commands(v.central, ui) == [("completed", "replication", 21.0)]
    assert commands(v.central, ml) == [("completed", "replication", 22.5)]
    assert rows(v.central, "SELECT source, created_by, reason FROM write_commands WHERE id = %s", ml) == [
        ("ml", "ml:test", "made at the site")]
    trail = "SELECT count(*) FROM command_events WHERE command_id = ANY(%s)"
    assert rows(v.central, trail, [ui, ml]) == [(6,)]
    assert rows(v.site, "SELECT count(*) FROM write_commands WHERE id = ANY(%s)", [ui, ml]) == [(2,)]


def test_commands_never_come_back_to_where_they_were_made(deployment: SimpleNamespace) -> None:
    """With both ends' duplicate-absorbing trigger off, a command coming back would stop a stream on a
    duplicate key: each end's next command arriving at the other proves none did."""
    v = deployment
    toggle = "ALTER TABLE write_commands {} TRIGGER write_commands_known"
    with connect(v.central, autocommit=True) as c, connect(v.site, autocommit=True) as s:
        for conn in (c, s):
            conn.execute(toggle.format("DISABLE"))
        try:
            central_made = insert_command(c, Command(SITE, 7, 23.0, source="central", created_by="ui:carla"))
            wait_until(lambda: commands(v.site, central_made) == [("pending", "replication", None)], 10,
                       "the command at the site")
            executed(v.site, central_made, 23.0)
            on_central(v, central_made)
            site_made = made_at_site(v, "ui", 8, 19.0)  # after central's: had that come back, it would stop
            on_central(v, site_made, "pending")
            later = insert_command(c, Command(SITE, 8, 19.5, source="central", created_by="ui:carla"))
            wait_until(lambda: len(commands(v.site, later)) == 1, 10, "central's next command at the site")
        finally:
            for conn in (c, s):
                conn.execute(toggle.format("ENABLE REPLICA"))
        links = {link.site_id: link for link in central_status(c)}
    assert commands(v.central, central_made) == [("completed", "local", 23.0)]
    assert commands(v.site, central_made) == [("completed", "replication", 23.0)]
    assert commands(v.central, site_made) == [("pending", "replication", None)]
    assert commands(v.site, site_made) == [("pending", "local", None)]
    assert links[SITE].meta_worker_alive and links[SITE].readings_worker_alive


def test_central_refuses_a_command_a_site_makes_for_another_site(deployment: SimpleNamespace) -> None:
    """A compromised site-a drops its row filters and makes a command for site-b: central keeps it out of
    site-b's log (and so out of what it sends site-b); `site link` again puts the filters back."""
    v, d = deployment, deployment.d
    with connect(v.site, autocommit=True) as conn:
        conn.execute("ALTER PUBLICATION bacpipes_meta SET TABLE write_commands")
        forged = insert_command(conn, Command("site-b", 1, 30.0, source="ui", created_by="ui:mallory"))
    marker = made_at_site(v, "ui", 14, 20.0)
    on_central(v, marker, "pending")
    assert commands(v.central, forged) == []
    assert rows(v.central, "SELECT table_name, rows, last_site_id FROM replication_refusals"
                           " WHERE site_id = %s", SITE) == [("write_commands", 1, "site-b")]
    link(d.sites[SITE], d.central)
    wait_synced(d, SITE)
    with connect(v.site) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'bacpipes_meta'"
                            " AND rowfilter IS NULL").fetchone() == (0,)


def test_relink_and_resync_copy_nothing_twice(deployment: SimpleNamespace) -> None:
    v, d = deployment, deployment.d
    site_made = made_at_site(v, "ui", 9, 20.5)
    executed(v.site, site_made, 20.5)
    with connect(v.central) as conn:
        central_made = insert_command(conn, Command(SITE, 10, 24.0, source="central", created_by="ui:carla"))
    wait_until(lambda: len(commands(v.site, central_made)) == 1, 10, "the central command at the site")
    on_central(v, site_made)
    count = "SELECT count(*), count(DISTINCT id) FROM write_commands"
    events = "SELECT count(*) FROM command_events"
    before = {dsn: (rows(dsn, count), rows(dsn, events)) for dsn in (v.site, v.central)}
    values = state(v.central)

    with connect(v.site, autocommit=True) as conn:  # the site's link to central made again by `site link`:
        conn.execute("DROP SUBSCRIPTION bacpipes_commands")  # central's commands copied to it afresh
    resync(d.sites[SITE], d.central)  # and the site's small tables to central afresh
    linked(d, SITE)
    after_marker = made_at_site(v, "mqtt", 11, 18.0)  # through the new streams, after the copies
    with connect(v.central) as conn:
        back = insert_command(conn, Command(SITE, 12, 25.0, source="central", created_by="ui:carla"))
    on_central(v, after_marker, "pending")
    wait_until(lambda: len(commands(v.site, back)) == 1, 10, "a new central command at the site")

    for dsn in (v.site, v.central):
        (total, distinct), trail = rows(dsn, count)[0], rows(dsn, events)
        assert total == distinct == before[dsn][0][0][0] + 2
        assert trail == before[dsn][1]
    assert state(v.central) == values  # a point replaced by the copy keeps its current value
    with connect(v.central, autocommit=True) as conn:
        assert all(s.meta_worker_alive and s.readings_worker_alive for s in central_status(conn))
    assert link(d.sites[SITE], d.central) == ["already linked: nothing to do"]


def central_config(path: Path, dsn: str) -> Path:
    path.write_text(f'[site]\nid = "central"\n[database]\ndsn = "{dsn}"\n[polling]\ndefault_interval_s = 60\n'
                    '[ui]\nlive_refresh_s = 2\n')
    return path


@pytest.fixture(scope="module")
def central_app(deployment: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Fresh readings and a site command, and a viewer on central."""
    v = deployment
    insert_readings(v.site, SITE, datetime.now(UTC).replace(microsecond=0), 100)
    command_id = made_at_site(v, "ui", 13, 21.5)
    executed(v.site, command_id, 21.5)
    caught_up(v)
    on_central(v, command_id)
    with psycopg.connect(v.central) as conn:
        add_user(conn, "carla", "central-pass", "viewer")
    config = central_config(tmp_path_factory.mktemp("central-app") / "central.toml", v.central)
    return SimpleNamespace(config=config, command=command_id)


def test_centrals_live_and_commands_pages_show_the_site(deployment, central_app, monkeypatch) -> None:
    monkeypatch.setenv("BACPIPES_CONFIG", str(central_app.config))
    at = AppTest.from_file(str(APP / "app.py"), default_timeout=60)
    at.session_state["user"] = "carla"
    at.run()
    assert any(f"Site **{SITE}**" in c.value for c in at.sidebar.caption)  # central's one linked site
    at.switch_page(str(APP / "views" / "live.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    live = at.dataframe[0].value
    assert len(live) == 100 and live["value"].notna().all() and (live["status"] == "ok").all()
    assert any("100 of 100 points · 0 stale" in c.value for c in at.caption)

    at.switch_page(str(APP / "views" / "commands.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    trail = at.dataframe[-1].value.set_index("id")
    expected = rows(deployment.central, "SELECT id::text FROM write_commands WHERE site_id = %s", SITE)
    assert sorted(trail.index) == sorted(i for (i,) in expected)  # every command, wherever it was made
    row = trail.loc[str(central_app.command)]
    assert tuple(row[["status", "source", "made_at", "value_read"]]) == ("completed", "ui", "site", 21.5)
    assert set(trail.loc[trail["source"] == "central", "made_at"]) == {"central"}


def test_centrals_live_page_in_a_browser(deployment, central_app, tmp_path) -> None:
    with serve_ui(central_app.config, tmp_path / "ui.log") as url, chromium() as browser:
        page = logged_in(browser, url, "carla", "central-pass")
        page.get_by_role("link", name="Live").click()
        expect(page.get_by_text("100 of 100 points · 0 stale")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stDataFrame")).to_be_visible()
        page.wait_for_timeout(500)  # the grid draws on a canvas after it appears
        page.screenshot(path=tmp_path / "central-live.png", full_page=True)
