"""The Equipment and Energy pages and the A/B verdict in words.

Pages run under streamlit.testing's AppTest against one database seeded for the module: 14 days of the
virtual building's first air handler (which also carries the plant and the site meter), an energy baseline
fitted on the first 10 days as the baseline flow fits it, and a day-by-day switchback over the last 4; the
tariff is set (`[energy]`). Each page's figures are checked against the rows they come from. The wording
(`models.verdict`) and the sorting of points into an air handler's parts are pure and tested on their own.
The browser test of these pages (opened from a link) is in test_careful_changes.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psycopg
import pytest
from streamlit.testing.v1 import AppTest

import models.ab  # noqa: F401  (imported before a page runs: views/models.py would shadow the package)
from bacpipes.cli.servers import free_port
from bacpipes.errors import UserError
from bacpipes.settings import AlarmSettings, load_settings
from bacpipes.tagging import auto_tags
from bacpipes.users import add_user
from bacpipes.zones import site_hourly
from central.ab import publish_schedule
from central.baselines import store_baseline
from models.ab import switchback
from models.baseline import avoided_energy, fit_baseline, fractional_savings_uncertainty
from models.verdict import ab_verdict, more_days_needed, percent, savings_statement, savings_uncertainty_kwh
from streamlit_app.equipment import section_of, zone_role, zone_table
from tests.conftest import fresh_database

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
SITE = "sim-site"
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
BASELINE_END = END - timedelta(days=4)


TARIFF = '[energy]\nprice_per_kwh = 0.25\ncurrency = "MOP"\n'


def write_config(path: Path, dsn: str, tariff: str = TARIFF) -> Path:
    path.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n{tariff}')
    return path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    from sim.backfill import backfill

    tmp = tmp_path_factory.mktemp("energy")
    with fresh_database() as dsn:
        config = write_config(tmp / "site.toml", dsn)
        settings = load_settings(config)
        backfill(settings, days=14, seed=4, devices=1, interval_s=3600, end=END)
        start = END - timedelta(days=14)
        baseline = fit_baseline(site_hourly(settings, start, BASELINE_END))
        with psycopg.connect(dsn) as conn:
            store_baseline(conn, SITE, start, BASELINE_END, baseline)
            conn.commit()
            publish_schedule(conn, SITE, switchback(BASELINE_END, 4, seed=1))
            add_user(conn, "victor", "viewer-pass", "viewer")
        yield SimpleNamespace(dsn=dsn, config=config, settings=settings, baseline=baseline)


def page(name: str, config: Path, monkeypatch: pytest.MonkeyPatch, **query: str) -> AppTest:
    monkeypatch.setenv("BACPIPES_CONFIG", str(config))
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=60)
    at.session_state["user"] = "victor"  # a viewer: these pages only read
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def present(dsn: str, object_name: str) -> float:
    return rows(dsn, "SELECT s.value FROM point p JOIN point_state s USING (site_id, point_id)"
                     " WHERE p.object_name = %s", object_name)[0][0]


# --- Equipment ----------------------------------------------------------------------------------------

def test_the_equipment_page_opens_on_the_equipment_in_its_url_with_each_part(seeded, monkeypatch) -> None:
    at = page("equipment", seeded.config, monkeypatch, equip="ahu_1")
    assert at.selectbox[0].value == "ahu_1" and at.query_params["equip"] == "ahu_1"
    parts = [s.value for s in at.subheader]
    assert parts == ["Supply air", "Zones", "Valves & dampers", "Fans", "Energy", "Other"]

    zones = next(d.value for d in at.dataframe if "cooling setpoint" in d.value.columns)
    assert zones["zone"].tolist() == ["AHU1"]
    assert zones.loc[0, "temperature"] == pytest.approx(present(seeded.dsn, "AHU1-ZN-T"))
    assert zones.loc[0, "cooling setpoint"] == pytest.approx(present(seeded.dsn, "AHU1-ZN-CLG-SP"))
    assert zones.loc[0, "heating setpoint"] == pytest.approx(present(seeded.dsn, "AHU1-ZN-HTG-SP"))
    supply = at.dataframe[0].value
    assert set(supply["object_name"]) == {"AHU1-SA-T", "AHU1-SA-FLOW"}
    assert supply.set_index("object_name").loc["AHU1-SA-T", "reading"].endswith("°C")
    fans = next(d.value for d in at.dataframe
                if "object_name" in d.value.columns and "AHU1-SF-S" in d.value["object_name"].tolist())
    assert fans.set_index("object_name").loc["AHU1-SF-S", "reading"] in ("active", "inactive", "On", "Off")

    # a small trend per part and unit, of the last 24 hours: the zone's one, supply air in °C and in L/s, ...
    charts = at.get("vega_lite_chart")
    captions = [c.value for c in at.caption]
    assert "**AHU1**" in captions and "**Supply air** (°C)" in captions and "**Supply air** (L/s)" in captions
    assert len(charts) == sum(c.startswith("**") for c in captions)
    assert any("trends of the 24 hours" in c for c in captions)

    at.radio(key="equip_range").set_value("Last 6 hours").run()
    assert any("trends of the 6 hours" in c.value for c in at.caption)


def test_an_equipment_the_site_does_not_have_is_said_and_the_first_is_shown(seeded, monkeypatch) -> None:
    at = page("equipment", seeded.config, monkeypatch, equip="ahu_9")
    assert any("No equipment named 'ahu_9'" in w.value for w in at.warning)
    assert at.selectbox[0].value == "ahu_1" and at.query_params["equip"] == "ahu_1"


def test_points_sort_into_an_air_handlers_parts_by_tags_and_names() -> None:
    """The EnergyPlus building's names (sim/energyplus/points.py), tagged as discovery tags them."""
    def section(name: str, units: str = "kilowatts", object_type: str = "analog-input") -> str:
        return section_of(name, auto_tags(SITE, "AHU-1", 1001, object_type, name, units))

    assert section("AHU1-SA-T", "degrees-celsius") == "Supply air"
    assert section("AHU1_ZN2-ZN-T", "degrees-celsius") == "Zones"
    assert section("AHU1_ZN2-ZN-CLG-SP", "degrees-celsius", "analog-value") == "Zones"
    assert section("AHU1_ZN2-ZN-RH", "percent-relative-humidity") == "Other"
    assert section("AHU1-CLG-VLV", "percent", "analog-output") == "Valves & dampers"
    assert section("VAV3-DMPR", "percent") == "Valves & dampers"
    assert section("AHU1-SF-KW") == "Fans" and section("AHU1-SF-S", "", "binary-input") == "Fans"
    assert section("AHU1-RHT-KW") == "Energy" and section("SITE-MTR-KWH", "kilowatt-hours") == "Energy"
    tags = auto_tags(SITE, "AHU-1", 1001, "analog-value", "AHU1_ZN2-ZN-HTG-SP", "degrees-celsius")
    assert zone_role(tags) == "heating setpoint"

    points = pd.DataFrame({
        "section": ["Zones"] * 6, "zone": ["Z1", "Z1", "Z1", "Z2", "Z2", "Z2"],
        "role": ["temperature", "cooling setpoint", "heating setpoint"] * 2,
        "value": [25.2, 24.0, 20.0, 21.0, 24.0, 21.02]})
    table = zone_table(points, AlarmSettings().deadband_k).set_index("zone")
    assert table.loc["Z1", "outside band (K)"] == pytest.approx(1.2)
    assert table.loc["Z1", "state"] == "1.2 K above cooling setpoint"
    assert table.loc["Z2", "state"] == "in band"  # 0.02 K under the heating setpoint is the loop holding it


# --- Energy -------------------------------------------------------------------------------------------

def test_the_energy_page_shows_metered_against_the_baseline_and_the_savings(seeded, monkeypatch) -> None:
    at = page("energy", seeded.config, monkeypatch)
    # what it should say, from the readings and the stored fit, independently of the page's own module
    hourly = site_hourly(seeded.settings, BASELINE_END, datetime.now(UTC))
    expected = avoided_energy(seeded.baseline, hourly, confidence=0.95)
    fit = seeded.baseline
    spread = savings_uncertainty_kwh(cv_rmse=fit.metrics.cv_rmse, n=fit.metrics.n,
                                     rho=fit.residual_autocorrelation, hours=expected.reporting_hours,
                                     counterfactual_kwh=expected.counterfactual_kwh)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Saved to date"] == f"{expected.avoided_kwh:,.0f} kWh"
    assert shown["Uncertainty (95 %)"] == f"± {spread:,.0f} kWh"
    assert shown["Cost saved"] == f"{expected.avoided_kwh * 0.25:,.2f} MOP"
    sentence = savings_statement(expected.avoided_kwh, spread, expected.counterfactual_kwh,
                                 price_per_kwh=0.25, currency="MOP")
    assert sentence in [m.value for m in (*at.success, *at.info, *at.warning)]
    assert any("meets ASHRAE Guideline 14" in c.value for c in at.caption)

    days = at.dataframe[0].value
    metered = rows(seeded.dsn, "SELECT sum(r.value) FROM sensor_readings r JOIN point p"
                               " USING (site_id, point_id) WHERE p.object_name = 'SITE-MTR-KW'"
                               " AND r.time >= %s", BASELINE_END)[0][0]
    assert days["metered_kwh"].sum() == pytest.approx(metered)  # hourly readings: kW for an hour is kWh
    assert days["saved_to_date_kwh"].iloc[-1] == pytest.approx(expected.avoided_kwh)
    assert days["uncertainty_kwh"].iloc[-1] == pytest.approx(spread)
    assert len(at.get("vega_lite_chart")) == 2  # energy per day; saved to date with its band


def test_without_a_tariff_savings_are_in_kwh_only_and_a_half_tariff_is_refused(seeded, monkeypatch,
                                                                                tmp_path) -> None:
    at = page("energy", write_config(tmp_path / "kwh.toml", seeded.dsn, tariff=""), monkeypatch)
    labels = [m.label for m in at.metric]
    assert "Saved to date" in labels and "Cost saved" not in labels
    with pytest.raises(UserError, match="price_per_kwh and currency go together"):
        load_settings(write_config(tmp_path / "half.toml", seeded.dsn, "[energy]\nprice_per_kwh = 0.2\n"))


def test_a_site_without_a_baseline_is_told_how_to_get_one(seeded, monkeypatch, tmp_path) -> None:
    config = write_config(tmp_path / "other.toml", seeded.dsn)
    config.write_text(config.read_text().replace(f'id = "{SITE}"', 'id = "other-site"'))  # no fit stored
    at = page("energy", config, monkeypatch)
    assert any("No baseline stored for other-site yet" in i.value and "kept on central" in i.value
               for i in at.info)


@pytest.mark.parametrize("name", ["equipment", "energy"])
def test_nothing_is_shown_before_a_login(seeded, name, monkeypatch) -> None:
    monkeypatch.setenv("BACPIPES_CONFIG", str(seeded.config))
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=60)
    at.query_params["equip"] = "ahu_1"  # a link followed before logging in
    at.run()
    assert any("Log in" in i.value for i in at.info)
    assert not at.dataframe and not at.metric and not at.get("vega_lite_chart") and not at.selectbox


@pytest.mark.parametrize("name", ["equipment", "energy"])
def test_a_database_that_is_away_is_a_message(name, monkeypatch, tmp_path) -> None:
    config = write_config(tmp_path / "down.toml", f"postgresql://postgres@127.0.0.1:{free_port()}/bacpipes")
    at = page(name, config, monkeypatch)
    assert any("database is not answering" in e.value for e in at.error)


# --- A/B in words -------------------------------------------------------------------------------------

def test_the_ab_page_leads_with_the_verdict_in_words_and_kwh(seeded, monkeypatch) -> None:
    at = page("ab", seeded.config, monkeypatch)
    shown = {m.label: m.value for m in at.metric}
    low, high = (float(x.strip().rstrip("%")) for x in shown["95 % interval"].split("…"))
    said = [m.value for m in (*at.success, *at.info, *at.warning)
            if m.value.startswith(("ML saves", "ML uses", "No significant difference"))]
    assert len(said) == 1
    if low > 0:
        assert said[0].startswith("ML saves")
    elif high < 0:
        assert said[0].startswith("ML uses")
    elif low < 0 < high:
        assert said[0].startswith("No significant difference yet")
    # a bound shown as 0.0 % is rounded: either side of zero, the words follow the unrounded one
    assert "of metered site energy" in said[0] or "more metered site energy" in said[0]
    kwh_caption = next(c.value for c in at.caption if "days scored" in c.value)
    assert kwh_caption.startswith("4.0 days scored (2 ML and 2 baseline periods)")
    assert "kWh" in kwh_caption and "MOP" in kwh_caption


# --- the wording, pure --------------------------------------------------------------------------------

def test_a_significant_saving_or_loss_is_said_with_its_interval() -> None:
    assert ab_verdict(0.08, (0.05, 0.11), 10, subject="HVAC energy") == (
        "ML saves 8 % ± 3 % of HVAC energy (95 %).")
    assert ab_verdict(-0.05, (-0.07, -0.03), 10, subject="HVAC energy", saved_kwh=-1234.4) == (
        "ML uses 5 % ± 2 % more HVAC energy (95 %), about 1,234 kWh over the ML periods.")
    assert ab_verdict(0.004, (0.001, 0.007), 30, confidence=0.9) == "ML saves 0.4 % ± 0.3 % of energy (90 %)."


def test_no_significant_difference_says_about_how_many_more_days() -> None:
    # half-width 4 % after 8 days; 2 % measured: 4× the days for half the width, so 32 - 8 = 24 more
    said = ab_verdict(0.02, (-0.02, 0.06), 8, subject="HVAC energy")
    assert said == ("No significant difference yet: about 24 more days needed (so far ML saves 2 % ± 4 % of "
                    "HVAC energy (95 %)).")
    assert more_days_needed(0.02, (-0.02, 0.06), 8) == 24
    assert more_days_needed(-0.02, (-0.06, 0.02), 8) == 24  # symmetric for a loss
    assert more_days_needed(0.02, (0.01, 0.03), 8) == 0  # already significant
    assert more_days_needed(0.0399, (-0.0001, 0.0799), 8) == 1  # nearly there: at least a day
    assert "cannot be estimated" in ab_verdict(0.0, (-0.02, 0.02), 8)
    assert "more than a year" in ab_verdict(0.001, (-0.05, 0.052), 8)


def test_bad_verdict_input_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        ab_verdict(0.1, (0.0, 0.2), 5, confidence=95)
    with pytest.raises(ValueError, match="low end"):
        ab_verdict(0.1, (0.2, 0.0), 5)
    with pytest.raises(ValueError, match="uncertainty"):
        savings_statement(100, math.inf, 1000)
    with pytest.raises(ValueError, match="currency"):
        savings_statement(100, 10, 1000, price_per_kwh=0.2)
    with pytest.raises(ValueError, match="reporting hour"):
        savings_uncertainty_kwh(cv_rmse=0.1, n=1000, rho=0.5, hours=0, counterfactual_kwh=100)


def test_savings_against_the_baseline_in_words_with_money() -> None:
    assert savings_statement(1234.0, 456.0, 30000.0, price_per_kwh=0.2, currency="USD") == (
        "Saved 1,234 kWh ± 456 kWh (95 %), 4 % of the 30,000 kWh the baseline predicts; "
        "worth 246.80 USD ± 91.20 USD.")
    assert savings_statement(-800.0, 300.0, 20000.0).startswith("Used 800 kWh ± 300 kWh more than the")
    assert savings_statement(120.0, 456.0, 30000.0) == (
        "No significant savings yet: 120 kWh saved ± 456 kWh (95 %) is within the baseline's uncertainty "
        "(0.4 % of the 30,000 kWh the baseline predicts).")
    assert percent(0.081) == "8 %" and percent(-0.004) == "0.4 %"


def test_the_uncertainty_in_kwh_is_guideline_14s_fraction_of_the_saving() -> None:
    fraction = fractional_savings_uncertainty(cv_rmse=0.15, n=2000, m=500, rho=0.6, savings_fraction=0.1,
                                              confidence=0.95)
    spread = savings_uncertainty_kwh(cv_rmse=0.15, n=2000, rho=0.6, hours=500, counterfactual_kwh=50_000)
    assert spread == pytest.approx(fraction * 0.1 * 50_000)  # ΔE = FSU · E_save, E_save = F · counterfactual
    assert math.isfinite(savings_uncertainty_kwh(cv_rmse=0.15, n=2000, rho=0.6, hours=500,
                                                 counterfactual_kwh=50_000))  # even with nothing saved
    quadruple = savings_uncertainty_kwh(cv_rmse=0.15, n=2000, rho=0.6, hours=2000, counterfactual_kwh=200_000)
    assert quadruple == pytest.approx(2 * spread)  # 4× the hours and energy: the ± doubles, the share halves
