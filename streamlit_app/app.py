"""The BacPipes app: `bacpipes ui --config F` serves this with Streamlit.

The sidebar holds the login and, once logged in, the site selector (central lists its linked sites); the
pages are in `views/`, each a script that also runs on its own (the tests run them one by one) and checks
the login itself. Before a login the only page is a prompt, unless the site is a kiosk (`[ui] kiosk`):
then Overview and Live are shown read-only to anyone.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from bacpipes.users import login
from streamlit_app.context import (
    client_address,
    database,
    kiosk_allowed,
    login_policy,
    settings,
    shown_errors,
    sites,
    user,
)

HERE = Path(__file__).parent / "views"
st.set_page_config(page_title="BacPipes", layout="wide")


def sidebar() -> str | None:
    """'user' when someone is logged in, 'kiosk' for an anonymous kiosk view, else None."""
    with st.sidebar, shown_errors(), database() as conn:
        who = user(conn)
        if who:
            known = sites(conn)
            if len(known) > 1:
                st.selectbox("Site", known, key="site")
            else:
                st.caption(f"Site **{known[0]}**")
            st.caption(f"Logged in as **{who['name']}** ({who['role']})")
            if st.button("Log out"):
                st.session_state.pop("user", None)
                st.rerun()
            return "user"
        kiosk = kiosk_allowed(conn)
        if kiosk:
            st.caption(f"Site **{settings().site.id}** · kiosk view, read-only")
        login_form(conn)
        return "kiosk" if kiosk else None
    return None


def login_form(conn) -> None:  # type: ignore[no-untyped-def]
    with st.form("login"):
        name = st.text_input("User")
        password = st.text_input("Password", type="password")
        if not st.form_submit_button("Log in"):
            return
    result = login(conn, name, password, client_address(), login_policy())
    if result.role is not None:
        st.session_state["user"] = name.strip()
        st.session_state.pop("pending_write", None)
        st.rerun()
    elif result.locked_until is not None:  # the same for any name, known or not
        until = result.locked_until.astimezone(settings().site.tz)
        st.error(f"Too many failed logins: locked until {until:%H:%M %Z}. An operator can lift it earlier "
                 "(`bacpipes users unlock`).")
    else:
        st.error("Unknown user or wrong password.")


def prompt() -> None:
    st.title("BacPipes")
    st.info("Log in (sidebar) to see this site.")


access = sidebar()
if access == "user":
    pages = [
        st.Page(HERE / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page(HERE / "alarms.py", title="Alarms", icon=":material/notifications_active:"),
        st.Page(HERE / "live.py", title="Live", icon=":material/sensors:"),
        st.Page(HERE / "equipment.py", title="Equipment", icon=":material/hvac:"),
        st.Page(HERE / "trends.py", title="Trends", icon=":material/show_chart:"),
        st.Page(HERE / "points.py", title="Devices & points", icon=":material/tune:"),
        st.Page(HERE / "commands.py", title="Commands", icon=":material/edit:"),
        st.Page(HERE / "models.py", title="Models", icon=":material/model_training:"),
        st.Page(HERE / "ab.py", title="A/B", icon=":material/compare_arrows:"),
        st.Page(HERE / "energy.py", title="Energy", icon=":material/bolt:"),
    ]
elif access == "kiosk":
    pages = [
        st.Page(HERE / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page(HERE / "live.py", title="Live", icon=":material/sensors:"),
        st.Page(HERE / "trends.py", title="Trends", visibility="hidden"),  # a shared trend asks for a login
    ]
else:
    # a link to an equipment page (equipment?equip=ahu_1) opens it once logged in: the page asks for the login
    pages = [st.Page(prompt, title="Log in", icon=":material/login:", default=True),
             st.Page(HERE / "equipment.py", title="Equipment", visibility="hidden"),
             # so does a shared trend (trends?points=3,7&range=24h)
             st.Page(HERE / "trends.py", title="Trends", visibility="hidden")]
st.navigation(pages).run()
