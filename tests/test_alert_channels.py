"""The alert channels operators carry (Telegram, PagerDuty Events v2, SMS through an HTTP gateway), each sent
to an HTTP server of the test's own on loopback that records every request and answers as the real service
documents: the method, path, headers and JSON each API expects, PagerDuty's resolves paired with their
triggers, a failing channel not stopping the others, and no secret in an error."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bacpipes.alerts import Alert, deliver, raise_alert, resolve_alert
from bacpipes.replication import heartbeat
from bacpipes.settings import AlertSettings, Settings, load_settings
from central.alerts import run_alerts
from tests.brokers import free_port

SITE = "s1"
TOKEN = "123456:AAH-secret-bot-token"
ROUTING_KEY = "R0ut1ngKeyOfTheService0000000000"
SMS_TOKEN = "gateway-api-key-42"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Service:
    """An HTTP server on loopback that keeps every request and answers each with `status` and `reply`
    (a 404 echoes the path, as a careless proxy would: the redaction must catch it)."""

    def __init__(self, status: int = 200, reply: Any = None) -> None:
        self.requests: list[Request] = []
        self.status, self.reply = status, reply
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                service.requests.append(Request(self.command, self.path, dict(self.headers.items()),
                                                self.rfile.read(length)))
                reply = service.reply if service.status != 404 else f"Not Found: {self.path}"
                body = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
                self.send_response(service.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def telegram() -> Iterator[Service]:
    service = Service(200, {"ok": True, "result": {"message_id": 7, "chat": {"id": -1001}}})
    yield service
    service.close()


@pytest.fixture
def pagerduty() -> Iterator[Service]:
    service = Service(202, {"status": "success", "message": "Event processed"})
    yield service
    service.close()


@pytest.fixture
def gateway() -> Iterator[Service]:
    service = Service(200, {"queued": True})
    yield service
    service.close()


def alert(source: str = "alerts:agent_offline", message: str = "no heartbeat <for> 60 s & more",
          severity: str = "critical", point_id: int | None = None) -> Alert:
    return Alert(41, SITE, source, severity, message, datetime(2026, 11, 29, 5, 0, tzinfo=UTC),
                 point_id=point_id)


def conf(**channels: Any) -> AlertSettings:
    return AlertSettings(delivery_timeout_s=5, **channels)


def make(dsn: str, tmp_path: Path, **alerts: Any) -> Settings:
    """A site's settings with only the channels given (the rules as test_alerts sets them)."""
    return load_settings(None, site={"id": SITE}, database={"dsn": dsn},
                         alerts={"state_path": str(tmp_path / "alerts-state.json"), "disk_free_min": 0.0,
                                 "delivery_timeout_s": 5, **alerts})


def add_points(conn: psycopg.Connection, count: int) -> None:
    """Published points and no agent heartbeat: the agent_offline rule fires."""
    conn.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1001, '127.0.0.10')", (SITE,))
    for i in range(count):
        conn.execute("INSERT INTO point (site_id, device_id, object_type, object_instance, writable)"
                     " VALUES (%s, 1001, 'analog-value', %s, true)", (SITE, i))


def test_telegram_send_message(telegram: Service) -> None:
    done = deliver([alert(), alert("alerts:disk_free", "12 % free", "warning")],
                   conf(telegram_bot_token=TOKEN, telegram_chat_id="-1001", telegram_api_url=telegram.url))
    assert done.telegram_sent == 1 and done.telegram_failed == 0 and done.errors == []
    [request] = telegram.requests  # one message for the batch
    assert request.method == "POST" and request.path == f"/bot{TOKEN}/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert set(body) == {"chat_id", "text", "parse_mode"}
    assert body["chat_id"] == "-1001" and body["parse_mode"] == "HTML"
    assert body["text"] == ("<b>CRITICAL</b> alerts:agent_offline at s1\n"
                            "no heartbeat &lt;for&gt; 60 s &amp; more\n\n"
                            "<b>WARNING</b> alerts:disk_free at s1\n12 % free")


def test_telegram_storm_fits_one_message(telegram: Service) -> None:
    storm = [alert(message=f"zone {n} " + "x" * 200) for n in range(100)]
    deliver(storm, conf(telegram_bot_token=TOKEN, telegram_chat_id="@ops", telegram_api_url=telegram.url))
    [request] = telegram.requests
    text = request.json()["text"]
    assert len(text) <= 4096 and "zone 0 " in text and text.endswith(" more") and "zone 99 " not in text
    shown = text.count("<b>CRITICAL</b>")
    assert text.endswith(f"… and {100 - shown} more")


def test_telegram_refusal_names_the_channel_and_status_never_the_token(telegram: Service) -> None:
    settings = conf(telegram_bot_token=TOKEN, telegram_chat_id="-1001", telegram_api_url=telegram.url)
    telegram.status, telegram.reply = 400, {"ok": False, "error_code": 400,
                                            "description": "Bad Request: chat not found"}
    refused = deliver([alert()], settings)
    assert refused.telegram_failed == 1 and refused.telegram_sent == 0
    [error] = refused.errors
    assert error.startswith("telegram chat -1001: HTTP 400") and "chat not found" in error

    telegram.status = 404  # the answer echoes the URL, token and all
    [echoed] = deliver([alert()], settings).errors
    assert "HTTP 404" in echoed and "/bot<redacted>/sendMessage" in echoed and TOKEN not in echoed

    telegram.status, telegram.reply = 200, {"ok": False, "description": "Forbidden: bot was blocked"}
    [blocked] = deliver([alert()], settings).errors
    assert "bot was blocked" in blocked


def test_pagerduty_trigger_shape(pagerduty: Service) -> None:
    done = deliver([alert(severity="warning")], conf(pagerduty_routing_key=ROUTING_KEY,
                                                     pagerduty_url=pagerduty.url))
    assert done.pagerduty_sent == 1 and done.errors == []
    [request] = pagerduty.requests
    assert request.method == "POST" and request.path == "/v2/enqueue"
    assert request.headers["Content-Type"] == "application/json"
    event = request.json()
    assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
    assert event["dedup_key"] == "bacpipes/s1/alerts:agent_offline"
    payload = event["payload"]
    assert payload["summary"] == "[warning] alerts:agent_offline at s1: no heartbeat <for> 60 s & more"
    assert payload["source"] == SITE and payload["severity"] == "warning"
    assert payload["component"] == "alerts:agent_offline"
    assert payload["timestamp"] == "2026-11-29T05:00:00+00:00"
    assert payload["custom_details"]["alert_id"] == 41


def test_pagerduty_resolves_pair_with_triggers_per_point(db_dsn: str, pagerduty: Service) -> None:
    """Two points' alarms under one rule are two incidents; each resolve names its own."""
    settings = conf(pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        one, two = (raise_alert(conn, SITE, "alarms:limits", "warning", f"point {p} above its limit",
                                point_id=p) for p in (11, 12))
        deliver([one, two], settings)
        cleared = resolve_alert(conn, one.id or 0)
        assert cleared is not None and cleared.point_id == 11
        done = deliver([], settings, resolved=[cleared])
    assert done.pagerduty_sent == 1
    events = [r.json() for r in pagerduty.requests]
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [
        ("trigger", "bacpipes/s1/alarms:limits/point/11"), ("trigger", "bacpipes/s1/alarms:limits/point/12"),
        ("resolve", "bacpipes/s1/alarms:limits/point/11")]
    assert "payload" not in events[2] and events[2]["routing_key"] == ROUTING_KEY


def test_run_alerts_triggers_and_resolves_on_pagerduty(db_dsn: str, tmp_path: Path, pagerduty: Service,
                                                        telegram: Service) -> None:
    """A rule's alert raised, still open (nothing sent again), cleared: one trigger, one resolve, one key;
    Telegram hears of the raise only."""
    settings = make(db_dsn, tmp_path, pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url,
                    telegram_bot_token=TOKEN, telegram_chat_id="-1001", telegram_api_url=telegram.url)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_points(conn, 3)
    first = run_alerts(settings)
    assert first.as_json()["delivery"] == {"telegram_sent": 1, "telegram_failed": 0,
                                           "pagerduty_sent": 1, "pagerduty_failed": 0}
    assert run_alerts(settings).as_json()["delivery"] == {}  # still open: nothing new
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        heartbeat(conn, SITE, {"heartbeat_s": 10})
    back = run_alerts(settings)
    assert [a.source for a in back.resolved] == ["alerts:agent_offline"]
    assert back.as_json()["delivery"] == {"pagerduty_sent": 1, "pagerduty_failed": 0}
    trigger, resolve = (r.json() for r in pagerduty.requests)
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == "bacpipes/s1/alerts:agent_offline"
    assert len(telegram.requests) == 1 and "agent_offline" in telegram.requests[0].json()["text"]


def test_database_outage_trigger_resolved_once_it_answers(db_dsn: str, tmp_path: Path,
                                                          pagerduty: Service) -> None:
    """The outage is sent before it has a row: its resolve must still find its incident."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/bacpipes"
    pd = {"pagerduty_routing_key": ROUTING_KEY, "pagerduty_url": pagerduty.url}
    assert run_alerts(make(dead, tmp_path, db_down_s=0, **pd)).delivery.pagerduty_sent == 1
    back = run_alerts(make(db_dsn, tmp_path, **pd))
    assert back.delivery.pagerduty_sent == 1
    trigger, resolve = (r.json() for r in pagerduty.requests)
    assert trigger["payload"]["severity"] == "critical" and "not answering" in trigger["payload"]["summary"]
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == trigger["dedup_key"]


def test_sms_json_gateway_one_message_per_number(gateway: Service) -> None:
    done = deliver([alert(), alert("alerts:disk_free", "12 % free", "warning")], conf(
        sms_url=f"{gateway.url}/v1/messages?key={{token}}", sms_to=["+15551230001", "+15551230002"],
        sms_token=SMS_TOKEN, sms_headers={"Authorization": "Bearer {token}"},
        sms_body={"to": "{to}", "text": "{text}", "from": "BacPipes", "tags": ["{to}", 1]}))
    assert done.sms_sent == 2 and done.errors == []
    text = "BacPipes [critical] alerts:agent_offline at s1: no heartbeat <for> 60 s & more (+1 more)"
    for request, number in zip(gateway.requests, ["+15551230001", "+15551230002"], strict=True):
        assert request.method == "POST" and request.path == f"/v1/messages?key={SMS_TOKEN}"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Authorization"] == f"Bearer {SMS_TOKEN}"
        assert request.json() == {"to": number, "text": text, "from": "BacPipes", "tags": [number, 1]}


def test_sms_form_and_get_gateways(gateway: Service) -> None:
    long = alert(message="y" * 400)
    deliver([long], conf(sms_url=f"{gateway.url}/Messages.json", sms_to=["+15551230001"],
                         sms_body_format="form",
                         sms_body={"To": "{to}", "From": "+15550000000", "Body": "{text}"}))
    form = urllib.parse.parse_qs(gateway.requests[0].body.decode())
    assert gateway.requests[0].headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form["To"] == ["+15551230001"] and form["From"] == ["+15550000000"]
    assert len(form["Body"][0]) == 306 and form["Body"][0].endswith("y…")

    deliver([alert()], conf(sms_url=f"{gateway.url}/send?to={{to}}&msg={{text}}", sms_method="GET",
                            sms_to=["+15551230002"]))
    get = gateway.requests[1]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(get.path).query)
    assert get.method == "GET" and get.body == b"" and query["to"] == ["+15551230002"]
    assert query["msg"] == ["BacPipes [critical] alerts:agent_offline at s1: no heartbeat <for> 60 s & more"]


def test_a_failing_channel_does_not_stop_the_others(pagerduty: Service, gateway: Service) -> None:
    gateway.status, gateway.reply = 401, {"error": f"bad key {SMS_TOKEN}"}  # echoes the key back
    done = deliver([alert()], conf(
        webhook_url=f"http://127.0.0.1:{free_port()}/nobody",
        telegram_bot_token=TOKEN, telegram_chat_id="-1001", telegram_api_url=f"http://127.0.0.1:{free_port()}",
        pagerduty_routing_key=ROUTING_KEY, pagerduty_url=pagerduty.url,
        sms_url=f"{gateway.url}/send", sms_to=["+15551230001"], sms_token=SMS_TOKEN))
    assert done.as_json() == {"webhook_sent": 0, "webhook_failed": 1, "telegram_sent": 0,
                              "telegram_failed": 1, "pagerduty_sent": 1, "pagerduty_failed": 0,
                              "sms_sent": 0, "sms_failed": 1, "errors": done.errors}
    webhook, tg, sms = done.errors
    assert webhook.startswith("webhook alerts:agent_offline: unreachable")
    assert tg.startswith("telegram chat -1001: unreachable")
    assert sms.startswith("sms to +15551230001: HTTP 401") and "bad key <redacted>" in sms
    assert not any(secret in error for error in done.errors for secret in (TOKEN, ROUTING_KEY, SMS_TOKEN))
    assert len(pagerduty.requests) == 1


def test_secrets_come_from_the_environment_and_stay_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACPIPES_ALERTS__TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("BACPIPES_ALERTS__PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("BACPIPES_ALERTS__SMS_TOKEN", SMS_TOKEN)
    settings = load_settings(None).alerts
    assert settings.telegram_bot_token and settings.telegram_bot_token.get_secret_value() == TOKEN
    assert settings.pagerduty_routing_key and settings.pagerduty_routing_key.get_secret_value() == ROUTING_KEY
    assert settings.sms_token and settings.sms_token.get_secret_value() == SMS_TOKEN
    assert not any(secret in repr(settings) for secret in (TOKEN, ROUTING_KEY, SMS_TOKEN))
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.pagerduty_url == "https://events.pagerduty.com"
