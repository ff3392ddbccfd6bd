"""What every page needs: the settings, a database connection for this run, the site being looked at,
the logged-in user, and errors shown as messages instead of tracebacks.

Access: a page shows nothing until someone is logged in (`require_login`), except Overview and Live on a
site with `[ui] kiosk = true`. The session holds the user's name only: the role and whether the user is
still enabled are read from the database on every run and again just before every write, so a demoted or
disabled user loses their powers (or their session) at their next interaction.

The configuration comes from `$BACPIPES_CONFIG` (set by `bacpipes ui --config F`). A connection is
opened per script run: Streamlit runs sessions on threads and a psycopg connection must not be shared
between them; on loopback a connection costs a few milliseconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from typing import Any

import psycopg
import streamlit as st

from bacpipes.errors import UserError
from bacpipes.replication import is_central, linked_sites
from bacpipes.settings import Settings, load_settings
from bacpipes.users import LoginPolicy, current_role

log = logging.getLogger(__name__)


@st.cache_resource
def _settings(path: str | None) -> Settings:
    return load_settings(path)


def settings() -> Settings:
    return _settings(os.environ.get("BACPIPES_CONFIG"))


@contextmanager
def database() -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings().database.dsn, autocommit=True, connect_timeout=3) as conn:
        # times as the site's people read them (psycopg returns timestamptz in the session's zone)
        conn.execute("SELECT set_config('TimeZone', %s, false)", (settings().site.timezone,))
        yield conn


@contextmanager
def shown_errors() -> Iterator[None]:
    """Run a page body; what goes wrong is said in a message and logged, never shown as a traceback.
    Streamlit's own stop/rerun signals are BaseExceptions and pass through."""
    try:
        yield
    except psycopg.OperationalError as exc:
        st.error(f"The database is not answering: {_first_line(exc)}. The page will work again once it is "
                 "back; nothing you entered was saved.")
    except UserError as exc:  # the user's to fix: the message is the whole story
        st.error(str(exc))
    except Exception as exc:  # a bug: logged with its traceback, the page says what failed
        log.exception("page failed")
        st.error(f"Something went wrong: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def sites(conn: psycopg.Connection) -> list[str]:
    """Central lists its linked sites; a site database is its own single site."""
    return linked_sites(conn) or [settings().site.id]


def current_site(conn: psycopg.Connection) -> str:
    chosen = st.session_state.get("site")
    known = sites(conn)
    return chosen if chosen in known else known[0]


def login_policy() -> LoginPolicy:
    ui = settings().ui
    return LoginPolicy(ui.login_failures, ui.login_address_failures, timedelta(seconds=ui.login_window_s),
                       timedelta(seconds=ui.lockout_s))


def client_address() -> str:
    """The TCP peer of this session's connection ('local' on loopback, which Streamlit reports as None;
    also under streamlit.testing, which has no connection)."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else "local"


def _connection(conn: psycopg.Connection | None):  # type: ignore[no-untyped-def]
    return nullcontext(conn) if conn is not None else database()


def user(conn: psycopg.Connection | None = None) -> dict[str, Any] | None:
    """The logged-in user as the database has them now ({name, role}); None when nobody is logged in.
    A user disabled or removed since the login is logged out here."""
    name = st.session_state.get("user")
    if not isinstance(name, str):
        return None
    with _connection(conn) as c:
        role = current_role(c, name)
    if role is None:
        st.session_state.pop("user", None)
        return None
    return {"name": name, "role": role}


def kiosk_allowed(conn: psycopg.Connection) -> bool:
    """`[ui] kiosk` on a site's database: Overview and Live without a login. Never on central."""
    return settings().ui.kiosk and not is_central(conn)


def require_login(*, kiosk: bool = False) -> None:
    """Stop the page here unless someone is logged in (or, for `kiosk` pages, the site is a kiosk)."""
    with shown_errors(), database() as conn:
        if user(conn) is not None or (kiosk and kiosk_allowed(conn)):
            return
        st.info("Log in (sidebar) to see this page.")
    st.stop()


def operator(conn: psycopg.Connection | None = None) -> str | None:
    """The operator's name when an operator is logged in, else None (viewers only read)."""
    who = user(conn)
    return who["name"] if who and who.get("role") == "operator" else None


def needs_operator(what: str, conn: psycopg.Connection | None = None) -> str | None:
    """The operator's name, or a note that `what` needs an operator login and None."""
    name = operator(conn)
    if name is None:
        st.info(f"Log in as an operator (sidebar) to {what}.")
    return name


def act_as_operator(conn: psycopg.Connection | None = None) -> str:
    """Just before a write: the operator's name, read again from the database; refused otherwise."""
    name = operator(conn)
    if name is None:
        raise ValueError("Refused: an operator login is needed for this (your role or account changed).")
    return name
