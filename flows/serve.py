"""`bacpipes flows serve`: every flow on its schedule, run by this process against a Prefect server
(PREFECT_API_URL; without one Prefect starts a temporary local server)."""

from __future__ import annotations

from typing import Any

from prefect import serve

from flows.ml import ab_flow, baseline_flow, train_flow
from flows.retention import retention_flow

# UTC cron: retention hourly, baseline daily, training nightly, A/B daily after the baseline
SCHEDULES = {
    "retention": (retention_flow, "5 * * * *"),
    "baseline": (baseline_flow, "30 1 * * *"),
    "train": (train_flow, "0 2 * * *"),
    "ab": (ab_flow, "30 3 * * *"),
}


def deployments(config: str | None, central: bool = False) -> list[Any]:
    out = []
    for name, (flow, cron) in SCHEDULES.items():
        parameters: dict[str, Any] = {"config": config}
        if name == "retention":
            parameters["central"] = central
        out.append(flow.to_deployment(name=f"bacpipes-{name}", cron=cron, parameters=parameters))
    return out


def serve_all(config: str | None, central: bool = False) -> None:
    serve(*deployments(config, central))
