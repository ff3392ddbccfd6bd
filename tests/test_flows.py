"""The central flows under Prefect's test harness, on simulated history from `sim.backfill`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bacpipes.settings import load_settings
from central.baselines import latest_baseline
from flows.ml import baseline_flow, train_flow
from models.setpoint import FAMILIES
from sim.backfill import backfill

END = datetime(2026, 7, 29, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bacpipes", "central", "edge", "flows", "models", "sim", "streamlit_app")


def writers_of(table: str) -> list[str]:
    """The modules of the house that insert into `table`."""
    return sorted(str(f.relative_to(ROOT)) for package in PACKAGES for f in (ROOT / package).rglob("*.py")
                  if f"INSERT INTO {table} " in f.read_text())


def config(tmp_path: Path, dsn: str) -> str:
    path = tmp_path / "central.toml"
    path.write_text(f'[site]\nid = "sim-site"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                    '[ml]\ninterval_s = 900\n')
    return str(path)


def test_baseline_flow_fits_and_stores_guideline_14_metrics(prefect, db_dsn: str, tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, db_dsn))
    backfill(settings, days=35, seed=3, devices=2, interval_s=3600, end=END)
    result = baseline_flow(config(tmp_path, db_dsn), days=35, end=END)
    with psycopg.connect(db_dsn) as conn:
        stored = conn.execute("SELECT cv_rmse, nmbe, meets_guideline_14 FROM baseline_models").fetchone()
        model = latest_baseline(conn, "sim-site")
        assert latest_baseline(conn, "another-site") is None
    assert stored == (result["cv_rmse"], result["nmbe"], result["meets_guideline_14"])
    assert model is not None and model.metrics.cv_rmse == result["cv_rmse"]  # the model itself, kept
    assert result["hours"] > 24 * 30
    assert result["meets_guideline_14"], result  # the virtual building is a well-behaved site


def test_train_flow_exports_registers_and_deploys_in_shadow(prefect, db_dsn: str, tmp_path: Path) -> None:
    settings = load_settings(config(tmp_path, db_dsn))
    backfill(settings, days=10, seed=5, devices=2, interval_s=900, end=END)
    result = train_flow(config(tmp_path, db_dsn), days=10, end=END, models_dir=str(tmp_path / "models"),
                        version="7")
    assert Path(result["path"]).exists() and result["mode"] == "shadow"
    assert result["metrics"]["zone_temp_next"]["r2"] > 0.5
    with psycopg.connect(db_dsn) as conn:
        deployed = conn.execute("SELECT version, mode, sha256 FROM model_deployments").fetchall()
        registered = conn.execute("SELECT version, sha256 FROM model_registry").fetchall()
        card = conn.execute("SELECT card FROM model_registry").fetchone()[0]
    assert deployed == [("7", "shadow", result["sha256"])] and registered == [("7", result["sha256"])]
    # the family was chosen by multi-step error on held-back days; the card keeps every one tried
    tried = {c["family"]: c["multistep_mae"] for c in card["candidates"]}
    assert set(tried) == set(FAMILIES) and card["family"] == result["family"]
    assert tried[result["family"]] == result["multistep_mae"] and card["interval_s"] == 900


def test_baselines_are_stored_in_one_place() -> None:
    assert writers_of("baseline_models") == ["central/baselines.py"]
