"""Bulk point administration for operators (the UI comes later): list, tag, publish, interval."""

from __future__ import annotations

import fnmatch
from typing import Any

from psycopg.types.json import Jsonb

from bacpipes.db import connect
from bacpipes.settings import Settings
from edge.catalog import refresh_names

_COLUMNS = (
    "point_id",
    "device_id",
    "object_type",
    "object_instance",
    "object_name",
    "units",
    "publish",
    "interval_s",
    "qos",
    "topic",
    "haystack_name",
    "missing_since",
)


def _selected(
    cur: Any, site_id: str, device: int | None, match: str | None, object_type: str | None = None
) -> list[tuple]:
    cur.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM point WHERE site_id = %s"
        " AND (%s::int IS NULL OR device_id = %s) AND (%s::text IS NULL OR object_type = %s)"
        " ORDER BY device_id, object_type, object_instance",
        (site_id, device, device, object_type, object_type),
    )
    rows = cur.fetchall()
    if match:
        rows = [r for r in rows if fnmatch.fnmatchcase(r[4] or "", match)]
    return rows


def list_points(settings: Settings, device: int | None = None, match: str | None = None) -> list[tuple]:
    with connect(settings.database.dsn) as conn, conn.cursor() as cur:
        return [_COLUMNS, *_selected(cur, settings.site.id, device, match)]


def parse_tags(pairs: list[str]) -> dict[str, str | None]:
    tags: dict[str, str | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tag must be key=value, got {pair!r}")
        tags[key.strip()] = value.strip() or None
    return tags


def update_points(
    settings: Settings,
    *,
    device: int | None = None,
    match: str | None = None,
    object_type: str | None = None,
    publish: str | None = None,
    interval_s: float | None = None,
    qos: int | None = None,
    tags: list[str] | None = None,
) -> int:
    """Apply operator settings to the selected points; these survive rediscovery."""
    if interval_s is not None and interval_s <= 0:
        raise ValueError("interval must be positive")
    tag_edits = parse_tags(tags or [])
    site = settings.site.id
    with connect(settings.database.dsn) as conn, conn.cursor() as cur:
        ids = [r[0] for r in _selected(cur, site, device, match, object_type)]
        if not ids:
            return 0
        if publish is not None:
            cur.execute(
                "UPDATE point SET publish = %s WHERE site_id = %s AND point_id = ANY(%s)",
                (publish == "on", site, ids),
            )
        if interval_s is not None:
            cur.execute(
                "UPDATE point SET interval_s = %s WHERE site_id = %s AND point_id = ANY(%s)",
                (interval_s, site, ids),
            )
        if qos is not None:
            cur.execute(
                "UPDATE point SET qos = %s WHERE site_id = %s AND point_id = ANY(%s)", (qos, site, ids)
            )
        if tag_edits:
            removed = [k for k, v in tag_edits.items() if v is None]
            added = {k: v for k, v in tag_edits.items() if v is not None}
            cur.execute(
                "UPDATE point SET user_tags = (user_tags - %s::text[]) || %s"
                " WHERE site_id = %s AND point_id = ANY(%s)",
                (removed, Jsonb(added), site, ids),
            )
            refresh_names(cur, site)
        return len(ids)
