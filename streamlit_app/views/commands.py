"""Commands: write or release a point with a priority (default 8) after a confirmation, and see what the
device read back; the audit trail; control authority.

A write here is a `write_commands` row like any other (source `ui` on a site, `central` on central, which
then needs remote authority at the site); the site's executor validates it, writes and reads back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import streamlit as st

from bacpipes.commands import (
    TERMINAL,
    Command,
    command_status,
    current_authority,
    grant_remote,
    insert_command,
    revoke_remote,
)
from bacpipes.replication import is_central
from bacpipes.waiting import poll_until
from streamlit_app import queries
from streamlit_app.context import (
    act_as_operator,
    current_site,
    database,
    needs_operator,
    require_login,
    settings,
    shown_errors,
)


def outcome(status: dict) -> None:
    """What the device said, in words, with its priority array when there is one."""
    state = status["status"]
    if state == "completed":
        st.success(f"Completed: the device reads back {status['value_read']}.")
    elif state in ("failed", "rejected"):
        st.error(f"{state.capitalize()}: {status['error_message']}")
    else:
        st.warning(f"Still {state}: the site's agent has not answered yet. The audit trail below will show "
                   "the outcome when it does.")
    if status.get("priority_array"):
        slots = pd.DataFrame({"priority": range(1, 17), "value": status["priority_array"]})
        st.dataframe(slots[slots["value"].notna()], hide_index=True)


def wait_for(conn: psycopg.Connection, command_id: uuid.UUID, seconds: float) -> dict:
    """The command's outcome, or its status as it stands after `seconds` (`outcome` says it is pending)."""
    def finished() -> dict | None:
        status = command_status(conn, command_id)
        return status if status and status["status"] in TERMINAL else None

    try:
        return poll_until(finished, seconds, what=f"the outcome of command {command_id}")
    except TimeoutError:
        return command_status(conn, command_id) or {"status": "pending"}


def write_form(conn: psycopg.Connection, site: str, name: str, central: bool) -> None:
    choices = queries.point_choices(conn, site, writable_only=True)
    if choices.empty:
        st.info("No writable points at this site.")
        return
    labels = dict(zip(choices["point_id"], choices["label"], strict=True))
    point = st.selectbox("Point", list(labels), format_func=labels.get, key="write_point")
    present = queries.present_value(conn, site, int(point))
    st.caption(f"Now: {present:g}" if present is not None else "No reading yet")
    with st.form("write"):
        left, middle, right = st.columns(3)
        action = left.radio("Action", ["write", "release"], horizontal=True)
        value = middle.number_input("Value", value=present if present is not None else 0.0, step=0.5,
                                    format="%.2f", key=f"write_value_{point}")  # starts at the present value
        priority = right.number_input("Priority", min_value=1, max_value=16, value=8, step=1)
        reason = st.text_input("Reason", placeholder="why (kept in the audit trail)")
        if st.form_submit_button("Review"):
            st.session_state["pending_write"] = {
                "point": int(point), "label": labels[point], "release": action == "release",
                "value": None if action == "release" else float(value), "priority": int(priority),
                "reason": reason.strip() or None,
            }
    pending = st.session_state.get("pending_write")
    if not pending:
        shown_result()
        return
    what = (f"release priority {pending['priority']} of **{pending['label']}**" if pending["release"] else
            f"write **{pending['value']:g}** to **{pending['label']}** at priority {pending['priority']}")
    st.warning(f"Confirm: {what}?")
    yes, no = st.columns(2)
    if no.button("Cancel"):
        del st.session_state["pending_write"]
        st.rerun()
    if yes.button("Confirm", type="primary"):
        del st.session_state["pending_write"]
        name = act_as_operator(conn)
        wait = settings().ui.write_wait_s
        command_id = _insert(conn, site, name, central, pending, wait)
        with st.spinner("Waiting for the device…"):
            st.session_state["last_result"] = wait_for(conn, command_id, wait)
        st.rerun()  # redraw without the confirmation


def shown_result() -> None:
    if "last_result" in st.session_state:
        outcome(st.session_state.pop("last_result"))


def _insert(conn: psycopg.Connection, site: str, name: str, central: bool, pending: dict,
            wait: float) -> uuid.UUID:
    return insert_command(conn, Command(
        site, pending["point"], pending["value"], priority=pending["priority"], release=pending["release"],
        source="central" if central else "ui", created_by=f"ui:{name}", reason=pending["reason"],
        not_after=datetime.now(UTC) + timedelta(seconds=wait),  # never runs later than the operator waited
    ))


def authority(conn: psycopg.Connection, site: str, name: str | None) -> None:
    mode, until = current_authority(conn, site)
    scope = f" until {until:%Y-%m-%d %H:%M %Z}" if until else " (site sources only: MQTT, app, CLI)"
    st.markdown(f"Control authority at **{site}**: **{mode}**{scope}")
    if name is None:
        return
    left, right = st.columns(2)
    minutes = left.number_input("Grant remote (central and ML) for minutes", min_value=1, value=60, step=15)
    if left.button("Grant remote"):
        name = act_as_operator(conn)
        grant_remote(conn, site, timedelta(minutes=int(minutes)), f"ui:{name}", "granted in the app")
        st.rerun()
    if right.button("Revoke remote", disabled=mode != "remote"):
        name = act_as_operator(conn)
        revoke_remote(conn, site, f"ui:{name}", "revoked in the app")
        st.rerun()


def page() -> None:
    with database() as conn:
        site = current_site(conn)
        central = is_central(conn)
        st.subheader("Write or release")
        name = needs_operator("write to devices or change control authority", conn)
        if name:
            write_form(conn, site, name, central)
        st.subheader("Control authority")
        authority(conn, site, name)
        st.subheader("Audit trail")
        trail = queries.audit(conn, site)
    if trail.empty:
        st.caption("No commands yet.")
        return
    statuses = st.multiselect("Status", sorted(trail["status"].unique()), key="audit_status")
    st.dataframe(trail[trail["status"].isin(statuses)] if statuses else trail, hide_index=True)


st.title("Commands")
require_login()
with shown_errors():
    page()
