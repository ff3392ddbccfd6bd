"""The BacPipes app: `bacpipes ui --config F` serves this with Streamlit.

The sidebar holds the site selector (central lists its linked sites) and the login; the pages are
in `views/`, each a script that also runs on its own (the tests run them one by one).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from bacpipes.users import authenticate
from streamlit_app.context import database, shown_errors, sites, user

HERE = Path(__file__).parent / "views"
st.set_page_config(page_title="BacPipes", layout="wide")


def sidebar() -> None:
    with st.sidebar, shown_errors(), database() as conn:
        known = sites(conn)
        if len(known) > 1:
            st.selectbox("Site", known, key="site")
        else:
            st.caption(f"Site **{known[0]}**")
        who = user()
        if who:
            st.caption(f"Logged in as **{who['name']}** ({who['role']})")
            if st.button("Log out"):
                del st.session_state["user"]
                st.rerun()
            return
        with st.form("login"):
            name = st.text_input("User")
            password = st.text_input("Password", type="password")
            if st.form_submit_button("Log in"):
                role = authenticate(conn, name, password)
                if role is None:
                    st.error("Unknown user or wrong password.")
                else:
                    st.session_state["user"] = {"name": name.strip(), "role": role}
                    st.rerun()


sidebar()
st.navigation([
    st.Page(HERE / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page(HERE / "live.py", title="Live", icon=":material/sensors:"),
    st.Page(HERE / "trends.py", title="Trends", icon=":material/show_chart:"),
    st.Page(HERE / "points.py", title="Devices & points", icon=":material/tune:"),
    st.Page(HERE / "commands.py", title="Commands", icon=":material/edit:"),
    st.Page(HERE / "models.py", title="Models", icon=":material/model_training:"),
    st.Page(HERE / "ab.py", title="A/B", icon=":material/compare_arrows:"),
]).run()
