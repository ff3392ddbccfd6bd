"""Trends: chosen points over a range, raw for short ranges and hourly for long ones, with downloads.

Readable and shareable: one panel per unit, each with its own y axis titled with the unit's symbol (kW and
°C never share a scale); times on the axis and in the tooltips are the site's, whatever the browser's zone
(the chart is given the site's wall-clock times on a UTC scale, so the browser cannot convert them); the
legend is under the chart with names uncut; the selection lives in the URL (`?points=3,7&range=24h`, or
`&from=YYYY-MM-DD&to=YYYY-MM-DD`), so a copied link reproduces the view; and each user keeps named trend sets.
"""

from __future__ import annotations

import io
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import polars as pl
import streamlit as st

from bacpipes.errors import UserError
from bacpipes.units import BINARY_TYPES, MULTI_STATE_TYPES, symbol
from streamlit_app import queries
from streamlit_app.context import current_site, database, require_login, settings, shown_errors, user

RANGES = {"Last 6 hours": timedelta(hours=6), "Last 24 hours": timedelta(days=1),
          "Last 7 days": timedelta(days=7), "Last 30 days": timedelta(days=30), "Custom": None}
# the range as the URL says it
CODES = {"Last 6 hours": "6h", "Last 24 hours": "24h", "Last 7 days": "7d", "Last 30 days": "30d",
         "Custom": "custom"}
SPANS = {code: span for span, code in CODES.items()}
MAX_POINTS = 20

st.title("Trends")
require_login()


# --- the selection: URL, saved sets, widgets ------------------------------------------------------------

def from_url(known: set[int]) -> None:
    """Once per session: the URL's points and range into the widgets (a shared link reproduces a view).
    What the URL names but this site does not have is left out and said."""
    if st.session_state.get("trend_url_read"):
        return
    st.session_state["trend_url_read"] = True
    params = st.query_params
    if "points" in params:
        asked = [int(p) for p in params["points"].split(",") if p.strip().isdigit()]
        st.session_state["trend_points"] = [p for p in asked if p in known][:MAX_POINTS]
        if len(st.session_state["trend_points"]) < len(asked):
            st.session_state["trend_note"] = "Some points in the link are not at this site: left out."
    span = SPANS.get(params.get("range", ""))
    if span:
        st.session_state["trend_range"] = span
    days = _days(params.get("from"), params.get("to"))
    if days:
        st.session_state["trend_range"] = "Custom"
        st.session_state["trend_dates"] = days


def _days(first: str | None, last: str | None) -> tuple[date, date] | None:
    try:
        days = (date.fromisoformat(first or ""), date.fromisoformat(last or ""))
    except ValueError:
        return None
    return days if days[0] <= days[1] else None


def to_url(points: list[int], span: str, days: tuple[date, date] | None) -> None:
    """The selection as the URL's query (only what changed is written: no needless history entries)."""
    wanted = {"points": ",".join(str(p) for p in points), "range": CODES[span]}
    if span == "Custom" and days:
        wanted |= {"from": days[0].isoformat(), "to": days[1].isoformat()}
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def load_set(row: dict) -> None:
    """A saved set into the widgets (an on_click callback: it runs before the widgets are drawn)."""
    st.session_state["trend_points"] = list(row["point_ids"])
    if isinstance(row["span"], str) and row["span"] in RANGES:
        st.session_state["trend_range"] = row["span"]
    else:
        st.session_state["trend_range"] = "Custom"
        st.session_state["trend_dates"] = (row["first_day"], row["last_day"])


def saved_sets(site: str, username: str, known: set[int], chosen: list[int], span: str,
               days: tuple[date, date] | None) -> None:
    """The user's own trend sets: load or delete one, save the view on screen under a name."""
    with st.expander("Saved trend sets"), database() as conn:
        sets = queries.trend_sets(conn, username, site)
        if "trend_set_note" in st.session_state:
            st.success(st.session_state.pop("trend_set_note"))
        if sets.empty:
            st.caption("None yet: pick points and a range, name them below and save.")
        else:
            st.dataframe(sets.assign(points=sets["point_ids"].map(len),
                                     range=sets["span"].fillna(sets["first_day"].astype(str) + " to "
                                                               + sets["last_day"].astype(str)))
                         [["name", "points", "range", "saved_at"]], hide_index=True)
            rows = {r["name"]: r for r in sets.to_dict("records")}
            pick, load, delete = st.columns([3, 1, 1], vertical_alignment="bottom")
            name = pick.selectbox("Trend set", list(rows), key="trend_set_pick")
            row = dict(rows[name], point_ids=[p for p in rows[name]["point_ids"] if p in known])
            load.button("Load", on_click=load_set, args=(row,), key="trend_set_load")
            if delete.button("Delete", key="trend_set_delete"):
                queries.delete_trend_set(conn, username, site, name)
                st.session_state["trend_set_note"] = f"Deleted '{name}'."
                st.rerun()
        label, save = st.columns([4, 1], vertical_alignment="bottom")
        new_name = label.text_input("Save this view as", key="trend_set_name", max_chars=80)
        if save.button("Save", key="trend_set_save"):
            if not chosen:
                raise UserError("Pick the points to save first.")
            queries.save_trend_set(conn, username, site, new_name, chosen,
                                   None if span == "Custom" else span, days if span == "Custom" else None)
            st.session_state["trend_set_note"] = f"Saved '{new_name.strip()}'."
            st.rerun()


def range_of(span: str, tz: ZoneInfo) -> tuple[datetime, datetime, tuple[date, date] | None]:
    end = datetime.now(tz)
    if RANGES[span] is not None:
        return end - RANGES[span], end, None
    st.session_state.setdefault("trend_dates", (end.date() - timedelta(days=7), end.date()))
    picked = st.date_input("From / to", key="trend_dates")
    if len(picked) != 2:
        st.caption("Pick the last day of the range too.")
        st.stop()
    first, last = picked
    return datetime.combine(first, time(), tz), datetime.combine(last, time(), tz) + timedelta(days=1), \
        (first, last)


# --- the chart ------------------------------------------------------------------------------------------

def unit_title(units: str | None, object_type: str | None) -> str:
    """A panel's axis title: the unit's symbol; state points share a 'state' axis."""
    if object_type in MULTI_STATE_TYPES or object_type in BINARY_TYPES:
        return "state"
    return symbol(units) or "no unit"


def site_times(data: pl.DataFrame, choices: pd.DataFrame, labels: dict[int, str], tz: ZoneInfo
               ) -> pd.DataFrame:
    """The readings with the point's name and axis, and the time as the site's wall clock labelled UTC:
    on a UTC scale the browser shows exactly these hours, whatever its own zone."""
    shown = data.select("time", "point_id", "value").to_pandas()
    info = choices.set_index("point_id")
    local = pd.to_datetime(shown["time"], utc=True).dt.tz_convert(tz)
    shown["time"] = local.dt.tz_localize(None).dt.tz_localize("UTC")
    shown["at"] = local.dt.strftime("%Y-%m-%d %H:%M %Z")
    shown["point"] = shown["point_id"].map(labels)
    shown["axis"] = [unit_title(info.at[p, "units"], info.at[p, "object_type"]) for p in shown["point_id"]]
    return shown


def trend_chart(shown: pd.DataFrame, tz: ZoneInfo) -> alt.VConcatChart:
    """One panel per unit, stacked on one time axis, one legend for every point (names never cut)."""
    names = sorted(shown["point"].unique())
    color = alt.Color("point:N", scale=alt.Scale(domain=names), sort=names,
                      legend=alt.Legend(title=None, orient="bottom", columns=2, labelLimit=0, symbolLimit=0))

    def x(titled: bool) -> alt.X:  # the time axis is titled once, at the foot
        return alt.X("time:T", title=f"time ({tz.key})" if titled else None, scale=alt.Scale(type="utc"),
                     axis=alt.Axis(format="%d %b %H:%M", labelOverlap=True))

    tooltip = [alt.Tooltip("at:N", title=f"time ({tz.key})"), alt.Tooltip("point:N"),
               alt.Tooltip("value:Q", format=",.2f"), alt.Tooltip("axis:N", title="unit")]
    groups = list(shown.groupby("axis", sort=True))
    panels = [
        alt.Chart(part).mark_line().encode(
            x=x(n == len(groups) - 1),
            y=alt.Y("value:Q", title=axis, scale=alt.Scale(zero=False)), color=color, tooltip=tooltip,
        ).properties(height=220, width="container")
        for n, (axis, part) in enumerate(groups)
    ]
    # zoom and pan in time on the first panel: the time scale is shared, so every panel follows
    panels[0] = panels[0].add_params(alt.selection_interval(bind="scales", encodings=["x"], name="zoom"))
    return alt.vconcat(*panels).resolve_scale(x="shared", color="shared")


def page() -> None:
    config = settings()
    tz = config.site.tz
    with database() as conn:
        site = current_site(conn)
        username = (user(conn) or {}).get("name", "")
        choices = queries.point_choices(conn, site)
    if choices.empty:
        st.info("No points yet: run a discovery first (Devices & points).")
        st.stop()
    names = choices["label"] + " (" + choices["point_id"].astype(str) + ")"
    labels = dict(zip(choices["point_id"], names, strict=True))
    from_url(set(labels))
    if "trend_note" in st.session_state:
        st.warning(st.session_state.pop("trend_note"))
    chosen = st.multiselect("Points", list(labels), format_func=labels.get, max_selections=MAX_POINTS,
                            key="trend_points")
    st.session_state.setdefault("trend_range", "Last 24 hours")
    span = st.radio("Range", list(RANGES), horizontal=True, key="trend_range")
    start, end, days = range_of(span, tz)
    to_url(chosen, span, days)
    saved_sets(site, username, set(labels), chosen, span, days)
    if not chosen:
        st.caption("Pick one or more points.")
        st.stop()
    if start >= end:
        raise ValueError("the start of the range must be before its end")
    with database() as conn:
        data, kind = queries.trend(conn, config, site, chosen, start, end)

    st.caption(f"{data.height:,} rows, {kind}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} ({tz.key})")
    if data.is_empty():
        st.info("No readings for these points in this range.")
        st.stop()
    st.altair_chart(trend_chart(site_times(data, choices, labels, tz), tz), width="stretch")

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
