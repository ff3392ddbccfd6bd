"""Operations flows over `central.alerts` and `central.backups`, for a site or central database:
`alerts` judges the seed's rules every minute and sends what is new; `backup` dumps the database daily
and prunes old dumps; `pitr-backup` takes central's pgBackRest backup (full on Sundays, incremental on the
other days; pgBackRest expires what is past its retention). With [offsite] enabled, both copy what they
made to the S3-compatible store (bacpipes.offsite). `bacpipes flows run NAME` runs one now."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from bacpipes import offsite
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


@task(retries=2, retry_delay_seconds=60)
def upload_offsite(settings: Settings, path: str) -> dict[str, Any]:
    return offsite.upload_backup(settings.offsite, settings.site.id, Path(path)).as_json()


@flow(name="backup")
def backup_flow(config: str | None = None) -> dict[str, Any]:
    """With [offsite] enabled, the new dump is then uploaded and checked, and the old off-site copies
    pruned; a failed upload fails the run (the local dump stays, nothing off-site is deleted)."""
    settings = load_settings(config)
    logger = get_run_logger()
    result = dump_database(settings)
    logger.info("backup of %s: %s (%d bytes), %d old dump(s) deleted", settings.site.id,
                result["path"], result["size"], len(result["deleted"]))
    if settings.offsite.enabled:
        result["offsite"] = upload_offsite(settings, result["path"])
        logger.info("off-site copy %s checked (SHA-256 %s), %d old copies deleted", result["offsite"]["url"],
                    result["offsite"]["sha256"], len(result["offsite"]["deleted"]))
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
    stanza = pitr.stanza_from_settings(settings.backups, settings.database.dsn)
    result = pitr.backup(stanza, kind).as_json()
    logger.info("pgBackRest %s backup: %s", kind, result)
    if settings.offsite.enabled:  # the repository mirrored off-site, each new file checked
        result["offsite"] = offsite.sync_repository(settings.offsite, settings.site.id, stanza.repo,
                                                    settings.backups.pitr_retention_days).as_json()
        logger.info("pgBackRest repository off-site: %s", result["offsite"])
    return result

