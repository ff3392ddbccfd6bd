"""Devices & points: what discovery found, a new discovery, and the operator's point settings (publish,
interval, QoS, Haystack tags, write limits) for one point or many at once, with the MQTT topic each
point would publish on shown before anything is saved.

Points are edited on the site's own app: central's copy is replicated from the site and would be
overwritten, so on central this page only reads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import streamlit as st

from bacpipes.points import WRITE_LIMITS, parse_tags, update_points
from bacpipes.replication import is_central
from bacpipes.units import symbol
from streamlit_app import queries
from streamlit_app.context import (
    act_as_operator,
    current_site,
    database,
    operator,
    require_login,
    settings,
    shown_errors,
)

LEAVE = "(leave)"


def discovery() -> None:
    """`bacpipes edge discover` with the app's settings, in its own process (it owns a BACnet port)."""
    if "discovery" in st.session_state:
        ok, text = st.session_state.pop("discovery")
        (st.success if ok else st.error)(text)
    if st.button("Run a discovery now", help="Who-Is to the configured targets; takes a few seconds"):
        act_as_operator()
        config = os.environ.get("BACPIPES_CONFIG")
        command = [sys.executable, "-m", "bacpipes.cli", "edge", "discover"] + (
            ["--config", config] if config else [])
        with st.spinner("Discovering…"):
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        text = (done.stdout + done.stderr).strip()[-2000:] or f"discovery ended with code {done.returncode}"
        st.session_state["discovery"] = (done.returncode == 0, text)
        st.rerun()  # the tables above show what it found


def edit_form(site: str, table: pd.DataFrame) -> None:
    """One form for one point or all the filtered ones: Preview shows what would change, Save does it."""
    names = table["object_name"].fillna("?") + " (" + table["point_id"].astype(str) + ")"
    labels = dict(zip(table["point_id"], names, strict=True))
    every = st.checkbox(f"Edit all {len(table)} points listed", key="edit_all")
    chosen = list(labels) if every else st.multiselect("Points to edit", list(labels), format_func=labels.get,
                                                       key="edit_points")
    with st.form("edit"):
        left, middle, right = st.columns(3)
        publish = left.selectbox("Publish", [LEAVE, "on", "off"])
        interval = middle.number_input("Interval (s)", min_value=0.0, value=0.0, help="0 leaves it as is")
        qos = right.selectbox("QoS", [LEAVE, 0, 1, 2])
        tags = st.text_input("Tags", placeholder="zone=north, floor=3 (key= removes a tag of yours)")
        limit_inputs = st.columns(len(WRITE_LIMITS))
        limits = {c: box.text_input(c, placeholder="number or none") for c, box in
                  zip(WRITE_LIMITS, limit_inputs, strict=True)}
        preview = st.form_submit_button("Preview")
        save = st.form_submit_button("Save", type="primary")
    if not (preview or save):
        return
    if not chosen:
        raise ValueError("choose the points to edit first")
    tag_edits = parse_tags([t for t in (p.strip() for p in tags.split(",")) if t])
    with database() as conn:
        topics = queries.preview_topics(conn, site, [int(p) for p in chosen], tag_edits)
    moved = (topics["topic now"] != topics["topic after"]).sum()
    st.markdown(f"**{len(chosen)} point(s)**, {moved} would publish on a new topic")
    st.dataframe(topics, hide_index=True)
    if save:
        act_as_operator()
        count = update_points(
            settings(), point_ids=[int(p) for p in chosen], publish=None if publish == LEAVE else publish,
            interval_s=interval or None, qos=None if qos == LEAVE else int(qos),
            tags=[f"{k}={v or ''}" for k, v in tag_edits.items()] or None,
            limits={c: text for c, text in limits.items() if text.strip()},
        )
        st.success(f"Saved {count} point(s).")


def page() -> None:
    with database() as conn:
        site = current_site(conn)
        central = is_central(conn)
        devices = queries.devices(conn, site)
        table = queries.points(conn, site)
    st.subheader("Devices")
    if devices.empty:
        st.info("No devices yet.")
    else:
        st.dataframe(devices, hide_index=True)
    may_edit = not central and operator() is not None
    if may_edit:
        discovery()
    st.subheader("Points")
    if table.empty:
        return
    table.insert(table.columns.get_loc("units") + 1, "unit", table["units"].map(symbol))  # °C, kW, ...
    search = st.text_input("Filter points", placeholder="object name contains…", key="points_filter")
    if search.strip():
        table = table[table["object_name"].fillna("").str.contains(search.strip(), case=False, regex=False)]
    st.dataframe(table, hide_index=True)
    if central:
        st.caption("Central's copy of the points is replicated from the site: edit them on the site.")
    elif not may_edit:
        st.info("Log in as an operator (sidebar) to run a discovery or edit points.")
    elif not table.empty:
        st.subheader("Edit")
        edit_form(site, table)


st.title("Devices & points")
require_login()
with shown_errors():
    page()
