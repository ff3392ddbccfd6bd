"""Live: the latest value, quality and age of every point, refreshed on its own; stale and bad values
stand out.

Columns in the order operators read them (name, value with its unit or state text, status, age), the rest
after; narrow enough for a tablet (1024 px). The highlights are translucent, so the theme's own text colour
stays readable on them in light and dark mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from bacpipes.units import reading_text
from streamlit_app import queries
from streamlit_app.context import (
    current_site,
    database,
    kiosk_allowed,
    require_login,
    settings,
    shown_errors,
    user,
)
from streamlit_app.equipment import page_link

STALE, BAD = "background-color: rgba(255, 193, 7, 0.28)", "background-color: rgba(220, 53, 69, 0.3)"
# what is shown, first things first; the frame keeps the raw value and the rest for filters and tests
SHOWN = ("name", "reading", "status", "age_s", "equipment", "quality", "time", "object_name", "point_id",
         "last_error")


def status(table: pd.DataFrame, stale_after: float) -> pd.Series:
    bad = table["quality"].notna() & (table["quality"] != "good")
    stale = table["age_s"].isna() | (table["age_s"] > stale_after * table["interval_s"])
    return pd.Series(np.select([bad, stale], ["bad", "stale"], "ok"), index=table.index)


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The point's name as operators know it, and its value as text: state text, or number and unit."""
    out = table.copy()
    out["name"] = out["dis"].fillna(out["object_name"])
    out["reading"] = [
        reading_text(None if pd.isna(v) else float(v), u, t, s, i, a)
        for v, u, t, s, i, a in zip(out["value"], out["units"], out["object_type"], out["state_text"],
                                    out["inactive_text"], out["active_text"], strict=True)
    ]
    return out


def highlighted(view: pd.DataFrame) -> pd.DataFrame:
    colour = view["status"].map({"stale": STALE, "bad": BAD, "ok": ""})
    return pd.DataFrame({c: colour for c in view.columns}, index=view.index)


def filtered(table: pd.DataFrame, equipment: list[str], tag: str, text: str) -> pd.DataFrame:
    keep = pd.Series(True, index=table.index)
    if equipment:
        keep &= table["equipment"].isin(equipment)
    if tag.strip():
        key, _, value = tag.strip().partition("=")
        keep &= table["tags"].map(lambda t: key in (t or {}) and (not value or str(t[key]) == value))
    if text.strip():
        needle = text.strip().lower()
        keep &= (table["object_name"].fillna("").str.lower().str.contains(needle, regex=False)
                 | table["dis"].fillna("").str.lower().str.contains(needle, regex=False))
    return table[keep]


st.title("Live values")
require_login(kiosk=True)
config = settings()
equipment_names: list[str] = []
with shown_errors(), database() as conn:
    site = current_site(conn)
    equipment_names = queries.frame(conn, "SELECT DISTINCT split_part(topic, '/', 2) AS e FROM point"
                                          " WHERE site_id = %s ORDER BY 1", (site,))["e"].tolist()
left, middle, right = st.columns(3)
equipment = left.multiselect("Equipment", equipment_names)
for chosen in equipment:  # its page: supply air, zones against their setpoints, fans, energy
    page_link(chosen, f"{chosen}: equipment page")
tag = middle.text_input("Tag", placeholder="e.g. subject=zone-air or sp")
text = right.text_input("Search", placeholder="object name or description")


@st.fragment(run_every=config.ui.live_refresh_s)
def table() -> None:
    with shown_errors(), database() as conn:
        if user(conn) is None and not kiosk_allowed(conn):
            st.rerun()  # logged out or disabled since the page was drawn: the whole app again, its login
        data = queries.live(conn, current_site(conn), config.polling.default_interval_s)
        if data.empty:
            st.info("No points yet: run a discovery (Devices & points) and start the edge agent.")
            return
        data["status"] = status(data, config.ui.stale_after_intervals)
        shown = filtered(data, equipment, tag, text)
        counts = data["status"].value_counts()
        st.caption(f"{len(shown)} of {len(data)} points · {counts.get('stale', 0)} stale · "
                   f"{counts.get('bad', 0)} bad · refreshed every {config.ui.live_refresh_s:g} s")
        view = readable(shown).drop(columns=["tags", "state_text"])
        styled = view.style.apply(highlighted, axis=None)
        st.dataframe(styled, hide_index=True, width="stretch", column_order=SHOWN, column_config={
            "name": st.column_config.TextColumn("point", width="medium"),
            "reading": st.column_config.TextColumn("value"),  # sized to fit its longest text
            "status": st.column_config.TextColumn("status", width="small"),
            "age_s": st.column_config.NumberColumn("age (s)", format="%.0f", width="small"),
            "equipment": st.column_config.TextColumn("equipment", width="small"),
            "time": st.column_config.DatetimeColumn("time", format="HH:mm:ss"),
        })


table()
