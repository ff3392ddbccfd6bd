"""Operator point settings (CLI and app): list, tag, publish, interval, QoS, write limits. They survive
rediscovery: discovery never touches these columns."""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.settings import Settings
from bacpipes.tagging import refresh_names

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
    "acquisition",
    "topic",
    "haystack_name",
    "missing_since",
)


def _selected(
    cur: Any, site_id: str, device: int | None, match: str | None, object_type: str | None = None,
    point_ids: list[int] | None = None,
) -> list[tuple]:
    cur.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM point WHERE site_id = %s"
        " AND (%s::int IS NULL OR device_id = %s) AND (%s::text IS NULL OR object_type = %s)"
        " AND (%s::bigint[] IS NULL OR point_id = ANY(%s))"
        " ORDER BY device_id, object_type, object_instance",
        (site_id, device, device, object_type, object_type, point_ids, point_ids),
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
            raise UserError(f"tag must be key=value, got {pair!r}")
        tags[key.strip()] = value.strip() or None
    return tags


WRITE_LIMITS = ("min_value", "max_value", "ml_min_value", "ml_max_value", "ml_max_step")


def _limit(column: str, text: str) -> float | None:
    if column not in WRITE_LIMITS:
        raise UserError(f"unknown write limit {column!r}; one of {', '.join(WRITE_LIMITS)}")
    if text.strip().lower() in ("none", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{column} must be a number or 'none', not {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{column} must be finite, not {text!r}")
    return value


def update_points(
    settings: Settings,
    *,
    device: int | None = None,
    match: str | None = None,
    object_type: str | None = None,
    point_ids: list[int] | None = None,
    publish: str | None = None,
    interval_s: float | None = None,
    qos: int | None = None,
    tags: list[str] | None = None,
    limits: dict[str, str] | None = None,
    acquisition: str | None = None,
    cov_confirmed: str | None = None,
) -> int:
    """Apply operator settings to the selected points; these survive rediscovery.

    `limits` maps WRITE_LIMITS columns to a number, or to "none" to remove that limit. `acquisition` is
    'poll' or 'cov' (change of value where the device accepts it, edge/cov.py); `cov_confirmed` 'on', 'off'
    or 'default' (the site's [cov] confirmed).
    """
    if publish not in (None, "on", "off"):  # anything else used to mean off
        raise UserError(f"publish must be 'on' or 'off', not {publish!r}")
    if qos not in (None, 0, 1, 2):  # the database refuses it too, as a bug-looking CheckViolation
        raise UserError(f"qos must be 0, 1 or 2, not {qos!r}")
    if acquisition not in (None, "poll", "cov"):
        raise UserError(f"acquisition must be 'poll' or 'cov', not {acquisition!r}")
    if cov_confirmed not in (None, "on", "off", "default"):
        raise UserError(f"cov_confirmed must be 'on', 'off' or 'default', not {cov_confirmed!r}")
    if interval_s is not None and interval_s <= 0:
        raise UserError("interval must be positive")
    tag_edits = parse_tags(tags or [])
    limit_edits = {column: _limit(column, text) for column, text in (limits or {}).items()}
    site = settings.site.id
    with connect(settings.database.dsn) as conn, conn.cursor() as cur:
        ids = [r[0] for r in _selected(cur, site, device, match, object_type, point_ids)]
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
        if acquisition is not None:
            cur.execute(
                "UPDATE point SET acquisition = %s WHERE site_id = %s AND point_id = ANY(%s)",
                (acquisition, site, ids),
            )
        if cov_confirmed is not None:
            cur.execute(
                "UPDATE point SET cov_confirmed = %s WHERE site_id = %s AND point_id = ANY(%s)",
                ({"on": True, "off": False}.get(cov_confirmed), site, ids),
            )
        if qos is not None:
            cur.execute(
                "UPDATE point SET qos = %s WHERE site_id = %s AND point_id = ANY(%s)", (qos, site, ids)
            )
        for column, value in limit_edits.items():
            try:
                cur.execute(
                    sql.SQL("UPDATE point SET {} = %s WHERE site_id = %s AND point_id = ANY(%s)").format(
                        sql.Identifier(column)
                    ),
                    (value, site, ids),
                )
            except psycopg.errors.CheckViolation:
                raise UserError(f"{column} = {value} would put a minimum above its maximum") from None
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
