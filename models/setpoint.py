"""Train the setpoint model and export it to ONNX, refusing an export that does not match scikit-learn.

The model predicts next-interval energy and zone temperature from `models.features` (which include the
cooling setpoint, the decision the edge policy varies). A scaled second-order polynomial ridge: smooth
in the setpoint (a tree ensemble answers "what if 0.5 K warmer" with steps), deterministic, quick to
train, and every step of it converts to ONNX, so the preprocessing travels inside the graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from models.features import FEATURES, TARGETS

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


def train(features: pl.DataFrame, holdout_fraction: float = 0.2) -> Trained:
    """Fit on the earlier part, score on the later part (time order: no peeking into the future)."""
    if features.height < 50:
        raise ValueError(f"too little data to train on: {features.height} rows (need at least 50)")
    frame = features.sort("time")
    split = int(frame.height * (1 - holdout_fraction))
    x = frame.select(FEATURES).to_numpy()
    y = frame.select(TARGETS).to_numpy()
    pipeline = make_pipeline(StandardScaler(), PolynomialFeatures(2), Ridge(alpha=1.0))
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
    return Trained(pipeline, metrics, x[split:], (str(times[0]), str(times[split - 1])))


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
        "version": version,
        "created_by": created_by,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
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
