"""Operations alerts against real databases, a local webhook sink and a local SMTP sink: each rule fires on
data that violates it and not on healthy data, is not raised twice while open, is resolved when it clears,
and new alerts reach both sinks once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller

from bacpipes.replication import heartbeat
from bacpipes.settings import Settings, load_settings
from central.alerts import judge_site_replication, run_alerts
from flows.ops import alerts_flow
from tests.brokers import free_port
from tests.pgcluster import PgCluster
from tests.test_flows import writers_of

SITE = "s1"


class WebhookSink:
    """An HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailSink:
    """aiosmtpd's handler interface: keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def bodies(self) -> list[str]:
        return [m.get_payload(decode=True).decode() for _, m in self.messages]


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.close()


@pytest.fixture
def mail() -> Iterator[tuple[MailSink, int]]:
    sink, port = MailSink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


def make(dsn: str, tmp_path: Path, webhook_url: str | None = None, smtp_port: int | None = None,
         site: str = SITE, **alerts: Any) -> Settings:
    conf: dict[str, Any] = {"state_path": str(tmp_path / "alerts-state.json"), "disk_free_min": 0.0,
                            "webhook_url": webhook_url, "mail_to": ["ops@example.com"],
                            "mail_from": "bacpipes@example.com", "smtp_starttls": False}
    if smtp_port:
        conf.update(smtp_host="127.0.0.1", smtp_port=smtp_port)
    return load_settings(None, site={"id": site}, database={"dsn": dsn}, alerts={**conf, **alerts})


def add_points(conn: psycopg.Connection, site: str, count: int) -> list[int]:
    conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1001, '127.0.0.10')"
                 " ON CONFLICT DO NOTHING", (site,))
    return [conn.execute("INSERT INTO point (site_id, device_id, object_type, object_instance, writable)"
                         " VALUES (%s, 1001, 'analog-value', %s, true) RETURNING point_id", (site, i)
                         ).fetchone()[0] for i in range(count)]


def add_outcomes(conn: psycopg.Connection, site: str, point: int, status: str, count: int) -> None:
    for _ in range(count):
        command = conn.execute(
            "INSERT INTO write_commands (site_id, point_id, command_type, value, created_by, source)"
            " VALUES (%s, %s, 'write_value', 21, 'test', 'cli') RETURNING id", (site, point)).fetchone()[0]
        conn.execute("INSERT INTO command_events (command_id, site_id, status) VALUES (%s, %s, %s)",
                     (command, site, status))


def healthy_site(conn: psycopg.Connection) -> list[int]:
    points = add_points(conn, SITE, 10)
    heartbeat(conn, SITE, {"heartbeat_s": 10, "reads_failed": 0, "readings": 100, "requests": 10})
    add_outcomes(conn, SITE, points[0], "completed", 10)
    conn.cursor().executemany("INSERT INTO point_state (site_id, point_id, value, time, last_poll)"
                              " VALUES (%s, %s, 21, now(), now())", [(SITE, p) for p in points])
    return points


def open_alerts(dsn: str) -> dict[tuple[str, str | None], str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT source, site_id, message FROM alerts WHERE resolved_at IS NULL")
    return {(source, site): message for source, site, message in rows}


def raised(run: Any) -> list[str]:
    return sorted(a.source for a in run.raised)


def test_healthy_site_raises_nothing(db_dsn: str, tmp_path: Path, webhook: WebhookSink) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        healthy_site(conn)
    run = run_alerts(make(db_dsn, tmp_path, webhook.url))
    assert run.database == "up" and run.central is False
    assert run.raised == [] and run.open == 0 and webhook.bodies == []


def test_agent_offline_raised_once_delivered_once_and_resolved(
    db_dsn: str, tmp_path: Path, webhook: WebhookSink, mail: tuple[MailSink, int]
) -> None:
    sink, port = mail
    settings = make(db_dsn, tmp_path, webhook.url, port)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_points(conn, SITE, 3)
    first = run_alerts(settings)
    assert raised(first) == ["alerts:agent_offline"]
    assert first.delivery.webhook_sent == 1 and first.delivery.mail_sent == 1
    [body] = webhook.bodies
    assert body["source"] == "alerts:agent_offline" and body["site_id"] == SITE
    assert body["severity"] == "critical" and "no heartbeat from the edge agent" in body["message"]
    assert "3 published points" in body["text"]
    [(to, message)] = sink.messages
    assert to == ["ops@example.com"] and message["From"] == "bacpipes@example.com"
    assert "alerts:agent_offline at s1" in message["Subject"]
    assert "no heartbeat from the edge agent, and the site has 3 published points" in sink.bodies()[0]

    again = run_alerts(settings)  # still offline: no second alert, nothing sent again
    assert again.raised == [] and again.resolved == [] and again.open == 1
    assert len(webhook.bodies) == 1 and len(sink.messages) == 1

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        heartbeat(conn, SITE, {"heartbeat_s": 10})
    back = run_alerts(settings)
    assert [a.source for a in back.resolved] == ["alerts:agent_offline"] and back.resolved[0].resolved_at
    assert back.raised == [] and open_alerts(db_dsn) == {}

    with psycopg.connect(db_dsn, autocommit=True) as conn:  # silent for 6 heartbeats
        conn.execute("UPDATE site_heartbeat SET at = now() - interval '60 seconds'")
    silent = run_alerts(settings)
    assert raised(silent) == ["alerts:agent_offline"]
    assert "edge agent silent for 60 s (heartbeat every 10 s)" in silent.raised[0].message
    assert len(webhook.bodies) == 2 and len(sink.messages) == 2
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 2


def test_write_failure_rate(db_dsn: str, tmp_path: Path) -> None:
    settings = make(db_dsn, tmp_path)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        point = healthy_site(conn)[0]
        conn.execute("DELETE FROM command_events")
        add_outcomes(conn, SITE, point, "failed", 4)
        add_outcomes(conn, SITE, point, "rejected", 50)  # validation refusals are not write failures
    assert run_alerts(settings).raised == []  # 4 outcomes: too few to judge
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_outcomes(conn, SITE, point, "completed", 1)
    run = run_alerts(settings)
    assert raised(run) == ["alerts:write_failures"]
    assert run.raised[0].message.startswith("write failure rate 80% > 5% in the last hour (4 failed of 5")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_outcomes(conn, SITE, point, "completed", 95)  # 4 of 100 = 4 %
    assert [a.source for a in run_alerts(settings).resolved] == ["alerts:write_failures"]
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # outcomes older than an hour do not count
        conn.execute("DELETE FROM command_events WHERE status = 'completed'")
        conn.execute("ALTER TABLE command_events DISABLE TRIGGER command_events_append_only")
        conn.execute("UPDATE command_events SET at = now() - interval '2 hours'")
        add_outcomes(conn, SITE, point, "completed", 10)
    assert run_alerts(settings).raised == []


def test_read_failure_rate_from_point_state(db_dsn: str, tmp_path: Path) -> None:
    settings = make(db_dsn, tmp_path)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        points = healthy_site(conn)
        fail = ("UPDATE point_state SET last_error = 'timeout', last_error_at = last_poll"
                " WHERE point_id = ANY(%s)")
        conn.execute(fail, (points[:1],))  # 1 of 10 = 10 %: not above
    assert run_alerts(settings).raised == []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(fail, (points[:3],))
    run = run_alerts(settings)
    assert raised(run) == ["alerts:read_failures"]
    assert run.raised[0].message == ("read failure rate 30% > 10%: 3 of 10 points polled in the last hour "
                                     "failed their latest read")
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # the next poll reads them again
        conn.execute("UPDATE point_state SET last_poll = now() + interval '1 second'")
    assert [a.source for a in run_alerts(settings).resolved] == ["alerts:read_failures"]


def test_disk_free(db_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        healthy_site(conn)
        data_directory = conn.execute("SHOW data_directory").fetchone()[0]
    # no disk_path: the local database's data directory (we are superuser here)
    run = run_alerts(make(db_dsn, tmp_path, disk_free_min=1.0))
    assert raised(run) == ["alerts:disk_free"] and f"free < 100% at {data_directory}" in run.raised[0].message
    assert run_alerts(make(db_dsn, tmp_path, disk_free_min=1.0, disk_path=str(tmp_path))).raised == []
    assert [a.source for a in run_alerts(make(db_dsn, tmp_path, disk_free_min=0.0)).resolved] == [
        "alerts:disk_free"]


def test_dead_webhook_does_not_stop_mail_or_storage(db_dsn: str, tmp_path: Path,
                                                     mail: tuple[MailSink, int]) -> None:
    sink, port = mail
    settings = make(db_dsn, tmp_path, f"http://127.0.0.1:{free_port()}/nobody", port, delivery_timeout_s=2)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_points(conn, SITE, 1)
    run = run_alerts(settings)
    assert run.delivery.webhook_failed == 1 and run.delivery.mail_sent == 1
    assert "no heartbeat from the edge agent" in sink.bodies()[0]
    assert list(open_alerts(db_dsn)) == [("alerts:agent_offline", SITE)]


def test_database_down_goes_straight_to_the_sinks(db_dsn: str, tmp_path: Path, webhook: WebhookSink,
                                                  mail: tuple[MailSink, int]) -> None:
    sink, port = mail
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/bacpipes"
    patient = run_alerts(make(dead, tmp_path, webhook.url, port, db_down_s=60))
    assert patient.database == "down" and patient.raised == [] and webhook.bodies == []  # not a minute yet

    down = run_alerts(make(dead, tmp_path, webhook.url, port, db_down_s=0))
    assert down.database == "down" and raised(down) == ["alerts:db_down"]
    [body] = webhook.bodies
    assert body["severity"] == "critical" and body["site_id"] == SITE
    assert f"database 127.0.0.1:{dead.split(':')[2].split('/')[0]}/bacpipes not answering" in body["message"]
    assert "not answering" in sink.bodies()[0] and len(sink.messages) == 1
    assert run_alerts(make(dead, tmp_path, webhook.url, port, db_down_s=0)).raised == []  # once per outage
    assert len(webhook.bodies) == 1 and len(sink.messages) == 1

    back = run_alerts(make(db_dsn, tmp_path, webhook.url, port))  # the same state file: the record is kept
    assert back.database == "up" and [a.source for a in back.resolved] == ["alerts:db_down"]
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT site_id, severity, message, raised_at < resolved_at FROM alerts")
        row = row.fetchone()
    assert row[:2] == (SITE, "critical") and "not answering" in row[2] and row[3]
    assert not (tmp_path / "alerts-state.json").exists()


def test_central_judges_each_registered_site(db_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        for site in ("a", "b", "c"):
            conn.execute("INSERT INTO site (site_id, readings_subscription, meta_subscription)"
                         " VALUES (%s, %s, %s)", (site, f"r_{site}", f"m_{site}"))
            add_points(conn, site, 2)
        heartbeat(conn, "a", {"heartbeat_s": 10, "reads_failed": 50, "readings": 50, "requests": 5})
        heartbeat(conn, "b", {"heartbeat_s": 10, "reads_failed": 0, "readings": 500})
        conn.execute("UPDATE site_heartbeat SET at = now() - interval '10 minutes' WHERE site_id = 'b'")
        heartbeat(conn, "c")  # written by `site link`: the agent never ran
    settings = make(db_dsn, tmp_path, site="central")
    run = run_alerts(settings)
    assert run.central is True
    assert {(a.source, a.site_id) for a in run.raised} == {
        ("alerts:read_failures", "a"), ("alerts:replication_lag", "b"), ("alerts:agent_offline", "c")}
    by_site = {a.site_id: a.message for a in run.raised}
    assert by_site["a"] == "read failure rate 50% > 10%: 50 of 100 reads failed since the agent started"
    assert "replication lag 600 s > 300 s" in by_site["b"]
    assert by_site["c"] == "no heartbeat from the edge agent, and the site has 2 published points"

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        heartbeat(conn, "b", {"heartbeat_s": 10, "reads_failed": 0, "readings": 500})
        conn.execute("DELETE FROM site WHERE site_id = 'a'")  # unlinked: no longer watched
    later = run_alerts(settings)
    assert later.raised == []
    assert {(a.source, a.site_id) for a in later.resolved} == {
        ("alerts:read_failures", "a"), ("alerts:replication_lag", "b")}
    assert list(open_alerts(db_dsn)) == [("alerts:agent_offline", "c")]


def test_site_replication_slots(tmp_path: Path) -> None:
    from bacpipes.db import migrate

    with PgCluster({"wal_level": "logical"}) as cluster:
        dsn = cluster.create_database("site")
        migrate(dsn)
        settings = make(dsn, tmp_path)
        assert run_alerts(settings).raised == []  # not linked: nothing to judge
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('bacpipes_readings_x', 'pgoutput')")
        run = run_alerts(settings)
        assert raised(run) == ["alerts:replication_lag"]
        assert run.raised[0].message == (
            "slot bacpipes_readings_x has no subscriber connected (central unreachable?)")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('bacpipes_readings_x')")
        assert [a.source for a in run_alerts(settings).resolved] == ["alerts:replication_lag"]
    slots = [("bacpipes_r", False, "lost", None, None), ("bacpipes_m", True, "reserved", 400.0, 1.0)]
    lost = judge_site_replication("s1", 300, slots, (True, True, 2.0))
    assert lost.severity == "critical" and lost.message == (
        "slot bacpipes_r is lost: central must `site resync`; slot bacpipes_m lags 400 s > 300 s")
    slots = [("bacpipes_r", True, "reserved", None, 5.0)]
    quiet = judge_site_replication("s1", 300, slots, (True, False, None))
    assert quiet.message == "subscription bacpipes_commands to central is not running"


def test_alerts_flow_runs_once(prefect, db_dsn: str, tmp_path: Path, webhook: WebhookSink,
                               mail: tuple[MailSink, int]) -> None:
    sink, port = mail
    conf = tmp_path / "site.toml"
    conf.write_text(
        f'[site]\nid = "{SITE}"\n[database]\ndsn = "{db_dsn}"\n'
        f'[alerts]\nwebhook_url = "{webhook.url}"\nsmtp_host = "127.0.0.1"\nsmtp_port = {port}\n'
        f'smtp_starttls = false\nmail_to = ["ops@example.com"]\ndisk_free_min = 0.0\n'
        f'state_path = "{tmp_path / "state.json"}"\n')
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_points(conn, SITE, 1)
    result = alerts_flow(str(conf))
    assert result["database"] == "up" and [a["source"] for a in result["raised"]] == ["alerts:agent_offline"]
    assert result["delivery"] == {"webhook_sent": 1, "webhook_failed": 0, "mail_sent": 1, "mail_failed": 0}
    assert webhook.bodies[0]["source"] == "alerts:agent_offline" and len(sink.messages) == 1


def test_alerts_are_written_in_one_place() -> None:
    """Every writer (the rules, the flows, the edge guard) goes through bacpipes.alerts.raise_alert."""
    assert writers_of("alerts") == ["bacpipes/alerts.py"]
