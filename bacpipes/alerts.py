"""The one writer of the `alerts` table and the one way out of it (webhook, mail, Telegram, PagerDuty,
SMS), shared by central's rules and flows and the site's edge (its guard and its out-of-band alarms): `edge/`
and `central/` never import each other, so both live in the core. The rules stay in `central.alerts`."""

from __future__ import annotations

import html
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import psycopg

from bacpipes.settings import AlertSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    id: int | None
    site_id: str | None
    source: str
    severity: str
    message: str
    raised_at: datetime
    resolved_at: datetime | None = None
    point_id: int | None = None  # what a point's alarm is about (bacpipes.alarms): part of its PagerDuty key

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["point_id"]  # the webhook's body stays as it was
        out["raised_at"] = self.raised_at.isoformat()
        out["resolved_at"] = self.resolved_at.isoformat() if self.resolved_at else None
        out["text"] = self.text()
        return out

    def text(self) -> str:
        where = f" at {self.site_id}" if self.site_id else ""
        return f"[{self.severity}] {self.source}{where}: {self.message}"


COLUMNS = "id, site_id, source, severity, message, raised_at, resolved_at"
# point_id (sql/022) on a database of any age: a missing column reads as NULL
POINT_ID = "(to_jsonb(alerts) ->> 'point_id')::bigint"


def raise_alert(conn: psycopg.Connection, site_id: str | None, source: str, severity: str, message: str, *,
                raised_at: datetime | None = None, resolved: bool = False, point_id: int | None = None,
                equipment: str | None = None) -> Alert:
    """Store one alert: the only writer of `alerts`, for the rules here and for the flows alike. The caller
    sends what it raised with `deliver` once its transaction is committed (`run_alerts` does for the rules),
    so an alert from a flow reaches the webhook and the mail as a rule's does. `raised_at` and `resolved`
    record an episode that is already over (the database outage, stored once it answers again). `point_id`
    and `equipment` say what an alarm is about (bacpipes.alarms: a point out of band), for the Alarms page."""
    # the columns of sql/022 only when given: a caller without them works on a database of any age
    about = {"point_id": point_id, "equipment": equipment} if point_id is not None or equipment else {}
    extra = "".join(f", {column}" for column in about)
    row = conn.execute(
        f"INSERT INTO alerts (site_id, source, severity, message, raised_at, resolved_at{extra})"
        f" VALUES (%s, %s, %s, %s, coalesce(%s, now()), CASE WHEN %s THEN now() END{', %s' * len(about)})"
        f" RETURNING {COLUMNS}",
        (site_id, source, severity, message, raised_at, resolved, *about.values()),
    ).fetchone()
    return Alert(*row, point_id=point_id)  # type: ignore[misc]


def resolve_alert(conn: psycopg.Connection, alert_id: int) -> Alert | None:
    """Close an open alert (its condition cleared); None when it was closed already."""
    row = conn.execute(f"UPDATE alerts SET resolved_at = now() WHERE id = %s AND resolved_at IS NULL"
                       f" RETURNING {COLUMNS}, {POINT_ID}", (alert_id,)).fetchone()
    return Alert(*row) if row else None  # type: ignore[misc]


# --- delivery -------------------------------------------------------------------------------------

CHANNELS = ("webhook", "mail", "telegram", "pagerduty", "sms")
TELEGRAM_MAX_CHARS = 4000  # sendMessage takes 4096 after entity parsing; the markup's margin on top
SMS_MAX_CHARS = 306  # two concatenated GSM-7 segments: enough for one alert, no storm of parts
_PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class Delivery:
    """What went out, per channel (messages sent and failed), and each failure's reason: channel, what,
    HTTP status, never a secret."""

    webhook_sent: int = 0
    webhook_failed: int = 0
    mail_sent: int = 0
    mail_failed: int = 0
    telegram_sent: int = 0
    telegram_failed: int = 0
    pagerduty_sent: int = 0
    pagerduty_failed: int = 0
    sms_sent: int = 0
    sms_failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The channels that had something to carry (and the errors, if any): a run's report names only
        what is in use."""
        out: dict[str, Any] = {}
        for channel in CHANNELS:
            sent, failed = getattr(self, f"{channel}_sent"), getattr(self, f"{channel}_failed")
            if sent or failed:
                out |= {f"{channel}_sent": sent, f"{channel}_failed": failed}
        if self.errors:
            out["errors"] = list(self.errors)
        return out


def deliver(alerts: list[Alert], conf: AlertSettings, resolved: list[Alert] | None = None) -> Delivery:
    """New alerts to every channel set: the webhook one POST each, e-mail, Telegram and SMS one message per
    batch, PagerDuty one trigger each. `resolved` (alerts whose condition cleared) go to PagerDuty only,
    as resolves: an incident there stays open until told, while the other channels never announced
    resolutions and a message per cleared alert would be noise there. A failure is logged and counted, never
    raised: the alert is already stored, and the other channels must still go out."""
    done = Delivery()
    secrets = _secrets(conf)
    if alerts and conf.webhook_url:
        url = conf.webhook_url
        for alert in alerts:
            _attempt(done, "webhook", alert.source, secrets,
                     lambda a=alert: post_webhook(url, a.as_json(), conf.delivery_timeout_s))
    if alerts and conf.smtp_host and conf.mail_to:
        _attempt(done, "mail", f"{len(alerts)} alert(s)", secrets, lambda: send_mail(alerts, conf))
    if alerts and conf.telegram_bot_token and conf.telegram_chat_id:
        _attempt(done, "telegram", f"chat {conf.telegram_chat_id}", secrets,
                 lambda: send_telegram(alerts, conf))
    if conf.pagerduty_routing_key:
        events = [(a, "trigger") for a in alerts] + [(a, "resolve") for a in resolved or []]
        for alert, action in events:
            _attempt(done, "pagerduty", f"{action} {pagerduty_dedup_key(alert)}", secrets,
                     lambda a=alert, act=action: send_pagerduty(a, act, conf))
    if alerts and conf.sms_url:
        for number in conf.sms_to:
            _attempt(done, "sms", f"to {number}", secrets, lambda n=number: send_sms(alerts, n, conf))
    return done


def _attempt(done: Delivery, channel: str, what: str, secrets: list[str], send: Callable[[], object]) -> None:
    """One message on one channel, counted either way; a failure's reason is redacted before it is kept or
    logged (a Telegram URL holds the bot's token, a gateway may echo its key)."""
    try:
        send()
    except Exception as exc:
        error = redact(f"{channel} {what}: {describe(exc)}", secrets)
        log.warning("alert not delivered: %s", error)
        done.errors.append(error)
        setattr(done, f"{channel}_failed", getattr(done, f"{channel}_failed") + 1)
    else:
        setattr(done, f"{channel}_sent", getattr(done, f"{channel}_sent") + 1)


def describe(exc: BaseException) -> str:
    """An HTTP failure as its status and the service's own words (Telegram's `description`, PagerDuty's
    `errors`), cut short; anything else as its type and text."""
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read(500).decode("utf-8", "replace").strip() if exc.fp else ""
        return f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
        text = text.replace(urllib.parse.quote(secret, safe=""), "<redacted>")
    return text


def _secrets(conf: AlertSettings) -> list[str]:
    values = [conf.smtp_password] + [s.get_secret_value() if s else None for s in
                                     (conf.telegram_bot_token, conf.pagerduty_routing_key, conf.sms_token)]
    return [v for v in values if v]


def _request(url: str, body: bytes | None, content_type: str | None, timeout_s: float,
             headers: dict[str, str] | None = None, method: str = "POST") -> bytes:
    """One HTTP request; urllib raises on 4xx/5xx (HTTPError, which `describe` reads)."""
    all_headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    request = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    _request(url, json.dumps(payload).encode(), "application/json", timeout_s)


# --- Telegram: https://core.telegram.org/bots/api#sendmessage


def send_telegram(alerts: list[Alert], conf: AlertSettings) -> None:
    token = conf.telegram_bot_token.get_secret_value() if conf.telegram_bot_token else ""
    url = f"{conf.telegram_api_url.rstrip('/')}/bot{token}/sendMessage"
    body = {"chat_id": conf.telegram_chat_id, "text": telegram_text(alerts), "parse_mode": "HTML"}
    answer = _request(url, json.dumps(body).encode(), "application/json", conf.delivery_timeout_s)
    reply = json.loads(answer or b"{}")
    if reply.get("ok") is not True:  # the Bot API answers {"ok": false, "description": ...} on refusal
        raise RuntimeError(f"Telegram refused: {reply.get('description', answer[:200])}")


def telegram_text(alerts: list[Alert]) -> str:
    """One message for the batch (a storm must not hit the Bot API's per-chat rate limit), HTML-escaped
    (parse_mode HTML: only <, > and & need it), as many alerts as fit."""
    blocks: list[str] = []
    for n, alert in enumerate(alerts):
        where = alert.site_id or "central"
        block = (f"<b>{html.escape(alert.severity.upper())}</b> {html.escape(alert.source)} at "
                 f"{html.escape(where)}\n{html.escape(alert.message)}")
        rest = f"\n\n… and {len(alerts) - n} more"
        if sum(len(b) + 2 for b in blocks) + len(block) + len(rest) > TELEGRAM_MAX_CHARS:
            blocks.append(rest.strip())
            break
        blocks.append(block)
    return "\n\n".join(blocks)


# --- PagerDuty Events API v2: https://developer.pagerduty.com/docs/events-api-v2/overview/


def pagerduty_dedup_key(alert: Alert) -> str:
    """Stable per condition: rule (source), site and point, never the row id, so the resolve of a cleared
    alert pairs with its trigger (the database-outage alert is sent before it has a row), and a re-raise
    after a resolve opens a new incident under the same key."""
    key = f"bacpipes/{alert.site_id or 'central'}/{alert.source}"
    return (key + (f"/point/{alert.point_id}" if alert.point_id is not None else ""))[:255]


def pagerduty_event(alert: Alert, action: str, routing_key: str) -> dict[str, Any]:
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action,
                             "dedup_key": pagerduty_dedup_key(alert)}
    if action == "trigger":
        severity = alert.severity if alert.severity in _PAGERDUTY_SEVERITIES else "error"
        event["payload"] = {
            "summary": alert.text()[:1024], "source": alert.site_id or "central", "severity": severity,
            "timestamp": alert.raised_at.isoformat(), "component": alert.source,
            "group": alert.site_id or "central",
            "custom_details": {"message": alert.message, "alert_id": alert.id, "site_id": alert.site_id,
                               "point_id": alert.point_id, "severity": alert.severity},
        }
        event["client"] = "BacPipes"
    return event


def send_pagerduty(alert: Alert, action: str, conf: AlertSettings) -> None:
    key = conf.pagerduty_routing_key.get_secret_value() if conf.pagerduty_routing_key else ""
    body = json.dumps(pagerduty_event(alert, action, key)).encode()
    url = f"{conf.pagerduty_url.rstrip('/')}/v2/enqueue"
    _request(url, body, "application/json", conf.delivery_timeout_s)


# --- SMS through an HTTP gateway (settings: sms_url, sms_body, sms_headers)


def sms_text(alerts: list[Alert]) -> str:
    """The batch's first alert and how many more, cut to SMS_MAX_CHARS: an SMS is read on a lock screen."""
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    text = f"BacPipes {alerts[0].text()}"
    if len(text) + len(more) > SMS_MAX_CHARS:
        text = text[: SMS_MAX_CHARS - len(more) - 1] + "…"
    return text + more


def send_sms(alerts: list[Alert], number: str, conf: AlertSettings) -> None:
    values = {"{to}": number, "{text}": sms_text(alerts),
              "{token}": conf.sms_token.get_secret_value() if conf.sms_token else ""}
    url = _fill(conf.sms_url or "", {k: urllib.parse.quote(v, safe="") for k, v in values.items()})
    headers = {name: _fill(value, values) for name, value in conf.sms_headers.items()}
    if conf.sms_method == "GET":
        body, content_type = None, None
    elif conf.sms_body_format == "form":
        fields = _fill_tree(conf.sms_body, values)
        body, content_type = urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"
    else:
        body, content_type = json.dumps(_fill_tree(conf.sms_body, values)).encode(), "application/json"
    _request(url, body, content_type, conf.delivery_timeout_s, headers, conf.sms_method)


def _fill(template: str, values: dict[str, str]) -> str:
    """Plain replacement of {to}, {text}, {token}: other braces (a JSON header, say) stay as written."""
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template


def _fill_tree(tree: Any, values: dict[str, str]) -> Any:
    if isinstance(tree, str):
        return _fill(tree, values)
    if isinstance(tree, dict):
        return {key: _fill_tree(value, values) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_fill_tree(value, values) for value in tree]
    return tree


# --- e-mail


def send_mail(alerts: list[Alert], conf: AlertSettings) -> None:
    msg = EmailMessage()
    first = alerts[0]
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    msg["Subject"] = f"BacPipes {first.severity}: {first.source} at {first.site_id or 'central'}{more}"
    msg["From"] = conf.mail_from
    msg["To"] = ", ".join(conf.mail_to)
    lines = [f"{a.raised_at.isoformat()}  {a.text()}" for a in alerts]
    msg.set_content("\n".join(lines) + "\n")
    with smtplib.SMTP(conf.smtp_host or "", conf.smtp_port, timeout=conf.delivery_timeout_s) as smtp:
        if conf.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if conf.smtp_username:
            smtp.login(conf.smtp_username, conf.smtp_password or "")
        smtp.send_message(msg)
