"""Every query the app makes, parameterised, each shaped to use an index or the hourly rollup.

Pages call these and only render; the write paths go through `bacpipes` (commands, points, users) and
`central.registry`, the same functions the CLI and the flows use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import polars as pl
import psycopg

from bacpipes.errors import UserError
from bacpipes.readings import load_readings
from bacpipes.replication import agent_silent, site_slots
from bacpipes.settings import Settings
from models.card import ModelCard, from_registry


def frame(conn: psycopg.Connection, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> pd.DataFrame:
    cur = conn.execute(query, params)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or []])


# --- Overview -----------------------------------------------------------------------------------------

def agents(conn: psycopg.Connection, sites: list[str]) -> pd.DataFrame:
    """Per site: the agent's last heartbeat and the health it carried (the agent measures its own
    publish rate between heartbeats: counting recent readings here would scan a day's partition)."""
    table = frame(conn, """
        SELECT s.site_id, h.at AS last_seen, extract(epoch FROM now() - h.at) AS age_s, h.agent
        FROM unnest(%s::text[]) AS s(site_id) LEFT JOIN site_heartbeat h USING (site_id)
        ORDER BY s.site_id""", (sites,))

    def health(row: pd.Series) -> pd.Series:
        agent = row["agent"] or {}
        readings, failed = agent.get("readings") or 0, agent.get("reads_failed") or 0
        return pd.Series({
            "agent": "offline" if agent_silent(row["age_s"], agent) else "online",
            "read_success": readings / (readings + failed) if readings + failed else None,
            "readings_per_s": agent.get("readings_per_s"),
            "spool_depth": (agent.get("publisher") or {}).get("pending"),
            "devices_backing_off": agent.get("devices_backing_off"),
        })

    if table.empty:
        return table
    return pd.concat([table.drop(columns="agent"), table.apply(health, axis=1)], axis=1)


def replication(conn: psycopg.Connection, central: bool) -> pd.DataFrame:
    if central:
        return frame(conn, "SELECT site_id, readings_worker_alive, meta_worker_alive, lag_s, lag_bytes,"
                           " slot_wal_status, last_reading FROM replication_status ORDER BY site_id")
    return pd.DataFrame(site_slots(conn))


def open_alerts(conn: psycopg.Connection, sites: list[str]) -> pd.DataFrame:
    return frame(conn, "SELECT raised_at, site_id, severity, source, message FROM alerts"
                       " WHERE resolved_at IS NULL AND (site_id IS NULL OR site_id = ANY(%s))"
                       " ORDER BY raised_at DESC LIMIT 200", (sites,))


# --- Live ---------------------------------------------------------------------------------------------

def live(conn: psycopg.Connection, site: str, default_interval_s: float) -> pd.DataFrame:
    """Every present point with its latest state (point_state: one row per point, no scan of readings; on
    central kept from the replicated readings, sql/021_central_view.sql)."""
    return frame(conn, """
        SELECT p.point_id, split_part(p.topic, '/', 2) AS equipment, p.object_name, p.dis, s.value,
               p.units, s.quality, s.time, extract(epoch FROM now() - s.time) AS age_s,
               coalesce(p.interval_s, %(interval)s) AS interval_s, p.auto_tags || p.user_tags AS tags,
               s.last_error, p.object_type, p.state_text, p.inactive_text, p.active_text
        FROM point p LEFT JOIN point_state s USING (site_id, point_id)
        WHERE p.site_id = %(site)s AND p.missing_since IS NULL AND p.publish
        ORDER BY equipment, p.object_name""", {"site": site, "interval": default_interval_s})


# --- Trends -------------------------------------------------------------------------------------------

def point_choices(conn: psycopg.Connection, site: str, writable_only: bool = False) -> pd.DataFrame:
    """Points to pick, with what a chart or a write form needs of each: units, limits, state texts."""
    return frame(conn, "SELECT point_id, coalesce(dis, object_name, 'point ' || point_id) AS label,"
                       " object_name, units, writable, commandable, object_type, min_value, max_value,"
                       " device_min_value, device_max_value,"
                       " ml_min_value, ml_max_value, state_text, inactive_text, active_text,"
                       " relinquish_default FROM point WHERE site_id = %s AND missing_since IS NULL"
                       " AND (NOT %s OR writable) ORDER BY label", (site, writable_only))


def trend(conn: psycopg.Connection, settings: Settings, site: str, points: list[int], start: datetime,
          end: datetime) -> tuple[pl.DataFrame, str]:
    """Raw readings for short ranges, the hourly rollup (readings_hourly) for long ones."""
    hourly = end - start > timedelta(days=settings.ui.raw_max_days)
    data = load_readings(points, start, end, every="1h" if hourly else None, settings=settings,
                         site_id=site, conn=conn)
    return data, "hourly averages" if hourly else "raw readings"


def trend_sets(conn: psycopg.Connection, username: str, site: str) -> pd.DataFrame:
    """The user's saved trend sets at this site, by name."""
    return frame(conn, "SELECT name, point_ids, span, first_day, last_day, saved_at FROM app_trend_sets"
                       " WHERE username = %s AND site_id = %s ORDER BY name", (username, site))


def save_trend_set(conn: psycopg.Connection, username: str, site: str, name: str, point_ids: list[int],
                   span: str | None, days: tuple[date, date] | None) -> None:
    """Save (or replace) the user's trend set `name`: points and a named span or fixed days."""
    if not name.strip():
        raise UserError("give the trend set a name")
    first, last = days if days else (None, None)
    conn.execute("""
        INSERT INTO app_trend_sets (username, site_id, name, point_ids, span, first_day, last_day)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (username, site_id, name) DO UPDATE SET point_ids = EXCLUDED.point_ids,
            span = EXCLUDED.span, first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day,
            saved_at = now()""", (username, site, name.strip(), point_ids, span, first, last))


def delete_trend_set(conn: psycopg.Connection, username: str, site: str, name: str) -> None:
    """Delete one of the user's own trend sets (another user's is never touched)."""
    conn.execute("DELETE FROM app_trend_sets WHERE username = %s AND site_id = %s AND name = %s",
                 (username, site, name))


# --- Devices & points ---------------------------------------------------------------------------------

def devices(conn: psycopg.Connection, site: str) -> pd.DataFrame:
    return frame(conn, "SELECT device_id, name, address, vendor_name, model_name, max_apdu, segmentation,"
                       " last_seen, missing_since,"
                       " (SELECT count(*) FROM point p WHERE p.site_id = d.site_id"
                       "  AND p.device_id = d.device_id) AS points"
                       " FROM device d WHERE site_id = %s ORDER BY device_id", (site,))


def points(conn: psycopg.Connection, site: str) -> pd.DataFrame:
    table = frame(conn, """
        SELECT point_id, device_id, object_type, object_instance, object_name, units, writable, publish,
               interval_s, qos, min_value, max_value, ml_min_value, ml_max_value, ml_max_step, user_tags,
               auto_tags, topic, missing_since IS NOT NULL AS missing
        FROM point WHERE site_id = %s ORDER BY device_id, object_type, object_instance""", (site,))
    table["user_tags"] = table["user_tags"].map(tags_text)
    table["auto_tags"] = table["auto_tags"].map(tags_text)
    return table


def tags_text(tags: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def preview_topics(conn: psycopg.Connection, site: str, point_ids: list[int],
                   tag_edits: dict[str, str | None]) -> pd.DataFrame:
    """Each point's topic now and the one it would publish on after these tag edits (None removes a
    tag), before anything is saved: the same naming code discovery uses."""
    from bacpipes.tagging import describe

    rows = conn.execute(
        "SELECT p.point_id, p.object_name, p.topic, d.name, p.device_id, p.object_type, p.object_instance,"
        " p.description, p.auto_tags, p.user_tags FROM point p JOIN device d USING (site_id, device_id)"
        " WHERE p.site_id = %s AND p.point_id = ANY(%s) ORDER BY p.point_id", (site, point_ids)).fetchall()
    preview = []
    for pid, oname, topic, device, device_id, otype, inst, desc, auto, user in rows:
        user = {k: v for k, v in {**user, **tag_edits}.items() if v is not None}
        after = describe({**auto, **user}, device_name=device, device_id=device_id, object_type=otype,
                         object_instance=inst, object_name=oname, description=desc)[2]
        preview.append({"point_id": pid, "object_name": oname, "topic now": topic, "topic after": after})
    return pd.DataFrame(preview)


# --- Commands -----------------------------------------------------------------------------------------

def present_value(conn: psycopg.Connection, site: str, point_id: int) -> float | None:
    row = conn.execute("SELECT value FROM point_state WHERE site_id = %s AND point_id = %s",
                       (site, point_id)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def audit(conn: psycopg.Connection, site: str, limit: int = 200, *, points: Sequence[int] = (),
          users: Sequence[str] = (), sources: Sequence[str] = (), since: datetime | None = None,
          until: datetime | None = None) -> pd.DataFrame:
    """The newest commands, narrowed by point, user (created_by), source and creation time when given."""
    return frame(conn, """
        SELECT w.created_at, w.status, coalesce(p.dis, p.object_name) AS point, w.point_id, w.command_type,
               w.value, w.priority, w.source, w.created_by, w.reason, w.error_message, w.value_read,
               w.completed_at, w.id::text AS id,
               -- where it was made: 'local' is this database (central has sites registered, a site none)
               CASE WHEN (w.arrived = 'local') = EXISTS (SELECT 1 FROM site) THEN 'central' ELSE 'site'
               END AS made_at
        FROM write_command_status w LEFT JOIN point p USING (site_id, point_id)
        WHERE w.site_id = %(site)s
          AND (cardinality(%(points)s::bigint[]) = 0 OR w.point_id = ANY(%(points)s))
          AND (cardinality(%(users)s::text[]) = 0 OR w.created_by = ANY(%(users)s))
          AND (cardinality(%(sources)s::text[]) = 0 OR w.source = ANY(%(sources)s))
          AND (%(since)s::timestamptz IS NULL OR w.created_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR w.created_at < %(until)s)
        ORDER BY w.created_at DESC LIMIT %(limit)s""",
        {"site": site, "points": list(points), "users": list(users), "sources": list(sources),
         "since": since, "until": until, "limit": limit})


def audit_choices(conn: psycopg.Connection, site: str) -> tuple[list[str], list[str]]:
    """The users and sources that have written at this site, for the audit trail's filters."""
    users = conn.execute("SELECT DISTINCT created_by FROM write_commands WHERE site_id = %s"
                         " ORDER BY 1", (site,)).fetchall()
    sources = conn.execute("SELECT DISTINCT source FROM write_commands WHERE site_id = %s"
                           " ORDER BY 1", (site,)).fetchall()
    return [u for (u,) in users if u], [s for (s,) in sources if s]


def last_priority_array(conn: psycopg.Connection, site: str, point_id: int
                        ) -> tuple[list[float | None], datetime] | None:
    """The priority array the device read back after the newest command on this point that has one, and
    when: the last the site knows of it (no command yet: None)."""
    row = conn.execute("""
        SELECT e.priority_array, e.at FROM command_events e JOIN write_commands c ON c.id = e.command_id
        WHERE c.site_id = %s AND c.point_id = %s AND e.priority_array IS NOT NULL
        ORDER BY e.at DESC LIMIT 1""", (site, point_id)).fetchone()
    return None if row is None else (row[0], row[1])


# --- Models -------------------------------------------------------------------------------------------

def registry(conn: psycopg.Connection) -> pd.DataFrame:
    table = frame(conn, "SELECT name, version, created_at, created_by, metrics, sha256 FROM model_registry"
                        " ORDER BY name, created_at DESC")
    if table.empty:
        return table
    metrics = pd.json_normalize(table.pop("metrics").tolist())
    return pd.concat([table, metrics], axis=1)


def model_cards(conn: psycopg.Connection) -> list[tuple[str, str, ModelCard]]:
    """(name, version, card) of every registered version, newest first per model: the card stored at
    registration (built from the metadata for a row registered before cards were) with its newest
    closed-loop measurement."""
    found = conn.execute("SELECT name, version, card, metadata, closed_loop FROM model_registry"
                         " ORDER BY name, created_at DESC").fetchall()
    return [(name, version, from_registry(card, metadata, closed_loop))
            for name, version, card, metadata, closed_loop in found]


def running(conn: psycopg.Connection, sites: list[str]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(name, version) -> [(site, mode)] of each site's newest deployment of each model (mode 'off'
    included: the version was switched off there)."""
    found = conn.execute("SELECT DISTINCT ON (site_id, name) site_id, name, version, mode"
                         " FROM model_deployments WHERE site_id = ANY(%s)"
                         " ORDER BY site_id, name, created_at DESC, id DESC", (sites,)).fetchall()
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for site, name, version, mode in found:
        out.setdefault((name, version), []).append((site, mode))
    return out


def deployments(conn: psycopg.Connection, sites: list[str], limit: int = 100) -> pd.DataFrame:
    return frame(conn, "SELECT created_at, site_id, name, version, mode, created_by, reason, sha256"
                       " FROM model_deployments WHERE site_id = ANY(%s) ORDER BY created_at DESC LIMIT %s",
                 (sites, limit))


def shadow_vs_actual(conn: psycopg.Connection, site: str, zone_temp_of: dict[int, int],
                     since: datetime, ahead: timedelta) -> pd.DataFrame:
    """What the model predicted for each zone against the zone temperature that followed: each
    prediction joined with the first reading at or after the time it was made for (one interval on)."""
    if not zone_temp_of:
        return pd.DataFrame()
    return frame(conn, """
        SELECT l.at, l.point_id AS setpoint_point, l.version, l.mode, l.setpoint, l.predicted_zone_temp,
               r.value AS actual_zone_temp, l.detail
        FROM inference_log l
        JOIN unnest(%s::bigint[], %s::bigint[]) AS z(setpoint, zone_temp) ON z.setpoint = l.point_id
        LEFT JOIN LATERAL (
            SELECT value FROM sensor_readings r
            WHERE r.site_id = l.site_id AND r.point_id = z.zone_temp AND r.time >= l.at + %s
            ORDER BY r.time LIMIT 1) r ON true
        WHERE l.site_id = %s AND l.at >= %s ORDER BY l.at""",
        (list(zone_temp_of), list(zone_temp_of.values()), ahead, site, since))


# --- A/B ----------------------------------------------------------------------------------------------

def ab_schedule(conn: psycopg.Connection, site: str) -> pd.DataFrame:
    return frame(conn, "SELECT period_start, period_end, arm FROM ab_schedule WHERE site_id = %s"
                       " ORDER BY period_start", (site,))


def rollbacks(conn: psycopg.Connection, site: str) -> pd.DataFrame:
    return frame(conn, "SELECT created_at, name, version, mode, created_by, reason FROM model_deployments"
                       " WHERE site_id = %s AND reason LIKE 'rollback from %%'"
                       " ORDER BY created_at DESC", (site,))
