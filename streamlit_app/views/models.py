"""Models: the registry with its metrics and each version's card (models.card: training data, features,
error on held-back days, the families tried, the closed-loop KPIs it achieved, where it runs), what runs at
each site (shadow or active), the actions that change that (operators, on central where the registry is),
and shadow predictions against what happened.

Deploy and roll back are careful changes: the operator gives a reason, reads what will change (and what runs
now), and confirms; the reason is kept with the deployment row, nothing is written before the confirmation,
and the page is drawn again at once so "Running now" shows the new state.

A card shows every part, saying "not measured" where the model has none, so a missing figure is seen.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import altair as alt
import pandas as pd
import psycopg
import streamlit as st

from bacpipes.errors import UserError
from bacpipes.zones import find_zones
from central.registry import MODES, deploy, deployed, rollback, rollback_target
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

PENDING, DONE = "pending_model_change", "model_change_done"


def actions(conn: psycopg.Connection, registry: pd.DataFrame, site: str) -> None:
    """Deploy and roll back, each reviewed first: the operator gives a reason (kept with the deployment),
    reads what will change, and confirms; nothing is written before the confirmation."""
    models = sorted(registry["name"].unique())
    with st.form("deploy"):
        left, middle, right = st.columns(3)
        model = left.selectbox("Model", models)
        version = middle.selectbox("Version", registry.loc[registry["name"] == model, "version"].tolist())
        mode = right.selectbox("Mode", MODES)
        reason = st.text_input("Reason", placeholder="why (kept with the deployment)", key="deploy_reason")
        if st.form_submit_button(f"Review deployment to {site}"):
            review(site, reason, action="deploy", model=model, version=version, mode=mode,
                   summary=f"deploy {model}@{version} to {site} in {mode} mode "
                           f"(now: {running_now(conn, site, model)})")
    left, right = st.columns([1, 2])
    model = left.selectbox("Roll back", models, key="rollback_model")
    reason = right.text_input("Reason for the roll back", placeholder="why (kept with the deployment)",
                              key="rollback_reason")
    if st.button(f"Review roll back of {model} at {site}"):
        current, previous, mode = rollback_target(conn, site, model)
        review(site, reason, action="rollback", model=model,
               summary=f"roll {model} back at {site} from {current} to {previous} ({mode} mode)")
    confirm(conn, site)


def running_now(conn: psycopg.Connection, site: str, model: str) -> str:
    found = deployed(conn, site, model)
    return f"{model}@{found[0][0]} {found[0][1]}" if found else "not deployed"


def review(site: str, reason: str, **change: str) -> None:
    """Hold a change for confirmation; refused without a reason."""
    if not reason.strip():
        st.session_state.pop(PENDING, None)
        raise UserError("Give a reason first: it is kept with the deployment, for whoever looks at it later.")
    st.session_state[PENDING] = {**change, "site": site, "reason": reason.strip()}


def confirm(conn: psycopg.Connection, site: str) -> None:
    pending = st.session_state.get(PENDING)
    if not pending or pending["site"] != site:  # reviewed for another site: review again
        st.session_state.pop(PENDING, None)
        return
    st.warning(f"Confirm: {pending['summary']}. Reason: {pending['reason']}")
    left, right, _ = st.columns([1, 1, 4])
    if right.button("Cancel", key="cancel_model_change"):
        st.session_state.pop(PENDING, None)
        st.rerun()
    if not left.button("Confirm", key="confirm_model_change", type="primary"):
        return
    name = act_as_operator(conn)
    st.session_state.pop(PENDING, None)
    if pending["action"] == "deploy":
        deploy(conn, site, pending["model"], pending["version"], pending["mode"], f"ui:{name}",
               pending["reason"])
        done = f"{pending['model']}@{pending['version']} deployed to {site} in {pending['mode']} mode."
    else:
        previous = rollback(conn, site, pending["model"], f"ui:{name}", pending["reason"])
        done = f"{pending['model']} at {site} rolled back to {previous}."
    st.session_state[DONE] = done
    st.rerun()  # the tables above show the new state


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
        if done := st.session_state.pop(DONE, None):
            st.success(done)
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
        if not registry.empty and needs_operator("deploy, switch or roll back models", conn):
            with shown_errors():  # a refused review is said here, and the rest of the page still shows
                actions(conn, registry, site)
        st.subheader("Shadow predictions against what happened")
        shadow(conn, site)


st.title("Models")
require_login()
with shown_errors():
    page()
