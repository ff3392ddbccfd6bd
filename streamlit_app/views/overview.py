"""Overview: is every site's agent alive and reading, is replication keeping up, what needs a look."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from bacpipes.replication import is_central
from streamlit_app import queries
from streamlit_app.context import database, require_login, shown_errors, sites

st.title("Overview")
require_login(kiosk=True)
with shown_errors(), database() as conn:
    central = is_central(conn)
    known = sites(conn)
    agents = queries.agents(conn, known)
    st.subheader("Sites")
    online = int((agents["agent"] == "online").sum()) if not agents.empty else 0
    left, middle, right = st.columns(3)
    left.metric("Agents online", f"{online} / {len(known)}")
    rate = pd.to_numeric(agents["readings_per_s"]).fillna(0).sum() if not agents.empty else 0
    middle.metric("Readings published", f"{float(rate):.1f} /s", help="between the agents' last heartbeats")
    spool = pd.to_numeric(agents["spool_depth"]).fillna(0).sum() if not agents.empty else 0
    right.metric("Spooled, not yet on the broker", f"{int(spool)}")
    st.dataframe(agents, hide_index=True, column_config={
        "read_success": st.column_config.ProgressColumn("read success", format="percent", min_value=0,
                                                         max_value=1),
        "readings_per_s": st.column_config.NumberColumn("readings/s", format="%.1f"),
        "age_s": st.column_config.NumberColumn("seen (s ago)", format="%.0f"),
    })

    st.subheader("Replication")
    links = queries.replication(conn, central)
    if links.empty:
        st.caption("No replication set up" + ("" if central else " for this site (no slots)") + ".")
    else:
        st.dataframe(links, hide_index=True)

    st.subheader("Open alerts")
    alerts = queries.open_alerts(conn, known)
    if alerts.empty:
        st.success("No open alerts.")
    else:
        st.dataframe(alerts, hide_index=True)
