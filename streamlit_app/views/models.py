"""Models: the registry with its metrics and each version's card (models.card: training data, features,
error on held-back days, the families tried, the closed-loop KPIs it achieved, where it runs), what runs at
each site (shadow or active), the actions that change that (operators, on central where the registry is),
and shadow predictions against what happened.

A card shows every part, saying "not measured" where the model has none, so a missing figure is seen.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import altair as alt
import pandas as pd
import psycopg
import streamlit as st

from bacpipes.zones import find_zones
from central.registry import MODES, deploy, rollback
from models.card import ModelCard, figure
from streamlit_app import queries
from streamlit_app.context import (
    act_as_operator,
    current_site,
    database,
    needs_operator,
    require_login,
    settings,
    shown_errors,
    sites,
)


def actions(conn: psycopg.Connection, registry: pd.DataFrame, site: str, name: str) -> None:
    with st.form("deploy"):
        left, middle, right = st.columns(3)
        model = left.selectbox("Model", sorted(registry["name"].unique()))
        version = middle.selectbox("Version", registry.loc[registry["name"] == model, "version"].tolist())
        mode = right.selectbox("Mode", MODES)
        reason = st.text_input("Reason", placeholder="why (kept with the deployment)")
        if st.form_submit_button(f"Deploy to {site}"):
            name = act_as_operator(conn)
            deploy(conn, site, model, version, mode, f"ui:{name}", reason.strip() or None)
            st.success(f"{model}@{version} deployed to {site} in {mode} mode.")
    model = st.selectbox("Roll back", sorted(registry["name"].unique()), key="rollback_model")
    if st.button(f"Roll {model} back to the previous version at {site}"):
        name = act_as_operator(conn)
        previous = rollback(conn, site, model, f"ui:{name}", "rolled back in the app")
        st.success(f"{model} at {site} rolled back to {previous}.")


def _plain(text: str) -> str:
    """Names such as zone_temp_next as text, not markdown emphasis."""
    return text.replace("\\", "\\\\").replace("_", "\\_").replace("*", "\\*")


def _table(rows: list[dict], index: str | list[str]) -> None:
    """A static table of figures as the card prints them, "not measured" in the cells that have none."""
    table = pd.DataFrame(rows).set_index(index)
    st.table(table.map(lambda v: figure(None if pd.isna(v) else v) if not isinstance(v, str) else v))


def model_card(name: str, version: str, card: ModelCard, where: list[tuple[str, str]], first: bool) -> None:
    running = "; ".join(f"{mode} at {site}" for site, mode in where) or "not deployed"
    with st.expander(f"{name}@{version} · {running}", expanded=first):
        st.markdown("\n".join(f"- {_plain(line)}" for line in card.summary()))
        facts = [*card.facts(), ("Mode per site", running)]
        st.table(pd.DataFrame(facts, columns=["", "card"]).set_index(""))
        if card.multistep_mae:
            st.caption("Multi-step error on held-back days (mean absolute error)")
            _table(card.multistep_table(), "steps ahead")
        if card.candidates:
            st.caption("Model families tried (mean absolute error on held-back days)")
            _table(card.candidates_table(), ["family", "steps ahead"])
        if card.closed_loop:
            st.caption("Closed-loop KPIs per controller")
            _table(card.closed_loop.table(), "controller")


def cards(conn: psycopg.Connection) -> None:
    where = queries.running(conn, sites(conn))
    for i, (name, version, card) in enumerate(queries.model_cards(conn)):
        model_card(name, version, card, where.get((name, version), []), first=i == 0)


def shadow(conn: psycopg.Connection, site: str) -> None:
    ml = settings().ml
    zones = find_zones(conn, site)
    since = datetime.now(settings().site.tz) - timedelta(days=7)
    table = queries.shadow_vs_actual(conn, site, {z.setpoint: z.points["zone_temp"] for z in zones}, since,
                                     timedelta(seconds=ml.interval_s))
    if table.empty:
        st.caption("No predictions logged in the last 7 days.")
        return
    made = table.dropna(subset=["predicted_zone_temp", "actual_zone_temp"])
    if not made.empty:
        error = (made["predicted_zone_temp"] - made["actual_zone_temp"]).abs().mean()
        st.metric("Mean absolute error of the predicted zone temperature", f"{error:.2f} K")
        long = made.melt(id_vars=["at", "setpoint_point"], var_name="series", value_name="°C",
                         value_vars=["predicted_zone_temp", "actual_zone_temp"])
        st.altair_chart(alt.Chart(long).mark_line().encode(
            x=alt.X("at:T", title=None), y=alt.Y("°C:Q", scale=alt.Scale(zero=False)), color="series:N",
            strokeDash="setpoint_point:N").interactive(), width="stretch")
    st.dataframe(table.tail(200), hide_index=True)


def page() -> None:
    with database() as conn:
        site = current_site(conn)
        st.subheader("Registry")
        registry = queries.registry(conn)
        if registry.empty:
            st.caption("No models registered here (the registry lives on central; a site only sees its "
                       "deployments).")
        else:
            st.dataframe(registry, hide_index=True)
            st.subheader("Model cards")
            cards(conn)
        st.subheader("Deployments")
        history = queries.deployments(conn, sites(conn))
        if history.empty:
            st.caption("Nothing deployed yet.")
        else:
            current = history.sort_values("created_at").groupby(["site_id", "name"]).tail(1)
            st.markdown("Running now")
            st.dataframe(current, hide_index=True)
            with st.expander("History"):
                st.dataframe(history, hide_index=True)
        if not registry.empty and (name := needs_operator("deploy, switch or roll back models", conn)):
            actions(conn, registry, site, name)
        st.subheader("Shadow predictions against what happened")
        shadow(conn, site)


st.title("Models")
require_login()
with shown_errors():
    page()
