"""Operations flows over `central.alerts` and `central.backups`, for a site or central database:
`alerts` judges the seed's rules every minute and sends what is new; `backup` dumps the database daily
and prunes old dumps. `bacpipes flows run alerts|backup` runs one now."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bacpipes.settings import Settings, load_settings
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
