"""Audit completeness and secrets (issue 14, item 7): every command attempt leaves an audit row with a reason,
whatever bytes it carries (replays included); no command shows a DSN's password; backups are private (0600
in a 0700 folder); ingest_rejects is kept no longer than the readings. Real broker, agent, virtual building,
PostgreSQL and pg_dump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bacpipes.db import redact_dsn
from bacpipes.partitions import apply_retention
from bacpipes.settings import load_settings
from central.backups import backup
from sim.server import ThreadedBuilding
from tests.conftest import make_settings
from tests.edge_harness import discover_site, ready_agent
from tests.test_writes import commander, point_id, slots

BASE = "127.0.0.214"  # this file's own addresses: other suites run their buildings at the same time
AGENT = "127.0.0.213/8:47961"
SETPOINT = "analog-value,1"
SECRET = "s3cr3t-Pw"


@pytest.fixture
def building() -> Iterator[ThreadedBuilding]:
    with ThreadedBuilding(devices=1, address_base=BASE, seed=3, speed=0, start=datetime(2026, 7, 1, 13)) as b:
        yield b


def agent_settings(db_dsn: str, url: str, tmp_path: Path):
    return make_settings(db_dsn, url, tmp_path, bacnet={"address": AGENT}, discovery={"targets": [BASE]},
                         polling={"default_interval_s": 2}, writes={"poll_interval_s": 1})


def wait_rows(dsn: str, query: str, params: tuple, count: int, timeout: float = 10.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(query, params).fetchall()
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def test_a_replayed_command_runs_once_and_each_replay_is_audited(building, db_dsn, broker, tmp_path):
    settings = agent_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    command_id = str(uuid.uuid4())
    original = {"pointId": sp, "value": 22.0, "priority": 8, "commandId": command_id}
    with ready_agent(settings), commander(broker.url, settings) as op:
        op.send(original)
        assert op.result(command_id)["status"] == "completed"
        op.send(original)  # the same bytes again: a replay (or a QoS 1 redelivery)
        op.send({**original, "value": 25.0})  # the same id carrying another command
        attempts = wait_rows(
            db_dsn, "SELECT same_content, detail, source FROM command_attempts WHERE command_id = %s"
            " ORDER BY at", (command_id,), 2)
    assert [(same, source) for same, _, source in attempts] == [(True, "mqtt"), (False, "mqtt")]
    assert all("not run" in detail for _, detail, _ in attempts), attempts
    with psycopg.connect(db_dsn) as conn:
        commands = conn.execute("SELECT count(*) FROM write_commands").fetchone()[0]
        events = conn.execute("SELECT status FROM command_events WHERE command_id = %s ORDER BY at",
                              (command_id,)).fetchall()
    assert commands == 1 and [e for (e,) in events] == ["accepted", "executing", "completed"]
    assert slots(building, 1001, SETPOINT)[7] == 22.0  # ran once; the reused id's 25 never reached the device


def test_every_unstorable_or_unreadable_command_is_rejected_and_audited(building, db_dsn, broker, tmp_path):
    settings = agent_settings(db_dsn, broker.url, tmp_path)
    discover_site(settings)
    sp = point_id(db_dsn, 1001, SETPOINT)
    before = slots(building, 1001, SETPOINT)
    bad: list[tuple[bytes, str]] = [
        (b'{"pointId": 1, "value": \xff\xfe}', "malformed JSON"),  # not UTF-8
        (json.dumps({"value": 20, "reason": "x" * 2_000_000}).encode(), "pointId must be an integer"),  # 2 MB
        (b'"a string"', "JSON object"),
        (b"[" * 100_000, "malformed JSON"),  # nested past the parser's depth
        (json.dumps({"pointId": sp, "value": 20, "reason": "a\u0000b"}).encode(), "unstorable command"),
        (json.dumps({"pointId": sp, "value": 20, "createdBy": "\u0000"}).encode(), "unstorable command"),
        (json.dumps({"pointId": 10**30, "value": 20}).encode(), "unstorable command"),  # past bigint
        (b'{"pointId": %d, "value": 1%s}' % (sp, b"0" * 400), "unreadable command"),  # past a float
    ]
    with ready_agent(settings), commander(broker.url, settings) as op:
        for payload, expected in bad:
            op.send(payload)
            result = op.result_matching(lambda body, e=expected: e in (body.get("error") or ""))
            assert result["status"] == "rejected", (payload[:80], result)
        rejected = wait_rows(
            db_dsn, "SELECT error_message FROM write_command_status WHERE status = 'rejected'"
            " AND error_message IS NOT NULL AND executed_at IS NULL", (), len(bad))
    assert len(rejected) == len(bad)  # one audited rejection per message, none executed
    assert slots(building, 1001, SETPOINT) == before


@pytest.mark.parametrize(("dsn", "shown"), [
    (f"postgresql://bacpipes:{SECRET}@db.example:5432/site", "postgresql://bacpipes:***@db.example:5432/site"),
    (f"postgres://u@h/site?sslmode=require&password={SECRET}", "postgres://u@h/site?sslmode=require&password=***"),
    (f"host=h user=u password={SECRET} dbname=site", "host=h user=u password=*** dbname=site"),
    (f"host=h password = '{SECRET} x' dbname=site", "host=h password = *** dbname=site"),
    ("postgresql://postgres@127.0.0.1:5432/bacpipes", "postgresql://postgres@127.0.0.1:5432/bacpipes"),
])
def test_redact_dsn_hides_the_password_in_either_form(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    if "***" in shown:
        assert conninfo_to_dict(redact_dsn(dsn))["password"] == "***"  # still parses, minus the secret
    assert SECRET not in redact_dsn(f"host=h password=my {SECRET}")  # unparseable: nothing of it shown


def bacpipes(tmp_path: Path, dsn: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    config = tmp_path / f"{uuid.uuid4().hex[:6]}.toml"
    config.write_text(f"[database]\ndsn = {json.dumps(dsn)}\n")
    return subprocess.run([sys.executable, "-m", "bacpipes.cli", *args, "--config", str(config)],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_no_command_shows_a_dsn_password(db_dsn: str, tmp_path: Path) -> None:
    # the test server trusts loopback, so a DSN with a password still connects: the password is only shown
    with_password = make_conninfo(db_dsn, password=SECRET)
    added = bacpipes(tmp_path, with_password, "users", "add", "ana", "--role", "viewer", "--password-stdin",
                     stdin="correct horse battery\n")
    assert added.returncode == 0, added.stderr
    assert SECRET not in added.stdout + added.stderr
    assert f"saved in database {conninfo_to_dict(db_dsn)['dbname']}" in added.stdout
    for broken in (f"host=127.0.0.1 user=postgres password=my {SECRET} dbname=x",  # an unquoted space
                   f"postgresql://postgres:my {SECRET}@127.0.0.1/x"):
        run = bacpipes(tmp_path, broken, "db", "migrate")
        assert run.returncode == 2 and "invalid database connection string" in run.stderr, run.stderr
        assert SECRET not in run.stdout + run.stderr and "Traceback" not in run.stderr


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_backups_are_private_files_in_a_private_folder(db_dsn: str, tmp_path: Path) -> None:
    fresh, shared = tmp_path / "new" / "backups", tmp_path / "existing"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with umask(0o022):  # a usual umask: files 0644 and folders 0755 unless the code says otherwise
        for directory in (fresh, shared):
            settings = load_settings(None, site={"id": "s1"}, database={"dsn": db_dsn},
                                     backups={"dir": str(directory)})
            made = backup(settings)
            assert made.size > 0
            assert made.path.stat().st_mode & 0o777 == 0o600, oct(made.path.stat().st_mode)
            assert directory.stat().st_mode & 0o777 == 0o700, oct(directory.stat().st_mode)


def test_retention_deletes_ingest_rejects_older_than_the_readings(db_dsn: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for days in (30, 8, 6, 0):
            conn.execute("INSERT INTO ingest_rejects (site_id, topic, payload, reason, received_at)"
                         " VALUES ('s1', 't', '\\x00ff', %s, %s)", (f"{days} d", now - timedelta(days=days)))
        report = apply_retention(conn, days=7, now=now)
        kept = [r for (r,) in conn.execute("SELECT reason FROM ingest_rejects ORDER BY received_at")]
    assert report.rejects_deleted == 2 and kept == ["6 d", "0 d"]
    assert "deleted 2 ingest rejects" in report.summary()
