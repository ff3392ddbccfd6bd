"""Operations flows over `central.alerts` and `central.backups`, for a site or central database:
`alerts` judges the seed's rules every minute and sends what is new; `backup` dumps the database daily
and prunes old dumps; `pitr-backup` takes central's pgBackRest backup (full on Sundays, incremental on the
other days; pgBackRest expires what is past its retention). `bacpipes flows run NAME` runs one now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task

from bacpipes.settings import Settings, load_settings
from central import pitr
from central.alerts import run_alerts
from central.backups import backup


@task  # no retries: the next run is a minute away, and a retry would delay the db_down verdict
def judge_alerts(settings: Settings, central: bool | None) -> dict[str, Any]:
    return run_alerts(settings, central).as_json()


@flow(name="alerts")
def alerts_flow(config: str | None = None, central: bool | None = None) -> dict[str, Any]:
    """central None: the database decides (central has sites in its registry)."""
    settings = load_settings(config)
    result = judge_alerts(settings, central)
    logger = get_run_logger()
    for alert in result["raised"]:
        logger.warning("alert raised: %s", alert["text"])
    for alert in result["resolved"]:
        logger.info("alert resolved: %s", alert["text"])
    logger.info("alerts at %s: database %s, %d open, delivery %s", settings.site.id, result["database"],
                result["open"], result["delivery"])
    return result


@task(retries=2, retry_delay_seconds=60)
def dump_database(settings: Settings) -> dict[str, Any]:
    return backup(settings).as_json()


@flow(name="backup")
def backup_flow(config: str | None = None) -> dict[str, Any]:
    settings = load_settings(config)
    result = dump_database(settings)
    get_run_logger().info("backup of %s: %s (%d bytes), %d old dump(s) deleted", settings.site.id,
                          result["path"], result["size"], len(result["deleted"]))
    return result


@flow(name="pitr-backup")
def pitr_backup_flow(config: str | None = None, kind: pitr.BackupKind | None = None) -> dict[str, Any]:
    """Skipped, with a line in its log, where point-in-time recovery is not set up (`[backups]
    pitr_pg_data`): the flows serve the same schedule on every central."""
    settings = load_settings(config)
    logger = get_run_logger()
    if settings.backups.pitr_pg_data is None:
        logger.info("point-in-time recovery is not set up ([backups] pitr_pg_data): nothing to back up")
        return {"skipped": True}
    kind = kind or ("full" if datetime.now(UTC).weekday() == 6 else "incr")
    result = pitr.backup(pitr.stanza_from_settings(settings.backups, settings.database.dsn), kind).as_json()
    logger.info("pgBackRest %s backup: %s", kind, result)
    return result

