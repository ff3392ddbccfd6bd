"""Equipment: one air handler (or whatever discovery tagged as equipment) as an operator reads it: supply
air, its zones' temperatures against their setpoints, valves and dampers, fans and energy, each with its
present values and a small trend of the last hours.

The equipment is in the URL (`equipment?equip=ahu_1`, `streamlit_app.equipment.link`), so Overview, Live
and a colleague's message can open this page on it.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from bacpipes.units import symbol
from streamlit_app import equipment
from streamlit_app.context import current_site, database, require_login, settings, shown_errors

RANGES = {"Last 6 hours": 6.0, "Last 24 hours": 24.0, "Last 3 days": 72.0}
CHART_HEIGHT = 260
MAX_LINKS = 8


def choose(names: list[str]) -> str:
    """The equipment in the URL if the site has it, else the first; the choice goes back into the URL."""
    wanted = st.query_params.get("equip")
    if wanted and wanted not in names:
        st.warning(f"No equipment named {wanted!r} here; showing {names[0]}.")
    index = names.index(wanted) if wanted in names else 0
    chosen = st.selectbox("Equipment", names, index=index)
    st.query_params["equip"] = chosen
    return chosen


def small_trend(data: pd.DataFrame, y_title: str, color: str = "label") -> alt.Chart:
    return alt.Chart(data).mark_line().encode(
        x=alt.X("time:T", title=None),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
        color=alt.Color(f"{color}:N", title=None, legend=alt.Legend(orient="bottom", direction="vertical",
                                                                      labelLimit=0)),
        tooltip=["time:T", f"{color}:N", alt.Tooltip("value:Q", format=".2f")])


def values_table(rows: pd.DataFrame) -> None:
    st.dataframe(rows[["label", "reading", "quality", "age_s", "object_name", "point_id"]], hide_index=True,
                 width="stretch", column_config={
                     "label": st.column_config.TextColumn("point", width="large"),
                     "reading": st.column_config.TextColumn("value"),
                     "age_s": st.column_config.NumberColumn("age (s)", format="%.0f")})


def zones(rows: pd.DataFrame, history: pd.DataFrame) -> None:
    st.subheader("Zones")
    table = equipment.zone_table(rows, settings().alarms.deadband_k)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(c, format="%.1f")
        for c in ("temperature", "cooling setpoint", "heating setpoint", "outside band (K)")})
    history = history.merge(rows[["point_id", "zone", "role"]], on="point_id")
    columns = st.columns(3)
    for i, (zone, data) in enumerate(history.groupby("zone", sort=True)):
        with columns[i % 3]:
            st.caption(f"**{zone}**")
            st.altair_chart(small_trend(data, "°C", color="role"), width="stretch", height=CHART_HEIGHT)


def section(name: str, rows: pd.DataFrame, history: pd.DataFrame) -> None:
    st.subheader(name)
    values_table(rows)
    history = history.merge(rows[["point_id", "label", "units"]], on="point_id")
    groups = list(history.groupby(history["units"].fillna(""), sort=True))
    columns = st.columns(max(min(len(groups), 3), 1))
    for i, (units, data) in enumerate(groups):
        with columns[i % len(columns)]:
            st.caption(f"**{name}** ({symbol(units) or 'no unit'})")
            st.altair_chart(small_trend(data, symbol(units)), width="stretch", height=CHART_HEIGHT)


def page() -> None:
    config = settings()
    with database() as conn:
        site = current_site(conn)
        names = equipment.names(conn, site)
        if not names:
            st.info("No equipment yet: run a discovery (Devices & points).")
            return
        left, right = st.columns([2, 3])
        with left:
            chosen = choose(names)
        hours = RANGES[right.radio("Range", list(RANGES), index=1, horizontal=True, key="equip_range")]
        rows = equipment.points(conn, site, chosen)
        history = equipment.recent(conn, config, site, rows["point_id"].tolist(), hours)
    # the site's wall clock on the axes (a browser draws an aware time in its own zone)
    history["time"] = pd.to_datetime(history["time"]).dt.tz_localize(None)
    st.caption(f"{chosen} at {site}: {len(rows)} points · trends of the {hours:g} hours up to now "
               f"({config.site.timezone} time) · link: `{equipment.link(chosen)}`")
    others = [n for n in names if n != chosen][:MAX_LINKS]
    if others:  # the rest of the site, a click away (as Overview and Live link here)
        label, *columns = st.columns(len(others) + 1, vertical_alignment="center")
        label.caption("Other equipment here:")
        for column, name in zip(columns, others, strict=True):
            with column:
                equipment.page_link(name)
    for name in equipment.SECTIONS:
        part = rows[rows["section"] == name]
        if part.empty:
            continue
        if name == "Zones":
            zones(part, history)
        else:
            section(name, part, history)


st.title("Equipment")
require_login()
with shown_errors():
    page()
