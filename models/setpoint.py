"""Train the setpoint model and export it to ONNX, refusing an export that does not match scikit-learn.

The model predicts next-interval energy and zone temperature from `models.features` (which include the
cooling setpoint, the decision the edge policy varies). The default family is a scaled second-order
polynomial ridge: smooth in the setpoint (a tree ensemble answers "what if 0.5 K warmer" with steps),
deterministic, quick to train, and every step of it converts to ONNX, so the preprocessing travels inside
the graph. Other families (`FAMILIES`) are candidates: `select` trains each on the earlier days and keeps
the one with the least multi-step error on the later, held-back days (`multistep_mae`: rolled out
recursively on its own predictions, as the MPC uses it). The export records that error and every
candidate's in its metadata (`multistep_mae`, `candidates`), which the model card shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from models.features import FEATURES, TARGETS, advance, set_setpoint

# the features the setpoint acts through; "piecewise" families keep them linear (their kink at the zone
# temperature is the thermostat's), so the response to a setpoint is monotone and cannot curl back
_SETPOINT_SIDE = ("cooling_gap", "setpoint_headroom", "cooling_setpoint")
_STATE_SIDE = [FEATURES.index(f) for f in FEATURES if f not in _SETPOINT_SIDE]


def _piecewise(model: object) -> Pipeline:
    """Quadratic in the state (time, weather, occupancy, temperatures, lags), piecewise-linear in the
    setpoint: the state sets how much cooling the zone needs, the setpoint gaps how much it gets."""
    columns = ColumnTransformer([
        ("state", make_pipeline(StandardScaler(), PolynomialFeatures(2)), _STATE_SIDE),
        ("setpoint", StandardScaler(), [FEATURES.index(f) for f in _SETPOINT_SIDE]),
    ])
    return make_pipeline(columns, model)


# the candidate model families, each a scikit-learn pipeline with its preprocessing (skl2onnx exports all)
FAMILIES: dict[str, Callable[[], Pipeline]] = {
    "piecewise-ridge": lambda: _piecewise(Ridge(alpha=1.0)),
    "poly2-ridge": lambda: make_pipeline(StandardScaler(), PolynomialFeatures(2), Ridge(alpha=1.0)),
    "linear-arx": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
    "random-forest": lambda: make_pipeline(RandomForestRegressor(  # no scaler: float32 cuts match ONNX
        n_estimators=40, max_depth=10, min_samples_leaf=5, random_state=0, n_jobs=1)),
    "mlp": lambda: make_pipeline(StandardScaler(), MLPRegressor(
        hidden_layer_sizes=(32, 32), alpha=1e-3, max_iter=400, early_stopping=True, random_state=0)),
}
DEFAULT_FAMILY = "poly2-ridge"
HORIZONS = (1, 4, 8)  # steps: 15 min, 1 h, 2 h at 15-minute intervals
Horizons = dict[str, dict[str, float]]  # {"4": {"energy_kw_next": mae, "zone_temp_next": mae}}

UNITS = {"energy_kw_next": "kW", "zone_temp_next": "degC"}
PARITY_TOLERANCE = 1e-3  # of each target's spread; ONNX runs in float32, scikit-learn in float64


class ParityError(ValueError):
    """The ONNX graph does not reproduce the scikit-learn model: it must not be registered."""


@dataclass(frozen=True)
class Trained:
    pipeline: Pipeline
    metrics: dict[str, dict[str, float]]  # per target: MAE and R² on the holdout
    holdout: np.ndarray  # holdout features, kept for the parity check
    window: tuple[str, str]  # training data's first and last time (ISO)
    family: str = DEFAULT_FAMILY
    multistep: Horizons | None = None  # multi-step MAE on held-back days (see `select`)
    candidates: tuple[dict, ...] = ()  # [{"family": ..., "multistep_mae": Horizons}], every family tried
    interval_s: float | None = None  # the grid the multi-step error was measured on (a step's length)


def train(features: pl.DataFrame, holdout_fraction: float = 0.2, family: str = DEFAULT_FAMILY) -> Trained:
    """Fit on the earlier part, score on the later part (time order: no peeking into the future)."""
    if features.height < 50:
        raise ValueError(f"too little data to train on: {features.height} rows (need at least 50)")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    frame = features.sort("time")
    split = int(frame.height * (1 - holdout_fraction))
    x = frame.select(FEATURES).to_numpy()
    y = frame.select(TARGETS).to_numpy()
    pipeline = FAMILIES[family]()
    pipeline.fit(x[:split], y[:split])
    predicted = pipeline.predict(x[split:])
    metrics = {
        target: {
            "mae": float(mean_absolute_error(y[split:, i], predicted[:, i])),
            "r2": float(r2_score(y[split:, i], predicted[:, i])),
        }
        for i, target in enumerate(TARGETS)
    }
    times = frame["time"]
    return Trained(pipeline, metrics, x[split:], (str(times[0]), str(times[split - 1])), family)


def multistep_mae(predict: Callable[[np.ndarray], np.ndarray], zones: Sequence[pl.DataFrame],
                  every_s: float, horizons: Sequence[int] = HORIZONS) -> Horizons:
    """MAE of each target `h` steps ahead, rolled out on the model's own predictions.

    `zones`: per zone, `build_features` output (with targets) on a regular grid `every_s` apart. From
    every row, the model is stepped h times: the applied setpoints are the recorded ones, outdoor
    temperature and occupancy are held at the start row's (as the MPC holds them), zone temperature and
    energy are the model's own. A window that crosses a gap in the grid is skipped.
    """
    top = max(horizons)
    errors: dict[int, list[np.ndarray]] = {h: [] for h in horizons}
    for frame in zones:
        if frame.height <= top + 1:
            continue
        x = frame.select(FEATURES).to_numpy()
        y = frame.select(TARGETS).to_numpy()
        seconds = frame["time"].dt.epoch("s").to_numpy().astype(float)
        n = len(x) - top
        ok = np.isclose(seconds[top:top + n] - seconds[:n], top * every_s)
        starts = np.flatnonzero(ok)
        if not len(starts):
            continue
        rows = x[starts]
        energy_now = x[starts + 1, FEATURES.index("energy_kw_lag1")]  # the reading at the start instant
        setpoint_col = FEATURES.index("cooling_setpoint")
        for k in range(1, top + 1):
            predicted = np.asarray(predict(rows), dtype=float)
            if k in errors:
                errors[k].append(np.abs(predicted - y[starts + k - 1]))
            if k < top:
                rows = advance(rows, predicted, energy_now, x[starts + k, setpoint_col], every_s)
                energy_now = predicted[:, TARGETS.index("energy_kw_next")]
    if not any(errors.values()):
        raise ValueError("no held-back window long enough for the multi-step error")
    return {
        str(h): {t: float(np.concatenate(errors[h])[:, i].mean()) for i, t in enumerate(TARGETS)}
        for h in horizons
    }


def _score(mae: Horizons, scale: dict[str, float]) -> float:
    """One number to rank families: the MAEs over horizons, each target in units of its spread."""
    return sum(v / scale[t] for by_target in mae.values() for t, v in by_target.items())


SHAPE_TOLERANCE = 0.05  # of held-back instants whose setpoint response may be non-physical


def shape_violations(predict: Callable[[np.ndarray], np.ndarray], zones: Sequence[pl.DataFrame],
                     every_s: float, levels: Sequence[float] = (22.0, 23.0, 24.0, 25.0, 26.0),
                     steps: int = max(HORIZONS), sample: int = 400) -> float:
    """The fraction of held-back instants at which the model's response to a held setpoint is not the
    thermostat's: over `steps`, a warmer setpoint must not predict more cooling energy, nor a colder zone.

    The multi-step error scores a model on the setpoints that were applied; the MPC asks it about the
    ones that were not. A family can win the first and fail the second (a quadratic in the setpoint
    curls back at the edges of its data), and then the MPC ranks trajectories on an artefact."""
    rows = np.vstack([z.select(FEATURES).to_numpy() for z in zones if z.height])
    if not len(rows):
        return 0.0
    rows = rows[np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int)]
    n, m = len(rows), len(levels)
    x = set_setpoint(np.repeat(rows, m, axis=0), np.tile(np.asarray(levels, dtype=float), n))
    energy_now = x[:, FEATURES.index("energy_kw_lag1")]  # the lag stands in for the present reading
    energy, temp = np.zeros(len(x)), np.zeros(len(x))
    for k in range(steps):
        y = np.asarray(predict(x), dtype=float)
        energy += y[:, TARGETS.index("energy_kw_next")]
        temp = y[:, TARGETS.index("zone_temp_next")]
        if k + 1 < steps:
            x = advance(x, y, energy_now, x[:, FEATURES.index("cooling_setpoint")], every_s)
            energy_now = y[:, TARGETS.index("energy_kw_next")]
    de, dt = np.diff(energy.reshape(n, m), axis=1), np.diff(temp.reshape(n, m), axis=1)
    slack_e, slack_t = 0.02 * steps * max(float(np.abs(energy).mean()) / steps, 1e-6), 0.02
    bad = (de > slack_e).any(axis=1) | (dt < -slack_t).any(axis=1)
    return float(bad.mean())


def select(zones: Sequence[pl.DataFrame], every_s: float, families: Sequence[str] = tuple(FAMILIES),
           holdout_fraction: float = 0.2) -> Trained:
    """Train each family on the earlier days of every zone, score its multi-step error on the later,
    held-back days, and return the best (lowest error, targets weighed by their spread) of those whose
    setpoint response is physical on the held-back days (`shape_violations` within SHAPE_TOLERANCE; all
    of them if none is), with every candidate's error recorded for the model card."""
    everything = pl.concat(zones).sort("time")
    times = everything["time"].unique().sort()
    cut = times[int(len(times) * (1 - holdout_fraction))]
    held = [z.filter(pl.col("time") >= cut) for z in zones]
    y = everything.select(TARGETS).to_numpy()
    scale = {t: float(max(y[:, i].std(), 1e-9)) for i, t in enumerate(TARGETS)}
    tried: list[tuple[float, float, Trained]] = []
    for family in families:
        trained = train(everything, holdout_fraction, family)
        mae = multistep_mae(trained.pipeline.predict, held, every_s)
        shape = shape_violations(trained.pipeline.predict, held, every_s)
        tried.append((_score(mae, scale), shape, replace(trained, multistep=mae)))
    admissible = [t for t in tried if t[1] <= SHAPE_TOLERANCE] or tried
    best = min(admissible, key=lambda t: t[0])[2]
    log = tuple({"family": t.family, "multistep_mae": t.multistep, "shape_violations": shape}
                for _, shape, t in tried)
    return replace(best, candidates=log, interval_s=every_s)


def export(trained: Trained, path: Path, version: str, created_by: str = "central") -> str:
    """Write the ONNX file with its metadata and return its sha256; raises ParityError on a mismatch."""
    model = to_onnx(
        trained.pipeline, initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        target_opset=17,
    )
    metadata = {
        "features": json.dumps(list(FEATURES)),
        "targets": json.dumps(list(TARGETS)),
        "units": json.dumps(UNITS),
        "training_window": json.dumps(trained.window),
        "metrics": json.dumps(trained.metrics),
        "family": trained.family,
        "version": version,
        "created_by": created_by,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if trained.multistep is not None:
        metadata["multistep_mae"] = json.dumps(trained.multistep)
    if trained.candidates:
        metadata["candidates"] = json.dumps(list(trained.candidates))
    if trained.interval_s is not None:
        metadata["interval_s"] = str(trained.interval_s)
    onnx.helper.set_model_props(model, metadata)
    data = model.SerializeToString()
    check_parity(trained, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def check_parity(trained: Trained, onnx_bytes: bytes) -> float:
    """Largest disagreement on the holdout, in units of each target's spread; raises over tolerance."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = trained.holdout.astype(np.float32)
    ours = session.run(None, {"features": x})[0]
    theirs = trained.pipeline.predict(trained.holdout)
    spread = np.maximum(theirs.std(axis=0), 1e-9)
    worst = float(np.max(np.abs(ours - theirs) / spread))
    if not worst <= PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX differs from scikit-learn by {worst:.2e} of a target's spread on the holdout "
            f"(tolerance {PARITY_TOLERANCE:g}): not registering this model"
        )
    return worst
