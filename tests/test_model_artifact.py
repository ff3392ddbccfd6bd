"""One gate for model files (`models.artifact.load`): the hash, the format, and the recorded feature list
must all check out, or the file is refused by the loader, by the registry (nothing stored) and by the
edge (which keeps running the model it verified before)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import psycopg
import pytest

from central.registry import register
from edge.inference import ModelSlot
from models import setpoint
from models.artifact import ModelRefused, load, metadata
from models.features import FEATURES, TARGETS, build_features
from tests.test_inference import deploy, rows
from tests.test_training import zone_history

ROOT = Path(__file__).resolve().parent.parent
# the same columns, two swapped: what an older or newer feature builder would have recorded
REORDERED = (FEATURES[1], FEATURES[0], *FEATURES[2:])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[bytes, bytes]]:
    """(a model exported by this feature builder, the same model exported by one whose order differs)."""
    folder = tmp_path_factory.mktemp("models")
    trained = setpoint.train(build_features(zone_history(), "UTC"))
    setpoint.export(trained, folder / "good.onnx", version="1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setpoint, "FEATURES", REORDERED)
        setpoint.export(trained, folder / "reordered.onnx", version="1")
    yield (folder / "good.onnx").read_bytes(), (folder / "reordered.onnx").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_metadata(data: bytes, **changes: str | None) -> bytes:
    """The same graph with some metadata props changed (None: removed)."""
    model = onnx.load_from_string(data)
    props = {**metadata(data), **changes}
    onnx.helper.set_model_props(model, {k: v for k, v in props.items() if v is not None})
    return model.SerializeToString()


def test_a_verified_model_loads_with_its_metadata(exported: tuple[bytes, bytes]) -> None:
    good, _ = exported
    model = load(good, sha(good).upper())  # a digest is a digest, whatever its case
    assert model.version == "1" and model.sha256 == sha(good)
    assert json.loads(model.metadata["features"]) == list(FEATURES)
    [predicted] = model.session.run(None, {"features": np.zeros((1, len(FEATURES)), np.float32)})
    assert predicted.shape == (1, len(TARGETS))


def test_bytes_that_do_not_hash_to_the_sha256_are_refused(exported: tuple[bytes, bytes]) -> None:
    good, _ = exported
    with pytest.raises(ModelRefused, match=f"hash to sha256 {sha(good)}, not the expected 0000"):
        load(good, "0" * 64)


@pytest.mark.parametrize("cut", [0, 100, -1])
def test_a_file_that_is_not_onnx_is_refused(exported: tuple[bytes, bytes], cut: int) -> None:
    data = exported[0][:cut] if cut else b"a,b\n1,2\n"  # a truncated download, or a CSV by mistake
    with pytest.raises(ModelRefused, match="not an ONNX model"):
        load(data, sha(data))


def test_a_model_exported_with_its_features_reordered_is_refused(exported: tuple[bytes, bytes]) -> None:
    _, reordered = exported
    assert json.loads(metadata(reordered)["features"]) == list(REORDERED)
    with pytest.raises(ModelRefused, match=r"features do not match .*reordered: the model expects \['how_co"):
        load(reordered, sha(reordered))


@pytest.mark.parametrize(("changes", "refusal"), [
    ({"features": json.dumps(list(FEATURES[:-1]))}, r"features .*missing \['cooling_setpoint'\]"),
    ({"features": json.dumps([*FEATURES, "humidity"])}, r"features .*extra \['humidity'\]"),
    ({"features": json.dumps([*FEATURES, FEATURES[0]])}, r"features .*extra \['how_sin'\]"),
    ({"features": json.dumps([*FEATURES[:-1], "setpoint"])},
     r"missing \['cooling_setpoint'\]; extra \['setpoint'\]"),
    ({"targets": json.dumps(list(reversed(TARGETS)))}, r"targets do not match .*reordered"),
    ({"features": None}, "records no features list"),
    ({"features": "how_sin,how_cos"}, "not a JSON list of names"),
])
def test_every_difference_in_the_recorded_columns_is_named(
    exported: tuple[bytes, bytes], changes: dict[str, str | None], refusal: str
) -> None:
    data = with_metadata(exported[0], **changes)
    with pytest.raises(ModelRefused, match=refusal):
        load(data, sha(data))


def test_the_registry_refuses_a_reordered_model_and_stores_nothing(
    db_dsn: str, exported: tuple[bytes, bytes], tmp_path: Path
) -> None:
    path = tmp_path / "setpoint.onnx"
    path.write_bytes(exported[1])
    with psycopg.connect(db_dsn) as conn:
        with pytest.raises(ModelRefused, match="reordered"):
            register(conn, "setpoint", "2", path, "central:test")
        conn.rollback()
    assert rows(db_dsn, "SELECT count(*) FROM model_registry") == [(0,)]


def test_the_edge_refuses_a_reordered_model_once_and_keeps_the_verified_one(
    db_dsn: str, exported: tuple[bytes, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    good, reordered = exported
    slot = ModelSlot("s1", "setpoint")
    with psycopg.connect(db_dsn) as conn:
        deploy(db_dsn, good, "1", "shadow")
        assert slot.refresh(conn).version == "1"
        deploy(db_dsn, reordered, "2", "active")  # its sha256 is right: only the columns are wrong
        with caplog.at_level(logging.ERROR, logger="edge.inference"):
            kept = [slot.refresh(conn) for _ in range(3)]
        assert [(m.version, m.mode) for m in kept] == [("1", "shadow")] * 3
        [refusal] = caplog.records  # reported once, not every interval
        assert "setpoint@2 refused, keeping version 1" in refusal.getMessage()
        assert "reordered" in refusal.getMessage()
        deploy(db_dsn, good, "3", "shadow")
        assert slot.refresh(conn).version == "3"


def test_reading_models_does_not_import_the_training_stack() -> None:
    probe = ("import sys, central.registry, models.artifact; "
             "print(sorted(m for m in ('sklearn', 'skl2onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['onnxruntime']"  # loaded what reading needs, and nothing of training
