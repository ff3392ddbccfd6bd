"""What every page needs: the settings, a database connection for this run, the site being looked at,
the logged-in user, and errors shown as messages instead of tracebacks.

The configuration comes from `$BACPIPES_CONFIG` (set by `bacpipes ui --config F`). A connection is
opened per script run: Streamlit runs sessions on threads and a psycopg connection must not be shared
between them; on loopback a connection costs a few milliseconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import streamlit as st

from bacpipes.replication import linked_sites
from bacpipes.settings import Settings, load_settings

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
    except ValueError as exc:
        st.error(str(exc))
    except Exception as exc:
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


def user() -> dict[str, Any] | None:
    return st.session_state.get("user")


def operator() -> str | None:
    """The operator's name when an operator is logged in, else None (viewers only read)."""
    who = user()
    return who["name"] if who and who.get("role") == "operator" else None


def needs_operator(what: str) -> str | None:
    """The operator's name, or a note that `what` needs an operator login and None."""
    name = operator()
    if name is None:
        st.info(f"Log in as an operator (sidebar) to {what}.")
    return name
