"""Commands: write or release a point with a priority (default 8) after a confirmation, and see what the
device read back; the audit trail; control authority.

The form shows what the operator decides by: the point's unit, its write limits (the executor's: the
operator's limits, else the device's) and ML limits, its relinquish default and the priority array the
device last read back (after the newest command on it); a state point offers its states by name, an
analog one a number inside its limits. Granting or revoking remote authority asks for a reason and a
confirmation, like a write.

A write here is a `write_commands` row like any other (source `ui` on a site, `central` on central, which
then needs remote authority at the site); the site's executor validates it, writes and reads back.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

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
from bacpipes.errors import UserError
from bacpipes.replication import is_central
from bacpipes.units import reading_text, states, symbol, with_unit
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


def point_row(choices: pd.DataFrame, point: int) -> dict[str, Any]:
    """One point of `point_choices` as a dict, SQL NULLs as None (pandas turns some into NaN)."""
    row = choices[choices["point_id"] == point].iloc[0].to_dict()
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _known(value: Any) -> float | None:
    return None if value is None else float(value)


def _list(value: Any) -> list[str] | None:
    return None if value is None else list(value)


def limits(info: dict[str, Any]) -> tuple[float | None, float | None]:
    """The write limits the executor applies: the operator's, else the device's min/max present value."""
    low, high = _known(info["min_value"]), _known(info["max_value"])
    return (low if low is not None else _known(info["device_min_value"]),
            high if high is not None else _known(info["device_max_value"]))


def point_states(info: dict[str, Any]) -> dict[int, str] | None:
    return states(info["object_type"], _list(info["state_text"]), info["inactive_text"], info["active_text"])


def as_read(info: dict[str, Any], value: float | None) -> str:
    """A value of this point as operators read it: its state text or the number with its unit."""
    return reading_text(value, info["units"], info["object_type"], _list(info["state_text"]),
                        info["inactive_text"], info["active_text"])


def point_context(conn: psycopg.Connection, site: str, info: dict[str, Any], present: float | None) -> None:
    """What the operator decides by: the present value, unit, limits, relinquish default, priority array."""
    unit = symbol(info["units"])
    facts = [f"Now: **{as_read(info, present)}**" if present is not None else "No reading yet"]
    if point_states(info) is None:
        facts.append(f"unit: **{unit or 'none'}**")
        low, high = limits(info)
        if low is not None or high is not None:
            facts.append(f"write limits: {_span(low, high, info['units'])}")
        ml_low, ml_high = _known(info["ml_min_value"]), _known(info["ml_max_value"])
        facts.append(f"ML limits: {_span(ml_low, ml_high, info['units'])}" if ml_low is not None
                     and ml_high is not None else "ML limits: none (ML may not write it)")
    default = _known(info["relinquish_default"])
    if default is not None:
        facts.append(f"relinquish default: **{as_read(info, default)}**")
    st.markdown(" · ".join(facts))
    last = queries.last_priority_array(conn, site, int(info["point_id"]))
    if last is None:
        if info["commandable"]:
            st.caption("Priority array: not read yet (the device reads it back after the first command).")
        return
    array, at = last
    held = [(slot, as_read(info, value)) for slot, value in enumerate(array, start=1) if value is not None]
    st.caption(f"Priority array as the device read it back at {at:%Y-%m-%d %H:%M:%S %Z}"
               + ("" if held else ": every priority released"))
    if held:
        st.dataframe(pd.DataFrame(held, columns=["priority", "value"]), hide_index=True,
                     key=f"priority_array_{info['point_id']}")


def _span(low: float | None, high: float | None, units: str | None) -> str:
    lo = "−∞" if low is None else f"{low:g}"
    hi = "∞" if high is None else f"{high:g}"
    return with_unit(f"{lo} to {hi}", units)


def value_input(box: Any, info: dict[str, Any], present: float | None, point: int) -> float:
    """A select of the point's states by name, or a number inside its write limits, starting at the
    present value (a key per point: the field follows the chosen point)."""
    named = point_states(info)
    if named is not None:
        options = sorted(set(named) | ({int(present)} if present is not None else set()))
        start = options.index(int(present)) if present is not None else 0
        return float(box.selectbox("Value", options, index=start, key=f"write_value_{point}",
                                   format_func=lambda n: named.get(n, f"state {n}")))
    low, high = limits(info)
    start = present if present is not None else _known(info["relinquish_default"]) or low or 0.0
    start = min(max(start, low if low is not None else start), high if high is not None else start)
    return float(box.number_input("Value", value=float(start), min_value=low, max_value=high, step=0.5,
                                  format="%.2f", key=f"write_value_{point}"))  # its unit is said above


def write_form(conn: psycopg.Connection, site: str, name: str, central: bool) -> None:
    choices = queries.point_choices(conn, site, writable_only=True)
    if choices.empty:
        st.info("No writable points at this site.")
        return
    labels = dict(zip(choices["point_id"], choices["label"], strict=True))
    point = st.selectbox("Point", list(labels), format_func=labels.get, key="write_point")
    info = point_row(choices, point)
    present = queries.present_value(conn, site, int(point))
    point_context(conn, site, info, present)
    with st.form("write"):
        left, middle, right = st.columns(3)
        action = left.radio("Action", ["write", "release"], horizontal=True)
        value = value_input(middle, info, present, int(point))
        priority = right.number_input("Priority", min_value=1, max_value=16, value=8, step=1)
        reason = st.text_input("Reason", placeholder="why (kept in the audit trail)")
        if st.form_submit_button("Review"):
            st.session_state["pending_write"] = {
                "point": int(point), "label": labels[point], "release": action == "release",
                "value": None if action == "release" else float(value), "priority": int(priority),
                "reason": reason.strip() or None,
                "state": None if point_states(info) is None else as_read(info, float(value)),
            }
    pending = st.session_state.get("pending_write")
    if not pending:
        shown_result()
        return
    what = (f"release priority {pending['priority']} of **{pending['label']}**" if pending["release"] else
            f"write {_said(pending)} to **{pending['label']}** at priority {pending['priority']}")
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


def _said(pending: dict) -> str:
    """The value to write as the confirmation says it: a state by its name (and number), else the number."""
    number = f"{pending['value']:g}"
    return f"**{pending['state']}** ({number})" if pending.get("state") else f"**{number}**"


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
    """The site's control authority now; an operator grants or revokes remote control with a reason, after
    a confirmation, and the new state is drawn at once."""
    mode, until = current_authority(conn, site)
    scope = f" until {until:%Y-%m-%d %H:%M %Z}" if until else " (site sources only: MQTT, app, CLI)"
    st.markdown(f"Control authority at **{site}**: **{mode}**{scope}")
    if "authority_changed" in st.session_state:
        st.success(st.session_state.pop("authority_changed"))
    if name is None:
        return
    left, right = st.columns(2)
    minutes = left.number_input("Grant remote (central and ML) for minutes", min_value=1, value=60, step=15)
    reason = right.text_input("Why change control authority", key="authority_reason",
                              placeholder="why (kept with the grant)")
    ask = None
    if left.button("Grant remote"):
        ask = {"grant": True, "minutes": int(minutes)}
    if right.button("Revoke remote", disabled=mode != "remote"):
        ask = {"grant": False}
    if ask is not None:
        if not reason.strip():
            raise UserError("Say why in 'Why change control authority': it is kept with the change.")
        st.session_state["pending_authority"] = {**ask, "reason": reason.strip()}
    pending = st.session_state.get("pending_authority")
    if pending:
        confirm_authority(conn, site, pending)


def confirm_authority(conn: psycopg.Connection, site: str, pending: dict) -> None:
    what = (f"let central and ML write at **{site}** for {pending['minutes']} minutes" if pending["grant"]
            else f"take remote control back from central and ML at **{site}**")
    st.warning(f"Confirm: {what}? Reason: {pending['reason']}")
    yes, no = st.columns(2)
    if no.button("Keep as it is"):
        del st.session_state["pending_authority"]
        st.rerun()
    if yes.button("Confirm the change", type="primary"):
        del st.session_state["pending_authority"]
        name = act_as_operator(conn)
        if pending["grant"]:
            until = grant_remote(conn, site, timedelta(minutes=pending["minutes"]), f"ui:{name}",
                                 pending["reason"])
            done = f"Remote control granted until {until.astimezone(settings().site.tz):%H:%M %Z}."
        else:
            revoke_remote(conn, site, f"ui:{name}", pending["reason"])
            done = "Remote control revoked: site sources only."
        st.session_state["authority_changed"] = done
        st.session_state.pop("authority_reason", None)
        st.rerun()  # drawn again with the new state


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
        audit_trail(conn, site)


def audit_trail(conn: psycopg.Connection, site: str) -> None:
    """The newest commands, filtered by point, user, source and dates in the database (so older ones can be
    found), then by status."""
    users, sources = queries.audit_choices(conn, site)
    if not sources:
        st.caption("No commands yet.")
        return
    choices = queries.point_choices(conn, site, writable_only=True)
    labels = dict(zip(choices["point_id"], choices["label"], strict=True))
    first, second, third, fourth = st.columns(4)
    points = first.multiselect("Points", list(labels), format_func=labels.get, key="audit_points")
    who = second.multiselect("Users", users, key="audit_users")
    where = third.multiselect("Sources", sources, key="audit_sources")
    days = fourth.date_input("Days", value=(), key="audit_dates", help="first and last day, the site's")
    since, until = _day_range(days)
    trail = queries.audit(conn, site, points=[int(p) for p in points], users=who, sources=where,
                          since=since, until=until)
    statuses = st.multiselect("Status", sorted(trail["status"].unique()), key="audit_status")
    shown = trail[trail["status"].isin(statuses)] if statuses else trail
    st.caption(f"{len(shown)} command(s)" + (" (the newest 200)" if len(trail) == 200 else ""))
    st.dataframe(shown, hide_index=True)


def _day_range(days: Any) -> tuple[datetime | None, datetime | None]:
    """A picked day or day range as [start, end) in the site's time zone; nothing picked: no limit."""
    picked = [d for d in (days if isinstance(days, (tuple, list)) else [days]) if isinstance(d, date)]
    if not picked:
        return None, None
    tz = settings().site.tz
    return (datetime.combine(min(picked), time(), tz),
            datetime.combine(max(picked), time(), tz) + timedelta(days=1))


st.title("Commands")
require_login()
with shown_errors():
    page()
