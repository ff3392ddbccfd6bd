"""The app in a real browser: `bacpipes ui` served on loopback, Debian's Chromium driven by Playwright
(no browser download), the virtual building and the edge agent behind it. An operator logs in, watches
Live fill with the agent's readings, writes a setpoint and sees the device's read-back; the device's
priority array holds the value. Screenshots go to the test's output folder."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import expect

from bacpipes.users import add_user
from edge.writes import slot_value
from sim.server import ThreadedBuilding
from tests.browser import chromium, logged_in, serve_ui, settled
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent

BASE = "127.0.0.170"
AGENT = "127.0.0.106/8:47906"
SETPOINT = "analog-value,1"


@pytest.fixture
def served_app(db_dsn: str, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "site.toml"
    config.write_text(f'[database]\ndsn = "{db_dsn}"\n[polling]\ndefault_interval_s = 2\n'
                      '[ui]\nlive_refresh_s = 2\nwrite_wait_s = 15\n')
    with serve_ui(config, tmp_path / "ui.log") as url:
        yield url


def test_an_operator_sees_live_values_and_writes_a_setpoint_in_the_browser(db_dsn, broker, tmp_path,
                                                                           served_app) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    settings = make_settings(db_dsn, broker.url, tmp_path, bacnet={"address": AGENT},
                             discovery={"targets": [BASE]}, polling={"default_interval_s": 2})
    with ThreadedBuilding(devices=1, address_base=BASE, seed=3, speed=0,
                          start=datetime(2026, 7, 1, 13)) as building:
        discover_site(settings)
        with psycopg.connect(db_dsn) as conn:
            add_user(conn, "olivia", "operator-pass", "operator")
            point, label = conn.execute(
                "SELECT point_id, coalesce(dis, object_name) FROM point WHERE device_id = 1001"
                " AND object_type = 'analog-value' AND object_instance = 1").fetchone()
            published = conn.execute("SELECT count(*) FROM point WHERE publish").fetchone()[0]
        with ready_agent(settings), chromium() as browser:
            page = logged_in(browser, served_app, "olivia", "operator-pass")

            page.get_by_role("link", name="Live").click()
            # every published point, refreshed by the fragment until the agent's readings are in
            expect(page.get_by_text(f"{published} of {published} points · 0 stale")).to_be_visible(
                timeout=30_000)
            expect(page.get_by_test_id("stDataFrame")).to_be_visible()
            # the grid's column header (not the sidebar's Equipment page)
            expect(page.get_by_test_id("stMain").get_by_text("Equipment", exact=True)).to_be_visible()
            page.wait_for_timeout(500)  # the grid draws on a canvas after it appears
            page.screenshot(path=shots / "live.png", full_page=True)

            page.get_by_role("link", name="Commands").click()
            settled(page)
            page.get_by_label("Point").click()
            page.keyboard.type(label)
            page.keyboard.press("Enter")
            with psycopg.connect(db_dsn) as conn:
                present = conn.execute("SELECT value FROM point_state WHERE point_id = %s",
                                       (point,)).fetchone()[0]
            # the form follows the chosen point: its value field starts at the point's present value
            expect(page.locator(f'input[aria-label="Value"][value="{present:.2f}"]')).to_have_count(1)
            expect(page.locator('input[aria-label="Value"]')).to_have_count(1)  # the old one is gone
            page.get_by_label("Value").fill("21.5")
            page.get_by_label("Reason").fill("browser test")
            page.get_by_role("button", name="Review").click()
            expect(page.get_by_text("Confirm: write 21.5")).to_be_visible(timeout=20_000)
            page.get_by_role("button", name="Confirm").click()
            expect(page.get_by_text("Completed: the device reads back 21.5")).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Confirm: write")).to_have_count(0)
            page.screenshot(path=shots / "write.png", full_page=True)

        priority_array = [slot_value(s) for s in building.object_property(1001, SETPOINT, "priorityArray")]
    assert priority_array[7] == 21.5  # priority 8, the app's default
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT point_id, status, source, created_by, value_read FROM write_command_status"
                           ).fetchall()
        health = conn.execute("SELECT agent FROM site_heartbeat").fetchone()[0]
    assert row == [(point, "completed", "ui", "ui:olivia", 21.5)]
    assert {"readings_per_s", "heartbeat_s", "reads_failed", "publisher"} <= set(health)  # for Overview
    assert (shots / "live.png").stat().st_size > 10_000 and (shots / "write.png").stat().st_size > 10_000
    print(f"screenshots in {shots}")
