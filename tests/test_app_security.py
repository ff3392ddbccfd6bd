"""Who may see and do what in the app (issue 14, item 5), against real PostgreSQL: nothing is shown before
a login; an anonymous kiosk only where a site allows it, Overview and Live only, never a write; login
throttling per name and per address with a lock an operator lifts; the role and the account's state read
again on every run; HTTPS with `bacpipes ui --cert/--key`, in Debian's Chromium.

Assertions are on what the pages render (the rendered element tree, tables included) and on the rows the
database holds."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

# the package, bound before AppTest puts streamlit_app/views (with its models.py page) first on sys.path
import models  # noqa: F401
from bacpipes import certs
from bacpipes.cli import main
from bacpipes.cli.servers import free_port
from bacpipes.commands import Command, insert_command
from bacpipes.users import add_user
from tests.conftest import fresh_database

APP = Path(__file__).resolve().parent.parent / "streamlit_app"
VIEWS = ["overview", "live", "trends", "points", "commands", "models", "ab"]
SITE = "sec-site"
ADDRESS = "10.66.0.17"  # a device's address
POINT_NAME = "ZONE-SP-4711"
AUDIT = "audit-reason-0815"
ALERT = "alert-text-2342"
SECRETS = (ADDRESS, POINT_NAME, AUDIT, ALERT)


def write_config(path: Path, dsn: str, ui: str = "") -> Path:
    path.write_text(f'[site]\nid = "{SITE}"\ntimezone = "Asia/Macau"\n[database]\ndsn = "{dsn}"\n'
                    f"[ui]\nwrite_wait_s = 0.5\n{ui}")
    return path


def seed(dsn: str) -> None:
    """A device, a writable point with limits and a value, a command in the audit trail, an alert, and
    an operator (olivia) and a viewer (victor)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1001, %s)",
                     (SITE, ADDRESS))
        point = conn.execute(
            "INSERT INTO point (site_id, device_id, object_type, object_instance, object_name, topic,"
            " writable, commandable, max_value) VALUES (%s, 1001, 'analog-value', 1, %s, %s, true, true,"
            " 27.5) RETURNING point_id", (SITE, POINT_NAME, f"{SITE}/ahu_1/av1/presentValue")).fetchone()[0]
        conn.execute("INSERT INTO point_state (site_id, point_id, value, quality, time, last_poll)"
                     " VALUES (%s, %s, 24, 'good', now(), now())", (SITE, point))
        conn.execute("INSERT INTO alerts (site_id, source, severity, message)"
                     " VALUES (%s, 'test', 'warning', %s)", (SITE, ALERT))
        conn.commit()
        insert_command(conn, Command(SITE, point, 23.0, created_by="cli:test", reason=AUDIT))
        add_user(conn, "olivia", "operator-pass", "operator")
        add_user(conn, "victor", "viewer-pass", "viewer")


@pytest.fixture
def site(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    seed(db_dsn)
    config = write_config(tmp_path / "site.toml", db_dsn)
    monkeypatch.setenv("BACPIPES_CONFIG", str(config))
    return SimpleNamespace(dsn=db_dsn, config=config, tmp=tmp_path)


def rendered(at: AppTest) -> str:
    """Everything the run sent to the browser (every element's protobuf, tables' Arrow bytes included)."""
    parts: list[str] = []

    def walk(node) -> None:  # type: ignore[no-untyped-def]
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in (getattr(node, "children", None) or {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def app(user: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP / "app.py"), default_timeout=60)
    if user:
        at.session_state["user"] = user
    return at.run()


def view(name: str, user: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP / "views" / f"{name}.py"), default_timeout=60)
    if user:
        at.session_state["user"] = user
    return at.run()


def log_in(at: AppTest, name: str, password: str) -> AppTest:
    user, secret = (t for t in at.text_input if t.label in ("User", "Password"))
    user.set_value(name)
    secret.set_value(password)
    next(b for b in at.button if b.label == "Log in").click()
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def rows(dsn: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def cli(*args: str, config: Path) -> int:
    return main([*args, "--config", str(config)])


@pytest.mark.parametrize("name", ["app", *VIEWS])
def test_nothing_is_shown_before_a_login(site, name) -> None:
    at = app() if name == "app" else view(name)
    assert not at.exception, [e.value for e in at.exception]
    assert any("Log in" in i.value for i in at.info)
    assert not at.dataframe and not at.metric and not errors(at)
    shown = rendered(at)
    assert not [s for s in SECRETS if s in shown]
    if name == "app":  # the login form is all there is
        assert [t.label for t in at.text_input] == ["User", "Password"]


def test_after_a_login_the_same_pages_show_their_data(site) -> None:
    """The control for the test above: the markers are found where a logged-in viewer looks."""
    assert ADDRESS in rendered(view("points", "victor"))
    assert AUDIT in rendered(view("commands", "victor"))
    at = log_in(app(), "victor", "viewer-pass")
    assert at.session_state["user"] == "victor" and at.metric  # Overview, with its data
    assert ALERT in rendered(at)


def test_a_kiosk_site_shows_overview_and_live_read_only(site) -> None:
    write_config(site.config, site.dsn, "kiosk = true\n")
    at = app()
    assert any("kiosk view" in c.value for c in at.sidebar.caption)
    assert at.metric  # Overview, anonymously
    at.switch_page(str(APP / "views" / "live.py")).run()
    assert not at.exception
    assert at.dataframe[0].value["object_name"].tolist() == [POINT_NAME]
    assert [b.label for b in at.button] == ["Log in"]  # nothing to write with
    for name in ("trends", "points", "commands", "models", "ab"):  # the rest still needs a login
        page = view(name)
        assert any("Log in" in i.value for i in page.info) and not page.dataframe, name
        assert not [s for s in SECRETS if s in rendered(page)], name
    assert not [b for b in view("commands").button if b.label in ("Review", "Grant remote")]


def test_a_kiosk_setting_is_ignored_on_central(tmp_path, monkeypatch) -> None:
    with fresh_database() as dsn:
        seed(dsn)
        with psycopg.connect(dsn) as conn:  # central: it lists linked sites
            conn.execute("INSERT INTO site (site_id, readings_subscription, meta_subscription)"
                         " VALUES (%s, 'r', 'm')", (SITE,))
        config = write_config(tmp_path / "central.toml", dsn, "kiosk = true\n")
        monkeypatch.setenv("BACPIPES_CONFIG", str(config))
        at = app()
        assert not at.metric and not at.dataframe and any("Log in" in i.value for i in at.info)
        live = view("live")
        assert not live.dataframe and not [s for s in SECRETS if s in rendered(live)]


def test_five_wrong_passwords_lock_the_user_until_an_operator_unlocks_it(site) -> None:
    at = app()
    for _ in range(4):
        log_in(at, "olivia", "not-her-password")
        assert errors(at) == ["Unknown user or wrong password."]
    log_in(at, "olivia", "not-her-password")
    assert any("Too many failed logins" in e for e in errors(at))
    log_in(at, "olivia", "operator-pass")  # the right password, refused while locked
    assert any("Too many failed logins" in e for e in errors(at)) and "user" not in at.session_state
    assert not at.metric

    # a name that does not exist is answered and locked exactly like one that does
    for _ in range(4):
        log_in(at, "nobody", "whatever-pass")
        assert errors(at) == ["Unknown user or wrong password."]
    log_in(at, "nobody", "whatever-pass")
    assert any("Too many failed logins" in e for e in errors(at))

    assert cli("users", "unlock", "olivia", config=site.config) == 0
    log_in(at, "olivia", "operator-pass")
    assert at.session_state["user"] == "olivia" and not errors(at)
    outcomes = rows(site.dsn, "SELECT outcome, count(*) FROM app_login_attempts WHERE username = 'olivia'"
                              " GROUP BY 1 ORDER BY 1")
    assert outcomes == [("failed", 5), ("locked", 1), ("ok", 1)]


def test_failures_from_one_address_lock_it_whatever_the_names(site) -> None:
    write_config(site.config, site.dsn, "login_address_failures = 6\n")
    at = app()
    for n in range(6):  # one guess for each of six names: no name reaches its own limit
        log_in(at, f"guess{n}", "whatever-pass")
    log_in(at, "victor", "viewer-pass")  # this address (loopback here) is locked, for everyone
    assert any("Too many failed logins" in e for e in errors(at)) and "user" not in at.session_state
    assert cli("users", "unlock", "--address", "local", config=site.config) == 0
    log_in(at, "victor", "viewer-pass")
    assert at.session_state["user"] == "victor"


def test_a_promoted_viewer_gets_the_write_form_at_the_next_run(site) -> None:
    at = view("commands", "victor")
    assert not [b for b in at.button if b.label == "Review"]
    with psycopg.connect(site.dsn) as conn:
        conn.execute("UPDATE app_users SET role = 'operator' WHERE username = 'victor'")
    at.run()
    assert [b for b in at.button if b.label == "Review"]


def test_a_demoted_operator_cannot_confirm_a_write_reviewed_before(site) -> None:
    at = view("commands", "olivia")
    next(b for b in at.button if b.label == "Review").click().run()
    assert any("Confirm: write" in w.value for w in at.warning)
    with psycopg.connect(site.dsn) as conn:
        conn.execute("UPDATE app_users SET role = 'viewer' WHERE username = 'olivia'")
    next(b for b in at.button if b.label == "Confirm").click().run()
    assert not at.exception
    assert rows(site.dsn, "SELECT count(*) FROM write_commands WHERE source = 'ui'") == [(0,)]
    assert not [b for b in at.button if b.label in ("Review", "Confirm", "Grant remote")]
    assert any("Log in as an operator" in i.value for i in at.info)


def test_a_disabled_user_is_logged_out_at_the_next_run(site) -> None:
    at = log_in(app(), "olivia", "operator-pass")
    assert any("Logged in as" in c.value for c in at.sidebar.caption) and at.metric
    assert cli("users", "disable", "olivia", config=site.config) == 0
    at.run()
    assert "user" not in at.session_state and not at.metric and not at.dataframe
    assert [t.label for t in at.text_input] == ["User", "Password"]
    log_in(at, "olivia", "operator-pass")  # and cannot come back
    assert errors(at) == ["Unknown user or wrong password."]


# --- HTTPS, in the browser -----------------------------------------------------------------------


@pytest.fixture
def https_app(site) -> Iterator[SimpleNamespace]:
    """`bacpipes ui --cert --key` with a certificate from `bacpipes certs`' CA for 127.0.0.1."""
    folder = site.tmp / "certs"
    ca, _ = certs.ensure_ca(folder)
    cert, key = certs.issue_server(folder, "app", ["127.0.0.1"])
    port = free_port()
    log_path = site.tmp / "ui.log"
    log = log_path.open("w")
    served = subprocess.Popen([sys.executable, "-m", "bacpipes.cli", "ui", "--config", str(site.config),
                               "--port", str(port), "--cert", str(cert), "--key", str(key)],
                              stdout=log, stderr=subprocess.STDOUT)
    trusted = ssl.create_default_context(cafile=str(ca))
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:  # verified against the CA: the certificate chain and the IP in its SAN
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2, context=trusted) as answer:
                    if answer.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                assert served.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
        yield SimpleNamespace(url=url, port=port)
    finally:
        served.terminate()
        served.wait(20)
        log.close()


def test_the_app_is_served_over_https_and_shows_nothing_before_a_login(https_app) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.browser import CHROMIUM

    with pytest.raises((OSError, urllib.error.URLError)):  # no plain HTTP on that port
        urllib.request.urlopen(f"http://127.0.0.1:{https_app.port}/_stcore/health", timeout=5).read()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(ignore_https_errors=True).new_page()  # the test CA is not in its store
        page.goto(https_app.url)
        expect(page.get_by_text("Log in (sidebar) to see this site.")).to_be_visible(timeout=20_000)
        assert page.evaluate("location.protocol") == "https:"
        assert not [s for s in SECRETS if s in page.content()]
        page.get_by_role("textbox", name="User").fill("victor")
        page.get_by_role("textbox", name="Password").fill("viewer-pass")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_text("Logged in as")).to_be_visible(timeout=20_000)  # over the wss:// socket
        expect(page.get_by_text("Agents online")).to_be_visible()
        browser.close()


def test_https_needs_both_the_certificate_and_its_key(site, capsys) -> None:
    assert cli("ui", "--cert", str(site.config), config=site.config) == 2
    assert "both a certificate and its key" in capsys.readouterr().err
