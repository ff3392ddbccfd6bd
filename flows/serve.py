"""`bacpipes flows serve`: every flow on its schedule, run by this process against a Prefect server
(PREFECT_API_URL; without one Prefect starts a temporary local server)."""

from __future__ import annotations

from typing import Any

from prefect import serve

from bacpipes.settings import load_settings
from flows.registry import FLOWS, SCHEDULES


def deployments(config: str | None, central: bool = False, backup: bool = True) -> list[Any]:
    out = []
    for name, cron in SCHEDULES.items():
        flow = FLOWS[name]
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
