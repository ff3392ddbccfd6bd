"""Careful changes on the Models page: deploy and roll back are reviewed with a reason, confirmed, kept with
the deployment, and the page shows the new state at once; nothing is written before the confirmation.

AppTest for the rules, and one browser test for an engineer's job end to end: open an equipment page from a
link (a fresh tab: the login comes first, then the page the link named), then deploy a model version with a
reason and a confirmation. The database is seeded once for the module: three days of two air handlers of the
virtual building and two registered versions of a setpoint model, both deployed in shadow mode."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import psycopg
import pytest
from playwright.sync_api import Browser, expect
from streamlit.testing.v1 import AppTest

import models.ab  # noqa: F401  (imported before a page runs: views/models.py would shadow the package)
from bacpipes.settings import load_settings
from bacpipes.users import add_user
from bacpipes.zones import find_zones, zone_frame
from central.registry import deploy, register
from models.features import build_features
from models.setpoint import export, train
from sim.backfill import backfill
from tests.browser import chromium, logged_in, serve_ui
from tests.conftest import fresh_database
from tests.test_app import button, field, page

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
SITE = "sim-site"
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("careful")
    with fresh_database() as dsn:
        config = tmp / "site.toml"
        config.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                          '[ml]\ninterval_s = 3600\n')
        settings = load_settings(config)
        backfill(settings, days=3, seed=4, devices=2, interval_s=3600, end=END)
        with psycopg.connect(dsn) as conn:
            add_user(conn, "olivia", "operator-pass", "operator")
            add_user(conn, "victor", "viewer-pass", "viewer")
            frames = [zone_frame(z, END - timedelta(days=3), END, timedelta(hours=1), settings, conn)
                      for z in find_zones(conn, SITE)]
            features = pl.concat([build_features(f, "Asia/Macau") for f in frames])
            model = tmp / "setpoint.onnx"
            export(train(features), model, version="1")
            for version in ("1", "2"):
                register(conn, "setpoint", version, model, "test")
                deploy(conn, SITE, "setpoint", version, "shadow", "test")
        yield SimpleNamespace(dsn=dsn, config=config, tmp=tmp)


def deployments(dsn: str) -> list[tuple]:
    """(version, mode, created_by, reason) of every deployment, newest first."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version, mode, created_by, reason FROM model_deployments"
                            " ORDER BY created_at DESC, id DESC").fetchall()


def running(at: AppTest) -> list[list[str]]:
    return at.dataframe[1].value[["version", "mode"]].values.tolist()  # "Running now"


def test_a_viewer_cannot_review_a_change(site, monkeypatch) -> None:
    at = page("models", site, monkeypatch, "victor")
    assert not [b for b in at.button if b.label.startswith("Review")]
    assert any("Log in as an operator" in i.value for i in at.info)


def test_a_deployment_needs_a_reason_and_a_confirmation_and_can_be_cancelled(site, monkeypatch) -> None:
    before = deployments(site.dsn)
    at = page("models", site, monkeypatch, "olivia")
    at.selectbox[1].set_value("1")  # version
    at.selectbox[2].set_value("active")  # mode
    button(at, f"Review deployment to {SITE}").click().run()
    assert any("Give a reason first" in e.value for e in at.error)  # refused without a reason
    assert not at.warning and deployments(site.dsn) == before

    field(at, "Reason").set_value("  v1 held the zones closer in shadow  ")
    button(at, f"Review deployment to {SITE}").click().run()
    warning = at.warning[0].value
    assert warning.startswith(f"Confirm: deploy setpoint@1 to {SITE} in active mode (now: setpoint@")
    assert warning.endswith("Reason: v1 held the zones closer in shadow")
    assert deployments(site.dsn) == before  # nothing before the confirmation

    button(at, "Confirm").click().run()
    assert deployments(site.dsn)[0] == ("1", "active", "ui:olivia", "v1 held the zones closer in shadow")
    assert any(f"setpoint@1 deployed to {SITE} in active mode" in s.value for s in at.success)
    assert running(at) == [["1", "active"]]  # the page shows the new state at once
    assert not at.warning  # the confirmation is gone

    after = deployments(site.dsn)  # a change reviewed, then cancelled, leaves everything as it was
    field(at, "Reason").set_value("try it")
    button(at, f"Review deployment to {SITE}").click().run()
    assert at.warning
    button(at, "Cancel").click().run()
    assert not at.warning and not [b for b in at.button if b.label == "Confirm"]
    assert deployments(site.dsn) == after


def test_a_roll_back_needs_a_reason_and_a_confirmation_and_keeps_the_reason(site, monkeypatch) -> None:
    at = page("models", site, monkeypatch, "olivia")
    with psycopg.connect(site.dsn) as conn:  # as the roll back sees it: the newest version, then another one
        history = [v for v, m in conn.execute(
            "SELECT version, mode FROM model_deployments ORDER BY created_at DESC, id DESC") if m != "off"]
    current, previous = history[0], next(v for v in history if v != history[0])
    before = deployments(site.dsn)
    review = f"Review roll back of setpoint at {SITE}"
    button(at, review).click().run()
    assert any("Give a reason first" in e.value for e in at.error) and deployments(site.dsn) == before

    field(at, "Reason for the roll back").set_value("zone 1 ran warm")
    button(at, review).click().run()
    assert at.warning[0].value.startswith(
        f"Confirm: roll setpoint back at {SITE} from {current} to {previous}")
    button(at, "Confirm").click().run()
    version, _, created_by, reason = deployments(site.dsn)[0]
    assert (version, created_by) == (previous, "ui:olivia")
    assert reason == f"rollback from {current}: zone 1 ran warm"
    assert any(f"rolled back to {previous}" in s.value for s in at.success)
    assert running(at)[0][0] == previous


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def test_an_engineer_opens_equipment_from_a_link_then_deploys_with_a_reason(site, browser) -> None:
    shots = site.tmp / "screenshots"
    shots.mkdir(exist_ok=True)
    with serve_ui(site.config, site.tmp / "ui.log") as url:
        # a link someone sent: a fresh tab, so the login comes first, then the page the link named
        page = logged_in(browser, f"{url}/equipment?equip=ahu_1", "olivia", "operator-pass")
        expect(page.get_by_role("heading", name="Equipment", exact=True)).to_be_visible(timeout=20_000)
        expect(page.get_by_text(f"ahu_1 at {SITE}:")).to_be_visible()
        for part in ("Supply air", "Zones"):  # the rest of the page: test_equipment_energy
            expect(page.get_by_role("heading", name=part, exact=True)).to_be_visible()
        assert "equip=ahu_1" in page.url
        page.screenshot(path=shots / "equipment.png")
        # a link within the app (as Overview and Live link here): same session, the next equipment
        page.get_by_role("link", name="ahu_2").click()
        expect(page.get_by_text(f"ahu_2 at {SITE}:")).to_be_visible(timeout=20_000)
        assert "equip=ahu_2" in page.url

        page.get_by_role("link", name="Models").click()
        for label, value in (("Version", "2"), ("Mode", "active")):
            page.get_by_label(label, exact=True).click()
            page.keyboard.type(value)
            page.keyboard.press("Enter")
        page.get_by_label("Reason", exact=True).fill("browser: version 2 to active")
        page.get_by_role("button", name=f"Review deployment to {SITE}").click()
        expect(page.get_by_text(f"Confirm: deploy setpoint@2 to {SITE} in active mode")).to_be_visible(
            timeout=20_000)
        assert deployments(site.dsn)[0][3] != "browser: version 2 to active"  # not before the confirmation
        page.get_by_role("button", name="Confirm").click()
        done = page.get_by_text(f"setpoint@2 deployed to {SITE} in active mode.")
        expect(done).to_be_visible(timeout=20_000)
        assert deployments(site.dsn)[0] == ("2", "active", "ui:olivia", "browser: version 2 to active")
        expect(page.get_by_text("Confirm: deploy")).to_have_count(0, timeout=20_000)  # drawn again, done
        page.screenshot(path=shots / "models.png", full_page=True)
