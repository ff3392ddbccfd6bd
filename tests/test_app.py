"""The Streamlit app, page by page (streamlit.testing.v1.AppTest), against a real seeded database:
35 days of the virtual building's history, a baseline, an A/B schedule, two registered models with
deployments and shadow predictions, an alert, an agent heartbeat, a viewer and an operator.

Assertions are on the data the pages show and on the rows their actions create."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from bacpipes.cli.servers import free_port
from bacpipes.replication import heartbeat
from bacpipes.settings import load_settings
from bacpipes.users import add_user
from bacpipes.zones import find_zones, zone_frame
from central.ab import publish_schedule
from central.registry import deploy, register
from flows.ml import fit_and_store_baseline
from models.ab import switchback
from models.features import build_features
from models.setpoint import export, train
from sim.backfill import backfill
from sim.server import ThreadedBuilding
from tests.conftest import fresh_database

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
SITE = "sim-site"
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def write_config(path: Path, dsn: str) -> Path:
    path.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                    '[ml]\ninterval_s = 3600\n[ui]\nwrite_wait_s = 0.5\n')
    return path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    tmp = tmp_path_factory.mktemp("app")
    with fresh_database() as dsn:
        config = write_config(tmp / "site.toml", dsn)
        settings = load_settings(config)
        backfill(settings, days=35, seed=4, devices=2, interval_s=3600, end=END)
        fit_and_store_baseline(settings, END - timedelta(days=35), END - timedelta(days=8))
        with psycopg.connect(dsn) as conn:
            add_user(conn, "olivia", "operator-pass", "operator")
            add_user(conn, "victor", "viewer-pass", "viewer")
            conn.execute("INSERT INTO alerts (site_id, source, severity, message)"
                         " VALUES (%s, 'test', 'warning', %s)", (SITE, "disk 85 % full"))
            heartbeat(conn, SITE, {"readings": 900, "reads_failed": 100, "heartbeat_s": 3600,
                                   "readings_per_s": 33.3, "publisher": {"pending": 7}})
            publish_schedule(conn, SITE, switchback(END - timedelta(days=8), 8, seed=1))
            zones = find_zones(conn, SITE)
            features = pl.concat([build_features(zone_frame(z, END - timedelta(days=20), END,
                                                            timedelta(hours=1), settings, conn), "Asia/Macau")
                                  for z in zones])
            model = tmp / "setpoint.onnx"
            export(train(features), model, version="1")
            for version in ("1", "2"):
                register(conn, "setpoint", version, model, "test")
                deploy(conn, SITE, "setpoint", version, "shadow", "test")
            for hours in range(1, 6):
                for zone in zones:
                    conn.execute(
                        "INSERT INTO inference_log (site_id, at, point_id, model, version, mode, setpoint,"
                        " predicted_energy_kw, predicted_zone_temp) VALUES (%s, %s, %s, 'setpoint', '2',"
                        " 'shadow', 24.5, 100, 24.0)",
                        (SITE, END - timedelta(hours=hours + 1), zone.setpoint))
            conn.commit()
        yield SimpleNamespace(dsn=dsn, config=config, zones=zones)


def page(name: str, seeded: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, user: str | None = "victor"
         ) -> AppTest:
    """A page run as `user` (a viewer unless told): the session holds the name only, the role is the
    database's."""
    monkeypatch.setenv("BACPIPES_CONFIG", str(seeded.config))
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=60)
    if user:
        at.session_state["user"] = user
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(b for b in at.button if b.label == label)


def field(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(t for t in at.text_input if t.label == label)


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def test_overview_shows_agents_replication_and_open_alerts(seeded, monkeypatch) -> None:
    at = page("overview", seeded, monkeypatch)
    shown = {m.label: m.value for m in at.metric}  # the building's figures come first (test_overview_health)
    assert shown["Agents online"] == "1 / 1"  # the agent's heartbeat is fresh
    assert shown["Readings published"] == "33.3 /s"
    agents = next(d.value for d in at.dataframe if "read_success" in d.value.columns)
    assert agents.loc[0, "site_id"] == SITE and agents.loc[0, "agent"] == "online"
    assert agents.loc[0, "read_success"] == pytest.approx(0.9) and agents.loc[0, "spool_depth"] == 7
    assert "disk 85 % full" in at.dataframe[-1].value["message"].tolist()
    assert any("No replication" in c.value for c in at.caption)


def test_live_lists_every_published_point_and_filters(seeded, monkeypatch) -> None:
    published = rows(seeded.dsn, "SELECT count(*) FROM point WHERE publish AND missing_since IS NULL")[0][0]
    at = page("live", seeded, monkeypatch)
    table = at.dataframe[0].value
    assert len(table) == published > 0
    assert table["value"].notna().all()
    assert (table["status"] == "stale").all()  # hourly history against a 30 s poll interval: all stale
    at.text_input[-1].set_value("ZN-T").run()
    filtered = at.dataframe[0].value
    assert 0 < len(filtered) < published and filtered["object_name"].str.contains("ZN-T").all()
    at.text_input[-1].set_value("").run()
    at.multiselect[0].set_value([table["equipment"].iloc[0]]).run()
    assert set(at.dataframe[0].value["equipment"]) == {table["equipment"].iloc[0]}


def test_trends_read_raw_for_short_ranges_and_hourly_for_long(seeded, monkeypatch) -> None:
    zone_temp = seeded.zones[0].points["zone_temp"]
    at = page("trends", seeded, monkeypatch)
    at.multiselect(key="trend_points").set_value([zone_temp]).run()
    assert not at.exception and not at.error
    assert any("raw readings" in c.value for c in at.caption)
    expected = rows(seeded.dsn, "SELECT count(*) FROM sensor_readings WHERE point_id = %s"
                                " AND time > now() - interval '24 hours'", zone_temp)[0][0]
    assert any(c.value.startswith(f"{expected:,} rows") for c in at.caption)
    at.radio(key="trend_range").set_value("Last 30 days").run()
    assert any("hourly averages" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 2


def test_points_are_read_only_for_viewers_and_edited_with_a_topic_preview(seeded, monkeypatch) -> None:
    viewer = page("points", seeded, monkeypatch, "victor")
    assert any("Log in as an operator" in i.value for i in viewer.info)
    assert not [b for b in viewer.button if b.label == "Save"]

    at = page("points", seeded, monkeypatch, "olivia")
    target = seeded.zones[0].setpoint
    at.multiselect(key="edit_points").set_value([target]).run()
    field(at, "Tags").set_value("equipId=99")
    button(at, "Preview").click().run()
    preview = at.dataframe[-1].value
    after = preview.loc[0, "topic after"]
    assert preview.loc[0, "topic now"] != after and "_99/" in after
    assert rows(seeded.dsn, "SELECT user_tags FROM point WHERE point_id = %s", target)[0][0] == {}  # unsaved

    field(at, "ml_max_step").set_value("0.5")
    button(at, "Save").click().run()
    assert any("Saved 1 point" in s.value for s in at.success)
    saved = rows(seeded.dsn, "SELECT user_tags, topic, ml_max_step FROM point WHERE point_id = %s", target)[0]
    assert saved == ({"equipId": "99"}, after, 0.5)

    field(at, "Tags").set_value("not a tag")
    button(at, "Save").click().run()
    assert any("key=value" in e.value for e in at.error)
    assert not at.exception


def test_an_operator_writes_with_confirmation_and_the_row_is_audited(seeded, monkeypatch) -> None:
    viewer = page("commands", seeded, monkeypatch, "victor")
    assert not [b for b in viewer.button if b.label == "Review"]

    at = page("commands", seeded, monkeypatch, "olivia")
    setpoint = seeded.zones[0].setpoint
    at.selectbox(key="write_point").set_value(setpoint).run()
    present = rows(seeded.dsn, "SELECT value FROM point_state WHERE point_id = %s", setpoint)[0][0]
    assert at.number_input[0].value == pytest.approx(present)  # the form starts at the present value
    at.number_input[0].set_value(23.5)
    at.text_input[0].set_value("pre-cool for the event")
    button(at, "Review").click().run()
    assert any("Confirm: write **23.5**" in w.value for w in at.warning)
    assert rows(seeded.dsn, "SELECT count(*) FROM write_commands")[0][0] == 0  # nothing before confirming
    button(at, "Confirm").click().run()
    command = rows(seeded.dsn, "SELECT point_id, value, priority, source, created_by, reason, command_type"
                               " FROM write_commands")
    assert command == [(setpoint, 23.5, 8, "ui", "ui:olivia", "pre-cool for the event", "write_value")]
    assert any("Still pending" in w.value for w in at.warning)  # no agent runs in this test
    assert at.dataframe[-1].value.loc[0, "created_by"] == "ui:olivia"

    field(at, "Why change control authority").set_value("central tunes the plant")
    button(at, "Grant remote").click().run()
    assert rows(seeded.dsn, "SELECT count(*) FROM control_authority")[0][0] == 0  # nothing before confirming
    button(at, "Confirm the change").click().run()
    assert rows(seeded.dsn, "SELECT mode, granted_by FROM control_authority") == [("remote", "ui:olivia")]
    assert any("**remote**" in m.value for m in at.markdown)
    field(at, "Why change control authority").set_value("done")
    button(at, "Revoke remote").click().run()
    button(at, "Confirm the change").click().run()
    assert rows(seeded.dsn, "SELECT mode FROM control_authority ORDER BY at DESC LIMIT 1") == [("edge",)]
    assert any("**edge**" in m.value for m in at.markdown)


def test_models_registry_deployments_actions_and_shadow_accuracy(seeded, monkeypatch) -> None:
    viewer = page("models", seeded, monkeypatch, "victor")
    assert viewer.dataframe[0].value["version"].tolist() == ["2", "1"]
    running = viewer.dataframe[1].value
    assert running[["site_id", "version", "mode"]].values.tolist() == [[SITE, "2", "shadow"]]
    assert any(m.label.startswith("Mean absolute error") for m in viewer.metric)

    at = page("models", seeded, monkeypatch, "olivia")
    at.selectbox[1].set_value("2")  # version
    at.selectbox[2].set_value("active")  # mode
    field(at, "Reason").set_value("try v2")  # reviewed with a reason, then confirmed (test_careful_changes)
    button(at, f"Review deployment to {SITE}").click().run()
    button(at, "Confirm").click().run()
    assert any("setpoint@2 deployed to sim-site in active mode" in s.value for s in at.success)
    assert rows(seeded.dsn, "SELECT version, mode, created_by FROM model_deployments"
                            " ORDER BY created_at DESC LIMIT 1") == [("2", "active", "ui:olivia")]
    field(at, "Reason for the roll back").set_value("v2 ran warm")
    button(at, f"Review roll back of setpoint at {SITE}").click().run()
    button(at, "Confirm").click().run()
    assert any("rolled back to 1" in s.value for s in at.success)
    latest = rows(seeded.dsn, "SELECT version, mode, created_by, reason FROM model_deployments"
                              " ORDER BY created_at DESC LIMIT 1")[0]
    assert latest[:3] == ("1", "active", "ui:olivia") and latest[3].startswith("rollback from 2")


def test_ab_shows_savings_with_an_interval_and_the_verdict(seeded, monkeypatch) -> None:
    at = page("ab", seeded, monkeypatch)
    labels = {m.label: m.value for m in at.metric}
    assert "Energy saved by ML" in labels and "95 % interval" in labels
    low, high = (float(x.strip().rstrip("%")) for x in labels["95 % interval"].split("…"))
    assert low <= float(labels["Energy saved by ML"].rstrip("%")) <= high
    assert len(at.dataframe[0].value) == 8  # the 8 finished periods, scored


def test_login_takes_the_right_password_only(seeded, monkeypatch) -> None:
    monkeypatch.setenv("BACPIPES_CONFIG", str(seeded.config))
    at = AppTest.from_file(str(APP / "app.py"), default_timeout=60).run()
    at.text_input[0].set_value("olivia")
    at.text_input[1].set_value("wrong-password")
    button(at, "Log in").click().run()
    assert any("wrong password" in e.value for e in at.error) and "user" not in at.session_state
    at.text_input[1].set_value("operator-pass")
    button(at, "Log in").click().run()
    assert at.session_state["user"] == "olivia"  # the name only: the role is read on every run
    assert not at.exception


def test_central_has_a_site_selector_and_each_page_follows_it(seeded, monkeypatch, tmp_path) -> None:
    """On central the `site` registry lists the linked sites; the sidebar picks one for every page."""
    with fresh_database() as dsn, psycopg.connect(dsn) as conn:
        for site, points in (("north", 3), ("south", 5)):
            conn.execute("INSERT INTO site (site_id, readings_subscription, meta_subscription)"
                         " VALUES (%s, 'r', 'm')", (site,))
            conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, 'x')", (site,))
            conn.execute("INSERT INTO point (site_id, device_id, object_type, object_instance, object_name,"
                         " topic) SELECT %s, 1, 'analog-value', i, 'P' || i, %s || '/d/av' || i"
                         " FROM generate_series(1, %s) i", (site, site, points))
        add_user(conn, "carla", "central-pass", "viewer")
        conn.commit()
        monkeypatch.setenv("BACPIPES_CONFIG", str(write_config(tmp_path / "central.toml", dsn)))
        at = AppTest.from_file(str(APP / "app.py"), default_timeout=60)
        at.session_state["user"] = "carla"  # pages show nothing before a login
        at.run()
        assert at.selectbox(key="site").options == ["north", "south"]
        at.switch_page(str(APP / "views" / "live.py")).run()
        assert len(at.dataframe[0].value) == 3
        at.selectbox(key="site").set_value("south").run()
        assert len(at.dataframe[0].value) == 5
        at.switch_page(str(APP / "views" / "points.py")).run()
        assert any("replicated from the site" in c.value for c in at.caption)  # central does not edit


def test_an_operator_runs_a_discovery_from_the_app(db_dsn, monkeypatch, tmp_path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'[database]\ndsn = "{db_dsn}"\n[bacnet]\naddress = "127.0.0.107/8:47907"\n'
                      '[discovery]\ntargets = ["127.0.0.175"]\ntimeout_s = 1.0\n')
    with psycopg.connect(db_dsn) as conn:
        add_user(conn, "olivia", "operator-pass", "operator")
    with ThreadedBuilding(devices=1, address_base="127.0.0.175", seed=3, speed=0):
        at = page("points", SimpleNamespace(config=config), monkeypatch, "olivia")
        assert any("No devices yet" in i.value for i in at.info)
        button(at, "Run a discovery now").click().run()
    assert any("device     1001" in s.value for s in at.success), [e.value for e in at.error]
    assert at.dataframe[0].value["device_id"].tolist() == [1001]  # the page shows what it found
    assert rows(db_dsn, "SELECT count(*) FROM point")[0][0] > 20


@pytest.mark.parametrize("name", ["overview", "live", "trends", "points", "commands", "models", "ab"])
def test_a_database_that_is_away_is_a_message_not_a_traceback(name, tmp_path, monkeypatch) -> None:
    config = write_config(tmp_path / "down.toml", f"postgresql://postgres@127.0.0.1:{free_port()}/bacpipes")
    at = page(name, SimpleNamespace(config=config), monkeypatch)
    assert any("database is not answering" in e.value for e in at.error)
