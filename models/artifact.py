"""Loading a model file: the one gate between ONNX bytes and a running session.

The edge loads what replication brought, central registers what a flow or a notebook exported; both come
through `load`, so a file one side would refuse the other refuses too. A model is a function of columns in
a fixed order: a file whose recorded feature list is not exactly `models.features.FEATURES` (same names,
same order) would be fed the wrong columns without a word, so it is refused rather than run.

Only onnx and onnxruntime here, never scikit-learn or skl2onnx: the registry and the edge read models
without the training stack.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from models.features import FEATURES, TARGETS

INPUT = "features"  # the graph's one input, a float32 matrix with a column per feature


class ModelRefused(ValueError):
    """The file must not be run: wrong bytes, not ONNX, or built for other features or targets."""


@dataclass(frozen=True)
class LoadedModel:
    session: ort.InferenceSession
    sha256: str
    metadata: dict[str, str]  # the file's metadata props, as `models.setpoint.export` wrote them

    @property
    def version(self) -> str | None:
        return self.metadata.get("version")


def metadata(onnx_bytes: bytes) -> dict[str, str]:
    """The file's metadata props; raises ModelRefused when the bytes are not an ONNX model."""
    try:
        model = onnx.load_from_string(onnx_bytes)
    except DecodeError as exc:
        raise ModelRefused(f"not an ONNX model: {exc}") from None
    if model.ir_version == 0 or not model.graph.node:  # protobuf parses b"" as an empty model
        raise ModelRefused("not an ONNX model: no IR version or no graph")
    return {prop.key: prop.value for prop in model.metadata_props}


def load(onnx_bytes: bytes, sha256: str) -> LoadedModel:
    """A session for the file, once its bytes, format and recorded columns check out; else ModelRefused.

    The hash is checked first, so bytes that are not the ones published are never parsed.
    """
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if actual != sha256.lower():
        raise ModelRefused(f"the bytes hash to sha256 {actual}, not the expected {sha256}")
    props = metadata(onnx_bytes)
    _check_columns("features", _recorded(props, "features"), FEATURES)
    _check_columns("targets", _recorded(props, "targets"), TARGETS)
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types are not public API
        raise ModelRefused(f"onnxruntime cannot load the model: {exc}") from None
    _check_input(session)
    return LoadedModel(session, actual, props)


def _recorded(props: dict[str, str], key: str) -> list[str]:
    if key not in props:
        raise ModelRefused(f"the model records no {key} list (metadata {key!r}): it cannot be checked")
    try:
        names = json.loads(props[key])
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelRefused(f"the model's {key} metadata is not a JSON list of names: {props[key]!r}")
    return names


def _check_columns(kind: str, recorded: Sequence[str], expected: Sequence[str]) -> None:
    """Names the difference, so the refusal says what to retrain or which builder the file was made by."""
    if list(recorded) == list(expected):
        return
    missing = list((Counter(expected) - Counter(recorded)).elements())
    extra = list((Counter(recorded) - Counter(expected)).elements())  # includes a name listed twice
    problems = [f"missing {missing}"] * bool(missing) + [f"extra {extra}"] * bool(extra)
    if not problems:
        problems = [f"reordered: the model expects {list(recorded)}"]
    raise ModelRefused(
        f"the model's {kind} do not match the feature builder's ({'; '.join(problems)}); "
        f"the builder makes {list(expected)}: retrain and export the model with this version"
    )


def _check_input(session: ort.InferenceSession) -> None:
    """The graph itself must take one matrix as wide as the feature list (metadata could say otherwise)."""
    inputs = session.get_inputs()
    width = inputs[0].shape[-1] if len(inputs) == 1 and inputs[0].shape else None
    if len(inputs) != 1 or inputs[0].name != INPUT or width != len(FEATURES):
        found = [(i.name, i.shape) for i in inputs]
        raise ModelRefused(f"the graph's inputs are {found}, not one {INPUT!r} of {len(FEATURES)} columns")
