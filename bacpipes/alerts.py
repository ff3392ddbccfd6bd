"""The one writer of the `alerts` table, shared by central's rules and flows and the site's edge guard
(`edge/` and `central/` never import each other, so it lives in the core). Delivery (webhook, mail) and
the rules stay in `central.alerts`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg


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
