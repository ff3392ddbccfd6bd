"""Trends in a real browser (Debian's Chromium through Playwright) whose own time zone is not the site's: an
operator opens a shared link to a trend of a kW and a °C point, logs in, and sees that view (its points and
range from the link) with one titled axis per unit and the site's hours on the time axis; changing the
range changes the link; a saved trend set loads the view back.

The chart is SVG: the axis titles and tick labels are read from the page as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import psycopg
import pytest
from playwright.sync_api import Page, expect

from bacpipes.settings import load_settings
from bacpipes.users import add_user
from sim.backfill import backfill
from tests.browser import chromium, serve_ui, settled
from tests.conftest import fresh_database

SITE_ZONE = ZoneInfo("Asia/Macau")
BROWSER_ZONE = "America/Los_Angeles"  # 16 hours behind the site: any leak of the browser's zone shows


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A site with a day of the virtual building's history (5-minute readings), an operator, the app."""
    tmp = tmp_path_factory.mktemp("trends")
    with fresh_database() as dsn:
        config = tmp / "site.toml"
        config.write_text(f'[site]\nid = "trend-site"\ntimezone = "{SITE_ZONE.key}"\n'
                          f'[database]\ndsn = "{dsn}"\n')
        backfill(load_settings(config), days=1, seed=2, devices=1, interval_s=300)
        with psycopg.connect(dsn) as conn:
            add_user(conn, "olivia", "operator-pass", "operator")
            ids = dict(conn.execute("SELECT object_name, point_id FROM point").fetchall())
        with serve_ui(config, tmp / "ui.log") as url:
            yield SimpleNamespace(url=url, dsn=dsn, zone=ids["AHU1-ZN-T"], fan=ids["AHU1-SF-KW"],
                                  shots=tmp)


def svg_texts(page: Page) -> set[str]:
    return set(page.locator("svg text").all_text_contents())


def test_a_shared_trend_link_shows_an_axis_per_unit_in_the_sites_hours_and_sets_reload(served) -> None:
    link = f"{served.url}/trends?points={served.zone},{served.fan}&range=6h"
    with chromium() as browser:
        context = browser.new_context(timezone_id=BROWSER_ZONE, viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(link)  # not logged in yet: the link's page asks for the login and keeps the link
        page.get_by_role("textbox", name="User").fill("olivia")
        page.get_by_role("textbox", name="Password").fill("operator-pass")
        page.get_by_role("button", name="Log in").click()

        # the link's view: both points, the 6-hour range
        expect(page.get_by_text("AHU-1 Zone air temperature").first).to_be_visible(timeout=20_000)
        expect(page.get_by_text("AHU-1 Supply fan electrical power").first).to_be_visible()
        expect(page.get_by_role("radio", name="Last 6 hours")).to_be_checked()
        chart = page.locator("svg text", has_text="°C")
        expect(chart.first).to_be_visible(timeout=20_000)
        page.wait_for_timeout(500)  # the chart settles its ticks
        page.screenshot(path=served.shots / "trends.png", full_page=True)
        texts = svg_texts(page)
        assert {"kW", "°C", f"time ({SITE_ZONE.key})"} <= texts  # one titled axis per unit
        # the time axis ticks in the site's hours, not the browser's
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        assert f"{hour.astimezone(SITE_ZONE):%d %b %H:%M}" in texts
        assert f"{hour.astimezone(ZoneInfo(BROWSER_ZONE)):%d %b %H:%M}" not in texts
        # full legend names, uncut
        assert {f"AHU-1 Zone air temperature ({served.zone})",
                f"AHU-1 Supply fan electrical power ({served.fan})"} <= texts

        # the link follows the view
        page.get_by_text("Last 24 hours").click()
        page.wait_for_url("**range=24h**", timeout=20_000)
        assert f"points={served.zone}%2C{served.fan}" in page.url or f"points={served.zone},{served.fan}" \
            in page.url

        # save the view, change it, load it back
        settled(page)
        page.get_by_text("Saved trend sets").click()
        page.get_by_label("Save this view as").fill("AHU1 comfort and power")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_text("Saved 'AHU1 comfort and power'")).to_be_visible(timeout=20_000)
        settled(page)
        page.get_by_text("Last 7 days").click()
        page.wait_for_url("**range=7d**", timeout=20_000)
        page.get_by_role("button", name="Load", exact=True).click()
        page.wait_for_url("**range=24h**", timeout=20_000)
        expect(page.get_by_role("radio", name="Last 24 hours")).to_be_checked()
        context.close()
    with psycopg.connect(served.dsn) as conn:
        saved = conn.execute("SELECT username, name, point_ids, span FROM app_trend_sets").fetchall()
    assert saved == [("olivia", "AHU1 comfort and power", [served.zone, served.fan], "Last 24 hours")]
