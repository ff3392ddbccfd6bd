"""The Equipment page's data: a site's equipment, each point of one sorted into what an operator reads
on an air handler (supply air, zone temperatures against their setpoints, valves and dampers, fans,
energy), and the last hours of those points.

Equipment is what discovery's tagging makes of a controller (`bacpipes.tagging.equip_label`: device `AHU-1`
-> `ahu_1`, the second segment of each point's topic), the name Live filters by and other pages link with
(`link`). Points are sorted by their Haystack-style tags (subject, qualifier, function, quantity), with
the object name's tokens for what the tags do not say (a supply fan's `SF-` points). Zones are the object
name's prefix before the first `-` (`AHU1_ZN3-ZN-T` in the EnergyPlus building, `AHU1-ZN-T` in the RC one),
as `bacpipes.zones` reads them.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import psycopg
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from bacpipes.readings import load_readings
from bacpipes.settings import Settings
from bacpipes.units import reading_text
from streamlit_app.queries import frame

PAGE = "equipment"  # the page's URL path (streamlit_app/app.py names it after views/equipment.py)
PAGE_FILE = Path(__file__).resolve().parent / "views" / "equipment.py"
SECTIONS = ("Supply air", "Zones", "Valves & dampers", "Fans", "Energy", "Other")
FAN_TOKENS = {"SF", "RF", "EF", "FAN"}
DAMPER_TOKENS = {"DMPR", "DPR", "DAMPER"}
VALVE_TOKENS = {"VLV", "VALVE"}


def link(equipment: str) -> str:
    """The Equipment page of `equipment` as a URL relative to the app (to paste or send: opened in a new
    tab it asks for the login, then shows that equipment). Within the app, `page_link` keeps the session."""
    return f"{PAGE}?equip={quote(equipment)}"


def page_link(equipment: str, label: str | None = None) -> None:
    """A link to the Equipment page of `equipment` that stays in this session (no new login), for Overview,
    Live and any other page. A page run on its own (AppTest) has no such page: there it is a plain link."""
    try:
        st.page_link(str(PAGE_FILE), label=label or equipment, icon=":material/hvac:",
                     query_params={"equip": equipment})
    except StreamlitPageNotFoundError:
        st.markdown(f"[{label or equipment}]({link(equipment)})")


def names(conn: psycopg.Connection, site: str) -> list[str]:
    """Every equipment of the site that has a present point, in name order."""
    return [e for (e,) in conn.execute(
        "SELECT DISTINCT split_part(topic, '/', 2) FROM point WHERE site_id = %s AND missing_since IS NULL"
        " ORDER BY 1", (site,))]


def _tokens(object_name: str | None) -> set[str]:
    return set(re.split(r"[-_ .]+", (object_name or "").upper()))


def section_of(object_name: str | None, tags: dict[str, Any]) -> str:
    """Which part of the page a point belongs to (one of SECTIONS)."""
    tokens = _tokens(object_name)
    subject, quantity = tags.get("subject"), tags.get("quantity")
    if subject == "discharge-air":
        return "Supply air"
    if subject == "zone-air" and quantity == "temp":
        return "Zones"
    if subject in ("valve", "damper") or tokens & (VALVE_TOKENS | DAMPER_TOKENS):
        return "Valves & dampers"
    if subject == "fan" or tokens & FAN_TOKENS:
        return "Fans"
    if quantity in ("power", "energy"):
        return "Energy"
    return "Other"


def zone_role(tags: dict[str, Any]) -> str:
    """'temperature', 'cooling setpoint' or 'heating setpoint' for a zone point."""
    if tags.get("function") == "sp":
        return f"{tags.get('qualifier', 'other')} setpoint"
    return "temperature"


def points(conn: psycopg.Connection, site: str, equipment: str) -> pd.DataFrame:
    """The equipment's present points with their latest value (`reading`: as text, with its unit or state
    name), each with its section (and, for zone temperatures and setpoints, its zone and role)."""
    table = frame(conn, """
        SELECT p.point_id, p.object_name, coalesce(p.dis, p.object_name) AS label, p.object_type, p.units,
               p.state_text, p.inactive_text, p.active_text, p.auto_tags || p.user_tags AS tags, s.value,
               s.quality, s.time,
               extract(epoch FROM now() - s.time) AS age_s
        FROM point p LEFT JOIN point_state s USING (site_id, point_id)
        WHERE p.site_id = %s AND split_part(p.topic, '/', 2) = %s AND p.missing_since IS NULL
        ORDER BY p.object_name""", (site, equipment))
    if table.empty:
        return table.assign(**{c: pd.Series(dtype=str) for c in ("section", "zone", "role")})
    table["reading"] = [reading_text(None if pd.isna(v) else float(v), u, t, st, inactive, active)
                        for v, u, t, st, inactive, active in zip(
                            table["value"], table["units"], table["object_type"], table["state_text"],
                            table["inactive_text"], table["active_text"], strict=True)]
    table["section"] = [section_of(name, tags or {})
                        for name, tags in zip(table["object_name"], table["tags"], strict=True)]
    zones = table["section"] == "Zones"
    table["zone"] = table["object_name"].fillna("").str.partition("-")[0].where(zones)
    table["role"] = table["tags"].map(lambda t: zone_role(t or {})).where(zones)
    return table


def zone_table(points: pd.DataFrame, deadband_k: float) -> pd.DataFrame:
    """One row per zone: its temperature, cooling and heating setpoints, and how far outside that band the
    temperature is (K; 0 inside it); its state in words judged with the alarms' deadband ([alarms])."""
    zones = points[points["section"] == "Zones"]
    wide = zones.pivot_table(index="zone", columns="role", values="value", aggfunc="first")
    for role in ("temperature", "cooling setpoint", "heating setpoint"):
        if role not in wide.columns:
            wide[role] = float("nan")
    wide = wide[["temperature", "cooling setpoint", "heating setpoint"]].astype(float)
    above = (wide["temperature"] - wide["cooling setpoint"]).clip(lower=0)
    below = (wide["heating setpoint"] - wide["temperature"]).clip(lower=0)
    wide["outside band (K)"] = above.fillna(0) + below.fillna(0)
    wide["state"] = [state(t, a, b, deadband_k)
                     for t, a, b in zip(wide["temperature"], above, below, strict=True)]
    return wide.reset_index()


def state(temperature: float, above: float, below: float, deadband_k: float) -> str:
    """A zone's temperature against its band in words; within `deadband_k` counts as in band (a reading a
    little above the setpoint is a thermostat's swing, not a fault: the alarms' rule, bacpipes.alarms)."""
    if pd.isna(temperature):
        return "no reading"
    if above > deadband_k:
        return f"{above:.1f} K above cooling setpoint"
    if below > deadband_k:
        return f"{below:.1f} K below heating setpoint"
    return "in band"


def recent(conn: psycopg.Connection, settings: Settings, site: str, point_ids: list[int], hours: float,
           now: datetime | None = None) -> pd.DataFrame:
    """The points' readings over the last `hours` (raw; hourly averages past `[ui] raw_max_days`), long:
    time, point_id, value."""
    if not point_ids:
        return pd.DataFrame(columns=["time", "point_id", "value"])
    end = now or datetime.now(settings.site.tz)
    start = end - timedelta(hours=hours)
    every = "1h" if hours > 24 * settings.ui.raw_max_days else None
    data = load_readings(point_ids, start, end, every=every, settings=settings, site_id=site, conn=conn)
    return data.select("time", "point_id", "value").to_pandas()
