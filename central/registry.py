"""Model registry and rollout on central: register an exported model, deploy a version to a site in
shadow or active mode, roll back to the version before. A deployment row carries the ONNX bytes and
their sha256 and reaches the site over the replication link; the site verifies before loading.

Registration goes through the same gate as the edge (`models.artifact.load`): a file every site would
refuse (not ONNX, or built for another feature list) is refused here, before anyone can deploy it."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bacpipes.errors import UserError
from models.artifact import load
from models.card import CardError, ClosedLoop, ModelCard, from_registry

MODES = ("shadow", "active", "off")


def register(conn: psycopg.Connection, name: str, version: str, path: Path, created_by: str) -> str:
    """Store the ONNX file (exported and parity-checked by models.setpoint.export); returns its sha256.

    Raises models.artifact.ModelRefused, storing nothing, for a file the edge would refuse.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    metadata = load(data, digest).metadata
    metrics = json.loads(metadata.get("metrics", "{}"))
    card = ModelCard.from_metadata(metadata).to_dict()  # what the file claims, fixed at registration
    conn.execute(
        "INSERT INTO model_registry (name, version, sha256, metrics, metadata, onnx, created_by, card)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (name, version, digest, Jsonb(metrics), Jsonb(metadata), data, created_by, Jsonb(card)),
    )
    conn.commit()
    return digest


def record_closed_loop(conn: psycopg.Connection, name: str, version: str, kpis: dict[str, Any],
                       recorded_by: str = "central") -> ModelCard:
    """Append a closed-loop measurement of a registered version (models.card.ClosedLoop.from_dict has the
    shape); returns the card as it now reads. Earlier measurements stay (sql/019_model_card.sql).

    Raises UserError for a version that is not registered or KPIs that are not numbers.
    """
    try:
        checked = ClosedLoop.from_dict(kpis)
    except CardError as exc:
        raise UserError(f"closed-loop KPIs for {name}@{version} refused: {exc}") from None
    entry = {k: v for k, v in checked.to_dict().items() if k not in ("measured_at", "recorded_by")}
    row = conn.execute(
        "UPDATE model_registry SET closed_loop = closed_loop || jsonb_build_array(jsonb_build_object("
        " 'at', to_jsonb(date_trunc('second', now())), 'by', %s::text, 'kpis', %s::jsonb))"
        " WHERE name = %s AND version = %s RETURNING card, metadata, closed_loop",
        (recorded_by, Jsonb(entry), name, version),
    ).fetchone()
    if row is None:  # nothing was changed
        known = [v for (v,) in conn.execute(
            "SELECT version FROM model_registry WHERE name = %s ORDER BY created_at", (name,))]
        raise UserError(f"model {name}@{version} is not registered, so its closed-loop KPIs have nowhere to "
                        f"go (registered versions of {name}: {', '.join(known) or 'none'})")
    conn.commit()
    return from_registry(*row)


def card(conn: psycopg.Connection, name: str, version: str) -> ModelCard:
    """The registered version's card with its newest closed-loop measurement."""
    row = conn.execute("SELECT card, metadata, closed_loop FROM model_registry"
                       " WHERE name = %s AND version = %s", (name, version)).fetchone()
    if row is None:
        raise UserError(f"model {name}@{version} is not registered")
    return from_registry(*row)


def deploy(conn: psycopg.Connection, site_id: str, name: str, version: str, mode: str, created_by: str,
           reason: str | None = None) -> uuid.UUID:
    if mode not in MODES:
        raise UserError(f"mode must be one of {MODES}, not {mode!r}")
    row = conn.execute(
        "SELECT sha256, onnx FROM model_registry WHERE name = %s AND version = %s", (name, version)
    ).fetchone()
    if row is None:
        raise UserError(f"model {name}@{version} is not registered")
    deployment = uuid.uuid4()
    conn.execute(
        "INSERT INTO model_deployments (id, site_id, name, version, mode, sha256, onnx, created_by, reason)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (deployment, site_id, name, version, mode, row[0], None if mode == "off" else row[1], created_by,
         reason),
    )
    conn.commit()
    return deployment


def deployed(conn: psycopg.Connection, site_id: str, name: str) -> list[tuple[str, str]]:
    """(version, mode) of every deployment to the site, newest first."""
    return conn.execute(
        "SELECT version, mode FROM model_deployments WHERE site_id = %s AND name = %s"
        " ORDER BY created_at DESC, id DESC",
        (site_id, name),
    ).fetchall()


def rollback_target(conn: psycopg.Connection, site_id: str, name: str) -> tuple[str, str, str]:
    """(current version, the one a roll back returns to, mode): what `rollback` would do, for a page to
    confirm first; UserError when there is nothing to roll back to."""
    history = [(v, m) for v, m in deployed(conn, site_id, name) if m != "off"]
    if not history:
        raise UserError(f"nothing deployed of {name} at {site_id}")
    current, mode = history[0]
    previous = next((v for v, _ in history if v != current), None)
    if previous is None:
        raise UserError(f"{name}@{current} is the only version deployed at {site_id}: switch it off instead")
    return current, previous, mode


def rollback(conn: psycopg.Connection, site_id: str, name: str, created_by: str, reason: str) -> str:
    """Deploy the version that ran before the current one, in the current mode; returns that version."""
    current, previous, mode = rollback_target(conn, site_id, name)
    deploy(conn, site_id, name, previous, mode, created_by, f"rollback from {current}: {reason}")
    return previous
