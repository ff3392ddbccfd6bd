"""`bacpipes flows serve`: every flow on its schedule, run by this process against a Prefect server
(PREFECT_API_URL; without one Prefect starts a temporary local server)."""

from __future__ import annotations

from typing import Any

from prefect import serve

from bacpipes.settings import load_settings
from flows.ml import ab_flow, baseline_flow, train_flow
from flows.ops import alerts_flow, backup_flow
from flows.retention import retention_flow

# UTC cron: alerts every minute, retention hourly, backup daily before the ML flows (quiet hours, and a
# dump that is not competing with training), baseline daily, training nightly, A/B daily after the baseline
SCHEDULES = {
    "alerts": (alerts_flow, "* * * * *"),
    "backup": (backup_flow, "15 0 * * *"),
    "retention": (retention_flow, "5 * * * *"),
    "baseline": (baseline_flow, "30 1 * * *"),
    "train": (train_flow, "0 2 * * *"),
    "ab": (ab_flow, "30 3 * * *"),
}


def deployments(config: str | None, central: bool = False, backup: bool = True) -> list[Any]:
    out = []
    for name, (flow, cron) in SCHEDULES.items():
        if name == "backup" and not backup:
            continue
        parameters: dict[str, Any] = {"config": config}
        if name == "retention":
            parameters["central"] = central
        if name == "alerts":
            parameters["central"] = central or None  # None: the database decides (sites in its registry)
        out.append(flow.to_deployment(name=f"bacpipes-{name}", cron=cron, parameters=parameters))
    return out


def serve_all(config: str | None, central: bool = False) -> None:
    serve(*deployments(config, central, load_settings(config).backups.scheduled))
