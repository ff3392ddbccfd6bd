"""The registry tells the truth (issue 17): a model's card is built from its own ONNX metadata, stored with
it at registration, completed by closed-loop KPIs recorded for that exact version, and shown on the Models
page with "not measured" wherever a figure is missing.

Real exported ONNX files, real PostgreSQL, the page through Streamlit's AppTest; no BACnet."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import onnx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from streamlit.testing.v1 import AppTest

from bacpipes.errors import UserError
from bacpipes.users import add_user
from central.registry import card, deploy, record_closed_loop, register
from models import setpoint
from models.artifact import metadata
from models.card import NOT_MEASURED, ClosedLoop, ModelCard
from models.features import FEATURES, TARGETS, build_features
from tests.test_training import zone_history

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
SITE = "card-site"
HORIZONS = {"1": {"energy_kw_next": 1.1, "zone_temp_next": 0.31},
            "4": {"energy_kw_next": 2.0, "zone_temp_next": 0.6},
            "8": {"energy_kw_next": 2.5, "zone_temp_next": 0.92}}
CANDIDATES = [{"family": "ridge", "multistep_mae": HORIZONS},
              {"family": "gradient_boosting",
               "multistep_mae": {"8": {"energy_kw_next": 3.0, "zone_temp_next": 1.4}}}]
KPIS = {
    "controllers": {
        "baseline": {"hvac_kwh": 1000.0, "site_kwh": 3000.0, "peak_kw": 120.0, "discomfort_kh": 2.0,
                     "humid_hours": 5.0, "setpoint_changes": 0.5},
        "ml": {"hvac_kwh": 870.0, "site_kwh": 2870.0, "peak_kw": 118.0, "discomfort_kh": 1.5,
               "humid_hours": 4.0},  # setpoint changes not counted: the card must say so
    },
    "savings_pct": 13.0, "savings_interval_pct": [9.5, 16.1], "savings_of": "HVAC electricity",
    "method": "14 July days, switchback A/B",
}


def with_metadata(data: bytes, **changes: str | None) -> bytes:
    """The same graph with some metadata props changed (None: removed)."""
    model = onnx.load_from_string(data)
    props = {**metadata(data), **changes}
    onnx.helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    return model.SerializeToString()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One trained model exported twice: as today's export writes it, and as the multi-step export does
    (the optional keys set to known figures, a step of 15 minutes), plus one lacking every optional key."""
    folder = tmp_path_factory.mktemp("cards")
    trained = setpoint.train(build_features(zone_history(), "UTC"))
    setpoint.export(trained, folder / "exported.onnx", version="1")
    exported = (folder / "exported.onnx").read_bytes()
    rich, old = folder / "rich.onnx", folder / "old.onnx"
    rich.write_bytes(with_metadata(exported, version="2", multistep_mae=json.dumps(HORIZONS),
                                   candidates=json.dumps(CANDIDATES), interval_s="900", family="ridge"))
    old.write_bytes(with_metadata(exported, multistep_mae=None, candidates=None, interval_s=None,
                                  family=None))
    yield SimpleNamespace(trained=trained, exported=exported, rich=rich, old=old)


def test_the_card_is_what_the_exported_file_records(files: SimpleNamespace) -> None:
    props = metadata(files.exported)
    exported = ModelCard.from_metadata(props)
    assert exported.version == "1" and exported.created_by == "central" and exported.created_at
    assert exported.features == FEATURES and exported.targets == TARGETS
    assert exported.units == setpoint.UNITS and exported.training_window == files.trained.window
    assert exported.holdout == files.trained.metrics  # JSON keeps a float exactly
    if "multistep_mae" in props:  # once the export writes them, the card reads them as written
        assert exported.multistep_mae == {int(h): v for h, v in json.loads(props["multistep_mae"]).items()}
    if "candidates" in props:
        tried = json.loads(props["candidates"])
        assert [c.family for c in exported.candidates] == [c["family"] for c in tried]

    rich = ModelCard.from_metadata(metadata(files.rich.read_bytes()))
    assert rich.multistep_mae == {1: HORIZONS["1"], 4: HORIZONS["4"], 8: HORIZONS["8"]}
    assert [c.family for c in rich.candidates] == ["ridge", "gradient_boosting"]
    summary = rich.summary()
    assert ("Predicts zone temperature 15 min ahead within 0.31 K, 1 h ahead within 0.60 K, 2 h ahead "
            "within 0.92 K on held-back days (mean absolute error).") in summary
    assert any("ridge 0.92 K, gradient_boosting 1.40 K; this model is ridge." in line for line in summary)
    assert ModelCard.from_dict(json.loads(json.dumps(rich.to_dict()))) == rich  # what the registry stores

    old = dict(ModelCard.from_metadata(metadata(files.old.read_bytes())).facts())
    assert old["Multi-step error on held-back days"] == NOT_MEASURED
    assert old["Model families tried"] == NOT_MEASURED and old["Closed loop"] == NOT_MEASURED
    assert old["Model family"] == NOT_MEASURED
    assert old[f"Features ({len(FEATURES)}, in order)"].startswith("how_sin, how_cos")
    assert ModelCard.from_metadata({}).facts()[0] == ("Version", NOT_MEASURED)  # nothing recorded at all


def test_closed_loop_kpis_read_in_words_and_refuse_what_is_not_a_number() -> None:
    loop = ClosedLoop.from_dict(KPIS)
    lines = loop.summary()
    assert lines[0] == ("In closed loop it saved 13.0 % HVAC electricity against baseline, 95 % interval "
                        "9.5 … 16.1 % (14 July days, switchback A/B).")
    assert "HVAC electricity 870 kWh against 1000 kWh (-13.0 %)" in lines[1]
    ml = next(row for row in loop.table() if row["controller"] == "ml")
    assert ml["peak demand (kW)"] == 118.0 and ml["setpoint changes per zone per day"] is None
    assert ClosedLoop.from_dict({"hvac_kwh": 5.0}).controllers == {"ml": {"hvac_kwh": 5.0}}
    for bad in ({}, {"hvac_kwh": float("nan")}, {"controllers": {"ml": {"hvac_kwh": "a lot"}}},
                {"hvac_kwh": 1.0, "savings_interval_pct": [3.0, 1.0]}, {"nothing": 1}):
        with pytest.raises(ValueError):
            ClosedLoop.from_dict(bad)


def test_the_registry_stores_the_card_and_appends_closed_loop_results(files, db_dsn) -> None:
    with psycopg.connect(db_dsn) as conn:
        register(conn, "setpoint", "2", files.rich, "test")
        stored, measured = conn.execute("SELECT card, closed_loop FROM model_registry").fetchone()
        assert ModelCard.from_dict(stored) == ModelCard.from_metadata(metadata(files.rich.read_bytes()))
        assert stored["multistep_mae"]["8"] == HORIZONS["8"] and measured == []
        assert card(conn, "setpoint", "2").closed_loop is None

        with pytest.raises(UserError, match=r"setpoint@9 is not registered.*versions of setpoint: 2"):
            record_closed_loop(conn, "setpoint", "9", KPIS)
        with pytest.raises(UserError, match=r"finite number"):
            record_closed_loop(conn, "setpoint", "2", {"hvac_kwh": float("inf")})

        conn.execute("SET ROLE bacpipes_flows")  # what the flows may do, they can do as themselves
        first = record_closed_loop(conn, "setpoint", "2", {"hvac_kwh": 900.0}, recorded_by="flow:eval")
        assert first.closed_loop.controllers == {"ml": {"hvac_kwh": 900.0}}
        newest = record_closed_loop(conn, "setpoint", "2", KPIS, recorded_by="flow:eval")
        conn.execute("RESET ROLE")
        assert newest.closed_loop.savings_pct == 13.0 and newest.closed_loop.recorded_by == "flow:eval"
        assert card(conn, "setpoint", "2") == newest
        history = conn.execute("SELECT closed_loop FROM model_registry").fetchone()[0]
        assert [entry["kpis"]["controllers"]["ml"]["hvac_kwh"] for entry in history] == [900.0, 870.0]

        # what was registered, and what was measured, stays (sql/019_model_card.sql)
        for change, values in (("onnx = %s", (b"other",)), ("card = %s", (Jsonb({"version": "3"}),)),
                               ("closed_loop = %s", (Jsonb(history[1:]),)),
                               ("closed_loop = %s", (Jsonb([history[0], history[0]]),))):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(f"UPDATE model_registry SET {change}", values)
            conn.rollback()

        # a row registered before cards were stored: its card is built from the metadata it kept
        props = metadata(files.old.read_bytes())
        conn.execute("INSERT INTO model_registry (name, version, sha256, metadata, onnx, created_by)"
                     " VALUES ('setpoint', '0', 'x', %s, 'x', 'before-019')", (Jsonb(props),))
        assert card(conn, "setpoint", "0") == ModelCard.from_metadata(props)
        conn.execute("SET ROLE bacpipes_app_viewer")
        assert conn.execute("SELECT count(card), count(closed_loop) FROM model_registry").fetchone() == (1, 2)


def test_the_models_page_shows_each_card_and_what_was_not_measured(files, db_dsn, tmp_path,
                                                                   monkeypatch) -> None:
    with psycopg.connect(db_dsn) as conn:
        register(conn, "setpoint", "1", files.old, "test")
        register(conn, "setpoint", "2", files.rich, "test")
        record_closed_loop(conn, "setpoint", "2", KPIS)
        deploy(conn, SITE, "setpoint", "2", "active", "test")
        add_user(conn, "victor", "viewer-pass", "viewer")
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "{SITE}"\n[database]\ndsn = "{db_dsn}"\n')
    monkeypatch.setenv("BACPIPES_CONFIG", str(config))
    at = AppTest.from_file(str(APP / "views" / "models.py"), default_timeout=60)
    at.session_state["user"] = "victor"
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    newest, older = (e for e in at.expander if e.label.startswith("setpoint@"))
    assert newest.label == f"setpoint@2 · active at {SITE}" and older.label == "setpoint@1 · not deployed"
    text = " ".join(m.value for m in newest.markdown).replace("\\", "")
    assert "zone temperature 15 min ahead within 0.31 K" in text
    assert "saved 13.0 % HVAC electricity against baseline, 95 % interval 9.5 … 16.1 %" in text
    facts, horizons, families, loop = (t.value for t in newest.table)
    assert facts.loc["Mode per site", "card"] == f"active at {SITE}"
    assert facts.loc["Training data", "card"] == " … ".join(files.trained.window)
    assert horizons.loc[8].tolist() == ["2 h", "2.50", "0.92"]  # time ahead, energy and temperature MAE
    assert families.loc[("gradient_boosting", 8), "zone_temp_next MAE (K)"] == "1.40"
    assert loop.loc["ml", "HVAC electricity (kWh)"] == "870"
    assert loop.loc["ml", "setpoint changes per zone per day"] == NOT_MEASURED

    [old_facts] = (t.value for t in older.table)  # no tables of figures the model does not have
    for part in ("Multi-step error on held-back days", "Model families tried", "Closed loop"):
        assert old_facts.loc[part, "card"] == NOT_MEASURED
    assert any(f"Closed-loop KPIs (energy, peak, comfort, humidity in control): {NOT_MEASURED}" in
               m.value.replace("\\", "") for m in older.markdown)
