"""A user's mistake is a UserError with a message that says what to change; the one deadline wait
(`poll_until`) keeps its contract. Against the real PostgreSQL, as the other tests run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.certs import issue_client
from bacpipes.commands import Command, grant_remote
from bacpipes.db import connect
from bacpipes.errors import MissingFile, UserError
from bacpipes.partitions import validate_retention_days
from bacpipes.points import update_points
from bacpipes.readings import load_readings
from bacpipes.settings import Settings, load_settings
from bacpipes.users import add_user
from bacpipes.waiting import poll_until
from bacpipes.zones import site_hourly
from tests.conftest import fresh_database

SITE = "test-site"


# --- poll_until -----------------------------------------------------------------------------------


def test_poll_until_returns_the_first_truthy_value_and_stops_asking() -> None:
    answers = iter([None, 0, "", "first", "second"])
    calls = []

    def check() -> str | int | None:
        calls.append(1)
        return next(answers)

    assert poll_until(check, 10, interval=0, what="an answer") == "first"
    assert len(calls) == 4


def test_poll_until_names_what_it_waited_for_and_asks_at_least_once() -> None:
    calls = []
    with pytest.raises(TimeoutError, match=r"the pump's answer not reached within 0 s"):
        poll_until(lambda: calls.append(1), 0, what="the pump's answer")
    assert len(calls) >= 1
    assert poll_until(lambda: "at once", 0, what="anything") == "at once"  # a zero timeout still asks


def test_poll_until_waits_for_another_thread_and_lets_errors_through() -> None:
    done = threading.Event()
    threading.Timer(0.05, done.set).start()
    assert poll_until(done.is_set, 30, interval=0.01, what="the timer") is True

    def broken() -> bool:
        raise KeyError("a bug in the check")

    with pytest.raises(KeyError):  # a failing check is not a timeout
        poll_until(broken, 30, what="nothing")


# --- settings and files ---------------------------------------------------------------------------


def test_user_errors_are_value_errors_and_a_missing_file_is_still_one() -> None:
    assert issubclass(UserError, ValueError)
    assert issubclass(MissingFile, UserError) and issubclass(MissingFile, FileNotFoundError)


def test_settings_mistakes_name_the_file_and_the_setting_but_no_value(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(MissingFile, match="config file not found"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.setenv("BACPIPES_CONFIG", str(tmp_path / "typo.toml"))  # used to run on defaults silently
    with pytest.raises(MissingFile, match=r"typo.toml \(\$BACPIPES_CONFIG\)"):
        load_settings()
    monkeypatch.delenv("BACPIPES_CONFIG")

    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nid = 'x'\n")
    with pytest.raises(UserError, match=r"broken.toml is not valid TOML"):
        load_settings(broken)

    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[mqtt]\nqos = 7\npassword = 98765432\n[site]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(UserError) as raised:
        load_settings(wrong)
    message = str(raised.value)
    assert "wrong.toml" in message and "\n" not in message
    assert "mqtt.qos: Input should be less than or equal to 2" in message
    assert "site.timezone: unknown timezone 'Mars/Olympus'" in message
    assert "mqtt.password" in message and "98765432" not in message  # a secret is never echoed


def test_a_broken_connection_string_is_a_user_error_without_its_password() -> None:
    for dsn in ("host=127.0.0.1 password=my s3cret-pw dbname=x", "postgresql://u:my s3cret-pw@127.0.0.1/x"):
        with pytest.raises(UserError, match="invalid database connection string") as raised:
            connect(dsn)
        assert "s3cret" not in str(raised.value)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__  # nor in a traceback


def test_certificates_without_a_ca_or_with_a_reserved_name(tmp_path: Path) -> None:
    with pytest.raises(MissingFile, match="no CA in"):
        issue_client(tmp_path, "bacpipes_central")
    with pytest.raises(UserError, match="unusable certificate name 'ca'"):
        issue_client(tmp_path, "ca")


def test_arguments_a_user_gives_the_core() -> None:
    with pytest.raises(UserError, match="a release carries no value"):
        Command(SITE, 1, 21.0, release=True)
    with pytest.raises(UserError, match="whole number of days >= 1"):
        validate_retention_days(0)


# --- through the database -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[Settings]:
    """One database for the module: a device with two setpoints, nothing else (no meter, no zones)."""
    with fresh_database() as dsn, psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.1')", (SITE,))
        for instance in (1, 2):
            conn.execute(
                "INSERT INTO point (site_id, device_id, object_type, object_instance, object_name, writable)"
                " VALUES (%s, 1, 'analog-value', %s, %s, true)", (SITE, instance, f"AHU{instance}-ZN-CLG-SP"))
        conn.commit()
        yield load_settings(None, database={"dsn": dsn}, site={"id": SITE})


def test_adding_a_user_with_an_unknown_role_stores_nothing(site: Settings) -> None:
    with connect(site.database.dsn) as conn:
        with pytest.raises(UserError, match="role must be one of viewer, operator, not 'admin'"):
            add_user(conn, "ana", "long enough", "admin")
        with pytest.raises(UserError, match="at least 8 characters"):
            add_user(conn, "ana", "short", "viewer")
        assert conn.execute("SELECT count(*) FROM app_users").fetchone() == (0,)


def test_limits_with_a_minimum_above_the_maximum_change_nothing(site: Settings) -> None:
    with pytest.raises(UserError, match=r"max_value = 20.0 would put a minimum above its maximum"):
        update_points(site, match="AHU*", limits={"min_value": "30", "max_value": "20"})
    with pytest.raises(UserError, match="qos must be 0, 1 or 2, not 5"):
        update_points(site, match="AHU*", qos=5)
    with pytest.raises(UserError, match="publish must be 'on' or 'off'"):
        update_points(site, match="AHU*", publish="yes")
    with connect(site.database.dsn) as conn:
        rows = conn.execute("SELECT min_value, max_value, qos, publish FROM point WHERE site_id = %s",
                            (SITE,)).fetchall()
    assert rows == [(None, None, None, True)] * 2


def test_unknown_points_times_and_intervals_are_named(site: Settings) -> None:
    with pytest.raises(UserError, match=r"unknown points at site 'test-site': \['AHU9-ZN-CLG-SP', 99\]"):
        load_readings(["AHU1-ZN-CLG-SP", "AHU9-ZN-CLG-SP", 99], settings=site)
    with pytest.raises(UserError, match="cannot read time '2026-13-01'"):
        load_readings(["AHU1-ZN-CLG-SP"], start="2026-13-01", settings=site)
    with pytest.raises(UserError, match="cannot read interval 'fortnightly'"):
        load_readings(["AHU1-ZN-CLG-SP"], every="fortnightly", settings=site)
    assert load_readings(["AHU1-ZN-CLG-SP"], settings=site).is_empty()  # a known point: no error


def test_a_site_without_a_meter_and_a_remote_grant_of_no_time(site: Settings) -> None:
    with pytest.raises(UserError, match="has no site meter"):
        site_hourly(site, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 8, tzinfo=UTC))
    with connect(site.database.dsn) as conn, pytest.raises(UserError, match="positive duration"):
        grant_remote(conn, SITE, timedelta(0), "test")
