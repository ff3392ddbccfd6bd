"""Overview: is the building healthy? Zones out of their band, devices offline, stale and bad points,
equipment in alarm first (streamlit_app/health.py); then the plumbing: every site's agent, replication,
open alerts.

Never a green "all fine" from old figures: when the agent is silent the page says so first, and the
agent's last figures are shown with their age, not as today's."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bacpipes.replication import is_central
from streamlit_app import health, queries
from streamlit_app.context import current_site, database, require_login, settings, shown_errors, sites
from streamlit_app.equipment import page_link


def age_text(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def agent_banner(agent: health.AgentState, site: str) -> None:
    if agent.at is None:  # a new site: nothing has gone wrong yet, but nothing is live either
        st.warning(f"No heartbeat from {site}'s edge agent yet: nothing below is live. Start the agent "
                 "(`bacpipes edge run`).")
    elif agent.silent:
        when = agent.at.astimezone(settings().site.tz)
        st.error(f"{site}'s edge agent is silent: last heard {age_text(agent.age_s)} ago "
                 f"({when:%Y-%m-%d %H:%M}, it reports every {agent.expected_every_s:.0f} s). Values below"
                 " are as of then, not now.")


def building_section(found: health.BuildingHealth) -> None:
    zones, devices, points = found.zones, found.devices, found.points
    out = found.count("zones", "status", ("too warm", "too cold"))
    offline = found.count("devices", "status", ("offline", "failing reads"))
    stale = found.count("points", "status", ("stale", "no data"))
    bad = found.count("points", "status", ("bad",))
    unacked = int(found.alarms["acked_by"].isna().sum()) if not found.alarms.empty else 0
    cols = st.columns(5)
    cols[0].metric("Zones out of band", f"{out} / {len(zones)}",
                   help="temperature beyond its cooling or heating setpoint (stale zones not counted)")
    cols[1].metric("Devices offline or failing", f"{offline} / {len(devices)}")
    cols[2].metric("Stale points", f"{stale} / {len(points)}", help="no fresh reading: older than "
                   f"{settings().ui.stale_after_intervals:g} poll intervals, or never read")
    cols[3].metric("Bad points", f"{bad}")
    cols[4].metric("Active alarms", f"{len(found.alarms)}", help=f"{unacked} not acknowledged (Alarms page)")
    if not found.problems:
        st.success("The building is healthy: every zone in band, every device answering, every point fresh, "
                   "no active alarm.")

    trouble = zones[zones["status"] != "in band"] if not zones.empty else zones
    if not trouble.empty:
        st.markdown("**Zones not in band**")
        st.dataframe(trouble, hide_index=True, column_config={
            "temperature": st.column_config.NumberColumn(format="%.1f"),
            "heating_sp": st.column_config.NumberColumn("heating sp", format="%.1f"),
            "cooling_sp": st.column_config.NumberColumn("cooling sp", format="%.1f"),
            "off_by": st.column_config.NumberColumn("off by (K)", format="%.1f"),
            "age_s": st.column_config.NumberColumn("reading age (s)", format="%.0f"),
        })
    elif not zones.empty:
        st.caption(f"All {len(zones)} zones in band.")
    sick = devices[devices["status"] != "ok"] if not devices.empty else devices
    if not sick.empty:
        st.markdown("**Devices not answering as they should**")
        st.dataframe(sick, hide_index=True, column_config={
            "last_read": st.column_config.DatetimeColumn("last good read"),
            "last_read_age_s": st.column_config.NumberColumn("(s ago)", format="%.0f"),
        })
    in_alarm = health.equipment_in_alarm(found.alarms)
    if not in_alarm.empty:
        st.markdown("**Equipment in alarm**")
        st.dataframe(in_alarm, hide_index=True)
    if stale or bad:
        st.markdown("**Stale and bad points by equipment**")
        unwell = points[points["status"] != "ok"]
        st.dataframe(pd.crosstab(unwell["equipment"], unwell["status"]).reset_index(), hide_index=True)
    look_at = sorted(({*trouble.get("equipment", [])} | {*in_alarm["equipment"]}) - {"(site)", ""})
    if look_at:
        st.markdown("**Open the equipment**")
        columns = st.columns(min(len(look_at), 6))
        for i, name in enumerate(look_at):
            with columns[i % len(columns)]:
                page_link(name)


def agents_section(agents: pd.DataFrame, known: list[str]) -> None:
    """The agents' own figures, only as current as their heartbeats: a silent agent's are shown apart,
    with their age, and left out of the totals."""
    st.subheader("Agents")
    live = agents[agents["agent"] == "online"] if not agents.empty else agents
    left, middle, right = st.columns(3)
    left.metric("Agents online", f"{len(live)} / {len(known)}")
    rate = pd.to_numeric(live["readings_per_s"]).fillna(0).sum() if not live.empty else None
    middle.metric("Readings published", f"{float(rate):.1f} /s" if rate is not None else "unknown",
                  help="between the online agents' last heartbeats")
    spool = pd.to_numeric(live["spool_depth"]).fillna(0).sum() if not live.empty else None
    right.metric("Spooled, not yet on the broker", f"{int(spool)}" if spool is not None else "unknown")
    if agents.empty:
        return
    table = agents.copy()
    silent = table["agent"] != "online"
    for row in table[silent & table["last_seen"].notna()].itertuples():
        st.caption(f"{row.site_id}: last figures, {age_text(row.age_s)} old (not current): "
                   f"{_figure(row.readings_per_s, '{:.1f} readings/s')}, "
                   f"{_figure(row.read_success, '{:.0%} reads ok')}, "
                   f"{_figure(row.spool_depth, '{:.0f} spooled')}.")
    table.loc[silent, ["read_success", "readings_per_s", "spool_depth", "devices_backing_off"]] = None
    st.dataframe(table, hide_index=True, column_config={
        "read_success": st.column_config.ProgressColumn("read success", format="percent", min_value=0,
                                                         max_value=1),
        "readings_per_s": st.column_config.NumberColumn("readings/s", format="%.1f"),
        "age_s": st.column_config.NumberColumn("seen (s ago)", format="%.0f"),
    })


def _figure(value: object, fmt: str) -> str:
    return "?" if value is None or pd.isna(value) else fmt.format(float(value))  # type: ignore[arg-type]


st.title("Overview")
require_login(kiosk=True)
with shown_errors(), database() as conn:
    central = is_central(conn)
    known = sites(conn)
    site = current_site(conn)
    found = health.building(conn, site, settings())
    agent_banner(found.agent, site)
    st.subheader(f"Building · {site}")
    building_section(found)

    agents_section(queries.agents(conn, known), known)

    st.subheader("Replication")
    links = queries.replication(conn, central)
    if links.empty:
        st.caption("No replication set up" + ("" if central else " for this site (no slots)") + ".")
    else:
        st.dataframe(links, hide_index=True)

    st.subheader("Open alerts")
    alerts = queries.open_alerts(conn, known)
    if alerts.empty:
        st.caption("No open alerts.")
    else:
        st.caption("Acknowledge and shelve them on the Alarms page.")
        st.dataframe(alerts, hide_index=True)
