"""Trends: chosen points over a range, raw for short ranges and hourly for long ones, with downloads."""

from __future__ import annotations

import io
from datetime import datetime, time, timedelta

import altair as alt
import streamlit as st

from streamlit_app import queries
from streamlit_app.context import current_site, database, require_login, settings, shown_errors

RANGES = {"Last 6 hours": timedelta(hours=6), "Last 24 hours": timedelta(days=1),
          "Last 7 days": timedelta(days=7), "Last 30 days": timedelta(days=30), "Custom": None}

st.title("Trends")
require_login()


def page() -> None:
    config = settings()
    tz = config.site.tz
    with database() as conn:
        site = current_site(conn)
        choices = queries.point_choices(conn, site)
        if choices.empty:
            st.info("No points yet: run a discovery first (Devices & points).")
            st.stop()
        names = choices["label"] + " (" + choices["point_id"].astype(str) + ")"
        labels = dict(zip(choices["point_id"], names, strict=True))
        chosen = st.multiselect("Points", list(labels), format_func=labels.get, max_selections=20,
                                key="trend_points")
        span = st.radio("Range", list(RANGES), horizontal=True, index=1, key="trend_range")
        end = datetime.now(tz)
        if RANGES[span] is None:
            picked = st.date_input("From / to", (end.date() - timedelta(days=7), end.date()),
                                   key="trend_dates")
            if len(picked) != 2:
                st.caption("Pick the last day of the range too.")
                st.stop()
            first, last = picked
            start = datetime.combine(first, time(), tz)
            end = datetime.combine(last, time(), tz) + timedelta(days=1)
        else:
            start = end - RANGES[span]
        if not chosen:
            st.caption("Pick one or more points.")
            st.stop()
        if start >= end:
            raise ValueError("the start of the range must be before its end")
        data, kind = queries.trend(conn, config, site, chosen, start, end)

    st.caption(f"{data.height:,} rows, {kind}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({tz.key})")
    if data.is_empty():
        st.info("No readings for these points in this range.")
        st.stop()
    shown = data.select("time", "point_id", "value").to_pandas()
    shown["point"] = shown["point_id"].map(labels)
    chart = alt.Chart(shown).mark_line().encode(
        x=alt.X("time:T", title=None), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("point:N", title=None),
        tooltip=["time:T", "point:N", "value:Q"],
    ).interactive()
    st.altair_chart(chart, width="stretch")

    csv, parquet = io.BytesIO(), io.BytesIO()
    data.write_csv(csv)
    data.write_parquet(parquet)
    left, right = st.columns(2)
    name = f"{site}-{start:%Y%m%d}-{end:%Y%m%d}"
    left.download_button("Download CSV", csv.getvalue(), f"{name}.csv", "text/csv")
    right.download_button("Download Parquet", parquet.getvalue(), f"{name}.parquet",
                          "application/octet-stream")


with shown_errors():
    page()
