"""The data-science notebooks, executed end to end against a test database, and kept clean in git.

One fresh database holds five weeks of simulated history (`sim.backfill`, ~6 s); the notebooks find it
through `$BACPIPES_CONFIG`, as they would a real site. Each runs in a kernel on this interpreter (a
kernelspec written to a temporary directory names `sys.executable`, and the notebook reports its
`sys.prefix` back); a cell appended here prints the notebook's own `summary` as JSON for the asserts.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import psycopg
import pytest
from nbclient import NotebookClient

from bacpipes.settings import load_settings
from sim.backfill import backfill
from tests.conftest import fresh_database

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "bacpipes-test"
END = datetime(2026, 7, 29, tzinfo=UTC)  # history: 24 June .. 28 July 2026 (35 days)
DAYS = 35  # the baseline notebook's 28 + 7 days
REPORT = (
    "import json as _json, sys as _sys\n"
    "print(_json.dumps({'summary': summary, 'prefix': _sys.prefix}, default=str))"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A site with simulated history: (dsn, config file naming it)."""
    with fresh_database() as dsn:
        config = tmp_path_factory.mktemp("notebooks") / "site.toml"
        config.write_text(
            f'[site]\nid = "sim-site"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
            '[ml]\ninterval_s = 900\n'
        )
        backfill(load_settings(config), days=DAYS, seed=3, devices=2, interval_s=900, end=END)
        yield dsn, config


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec that runs this interpreter (the venv's), whatever other kernels are installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "BacPipes tests", "language": "python",
    }))
    return root


@pytest.fixture
def run(site: tuple[str, Path], kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Execute a notebook as a data scientist would, configured only by the environment."""
    _, config = site
    monkeypatch.setenv("BACPIPES_CONFIG", str(config))
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where notebook 03 exports its ONNX file
    for name in [k for k in os.environ if k.startswith("BACPIPES_") and "__" in k]:
        monkeypatch.delenv(name)  # a developer's overrides must not point the notebooks elsewhere

    def execute(name: str) -> dict:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(REPORT))
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=120,
                                resources={"metadata": {"path": str(tmp_path)}})
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
        text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
        result = json.loads(text)
        assert Path(result["prefix"]).resolve() == Path(sys.prefix).resolve()  # the venv's kernel ran it
        return result["summary"]

    return execute


def finite(*values: object) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_explore_readings(run) -> None:
    summary = run("01_explore_readings.ipynb")
    assert summary["site"] == "sim-site" and summary["points_listed"] == 38
    assert summary["zones"] == ["AHU1", "AHU2"]
    # the default window: the 7 days up to the newest reading, on the site's clock
    assert datetime.fromisoformat(summary["end"]) == END
    assert datetime.fromisoformat(summary["start"]) == END - timedelta(days=7)
    points, quarter_hours = 3, 7 * 96  # two zone temperatures and the outdoor air, polled every 15 min
    assert summary["raw_rows"] == summary["quarter_hourly_rows"] == points * quarter_hours
    assert summary["hourly_rows"] == points * 7 * 24
    assert summary["daily_rows"] == points * 8  # 7 days from 08:00 Macau time touch 8 site days
    assert summary["pandas_columns"] == ["AHU1-ZN-T", "AHU2-ZN-T", "PLANT-OA-T"]
    assert summary["hourly_vs_raw_max_diff"] < 1e-9  # the rollup equals polars' own means


def test_baseline_mv(run) -> None:
    summary = run("02_baseline_mv.ipynb")
    assert summary["baseline_hours"] > 24 * 27 and summary["reporting_hours"] == 24 * 7
    assert finite(summary["cv_rmse"], summary["nmbe"], summary["r_squared"], summary["held_out_cv_rmse"],
                  summary["held_out_nmbe"], summary["counterfactual_kwh"], summary["avoided_kwh"])
    assert summary["meets_guideline_14"] and summary["cv_rmse"] < 0.3 and abs(summary["held_out_nmbe"]) < 0.1
    assert summary["counterfactual_kwh"] > 0
    assert summary["avoided_kwh"] == pytest.approx(summary["counterfactual_kwh"] - summary["actual_kwh"])
    # nothing changed in the virtual building: no saving, and an uncertainty that says so
    assert abs(summary["percent_savings"]) < 2
    fsu = summary["fractional_savings_uncertainty"]
    assert fsu is None or fsu > 0.5  # None: infinite (a saving of exactly zero)
    # a meter from elsewhere (UTC, degF, no occupancy, zero readings): warned, converted, estimated, cleaned
    assert summary["csv_meets_guideline_14"] and summary["csv_held_out_cv_rmse"] < 0.3
    assert summary["csv_occupied_hours_of_week"] == 60 and summary["csv_dropped_rows"] == 42
    assert summary["csv_utc_cv_rmse"] > summary["csv_cv_rmse"]
    assert len(summary["csv_warnings"]) == 1 and "in UTC" in summary["csv_warnings"][0]


def test_train_export_before_and_after_a_model_is_registered(run, site: tuple[str, Path],
                                                             tmp_path: Path) -> None:
    dsn, config = site
    first = run("03_train_export.ipynb")
    assert first["zones"] == ["AHU1", "AHU2"] and first["feature_rows"] > 2 * 27 * 96
    assert first["parity_ok"] and first["parity_worst"] <= 1e-3
    assert Path(first["onnx_path"]).is_relative_to(tmp_path) and Path(first["onnx_path"]).exists()
    assert all(finite(m["mae"], m["r2"]) for m in first["metrics"].values())
    assert first["metrics"]["energy_kw_next"]["r2"] > 0.5
    assert first["registered"] is None and first["comparison"] is None and first["deployments"] == []

    # the nightly flow's own steps register (and deploy in shadow) a model trained on older data
    from flows.ml import export_register_and_deploy, training_set

    settings = load_settings(config)
    older = training_set.fn(settings, END - timedelta(days=DAYS), END - timedelta(days=14),
                            timedelta(minutes=15))
    export_register_and_deploy.fn(settings, older, tmp_path / "registered", "1", "shadow")

    second = run("03_train_export.ipynb")
    assert second["parity_ok"]
    assert second["registered"]["version"] == "1" and second["registered"]["same_features"]
    assert second["deployments"] == [["1", "shadow"]]
    comparison = second["comparison"]
    assert set(comparison) == {"candidate", "registered"}
    for scores in comparison.values():
        assert set(scores) == {f"{t} {m}" for t in ("energy_kw_next", "zone_temp_next")
                               for m in ("MAE", "R²")}
        assert finite(*scores.values())
    with psycopg.connect(dsn) as conn:  # the notebook only read: still the one registered model
        assert conn.execute("SELECT version FROM model_registry").fetchall() == [("1",)]


def test_committed_notebooks_are_clean() -> None:
    """No outputs, execution counts or run metadata in git: diffs stay readable, no site data leaks."""
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not p.stem.endswith("-executed"))  # git-ignored
    assert [p.name for p in paths] == [
        "01_explore_readings.ipynb", "02_baseline_mv.ipynb", "03_train_export.ipynb",
    ]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        for cell in nb.cells:
            where = f"{path.name} cell {cell.get('id')}"
            assert "execution" not in cell.metadata, where
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, where
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name
