"""The one writer of the `alerts` table and the one way out of it (webhook, mail), shared by central's rules
and flows and the site's edge (its guard and its out-of-band alarms): `edge/` and `central/` never import
each other, so both live in the core. The rules stay in `central.alerts`."""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.request
from dataclasses import asdict, dataclass
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

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["raised_at"] = self.raised_at.isoformat()
        out["resolved_at"] = self.resolved_at.isoformat() if self.resolved_at else None
        out["text"] = self.text()
        return out

    def text(self) -> str:
        where = f" at {self.site_id}" if self.site_id else ""
        return f"[{self.severity}] {self.source}{where}: {self.message}"


COLUMNS = "id, site_id, source, severity, message, raised_at, resolved_at"


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
    return Alert(*row)  # type: ignore[misc]


def resolve_alert(conn: psycopg.Connection, alert_id: int) -> Alert | None:
    """Close an open alert (its condition cleared); None when it was closed already."""
    row = conn.execute(f"UPDATE alerts SET resolved_at = now() WHERE id = %s AND resolved_at IS NULL"
                       f" RETURNING {COLUMNS}", (alert_id,)).fetchone()
    return Alert(*row) if row else None  # type: ignore[misc]


# --- delivery -------------------------------------------------------------------------------------


@dataclass
class Delivery:
    webhook_sent: int = 0
    webhook_failed: int = 0
    mail_sent: int = 0
    mail_failed: int = 0


def deliver(alerts: list[Alert], conf: AlertSettings) -> Delivery:
    """Each new alert to the webhook (one POST each), all of them in one e-mail. A failure is logged and
    counted, never raised: the alert is already stored, and the other channel must still go out."""
    done = Delivery()
    if not alerts:
        return done
    if conf.webhook_url:
        for alert in alerts:
            try:
                post_webhook(conf.webhook_url, alert.as_json(), conf.delivery_timeout_s)
                done.webhook_sent += 1
            except Exception as exc:
                log.warning("alert %s not delivered to the webhook: %s", alert.source, exc)
                done.webhook_failed += 1
    if conf.smtp_host and conf.mail_to:
        try:
            send_mail(alerts, conf)
            done.mail_sent += 1
        except Exception as exc:
            log.warning("%d alert(s) not delivered by e-mail: %s", len(alerts), exc)
            done.mail_failed += 1
    return done


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # raises on 4xx/5xx
        response.read()


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
