"""The retention check, on a site or on central: partitions older than the retention are gone and the
next days' partitions exist. With `enforce` (the default) it first applies the retention; either way
it reports, and raises an alert (stored and sent, as the alert rules' are) when the database is not as it
should be."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task

from bacpipes.db import connect
from bacpipes.partitions import DEFAULT_DAYS_AHEAD, Partition, apply_retention, list_partitions
from bacpipes.settings import Settings, load_settings
from central.alerts import deliver, raise_alert


def _covers(partition: Partition, moment: datetime) -> bool:
    lower, upper = partition.lower, partition.upper
    return lower is not None and upper is not None and lower <= moment < upper


@task(retries=3, retry_delay_seconds=10)
def check_retention(settings: Settings, days: int, enforce: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    with connect(settings.database.dsn, autocommit=True) as conn:
        applied = apply_retention(conn, days=days) if enforce else None
        dropped = applied.dropped if applied else {}
        parts = [p for p in list_partitions(conn) if not p.is_default]
        expired = [p.name for p in parts if p.upper is not None and p.upper <= now - timedelta(days=days)]
        ahead = [now + timedelta(days=k) for k in range(DEFAULT_DAYS_AHEAD)]
        missing = [t.date().isoformat() for t in ahead if not any(_covers(p, t) for p in parts)]
        problems = [f"{len(expired)} partition(s) older than {days} days: {', '.join(expired)}"]
        problems = problems if expired else []
        problems += [f"no partition yet for {', '.join(missing)}"] if missing else []
        raised = []
        if problems:
            raised.append(raise_alert(conn, settings.site.id, "retention", "warning", "; ".join(problems)))
    deliver(raised, settings.alerts)
    return {"days": days, "dropped": dropped, "expired": expired, "missing_ahead": missing,
            "rejects_deleted": applied.rejects_deleted if applied else 0, "ok": not problems}


@flow(name="retention")
def retention_flow(config: str | None = None, central: bool = False, enforce: bool = True) -> dict[str, Any]:
    settings = load_settings(config)
    days = settings.central.retention_days if central else settings.database.retention_days
    report = check_retention(settings, days, enforce)
    get_run_logger().info("retention (%s days) at %s: %s", days, settings.site.id, report)
    return report
