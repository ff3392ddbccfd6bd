"""Building health for Overview, and the alarm lists for the Alarms page: what the building is doing
(zones against their setpoints, devices answering or not, stale and bad points, equipment in alarm), read
from the latest state of every point (`point_state`, one row per point: no scan of readings) and the
agent's heartbeat.

Honesty first: a figure is only as current as what it is read from. When the agent is silent, every point
goes stale with it and its last health figures are reported with their age, never as now's; a zone whose
temperature is stale is "stale", not "in band"; a device is judged offline when every point of it failed
its latest poll (the agent's `point_state.last_error_at >= last_poll`, as the read_failures rule judges),
and its last successful read is its points' newest reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from bacpipes.alarms import SEVERITY_ORDER, AlarmRules, zone_bands, zone_observation
from bacpipes.replication import agent_silent, heartbeat_every
from bacpipes.settings import Settings
from streamlit_app.queries import frame


@dataclass(frozen=True)
class AgentState:
    """The site's agent as its last heartbeat shows it."""

    at: datetime | None
    age_s: float | None
    health: dict[str, Any]

    @property
    def silent(self) -> bool:
        return agent_silent(self.age_s, self.health)

    @property
    def expected_every_s(self) -> float:
        return heartbeat_every(self.health)


@dataclass
class BuildingHealth:
    site: str
    agent: AgentState
    points: pd.DataFrame
    zones: pd.DataFrame
    devices: pd.DataFrame
    alarms: pd.DataFrame = field(default_factory=pd.DataFrame)

    def count(self, table: str, column: str, values: tuple[str, ...]) -> int:
        data = getattr(self, table)
        return int(data[column].isin(values).sum()) if not data.empty else 0

    @property
    def problems(self) -> bool:
        """Anything an operator should look at; False only when every figure is fresh and fine."""
        return (self.agent.silent or self.count("zones", "status", ("too warm", "too cold", "stale"))
                or self.count("devices", "status", ("offline", "failing reads", "stale"))
                or self.count("points", "status", ("stale", "bad", "no data")) or not self.alarms.empty)


def agent_state(conn: psycopg.Connection, site: str) -> AgentState:
    row = conn.execute("SELECT at, extract(epoch FROM clock_timestamp() - at)::float8, agent"
                       " FROM site_heartbeat WHERE site_id = %s", (site,)).fetchone()
    if row is None:
        return AgentState(None, None, {})
    return AgentState(row[0], row[1], row[2] or {})


def points(conn: psycopg.Connection, site: str, settings: Settings) -> pd.DataFrame:
    """Every published point with its latest state and a status: ok, stale (older than
    `ui.stale_after_intervals` poll intervals), bad (quality), no data (never read)."""
    table = frame(conn, """
        SELECT p.point_id, p.device_id, split_part(coalesce(p.topic, ''), '/', 2) AS equipment,
               p.object_name, s.value, p.units, s.quality, s.time,
               extract(epoch FROM clock_timestamp() - s.time)::float8 AS age_s,
               coalesce(p.interval_s, %(interval)s)::float8 AS interval_s, s.last_poll, s.last_error,
               s.last_error_at, coalesce(s.last_error_at >= s.last_poll, false) AS failing
        FROM point p LEFT JOIN point_state s USING (site_id, point_id)
        WHERE p.site_id = %(site)s AND p.missing_since IS NULL AND p.publish
        ORDER BY equipment, p.object_name""",
        {"site": site, "interval": settings.polling.default_interval_s})
    if table.empty:
        return table.assign(status=pd.Series(dtype=str))
    never = table["time"].isna()
    bad = table["quality"].notna() & (table["quality"] != "good")
    stale = table["age_s"] > settings.ui.stale_after_intervals * table["interval_s"]
    table["status"] = np.select([never, bad, stale], ["no data", "bad", "stale"], "ok")
    return table


def zones(conn: psycopg.Connection, site: str, state: pd.DataFrame, rules: AlarmRules) -> pd.DataFrame:
    """Each zone's temperature against its setpoints: too warm, too cold, in band, stale or no reading."""
    by_id = state.set_index("point_id") if not state.empty else state
    rows = []
    for band in zone_bands(conn, site):
        temp = by_id.loc[band.temp] if band.temp in by_id.index else None
        cooling = _value(by_id, band.cooling)
        heating = _value(by_id, band.heating)
        row = {"zone": band.zone, "equipment": band.equipment, "temperature": None, "heating_sp": heating,
               "cooling_sp": cooling, "off_by": None, "age_s": None, "status": "no reading"}
        if temp is not None and pd.notna(temp["value"]) and (cooling is not None or heating is not None):
            seen = zone_observation(band, float(temp["value"]), temp["time"], temp["units"], cooling, heating,
                                    rules.deadband_k)
            above = float(temp["value"]) - cooling if cooling is not None else -np.inf
            below = heating - float(temp["value"]) if heating is not None else -np.inf
            row.update(temperature=float(temp["value"]), age_s=temp["age_s"],
                       off_by=max(above, below, 0.0))
            if temp["status"] == "stale":
                row["status"] = "stale"
            elif seen.out:
                row["status"] = "too warm" if above >= below else "too cold"
            else:
                row["status"] = "in band"
        rows.append(row)
    order = {"too warm": 0, "too cold": 0, "stale": 1, "no reading": 2, "in band": 3}
    table = pd.DataFrame(rows, columns=["zone", "equipment", "temperature", "heating_sp", "cooling_sp",
                                        "off_by", "age_s", "status"])
    if table.empty:
        return table
    return table.sort_values(["status", "zone"], key=lambda c: c.map(order) if c.name == "status" else c,
                             kind="stable").reset_index(drop=True)


def _value(by_id: pd.DataFrame, point_id: int | None) -> float | None:
    if point_id is None or point_id not in by_id.index:
        return None
    value = by_id.loc[point_id, "value"]
    return float(value) if pd.notna(value) else None


def devices(conn: psycopg.Connection, site: str, state: pd.DataFrame, agent: AgentState) -> pd.DataFrame:
    """Each device: points failing their latest poll, its last successful read (its points' newest
    reading), its latest error, the agent's backoff count, and a status: offline (every polled point
    failing), failing reads (some), stale (nothing fresh: the agent or the device is silent), ok."""
    table = frame(conn, "SELECT device_id, name, address FROM device WHERE site_id = %s"
                        " AND missing_since IS NULL ORDER BY device_id", (site,))
    per = (state.assign(polled=state["last_poll"].notna(), stale=state["status"] == "stale",
                        fresh=state["status"].isin(("ok", "bad")), failing=state["failing"].astype(bool))
           .groupby("device_id").agg(points=("point_id", "count"), polled=("polled", "sum"),
                                     failing=("failing", "sum"), stale=("stale", "sum"),
                                     fresh=("fresh", "sum"), last_read=("time", "max"),
                                     last_read_age_s=("age_s", "min")))
    failing = state[state["failing"].astype(bool)].sort_values("last_error_at")
    per["last_error"] = failing.groupby("device_id")["last_error"].last()
    out = table.merge(per, left_on="device_id", right_index=True, how="left")
    counts = ["points", "polled", "failing", "stale", "fresh"]
    out[counts] = out[counts].fillna(0).astype(int)
    errors = agent.health.get("device_errors") or {}
    out["backoffs"] = [(errors.get(str(d)) or {}).get("backoffs", 0) for d in out["device_id"]]
    out["status"] = np.select(
        [(out["polled"] > 0) & (out["failing"] == out["polled"]), out["failing"] > 0,
         (out["points"] > 0) & (out["fresh"] == 0)],
        ["offline", "failing reads", "stale"], "ok")
    order = {"offline": 0, "failing reads": 1, "stale": 2, "ok": 3}
    out = out.sort_values("status", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return out[["device_id", "name", "address", "status", "points", "failing", "stale", "last_read",
                "last_read_age_s", "last_error", "backoffs"]]


def building(conn: psycopg.Connection, site: str, settings: Settings, rules: AlarmRules | None = None
             ) -> BuildingHealth:
    agent = agent_state(conn, site)
    state = points(conn, site, settings)
    return BuildingHealth(site, agent, state, zones(conn, site, state, rules or settings.alarms),
                          devices(conn, site, state, agent), active_alarms(conn, [site]))


def equipment_in_alarm(alarms: pd.DataFrame) -> pd.DataFrame:
    """Active alarms per equipment, worst first (alarms about the site as a whole under '(site)')."""
    if alarms.empty:
        return pd.DataFrame(columns=["equipment", "alarms", "unacknowledged", "worst"])
    data = alarms.assign(equipment=alarms["equipment"].fillna("(site)"),
                         rank=alarms["severity"].map(SEVERITY_ORDER))
    grouped = (data.assign(unacked=data["acked_by"].isna()).groupby("equipment")
               .agg(alarms=("id", "count"), unacknowledged=("unacked", "sum"), rank=("rank", "min"))
               .reset_index())
    worst = {v: k for k, v in SEVERITY_ORDER.items()}
    grouped["worst"] = grouped["rank"].map(worst)
    return grouped.sort_values(["rank", "alarms"], ascending=[True, False]).drop(columns="rank")


# --- the Alarms page --------------------------------------------------------------------------------------

_ALARM_COLUMNS = """a.id, a.severity, a.raised_at, a.site_id, a.equipment,
    coalesce(p.dis, p.object_name) AS point, a.source, a.message, a.acked_by, a.acked_at, a.ack_comment,
    a.shelved_until, a.shelved_by, a.shelve_comment, a.resolved_at"""
_PRIORITY = "CASE a.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"


def active_alarms(conn: psycopg.Connection, sites: list[str]) -> pd.DataFrame:
    """Open alarms not shelved now (a shelving whose time is over no longer counts), by priority then
    newest first; the site's own and central-wide ones (site_id NULL)."""
    return frame(conn, f"""
        SELECT {_ALARM_COLUMNS} FROM alarm_state a
        LEFT JOIN point p ON p.site_id = a.site_id AND p.point_id = a.point_id
        WHERE a.resolved_at IS NULL AND (a.site_id IS NULL OR a.site_id = ANY(%s))
          AND (a.shelved_until IS NULL OR a.shelved_until <= clock_timestamp())
        ORDER BY {_PRIORITY}, a.raised_at DESC LIMIT 500""", (sites,))


def shelved_alarms(conn: psycopg.Connection, sites: list[str]) -> pd.DataFrame:
    return frame(conn, f"""
        SELECT {_ALARM_COLUMNS} FROM alarm_state a
        LEFT JOIN point p ON p.site_id = a.site_id AND p.point_id = a.point_id
        WHERE a.resolved_at IS NULL AND (a.site_id IS NULL OR a.site_id = ANY(%s))
          AND a.shelved_until > clock_timestamp()
        ORDER BY a.shelved_until""", (sites,))


def alarm_history(conn: psycopg.Connection, sites: list[str], limit: int = 300) -> pd.DataFrame:
    """Every alarm, newest first, cleared ones included."""
    return frame(conn, f"""
        SELECT {_ALARM_COLUMNS} FROM alarm_state a
        LEFT JOIN point p ON p.site_id = a.site_id AND p.point_id = a.point_id
        WHERE a.site_id IS NULL OR a.site_id = ANY(%s)
        ORDER BY a.raised_at DESC LIMIT %s""", (sites, limit))


def alarm_actions(conn: psycopg.Connection, sites: list[str], limit: int = 300) -> pd.DataFrame:
    """The audit trail: who acknowledged, shelved or put back which alarm, when and why."""
    return frame(conn, """
        SELECT x.at, x.alert_id, x.action, x.by_user, x.comment, x.until, a.equipment, a.message
        FROM alarm_actions x JOIN alerts a ON a.id = x.alert_id
        WHERE a.site_id IS NULL OR a.site_id = ANY(%s)
        ORDER BY x.at DESC, x.id DESC LIMIT %s""", (sites, limit))
