"""Alarms: the active alarms by priority and time, with the point and equipment they are about; an operator
acknowledges one with a comment, shelves one for a chosen time (it comes back by itself) or puts it back;
shelved alarms, the history and the audit trail of every action below. Viewers see everything and act on
nothing. Alarms come from the platform's rules and flows and from points out of band (bacpipes/alarms.py)."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from bacpipes.alarms import acknowledge, shelve, unshelve
from streamlit_app import health
from streamlit_app.context import (
    act_as_operator,
    current_site,
    database,
    needs_operator,
    require_login,
    settings,
    shown_errors,
)

SHELVE_FOR = {"15 min": timedelta(minutes=15), "1 h": timedelta(hours=1), "4 h": timedelta(hours=4),
              "8 h": timedelta(hours=8), "24 h": timedelta(days=1), "3 days": timedelta(days=3)}
# what an operator reads first, at tablet width: priority, when, where, what; the rest to the right
ORDER = ["severity", "raised_at", "equipment", "message", "acked_by", "ack_comment", "shelved_until",
         "resolved_at", "point", "acked_at", "shelved_by", "shelve_comment", "source", "site_id", "id"]
COLUMNS = {
    "raised_at": st.column_config.DatetimeColumn("raised", format="YYYY-MM-DD HH:mm"),
    "acked_at": st.column_config.DatetimeColumn("acknowledged", format="YYYY-MM-DD HH:mm"),
    "shelved_until": st.column_config.DatetimeColumn("shelved until", format="YYYY-MM-DD HH:mm"),
    "resolved_at": st.column_config.DatetimeColumn("cleared", format="YYYY-MM-DD HH:mm"),
    "acked_by": st.column_config.TextColumn("acknowledged by"),
    "ack_comment": st.column_config.TextColumn("comment"),
}


def label(alarms: pd.DataFrame):  # type: ignore[no-untyped-def]
    """How an alarm is named in the pickers: number, priority, where, what."""
    names = {row.id: f"#{row.id} [{row.severity}] {row.equipment or row.site_id or 'central'}: {row.message}"
             for row in alarms.itertuples()}
    return lambda alarm_id: names.get(alarm_id, f"#{alarm_id}")


def act_on_active(active: pd.DataFrame) -> None:
    """The operator's form: acknowledge or shelve one active alarm, with a comment."""
    with st.form("alarm_action", clear_on_submit=True):
        alarm = st.selectbox("Alarm", active["id"].tolist(), format_func=label(active))
        comment = st.text_input("Comment", placeholder="what you found or are doing (kept with your name)")
        period = st.selectbox("Shelve for", list(SHELVE_FOR), index=1)
        ack, shelf = st.columns(2)
        acked = ack.form_submit_button("Acknowledge")
        shelved = shelf.form_submit_button("Shelve")
    if not (acked or shelved) or alarm is None:
        return
    with database() as conn:
        by = f"ui:{act_as_operator(conn)}"
        if acked:
            acknowledge(conn, int(alarm), by, comment)
            done = f"Alarm #{alarm} acknowledged."
        else:
            until = shelve(conn, int(alarm), by, comment, SHELVE_FOR[period]).astimezone(settings().site.tz)
            done = f"Alarm #{alarm} shelved until {until:%Y-%m-%d %H:%M}: it comes back by itself then."
    st.session_state["alarm_done"] = done
    st.rerun()


def act_on_shelved(shelved: pd.DataFrame) -> None:
    with st.form("alarm_unshelve", clear_on_submit=True):
        alarm = st.selectbox("Shelved alarm", shelved["id"].tolist(), format_func=label(shelved))
        comment = st.text_input("Why put it back", key="unshelve_comment", placeholder="kept with your name")
        back = st.form_submit_button("Put back")
    if not back or alarm is None:
        return
    with database() as conn:
        unshelve(conn, int(alarm), f"ui:{act_as_operator(conn)}", comment)
    st.session_state["alarm_done"] = f"Alarm #{alarm} is back on the active list."
    st.rerun()


st.title("Alarms")
require_login()
if done := st.session_state.pop("alarm_done", None):
    st.success(done)
with shown_errors(), database() as conn:
    site = current_site(conn)
    active = health.active_alarms(conn, [site])
    shelved = health.shelved_alarms(conn, [site])
    history = health.alarm_history(conn, [site])
    trail = health.alarm_actions(conn, [site])
    operator = needs_operator("acknowledge or shelve alarms", conn)

with shown_errors():
    left, middle, right = st.columns(3)
    left.metric("Active", len(active))
    middle.metric("Not acknowledged", int(active["acked_by"].isna().sum()) if not active.empty else 0)
    right.metric("Shelved", len(shelved))

    st.subheader("Active")
    if active.empty:
        st.caption(f"No active alarm at {site}.")
    else:
        st.dataframe(active, hide_index=True, column_config=COLUMNS, column_order=[
            c for c in ORDER if c not in ("resolved_at", "shelved_until", "shelved_by", "shelve_comment")])
        if operator:
            act_on_active(active)

    st.subheader("Shelved")
    if shelved.empty:
        st.caption("Nothing shelved.")
    else:
        st.dataframe(shelved, hide_index=True, column_config=COLUMNS,
                     column_order=["shelved_until", "shelved_by", "shelve_comment", *ORDER[:4], "id"])
        if operator:
            act_on_shelved(shelved)

    st.subheader("History")
    st.dataframe(history, hide_index=True, column_config=COLUMNS,
                 column_order=["severity", "raised_at", "resolved_at", *ORDER[2:7], *ORDER[8:]])
    st.markdown("**Who did what** (acknowledgements and shelving, newest first)")
    if trail.empty:
        st.caption("No action on any alarm yet.")
    else:
        st.dataframe(trail, hide_index=True, column_config={
            "at": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
            "until": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
